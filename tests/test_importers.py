"""Importers: files written by PEFT, transformers and axolotl map onto PlanRequest bodies; no key dropped silently."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from app.core import PlanRequest, estimate
from app.core.catalog import model_configs
from app.importers import (
    ConfigImportError,
    ImportNote,
    combine_methods,
    compute_dtype,
    detect_format,
    from_axolotl,
    from_bnb,
    import_data,
    load_plan_file,
    load_plan_files,
    map_optimizer,
    merge,
)

LLAMA = "meta-llama/Llama-3.1-8B"
# Llama 3.1 8B: hidden 4096, 8 KV heads x 128 = 1024, 32 layers. DoRA r=16 on q_proj (4096→4096) and
# v_proj (4096→1024): A+B per module r·(in+out), plus one magnitude per output feature.
DORA_QV_R16_TRAINABLE = 32 * (16 * (4096 + 4096) + 4096 + 16 * (4096 + 1024) + 1024)


def kinds(notes: list[ImportNote]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for n in notes:
        out.setdefault(n.kind, set()).add(n.key)
    return out


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture(scope="module")
def peft_adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """adapter_config.json exactly as PEFT 0.21 writes it (LoraConfig.save_pretrained)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import peft
        from peft import LoraConfig

    out = tmp_path_factory.mktemp("adapter")
    LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"], use_dora=True, task_type="CAUSAL_LM",
               base_model_name_or_path=LLAMA).save_pretrained(str(out))
    written = json.loads((out / "adapter_config.json").read_text())
    assert written["peft_version"] == peft.__version__ == "0.21.2"
    return out


# ----------------------------------------------------------------------------------------------- PEFT


def test_peft_adapter_config_maps_every_field(peft_adapter_dir: Path) -> None:
    body, notes = load_plan_file(peft_adapter_dir)  # the directory: its adapter_config.json
    assert notes == []  # every key PEFT 0.21 writes is mapped or known to be irrelevant
    lora = body["lora"]
    assert sorted(lora.pop("target_modules")) == ["q_proj", "v_proj"]
    assert body == {
        "model": LLAMA,
        "method": "dora",
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
                 "modules_to_save": None, "layers_to_transform": None, "target_parameters": None},
    }


def test_peft_import_estimates_the_dora_parameters(peft_adapter_dir: Path) -> None:
    body, _ = load_plan_file(peft_adapter_dir / "adapter_config.json")
    result = estimate(PlanRequest.model_validate(body))
    assert result.parameters.trainable == DORA_QV_R16_TRAINABLE == 6_979_584
    assert result.parameters.targeted_modules == 64


def test_peft_unknown_and_unsupported_keys_are_reported(peft_adapter_dir: Path) -> None:
    data = json.loads((peft_adapter_dir / "adapter_config.json").read_text())
    data |= {"my_custom_key": 1, "exclude_modules": ["lm_head"], "rank_pattern": {"q_proj": 64}, "lora_bias": True,
             "alpha_pattern": {"q_proj": 8}, "init_lora_weights": "pissa"}
    imported = import_data(data, "adapter_config.json")
    assert imported.format == "peft"
    assert kinds(imported.notes) == {"unknown": {"my_custom_key"},
                                     "unsupported": {"exclude_modules", "rank_pattern", "lora_bias"}}
    assert all(n.source == "adapter_config.json" for n in imported.notes)
    assert "rank_pattern: unsupported: per-module ranks" in str(
        next(n for n in imported.notes if n.key == "rank_pattern"))


def test_peft_other_adapter_types_are_refused() -> None:
    with pytest.raises(ConfigImportError) as info:
        import_data({"peft_type": "IA3", "target_modules": ["k_proj"]}, "ia3.json")
    assert info.value.key == "peft_type" and "IA3" in info.value.message


def test_peft_base_model_resolution(tmp_path: Path) -> None:
    base = {"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}
    imported = import_data({**base, "base_model_name_or_path": "Meta-Llama/llama-3.1-8b"}, "a.json")
    assert imported.body["model"] == LLAMA and kinds(imported.notes) == {"note": {"base_model_name_or_path"}}

    imported = import_data({**base, "base_model_name_or_path": "someone/private-model"}, "a.json")
    assert "model" not in imported.body
    assert kinds(imported.notes) == {"unsupported": {"base_model_name_or_path"}}
    assert "--model" in imported.notes[0].message

    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(model_configs()["Qwen/Qwen2.5-0.5B"]))
    imported = import_data({**base, "base_model_name_or_path": str(model_dir)}, "a.json")
    assert imported.body["model"] == {"config": model_configs()["Qwen/Qwen2.5-0.5B"]}


# --------------------------------------------------------------------------------------- bitsandbytes


@pytest.fixture(scope="module")
def transformers_bnb() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig


def test_bnb_4bit_to_dict(transformers_bnb: Any) -> None:
    import torch

    cfg = transformers_bnb(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    imported = import_data(cfg.to_dict(), "bnb.json")
    assert imported.format == "bnb" and imported.notes == []
    assert imported.body == {"method": "qlora", "quantization": {
        "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16",
        "bnb_4bit_quant_storage": "uint8", "load_in_8bit": False}}  # to_dict() writes the storage dtype


def test_bnb_diff_json_takes_transformers_defaults(transformers_bnb: Any) -> None:
    cfg = transformers_bnb(load_in_4bit=True)
    diff = json.loads(cfg.to_json_string())  # only the keys that differ from the defaults
    body, notes = from_bnb(diff, "bnb.json")
    quant = body["quantization"]
    assert quant["bnb_4bit_quant_type"] == cfg.bnb_4bit_quant_type == "fp4"
    assert quant["bnb_4bit_use_double_quant"] is cfg.bnb_4bit_use_double_quant is False
    assert quant["bnb_4bit_compute_dtype"] == str(cfg.bnb_4bit_compute_dtype).removeprefix("torch.") == "float32"
    assert kinds(notes) == {"note": {"bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"}}


def test_bnb_8bit_and_skip_modules(transformers_bnb: Any) -> None:
    cfg = transformers_bnb(load_in_8bit=True, llm_int8_skip_modules=["lm_head", "mlp.gate"])
    body, notes = from_bnb(cfg.to_dict(), "bnb8.json")
    assert body == {"method": "qlora", "quantization": {"load_in_8bit": True}}
    assert kinds(notes) == {"unsupported": {"llm_int8_skip_modules"}}
    assert "unquantized" in notes[0].message and "lm_head" in notes[0].message
    PlanRequest.model_validate({"model": LLAMA, **body})


@pytest.mark.parametrize(("given", "expected"), [
    ("bfloat16", "bfloat16"), ("torch.bfloat16", "bfloat16"), ("bf16", "bfloat16"), ("float16", "float16"),
    ("torch.float16", "float16"), ("fp16", "float16"), ("float32", "float32"), ("torch.float32", "float32"),
    ("int4", None),
])
def test_compute_dtype_spellings(given: str, expected: str | None) -> None:
    assert compute_dtype(given) == expected


def test_bnb_problems() -> None:
    with pytest.raises(ConfigImportError) as info:
        from_bnb({"quant_method": "gptq", "bits": 4}, "q.json")
    assert info.value.key == "quant_method"
    with pytest.raises(ConfigImportError):
        from_bnb({"load_in_4bit": True, "load_in_8bit": True}, "q.json")
    body, notes = from_bnb({"load_in_4bit": False, "bnb_4bit_quant_storage": "bfloat16", "mystery": 1}, "q.json")
    assert body == {}
    assert kinds(notes) == {"unsupported": {"load_in_4bit"}, "unknown": {"mystery"}}


def test_bnb_quant_storage_is_carried() -> None:
    """transformers BitsAndBytesConfig(bnb_4bit_quant_storage=torch.bfloat16) serializes as 'bfloat16'."""
    body, _ = from_bnb({"load_in_4bit": True, "bnb_4bit_quant_storage": "bfloat16"}, "q.json")
    assert body["quantization"]["bnb_4bit_quant_storage"] == "bfloat16"
    body, notes = from_bnb({"load_in_4bit": True, "bnb_4bit_quant_storage": "int4"}, "q.json")
    assert "bnb_4bit_quant_storage" not in body["quantization"]
    assert kinds(notes)["unsupported"] == {"bnb_4bit_quant_storage"}


# --------------------------------------------------------------------------------------------- merging


def test_adapter_config_plus_bnb_is_qdora(peft_adapter_dir: Path, transformers_bnb: Any, tmp_path: Path) -> None:
    bnb = write(tmp_path / "bnb.json", transformers_bnb(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                        bnb_4bit_use_double_quant=True,
                                                        bnb_4bit_compute_dtype="bfloat16").to_dict())
    flags = write(tmp_path / "run.yaml", "training:\n  seq_len: 4096\n  optim: paged_adamw_8bit\n"
                                         "hardware:\n  gpu: nvidia-rtx-4090\n")
    body, notes = load_plan_files([peft_adapter_dir, bnb, flags])
    # each file says what it was read as, and nothing else is noted
    assert [n.message for n in notes] == ["detected PEFT adapter_config.json (peft_type 'LORA')",
                                          "detected transformers BitsAndBytesConfig",
                                          "detected PlanRequest body (hardware, training)"]
    assert body["method"] == "qdora" and body["model"] == LLAMA and body["lora"]["r"] == 16
    assert body["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert body["training"] == {"seq_len": 4096, "optim": "paged_adamw_8bit"}
    result = estimate(PlanRequest.model_validate(body))
    assert result.parameters.trainable == DORA_QV_R16_TRAINABLE
    assert result.quantization is not None and result.memory.quantization_constants > 0


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("lora", "qlora", ("qlora", False)), ("dora", "qlora", ("qdora", False)), ("qlora", "dora", ("qdora", False)),
    ("lora", "lora", ("lora", False)), ("full", "qlora", ("qlora", True)), ("lora", "full", ("full", True)),
])
def test_combine_methods(a: str, b: str, expected: tuple[str, bool]) -> None:
    assert combine_methods(a, b) == expected


def test_merge_reports_overrides() -> None:
    body, notes = merge([{"model": LLAMA, "lora": {"r": 8, "lora_alpha": 16}}, {"lora": {"r": 32}}],
                        ["a.json", "b.yaml"])
    assert body == {"model": LLAMA, "lora": {"r": 32, "lora_alpha": 16}}
    assert [str(n) for n in notes] == ["b.yaml: lora.r: note: 32 replaces 8 from a.json"]


# --------------------------------------------------------------------------------------------- axolotl

AXOLOTL_QLORA = """\
base_model: meta-llama/Llama-3.1-8B
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer

load_in_8bit: false
load_in_4bit: true

datasets:
  - path: mhenrichsen/alpaca_2k_test
    type: alpaca
dataset_prepared_path:
val_set_size: 0.05
output_dir: ./outputs/qlora-out

adapter: qlora
lora_model_dir:
sequence_len: 4096
sample_packing: true
pad_to_sequence_len: true

lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules:
lora_target_linear: true

wandb_project:
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 4
optimizer: paged_adamw_32bit
lr_scheduler: cosine
learning_rate: 0.0002

train_on_inputs: false
bf16: auto
tf32: false
gradient_checkpointing: true
flash_attention: true
xformers_attention:
liger_fused_linear_cross_entropy: true
lora_rank: 64
warmup_steps: 10
special_tokens:
"""


def test_axolotl_qlora_yaml(tmp_path: Path) -> None:
    body, notes = load_plan_file(write(tmp_path / "qlora.yml", AXOLOTL_QLORA))
    assert body == {
        "model": LLAMA,
        "method": "qlora",
        "lora": {"r": 32, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"},
        "quantization": {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                         "bnb_4bit_compute_dtype": "bfloat16", "load_in_8bit": False},
        "training": {"framework": "axolotl", "precision": "bf16", "seq_len": 4096, "micro_batch_size": 2,
                     "gradient_accumulation_steps": 4, "gradient_checkpointing": True, "optim": "paged_adamw_32bit",
                     "attn_implementation": "flash_attention_2", "packing": True, "use_liger_kernel": True},
    }
    found = kinds(notes)
    assert found["unknown"] == {"lora_rank"}  # a typo of lora_r: reported, not dropped
    assert "unsupported" not in found  # sample_packing → packing, liger_fused_linear_cross_entropy → use_liger_kernel
    assert found["ignored"] == {
        "model_type", "tokenizer_type", "datasets", "dataset_prepared_path", "val_set_size", "output_dir",
        "lora_model_dir", "pad_to_sequence_len", "wandb_project", "num_epochs", "lr_scheduler", "learning_rate",
        "train_on_inputs", "tf32", "xformers_attention", "warmup_steps", "special_tokens",
    }
    assert found["note"] == {"sample_packing", "liger_fused_linear_cross_entropy"}  # what they were mapped to
    assert next(n for n in notes if n.key == "datasets").message == "does not affect memory"
    estimate(PlanRequest.model_validate(body))


def test_axolotl_absent_keys_take_axolotl_defaults() -> None:
    body, notes = from_axolotl({"base_model": "Qwen/Qwen2.5-0.5B", "adapter": "lora", "lora_r": 8,
                                "peft_use_dora": True, "lora_target_modules": ["q_proj", "v_proj"]}, "min.yml")
    assert body["method"] == "dora"
    assert body["training"] == {"framework": "axolotl", "precision": "bf16", "seq_len": 512, "micro_batch_size": 1,
                                "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
                                "optim": "adamw_torch_fused"}
    assert kinds(notes) == {"assumed": {"bf16", "sequence_len", "micro_batch_size", "gradient_accumulation_steps",
                                        "gradient_checkpointing", "optimizer"}}
    # axolotl's own defaults (its config schema), each named with the request field it fills
    assert {n.field: n.value for n in notes} == {
        "training.precision": "bf16", "training.seq_len": 512, "training.micro_batch_size": 1,
        "training.gradient_accumulation_steps": 1, "training.gradient_checkpointing": False,
        "training.optim": "adamw_torch_fused"}
    assert "quantization" not in body


@pytest.mark.parametrize(("extra", "method", "precision", "quant"), [
    ({"adapter": "lora", "load_in_8bit": True}, "qlora", "bf16", {"load_in_8bit": True}),
    ({"adapter": "qlora", "load_in_4bit": True, "peft_use_dora": True, "bf16": False, "fp16": True}, "qdora", "bf16",
     {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float16",
      "load_in_8bit": False}),
    ({"adapter": "qlora", "load_in_4bit": True, "bnb_config_kwargs": {"bnb_4bit_quant_type": "fp4",
                                                                     "bnb_4bit_use_double_quant": False}},
     "qlora", "bf16", {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
                       "bnb_4bit_compute_dtype": "bfloat16", "load_in_8bit": False}),
    ({"adapter": "lora", "bf16": False, "fp16": False}, "lora", "fp32", None),
])
def test_axolotl_methods_and_precision(extra: dict[str, Any], method: str, precision: str,
                                       quant: dict[str, Any] | None) -> None:
    body, _ = from_axolotl({"base_model": LLAMA, "micro_batch_size": 1, **extra}, "x.yml")
    assert body["method"] == method
    assert body["training"]["precision"] == precision
    assert body.get("quantization") == quant
    PlanRequest.model_validate(body)


def test_axolotl_full_finetune_reports_lora_keys() -> None:
    body, notes = from_axolotl({"base_model": LLAMA, "lora_r": 16, "micro_batch_size": 1}, "full.yml")
    assert body["method"] == "full" and "lora" not in body
    assert any(n.key == "lora_r" and n.kind == "ignored" and "no adapter" in n.message for n in notes)


def test_axolotl_sharding(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    write(tmp_path / "ds" / "z2.json", {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}})
    cfg = "base_model: meta-llama/Llama-3.1-8B\nadapter: lora\nmicro_batch_size: 1\ndeepspeed: ds/z2.json\n"
    body, notes = load_plan_file(write(tmp_path / "a.yml", cfg))
    # ZeRO-Offload of the optimizer: DeepSpeed's zero_optimization.offload_optimizer.device; the file names no
    # reduce_bucket_size, so DeepSpeed's default 5e8 (runtime/zero/config.py) applies: the HF Trainer fills "auto" only
    assert body["hardware"] == {"sharding": "zero2", "offload_optimizer": "cpu", "reduce_bucket_size": 500_000_000}
    assert "deepspeed.zero_optimization.reduce_bucket_size" in kinds(notes)["note"]
    assert "deepspeed.zero_optimization.offload_optimizer" in kinds(notes)["note"]
    body, _ = from_axolotl({"base_model": LLAMA, "adapter": "lora", "deepspeed": "deepspeed_configs/zero3_bf16.json"},
                           "b.yml")
    assert body["hardware"] == {"sharding": "zero3"}
    body, _ = from_axolotl({"base_model": LLAMA, "adapter": "lora", "fsdp": ["full_shard", "auto_wrap"],
                            "fsdp_config": {"fsdp_activation_checkpointing": True}}, "c.yml")
    assert body["hardware"] == {"sharding": "fsdp"} and body["training"]["gradient_checkpointing"] is True


@pytest.mark.parametrize(("name", "optim", "kind"), [
    ("adamw_torch", "adamw_torch", None), ("adamw_torch_fused", "adamw_torch_fused", None),
    ("adamw_bnb_8bit", "adamw_bnb_8bit", None), ("paged_adamw_8bit", "paged_adamw_8bit", None),
    ("paged_adamw_32bit", "paged_adamw_32bit", None), ("adafactor", "adafactor", None),
    ("lion_8bit", "lion_8bit", None), ("lion_32bit", "lion_32bit", None), ("sgd", "sgd", None),
    ("adamw_8bit", "adamw_bnb_8bit", "note"), ("paged_lion_8bit", None, "unsupported"),
    ("galore_adamw", None, "unsupported"), ("adamw_magic", None, "unknown"),
])
def test_optimizer_names(name: str, optim: str | None, kind: str | None) -> None:
    got, notes = map_optimizer(name, "x.yml", "optimizer")
    assert got == optim
    assert [n.kind for n in notes] == ([kind] if kind else [])


# ------------------------------------------------------------------------------------------- detection


def test_plan_bodies_pass_through(tmp_path: Path) -> None:
    plan = {"model": LLAMA, "method": "qlora", "lora": {"r": 16, "surprise": 1}}
    body, notes = load_plan_file(write(tmp_path / "plan.json", plan))
    assert body == plan and notes == []  # the planner itself refuses lora.surprise, naming it
    yaml_body, _ = load_plan_file(write(tmp_path / "plan.yaml", "model: meta-llama/Llama-3.1-8B\nmethod: qlora\n"))
    assert yaml_body == {"model": LLAMA, "method": "qlora"}


def test_model_config_json(tmp_path: Path) -> None:
    config = dict(model_configs()["Qwen/Qwen2.5-0.5B"])
    body, notes = load_plan_file(write(tmp_path / "config.json", config))
    assert body == {"model": {"config": config}} and notes == []
    quantized = {**config, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                                   "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                                                   "bnb_4bit_compute_dtype": "bfloat16"}}
    imported = import_data(quantized, "config.json")
    assert imported.format == "model_config" and imported.body["method"] == "qlora"
    estimate(PlanRequest.model_validate(imported.body))


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", "expected a JSON/YAML mapping"),
    ("hello: world\n", "not a PlanRequest body"),
    ("a: [1,\n", "invalid YAML/JSON"),
    ('{"model": ', "invalid JSON"),
])
def test_unreadable_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigImportError, match=message.replace("(", r"\(")):
        load_plan_file(write(tmp_path / ("x.json" if text.startswith("{") else "x.yaml"), text))
    with pytest.raises(ConfigImportError, match="no such file"):
        load_plan_file(tmp_path / "missing.json")


def test_detect_format() -> None:
    assert detect_format({"r": 8, "lora_alpha": 16}) == "peft"
    assert detect_format({"load_in_4bit": True}) == "bnb"
    assert detect_format({"base_model": LLAMA, "load_in_4bit": True}) == "axolotl"
    assert detect_format({"training": {"seq_len": 1}}) == "plan"


def test_axolotl_float32_and_adapter_case() -> None:
    body, notes = from_axolotl({"base_model": LLAMA, "adapter": "LoRA", "float32": True, "micro_batch_size": 1,
                                "gradient_accumulation_steps": 2, "sequence_len": 1024, "gradient_checkpointing": True,
                                "optimizer": "adamw_torch"}, "f32.yml")
    assert body["method"] == "lora" and body["training"]["precision"] == "fp32"
    assert [(n.key, n.kind) for n in notes] == [("float32", "note")]


def test_axolotl_gradient_accumulation_and_batch_size() -> None:
    """gradient_accumulation_steps → training.gradient_accumulation_steps; with batch_size instead, axolotl's
    normalize_config derives batch_size // micro_batch_size (32 // 4 = 8; 30 // 4 = 7); both set, or a value that is
    not a positive integer, is refused naming the key (axolotl's check_gas_bsz validator refuses both)."""
    base = {"base_model": LLAMA, "adapter": "lora", "micro_batch_size": 4}
    body, _ = from_axolotl({**base, "gradient_accumulation_steps": 16}, "a.yml")
    assert body["training"]["gradient_accumulation_steps"] == 16
    for batch, steps in ((32, 8), (30, 7)):
        body, notes = from_axolotl({**base, "batch_size": batch}, "b.yml")
        assert body["training"]["gradient_accumulation_steps"] == steps
        assert [n.kind for n in notes if n.key == "batch_size"] == ["note"]
    for extra, key in (({"gradient_accumulation_steps": 2, "batch_size": 8}, "batch_size"),
                       ({"batch_size": 2}, "batch_size"),  # smaller than one micro-batch
                       ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
                       ({"gradient_accumulation_steps": "4"}, "gradient_accumulation_steps")):
        with pytest.raises(ConfigImportError) as err:
            from_axolotl({**base, **extra}, "c.yml")
        assert err.value.key == key, extra
