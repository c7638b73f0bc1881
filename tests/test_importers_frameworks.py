"""axolotl, LLaMA-Factory, ms-swift, TRL and litgpt recipe importers on the frameworks' own example files
(tests/data/frameworks, sources in its SOURCES.md): detected, mapped to the body each framework's code implies
(expectations derived by hand from the files and the frameworks' argument defaults, cited in app/importers/*),
framework set, every key accounted for, bad values refused naming the key."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from app.core import PlanRequest, estimate
from app.importers import ConfigImportError, ImportNote, import_data, import_file, parse_text
from app.importers.trl import MODEL_CONFIG_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "frameworks"
# Qwen2.5-7B: hidden 3584, 28 layers, k/v 512 wide (4 KV heads x 128), MLP 18944. LoRA r on every linear layer
# adds r * (in + out) per module: q,o 3584+3584; k,v 3584+512; gate,up,down 3584+18944.
QWEN7B_ALL_LINEAR_R8 = 28 * 8 * (2 * 7168 + 2 * 4096 + 3 * 22528)  # = 20,185,088


def by_key(notes: list[ImportNote]) -> dict[str, list[ImportNote]]:
    out: dict[str, list[ImportNote]] = {}
    for n in notes:
        out.setdefault(n.key, []).append(n)
    return out


def test_llama_factory_fsdp_qlora_example() -> None:
    """examples/extras/fsdp_qlora/llama3_lora_sft.yaml: quantization_bit 4 with LoRA is QLoRA (bitsandbytes NF4 with
    double quantization: LLaMA-Factory's quantization_type / double_quantization defaults); lora_alpha unset is
    lora_rank * 2 = 16; lora_target 'all' is every linear layer; cutoff_len 2048; checkpointing on (LLaMA-Factory's
    default, reentrant); bf16: 16-bit base weights; no prepare_model_for_kbit_training; gradient_accumulation_steps
    8 (the file's line 33)."""
    imported = import_file(DATA / "llama-factory--extras--fsdp_qlora--llama3_lora_sft.yaml")
    assert imported.format == "llama_factory"
    assert imported.body == {
        "model": "meta-llama/Meta-Llama-3-8B-Instruct",
        "method": "qlora",
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "quantization": {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "prepare_kbit": False},
        "training": {"framework": "llama-factory", "precision": "bf16", "seq_len": 2048, "micro_batch_size": 1,
                     "gradient_accumulation_steps": 8, "gradient_checkpointing": True,
                     "gradient_checkpointing_kwargs": {"use_reentrant": True}, "optim": "adamw_torch_fused"},
    }
    notes = by_key(imported.notes)
    assert notes["disable_gradient_checkpointing"][0].kind == "assumed"
    assert notes["optim"][0].kind == "assumed" and notes["optim"][0].value == "adamw_torch_fused"
    assert {n.kind for k in ("dataset", "template", "learning_rate", "plot_loss", "warmup_ratio")
            for n in notes[k]} == {"ignored"}
    assert not [n for n in imported.notes if n.kind == "unknown"]
    # Llama-3-8B: 32 layers, hidden 4096, k/v 1024, MLP 14336: r * (in + out) per module, 7 modules a layer
    result = estimate(PlanRequest.model_validate(imported.body))
    assert result.parameters.trainable == 32 * 8 * (2 * 8192 + 2 * 5120 + 3 * 18432)


def test_llama_factory_full_and_lora_examples() -> None:
    """train_full/qwen3_full_sft.yaml: full fine-tuning in bf16 with float32 trainable weights (adapter.py casts them;
    under ZeRO-3 DeepSpeed keeps float32 masters) = bf16-mixed; ZeRO-3 read from ds_z3_config.json's name.
    train_lora/qwen3_lora_sft.yaml: LoRA r 8 on all linear layers. Their model (Qwen3-4B-Instruct-2507) is not in
    the catalog: reported, not guessed. gradient_accumulation_steps: 2 and 8 (line 30 of the first, 31 of the
    second)."""
    full = import_file(DATA / "llama-factory--train_full--qwen3_full_sft.yaml")
    assert full.body["method"] == "full" and "model" not in full.body
    assert full.body["training"]["precision"] == "bf16-mixed"
    assert full.body["hardware"] == {"sharding": "zero3"}
    assert full.body["training"]["gradient_accumulation_steps"] == 2
    assert by_key(full.notes)["model_name_or_path"][0].kind == "unsupported"
    lora = import_file(DATA / "llama-factory--train_lora--qwen3_lora_sft.yaml")
    assert lora.body["method"] == "lora" and lora.body["lora"]["target_modules"] == "all-linear"
    assert lora.body["training"]["framework"] == "llama-factory"
    assert lora.body["training"]["gradient_accumulation_steps"] == 8


def test_llama_factory_switches() -> None:
    body = import_data({
        "model_name_or_path": "Qwen/Qwen2.5-7B", "stage": "sft", "finetuning_type": "lora", "use_dora": True,
        "lora_target": "q_proj,v_proj", "enable_liger_kernel": True, "neat_packing": True, "use_unsloth_gc": True,
        "use_reentrant_gc": False, "flash_attn": "fa2", "cutoff_len": 4096, "per_device_train_batch_size": 2,
        "deepspeed": "examples/deepspeed/ds_z3_offload_config.json", "pure_bf16": True,
    }, "lf.yaml").body
    assert body["method"] == "dora" and body["lora"]["target_modules"] == ["q_proj", "v_proj"]
    t = body["training"]
    assert (t["use_liger_kernel"], t["packing"], t["activation_offloading"], t["attn_implementation"]) == (
        True, True, True, "flash_attention_2")
    assert t["gradient_checkpointing_kwargs"] == {"use_reentrant": False}
    # LLaMA-Factory's ds_z3_offload_config.json: optimizer and parameters on the CPU
    assert body["hardware"] == {"sharding": "zero3", "offload_optimizer": "cpu", "offload_param": "cpu"}
    unsloth = import_data({"model_name_or_path": "Qwen/Qwen2.5-7B", "finetuning_type": "lora", "use_unsloth": True},
                          "lf.yaml").body
    assert unsloth["training"]["framework"] == "unsloth"


@pytest.mark.parametrize(("data", "key"), [
    ({"finetuning_type": "banana"}, "finetuning_type"),
    ({"finetuning_type": "oft"}, "finetuning_type"),
    ({"finetuning_type": "full", "quantization_bit": 4}, "quantization_bit"),
    ({"finetuning_type": "lora", "quantization_bit": 7}, "quantization_bit"),
    ({"finetuning_type": "lora", "flash_attn": "fa9"}, "flash_attn"),
    ({"finetuning_type": "lora", "lora_target": ["q_proj"]}, "lora_target"),
    ({"finetuning_type": "lora", "disable_gradient_checkpointing": "yes"}, "disable_gradient_checkpointing"),
    ({"tuner_type": "vera"}, "tuner_type"),
    ({"tuner_type": "banana"}, "tuner_type"),
    ({"tuner_type": "lora", "torch_dtype": "int8"}, "torch_dtype"),
    ({"tuner_type": "lora", "quant_method": "bnb", "quant_bits": 5}, "quant_bits"),
    ({"tuner_type": "full", "quant_method": "bnb", "quant_bits": 4}, "quant_method"),
    ({"tuner_type": "lora", "attn_impl": "magic"}, "attn_impl"),
    ({"use_peft": False, "load_in_4bit": True, "dataset_name": "x"}, "load_in_4bit"),
    ({"use_peft": True, "dtype": "int4", "dataset_name": "x"}, "dtype"),
    ({"use_peft": "yes", "dataset_name": "x"}, "use_peft"),
    # gradient_accumulation_steps: a positive integer ("auto" is a DeepSpeed config's word, not the trainers')
    ({"finetuning_type": "lora", "gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"tuner_type": "lora", "gradient_accumulation_steps": -2}, "gradient_accumulation_steps"),
    ({"tuner_type": "lora", "gradient_accumulation_steps": "auto"}, "gradient_accumulation_steps"),
    ({"use_peft": True, "dataset_name": "x", "gradient_accumulation_steps": 2.5}, "gradient_accumulation_steps"),
    ({"per_device_train_batch_size": 2, "gradient_accumulation_steps": True, "output_dir": "o"},
     "gradient_accumulation_steps"),
])
def test_bad_values_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigImportError) as err:
        import_data(data, "cfg.yaml")
    assert err.value.key == key


def test_ms_swift_qlora_command() -> None:
    """examples/train/qlora/bnb/train.sh (the shell command itself): quant_method bnb + quant_bits 4 with
    tuner_type lora is QLoRA; ms-swift never calls prepare_model_for_kbit_training; lora_dropout takes ms-swift's
    default 0.05; gradient checkpointing ms-swift's default (on); --gradient_accumulation_steps 16."""
    imported = import_file(DATA / "ms-swift--train--qlora--bnb--train.sh")
    assert imported.format == "ms_swift" and "swift sft" in imported.detected
    assert imported.body == {
        "model": "Qwen/Qwen2.5-7B-Instruct",
        "method": "qlora",
        "lora": {"r": 8, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"},
        "quantization": {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                         "bnb_4bit_compute_dtype": "bfloat16", "prepare_kbit": False},
        "training": {"framework": "ms-swift", "precision": "bf16", "seq_len": 2048, "micro_batch_size": 1,
                     "gradient_accumulation_steps": 16, "gradient_checkpointing": True, "optim": "adamw_torch_fused"},
    }
    assert not [n for n in imported.notes if n.kind == "unknown"]
    result = estimate(PlanRequest.model_validate(imported.body))
    assert result.parameters.trainable == QWEN7B_ALL_LINEAR_R8 == 20_185_088


def test_ms_swift_padding_free_command_and_yaml() -> None:
    """examples/train/padding_free/sft.sh: NPROC_PER_NODE=4 → 4 GPUs, --deepspeed zero3, liger, padding-free,
    flash_attn, full fine-tuning in bf16 (ms-swift trains the loaded bf16 weights), --gradient_accumulation_steps 1.
    examples/yaml/deepspeed/sft.yaml: the same arguments as YAML, ZeRO-2, gradient_accumulation_steps 8.
    ms-swift's zero3.json writes its bucket sizes "auto" (the defaults here); zero2.json a reduce bucket of 2e8."""
    body = import_file(DATA / "ms-swift--train--padding_free--sft.sh").body
    assert body == {
        "model": "Qwen/Qwen2.5-7B", "method": "full",
        "training": {"framework": "ms-swift", "precision": "bf16", "seq_len": 8192, "micro_batch_size": 8,
                     "gradient_accumulation_steps": 1, "gradient_checkpointing": True, "use_liger_kernel": True,
                     "padding_free": True, "attn_implementation": "flash_attention_2", "optim": "adamw_torch_fused"},
        "hardware": {"num_gpus": 4, "sharding": "zero3"},
    }
    yaml_body = import_file(DATA / "ms-swift--yaml--deepspeed--sft.yaml").body
    # swift/config/zero2.json: "reduce_bucket_size": 2e8 (zero3.json: "auto", the default)
    assert yaml_body["hardware"] == {"sharding": "zero2", "reduce_bucket_size": 200_000_000}
    assert yaml_body["lora"]["lora_alpha"] == 32
    assert yaml_body["training"]["framework"] == "ms-swift"
    assert yaml_body["training"]["gradient_accumulation_steps"] == 8


def test_ms_swift_defaults_and_offload() -> None:
    """max_length unset: ms-swift truncates at the model's max_model_len (Qwen2.5-7B-Instruct's config.json:
    max_position_embeddings 32768); zero3_offload: swift/config/zero3_offload.json offloads optimizer and params;
    ms-swift 3.x's train_type is still read. gradient_accumulation_steps unset: TrainArgumentsMixin.__post_init__'s
    max(1, ceil(16 / per_device_train_batch_size / world_size)) = ceil(16 / 1 / 2) = 8 with NPROC_PER_NODE=2 and
    ms-swift's batch size 1; without the launcher's count (world size 1) and batch 3: ceil(16 / 3) = 6."""
    imported = import_data(parse_text("NPROC_PER_NODE=2 swift sft --model Qwen/Qwen2.5-7B-Instruct --train_type lora "
                                      "--deepspeed zero3_offload --target_modules q_proj v_proj --use_dora true",
                                      "cmd.sh"), "cmd.sh")
    body = imported.body
    assert body["training"]["seq_len"] == 32768
    assert body["method"] == "dora" and body["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert body["hardware"] == {"num_gpus": 2, "sharding": "zero3", "offload_optimizer": "cpu",
                                "offload_param": "cpu"}
    assert by_key(imported.notes)["max_length"][0].kind == "assumed"
    PlanRequest.model_validate(body)
    assert body["training"]["gradient_accumulation_steps"] == 8
    [steps] = by_key(imported.notes)["gradient_accumulation_steps"]
    assert (steps.kind, steps.field, steps.value) == ("assumed", "training.gradient_accumulation_steps", 8)
    one = import_data({"model": "Qwen/Qwen2.5-7B-Instruct", "tuner_type": "lora", "per_device_train_batch_size": 3},
                      "sft.yaml").body
    assert one["training"]["gradient_accumulation_steps"] == 6


def test_trl_model_config_defaults_are_trls() -> None:
    """The ModelConfig defaults the TRL importer assumes are those of the installed TRL (the real dataclass)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl import ModelConfig
    assert {f.name: f.default for f in dataclasses.fields(ModelConfig)} == MODEL_CONFIG_DEFAULTS


def test_trl_recipes() -> None:
    """TRL's docs (peft_integration.md, 'Using QLoRA with TRL'): --load_in_4bit --use_peft --lora_r 32 --lora_alpha 16
    → QLoRA; get_quantization_config: compute dtype = ModelConfig.dtype (float32 by default), double quantization =
    use_bnb_nested_quant (false); the model loads in float32 with bf16 autocast (SFTConfig bf16 on) → bf16-mixed;
    --gradient_accumulation_steps 16. examples/cli_configs/example_config.yaml: no use_peft → full fine-tuning; no
    gradient_accumulation_steps → SFTConfig's default 1, noted as assumed."""
    qlora = import_file(DATA / "trl--docs--peft_integration--qlora.sh")
    assert qlora.format == "trl"
    assert qlora.body["method"] == "qlora" and qlora.body["model"] == "meta-llama/Llama-2-7b-hf"
    assert qlora.body["lora"] == {"r": 32, "lora_alpha": 16, "lora_dropout": 0.05}
    assert qlora.body["quantization"] == {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False,
                                          "bnb_4bit_compute_dtype": "float32"}
    assert qlora.body["training"]["framework"] == "trl" and qlora.body["training"]["precision"] == "bf16-mixed"
    assert qlora.body["training"]["micro_batch_size"] == 1 and qlora.body["training"]["seq_len"] == 1024
    assert qlora.body["training"]["gradient_accumulation_steps"] == 16
    estimate(PlanRequest.model_validate(qlora.body))
    full = import_file(DATA / "trl--cli_configs--example_config.yaml")
    assert full.format == "trl" and full.body["method"] == "full" and full.body["model"] == "Qwen/Qwen2.5-0.5B"
    assert by_key(full.notes)["dataset_name"][0].kind == "ignored"
    assert full.body["training"]["gradient_accumulation_steps"] == 1
    assert by_key(full.notes)["gradient_accumulation_steps"][0].kind == "assumed"
    # a recipe's dtype and SFTConfig.model_init_kwargs (which sft.py lets override it)
    bf16 = import_data({"model_name_or_path": "Qwen/Qwen2.5-0.5B", "use_peft": True, "dtype": "bfloat16",
                        "lora_target_modules": ["all-linear"], "max_length": 512}, "r.yaml").body
    assert bf16["training"]["precision"] == "bf16" and bf16["lora"]["target_modules"] == "all-linear"


def test_cli_reads_framework_files(tmp_path: Path) -> None:
    """`peft-planner estimate FILE` on a framework's own example; a bad value exits 2 naming the key."""
    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "estimate", str(path), "--json"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    ok = run(DATA / "ms-swift--train--qlora--bnb--train.sh")
    assert ok.returncode == 0, ok.stderr
    assert '"trainable": 20185088' in ok.stdout and "detected ms-swift arguments" in ok.stderr
    (tmp_path / "lf.yaml").write_text("model_name_or_path: Qwen/Qwen2.5-7B\nfinetuning_type: lora\n"
                                      "quantization_bit: 3.5\n")
    bad = run(tmp_path / "lf.yaml")
    assert bad.returncode == 2 and "quantization_bit" in bad.stderr


def test_command_lines_and_prose() -> None:
    """A launch command is read wherever it starts (after env assignments or `accelerate launch`), values after one
    flag become a list; a YAML that merely mentions 'trl sft' in a value stays YAML."""
    args = parse_text("# train\nCUDA_VISIBLE_DEVICES=0,1 accelerate launch trl/scripts/sft.py --use_peft "
                      "--lora_r 8 --dataset_name a b && echo done", "run.sh")
    assert dict(args) == {"use_peft": True, "lora_r": 8, "dataset_name": ["a", "b"]}
    prose = parse_text("description: use trl sft to train\nmodel_name_or_path: Qwen/Qwen2.5-0.5B\nuse_peft: true\n",
                       "r.yaml")
    assert prose == {"description": "use trl sft to train", "model_name_or_path": "Qwen/Qwen2.5-0.5B",
                     "use_peft": True}


def test_deepspeed_config_takes_the_trainers_accumulation(tmp_path: Path) -> None:
    """train_full/qwen3_full_sft.yaml beside the ds_z3_config.json it names (both verbatim, LLaMA-Factory v0.9.5): the
    DeepSpeed config's gradient_accumulation_steps "auto" takes the trainer's (2). An integer must equal the trainer's
    (transformers' HfTrainerDeepSpeedConfig.fill_match refuses a mismatch); any other value is refused naming it."""
    ds_json = json.loads((DATA / "llama-factory--deepspeed--ds_z3_config.json").read_text())
    assert ds_json["gradient_accumulation_steps"] == "auto"
    (tmp_path / "examples" / "deepspeed").mkdir(parents=True)
    ds_path = tmp_path / "examples" / "deepspeed" / "ds_z3_config.json"
    ds_path.write_text(json.dumps(ds_json))
    full_yaml = tmp_path / "qwen3_full_sft.yaml"
    full_yaml.write_text((DATA / "llama-factory--train_full--qwen3_full_sft.yaml").read_text())
    full = import_file(full_yaml)
    assert full.body["training"]["gradient_accumulation_steps"] == 2 and full.body["hardware"] == {"sharding": "zero3"}
    assert not [n for n in full.notes if "read from its name" in n.message]  # the file itself was read
    ds_path.write_text(json.dumps({**ds_json, "gradient_accumulation_steps": 2}))
    assert import_file(full_yaml).body["training"]["gradient_accumulation_steps"] == 2
    for value in (4, 0, "many"):
        ds_path.write_text(json.dumps({**ds_json, "gradient_accumulation_steps": value}))
        with pytest.raises(ConfigImportError) as err:
            import_file(full_yaml)
        assert err.value.key == "deepspeed.gradient_accumulation_steps"
    # inline (HF TrainingArguments' deepspeed dict): absent from the trainer's arguments is its default 1
    with pytest.raises(ConfigImportError, match="trainer's gradient_accumulation_steps 1"):
        import_data({"per_device_train_batch_size": 1, "output_dir": "o",
                     "deepspeed": {**ds_json, "gradient_accumulation_steps": 8}}, "args.json")


def test_litgpt_config_hub_accumulation() -> None:
    """litgpt derives the accumulation (TrainArgs.gradient_accumulation_iters, litgpt/args.py @ 00af8b0d):
    global_batch_size // devices // micro_batch_size. config_hub/finetune/llama-3.2-1B/qlora.yaml: global 8,
    devices 1, micro 2 → 8 // 1 // 2 = 4. phi-2/full.yaml: global 8, devices 2, micro 4 → 8 // 2 // 4 = 1 (per
    device; a formula without devices would say 2). Without the keys: the finetune scripts' global_batch_size 16
    and setup()'s devices 1."""
    qlora = import_file(DATA / "litgpt--config_hub--finetune--llama-3.2-1B--qlora.yaml")
    assert qlora.format == "litgpt" and qlora.body["model"] == "meta-llama/Llama-3.2-1B"
    training = qlora.body["training"]
    assert training["micro_batch_size"] == 2 and training["gradient_accumulation_steps"] == 4
    assert not [n for n in qlora.notes if n.kind == "unknown"]
    estimate(PlanRequest.model_validate(qlora.body))
    full = import_file(DATA / "litgpt--config_hub--finetune--phi-2--full.yaml")
    assert full.body["method"] == "full" and full.body["training"]["gradient_accumulation_steps"] == 1
    partial = import_data({"checkpoint_dir": "checkpoints/meta-llama/Llama-3.2-1B", "logger_name": "csv",
                           "train": {"micro_batch_size": 4}}, "full.yaml")
    assert partial.body["training"]["gradient_accumulation_steps"] == 16 // 1 // 4
    [note] = [n for n in partial.notes if n.field == "training.gradient_accumulation_steps"]
    assert note.kind == "assumed" and note.value == 4
    four = import_data({"checkpoint_dir": "checkpoints/meta-llama/Llama-3.2-1B", "devices": 4, "logger_name": "csv",
                        "train": {"global_batch_size": 64, "micro_batch_size": 4}}, "full.yaml")
    assert four.body["training"]["gradient_accumulation_steps"] == 64 // 4 // 4
    for train, devices, key in (({"global_batch_size": 2, "micro_batch_size": 4}, 1, "train.global_batch_size"),
                                ({"global_batch_size": 8, "micro_batch_size": 1}, 16, "train.global_batch_size"),
                                ({"global_batch_size": 0}, 1, "train.global_batch_size"),
                                ({"micro_batch_size": "two"}, 1, "train.micro_batch_size"),
                                ({}, 0, "devices")):
        with pytest.raises(ConfigImportError) as err:
            import_data({"checkpoint_dir": "checkpoints/x/y", "logger_name": "csv", "devices": devices,
                         "train": train}, "c.yaml")
        assert err.value.key == key, (train, devices)


def test_axolotl_examples_accumulation() -> None:
    """axolotl's examples/llama-3/qlora.yml: gradient_accumulation_steps 4 (micro_batch_size 2). The archived
    falcon/config-7b-lora.yml sets batch_size 2 and micro_batch_size 1 instead: normalize_config's
    batch_size // micro_batch_size = 2 // 1 = 2."""
    llama = import_file(DATA / "axolotl--examples--llama-3--qlora.yml")
    assert llama.format == "axolotl"
    assert (llama.body["training"]["micro_batch_size"], llama.body["training"]["gradient_accumulation_steps"]) == (2, 4)
    falcon = import_file(DATA / "axolotl--examples--archived--falcon--config-7b-lora.yml")
    assert falcon.format == "axolotl" and falcon.body["training"]["gradient_accumulation_steps"] == 2
    assert [n.kind for n in falcon.notes if n.key == "batch_size"] == ["note"]
