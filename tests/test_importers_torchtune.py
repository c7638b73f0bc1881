"""torchtune recipe configs (ten verbatim v0.4.0 files in tests/data/frameworks, sources in its SOURCES.md): detected,
mapped to the body torchtune v0.4.0's recipes and builders imply (expectations derived by hand from each YAML and the
defaults cited in app/importers/torchtune.py), estimated, bad values refused naming the key, and one CLI run."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.core import PlanRequest, estimate
from app.core.catalog import model_config
from app.core.errors import PlanError
from app.importers import ConfigImportError, ImportNote, detect, import_data, import_file, parse_text

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "frameworks"
LORA_8B = "torchtune--llama3_1--8B_lora_single_device.yaml"

# What every one of the six files says the same way: `dataset.packed: False`, `compile: False`,
# `enable_activation_checkpointing: True`, `enable_activation_offloading: False`, `dtype: bf16`,
# `loss._component_: torchtune.modules.loss.CEWithChunkedOutputLoss` with no num_output_chunks (its __init__ default
# 8), and `tokenizer.max_seq_len: null` (no truncation: the planner's default 2048, noted as assumed). torchtune calls
# scaled_dot_product_attention itself: attn_implementation sdpa.
COMMON = {"framework": "torchtune", "attn_implementation": "sdpa", "precision": "bf16", "packing": False,
          "seq_len": 2048, "gradient_checkpointing": True, "activation_offloading": False, "torch_compile": False,
          "num_output_chunks": 8}
# lora_attn_modules ['q_proj', 'v_proj', 'output_proj'] (output_proj is HF's o_proj) + apply_lora_to_mlp True (w1, w3,
# w2: gate/up/down_proj); apply_lora_to_output False; lora_dropout 0.0 in every LoRA file.
TARGETS = ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# qlora_* builders: torchao NF4 (4-bit, block 64, int8 scalers double-quantized per 256), dequantized to the bf16
# model dtype, no prepare_model_for_kbit_training
NF4 = {"load_in_8bit": False, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "prepare_kbit": False,
       "bnb_4bit_compute_dtype": "bfloat16"}
EXPECTED: dict[str, tuple[dict[str, Any], int]] = {
    # batch_size 2, gradient_accumulation_steps 8, torch.optim.AdamW fused: True, lora_rank 8 / lora_alpha 16.
    # Llama-3.1-8B: 32 layers, hidden 4096, k/v 1024 wide, MLP 14336; r·(in + out) per adapted module:
    # q, o 8·8192; v 8·5120; gate, up, down 8·18432 → 614,400 a layer.
    LORA_8B: ({
        "model": "meta-llama/Llama-3.1-8B", "method": "lora",
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": TARGETS},
        "training": {**COMMON, "micro_batch_size": 2, "gradient_accumulation_steps": 8, "optim": "adamw_torch_fused"},
    }, 32 * 8 * (2 * 8192 + 5120 + 3 * 18432)),
    # the same with qlora_llama3_1_8b (quantize_base=True): torchao NF4, double-quantized scalers, bf16 dequant;
    # low_cpu_ram: False is an initialization switch (ignored).
    "torchtune--llama3_1--8B_qlora_single_device.yaml": ({
        "model": "meta-llama/Llama-3.1-8B", "method": "qlora",
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": TARGETS},
        "quantization": NF4,
        "training": {**COMMON, "micro_batch_size": 2, "gradient_accumulation_steps": 8, "optim": "adamw_torch_fused"},
    }, 32 * 8 * (2 * 8192 + 5120 + 3 * 18432)),
    # lora_finetune_distributed (no _single_device suffix): FSDP2; rank 16, alpha 32; accumulation 1.
    # Llama-3.1-70B: 80 layers, hidden 8192, k/v 1024, MLP 28672: q, o 16·16384; v 16·9216; MLP 3 · 16·36864.
    "torchtune--llama3_1--70B_lora.yaml": ({
        "model": "meta-llama/Llama-3.1-70B", "method": "lora",
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": TARGETS},
        "training": {**COMMON, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "optim": "adamw_torch_fused"},
        "hardware": {"sharding": "fsdp"},
    }, 80 * 16 * (2 * 16384 + 9216 + 3 * 36864)),
    # full_finetune_distributed: batch 4, accumulation 8, fused AdamW, optimizer_in_bwd False.
    # Llama-3.2-3B (tied): embeddings 128256·3072 + 28 layers of (2·3072² + 2·3072·1024 + 3·3072·8192 + 2·3072)
    # + the final norm 3072.
    "torchtune--llama3_2--3B_full.yaml": ({
        "model": "meta-llama/Llama-3.2-3B", "method": "full",
        "training": {**COMMON, "micro_batch_size": 4, "gradient_accumulation_steps": 8, "optimizer_in_bwd": False,
                     "optim": "adamw_torch_fused"},
        "hardware": {"sharding": "fsdp"},
    }, 128256 * 3072 + 28 * (2 * 3072**2 + 2 * 3072 * 1024 + 3 * 3072 * 8192 + 2 * 3072) + 3072),
    # full_finetune_single_device: batch 2, accumulation 1, optimizer_in_bwd True, bitsandbytes PagedAdamW8bit.
    # Llama-3.1-8B: 128256·4096 twice (untied) + 32 layers of (2·4096² + 2·4096·1024 + 3·4096·14336 + 2·4096) + 4096.
    "torchtune--llama3_1--8B_full_single_device.yaml": ({
        "model": "meta-llama/Llama-3.1-8B", "method": "full",
        "training": {**COMMON, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "optimizer_in_bwd": True,
                     "optim": "paged_adamw_8bit"},
    }, 2 * 128256 * 4096 + 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 4096),
    # full_finetune_distributed with custom_sharded_layers ['tok_embeddings', 'output'] and fsdp_cpu_offload True
    # (FSDP2 CPUOffloadPolicy: parameters, gradients and the optimizer step on the CPU); fused AdamW.
    "torchtune--llama3_1--70B_full.yaml": ({
        "model": "meta-llama/Llama-3.1-70B", "method": "full",
        "training": {**COMMON, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "optimizer_in_bwd": False,
                     "optim": "adamw_torch_fused", "custom_sharded_layers": ["tok_embeddings", "output"]},
        "hardware": {"sharding": "fsdp", "offload_param": "cpu", "offload_optimizer": "cpu"},
    }, 2 * 128256 * 8192 + 80 * (2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192) + 8192),
    # qwen2_5_3b (tied output): full_finetune_single_device, optimizer_in_bwd True, bitsandbytes PagedAdamW (32-bit).
    # Qwen2.5-3B: 151936·2048 embeddings + 36 layers of (q 2048² + its bias, k and v 2048·256 + biases, o 2048²,
    # MLP 3·2048·11008, two norms) + the final norm.
    "torchtune--qwen2_5--3B_full_single_device.yaml": ({
        "model": "Qwen/Qwen2.5-3B", "method": "full",
        "training": {**COMMON, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "optimizer_in_bwd": True,
                     "optim": "paged_adamw_32bit"},
    }, 151936 * 2048 + 36 * (2048**2 + 2048 + 2 * (2048 * 256 + 256) + 2048**2 + 3 * 2048 * 11008 + 2 * 2048)
       + 2048),
    # lora_qwen2_5_14b_instruct: max_seq_len 32768 where the base checkpoint's config says 131072 (the rows of every
    # layer's RoPE cache), so the body carries Qwen2.5-14B's config with that value. Qwen2.5-14B: 48 layers, hidden
    # 5120, k/v 1024 wide, MLP 13824; r 8 on q, o (8·10240), v (8·6144), gate, up, down (8·18944).
    "torchtune--qwen2_5--14B_lora_single_device.yaml": ({
        "model": {"config": {**model_config("Qwen/Qwen2.5-14B"), "max_position_embeddings": 32768}},
        "method": "lora",
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": TARGETS},
        "training": {**COMMON, "micro_batch_size": 2, "gradient_accumulation_steps": 8, "optim": "adamw_torch_fused"},
    }, 48 * 8 * (2 * 10240 + 6144 + 3 * 18944)),
    # qlora_code_llama2_7b: torchtune's llama2 builder with Code Llama 7B's arguments (models/code_llama2/
    # _model_builders.py: vocab 32,016, 32 layers of hidden 4096 with 32 heads and 32 key/value heads, MLP 11008,
    # max_seq_len 16384, rope_base 1e6), as a Llama config.json (the catalog has no Code Llama). q, v, o 8·8192;
    # gate, up, down 8·15104.
    "torchtune--code_llama2--7B_qlora_single_device.yaml": ({
        "model": {"config": {
            "_name_or_path": "codellama/CodeLlama-7b-hf", "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 11008, "max_position_embeddings": 16384,
            "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32, "rms_norm_eps": 1e-05,
            "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32016}},
        "method": "qlora",
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": TARGETS},
        "quantization": NF4,
        "training": {**COMMON, "micro_batch_size": 2, "gradient_accumulation_steps": 8, "optim": "adamw_torch_fused"},
    }, 32 * 8 * (3 * 8192 + 3 * 15104)),
}


def by_key(notes: list[ImportNote]) -> dict[str, list[ImportNote]]:
    out: dict[str, list[ImportNote]] = {}
    for n in notes:
        out.setdefault(n.key, []).append(n)
    return out


@pytest.mark.parametrize("name", list(EXPECTED))
def test_torchtune_configs_map_and_estimate(name: str) -> None:
    body, trainable = EXPECTED[name]
    imported = import_file(DATA / name)
    assert imported.format == "torchtune"
    assert imported.body == body
    notes = by_key(imported.notes)
    assert not [n for n in imported.notes if n.kind in ("unknown", "unsupported")], imported.notes
    seq = notes["tokenizer.max_seq_len"][0]
    assert (seq.kind, seq.field, seq.value) == ("assumed", "training.seq_len", 2048)
    assert {n.kind for k in ("checkpointer", "metric_logger", "lr_scheduler" if body["method"] != "full" else "epochs",
                             "profiler") for n in notes[k]} == {"ignored"}
    distributed = body.get("hardware", {}).get("sharding") == "fsdp"
    assert any("--nproc_per_node" in n.message for n in imported.notes) == distributed
    num_gpus = 8 if distributed else 1
    result = estimate(PlanRequest.model_validate({**body, "hardware": {**body.get("hardware", {}),
                                                                       "num_gpus": num_gpus}}))
    assert result.parameters.trainable == trainable


def load(name: str = LORA_8B) -> dict[str, Any]:
    return yaml.safe_load((DATA / name).read_text())


def test_builder_variants() -> None:
    """use_dora on the same builders is DoRA (QDoRA on qlora_); apply_lora_to_output adapts the output as lm_head;
    k_proj joins the attention targets in the planner's q, k, v, o order; a builder default left out is noted with
    its request field."""
    data = load()
    data["model"].update(use_dora=True, apply_lora_to_output=True, lora_attn_modules=["output_proj", "k_proj"])
    body = import_data(data, LORA_8B).body
    assert body["method"] == "dora"
    assert body["lora"]["target_modules"] == ["k_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
    data["model"]["_component_"] = "torchtune.models.llama3_1.qlora_llama3_1_8b"
    assert import_data(data, LORA_8B).body["method"] == "qdora"
    data["model"]["_component_"] = "torchtune.models.mistral.qlora_mistral_7b"  # mistral_7b: Mistral-7B-v0.1's shapes
    assert import_data(data, LORA_8B).body["model"] == "mistralai/Mistral-7B-v0.1"
    data["model"].update(_component_="torchtune.models.gemma.qlora_gemma_2b", apply_lora_to_output=False)
    gemma = import_data(data, LORA_8B).body
    assert (gemma["model"], gemma["method"]) == ("google/gemma-2b", "qdora")
    data = load()
    del data["model"]["lora_rank"], data["model"]["apply_lora_to_mlp"]
    imported = import_data(data, LORA_8B)
    assert imported.body["lora"]["r"] == 8 and imported.body["lora"]["target_modules"] == ["q_proj", "v_proj",
                                                                                            "o_proj"]
    notes = by_key(imported.notes)
    assert (notes["model.lora_rank"][0].field, notes["model.lora_rank"][0].value) == ("lora.r", 8)
    assert notes["model.apply_lora_to_mlp"][0].field == "lora.target_modules"


def test_loss_sequence_optimizer_and_recipe() -> None:
    """CrossEntropyLoss → num_output_chunks 0 and a chunk count passes through; a packed dataset with max_seq_len packs
    rows of that length; a torchao optimizer is noted as unsupported and leaves training.optim unset; a file whose name
    says nothing of the recipe is read as single-device, and said so; a distributed-only key makes it distributed."""
    data = load()
    data["loss"] = {"_component_": "torch.nn.CrossEntropyLoss"}
    data["dataset"]["packed"] = True
    data["tokenizer"]["max_seq_len"] = 4096
    data["optimizer"] = {"_component_": "torchao.prototype.low_bit_optim.AdamW8bit", "lr": 3e-4}
    imported = import_data(data, "run.yaml")
    training = imported.body["training"]
    assert (training["num_output_chunks"], training["packing"], training["seq_len"]) == (0, True, 4096)
    assert "optim" not in training and "hardware" not in imported.body
    notes = by_key(imported.notes)
    assert notes["optimizer._component_"][0].kind == "unsupported"
    assert "single-device" in notes["recipe"][0].message
    data["loss"]["num_output_chunks"] = 16  # not an argument of torch's CrossEntropyLoss
    assert by_key(import_data(data, "run.yaml").notes)["loss.num_output_chunks"][0].kind == "unknown"
    data["loss"]["_component_"] = "torchtune.modules.loss.CEWithChunkedOutputLoss"
    data["fsdp_cpu_offload"] = False
    body = import_data(data, "run.yaml").body
    assert body["training"]["num_output_chunks"] == 16 and body["hardware"] == {"sharding": "fsdp"}
    # the LoRA recipes read no optimizer_in_bwd: ignored, not passed on (the planner refuses it with an adapter)
    data["optimizer_in_bwd"] = True
    imported = import_data(data, LORA_8B)
    assert "optimizer_in_bwd" not in imported.body["training"]
    assert by_key(imported.notes)["optimizer_in_bwd"][0].kind == "ignored"


QLORA_3B = "torchtune--llama3_2--3B_qlora_single_device.yaml"
README_QLORA_OVERRIDES = ("dataset.packed=True", "compile=True", "loss=torchtune.modules.loss.CEWithChunkedOutputLoss",
                          "enable_activation_checkpointing=True", "optimizer_in_bwd=False",
                          "enable_activation_offloading=True", "optimizer._component_=torch.optim.AdamW",
                          "tokenizer.max_seq_len=4096", "gradient_accumulation_steps=1", "epochs=1", "batch_size=2")
"""torchtune's README 'Optimization flags' table (@1814feb17), row QLoRA (published 4.6 GiB peak active): the overrides
of its command `tune run lora_finetune_single_device --config llama3_2/3B_qlora_single_device …`."""
README_QLORA_BODY = {
    "model": "meta-llama/Llama-3.2-3B", "method": "qlora",
    # lora_rank 64, lora_alpha 128 in this config; its optimizer's `fused: True` stays (the command sets the component)
    "lora": {"r": 64, "lora_alpha": 128, "lora_dropout": 0.0, "target_modules": TARGETS},
    "quantization": NF4,
    "training": {**COMMON, "packing": True, "seq_len": 4096, "activation_offloading": True, "torch_compile": True,
                 "micro_batch_size": 2, "gradient_accumulation_steps": 1, "optim": "adamw_torch_fused"},
}


def test_readme_optimization_flags_qlora_command() -> None:
    """The README command's overrides written into the verbatim config by hand (`loss=<path>` is tune's shorthand for
    `loss._component_`). The imported body estimates to the same peak as the published-rows check maps that row to
    by hand from the README (app/accuracy/recipes.py, row 25 of published_peak_memory.csv): two independent readings
    of one run."""
    from app.accuracy.rows import map_row, read_rows

    data = load(QLORA_3B)
    data["dataset"]["packed"] = True
    data["loss"]["_component_"] = "torchtune.modules.loss.CEWithChunkedOutputLoss"
    data["optimizer"]["_component_"] = "torch.optim.AdamW"
    data["tokenizer"]["max_seq_len"] = 4096
    data.update(compile=True, enable_activation_checkpointing=True, optimizer_in_bwd=False,
                enable_activation_offloading=True, gradient_accumulation_steps=1, epochs=1, batch_size=2)
    imported = import_data(data, QLORA_3B)
    assert imported.body == README_QLORA_BODY
    row = next(r for r in read_rows() if r["row_id"] == "25")
    assert row["source_id"] == "TT-README-2024-11-flags" and row["method"] == "QLoRA" and row["value_gib"] == "4.6"
    ours = estimate(PlanRequest.model_validate(imported.body)).memory.peak
    assert ours == estimate(map_row(row).req).memory.peak


def test_tune_run_commands(tmp_path: Path) -> None:
    """A `tune run` command (torchtune/_cli/run.py) naming a config file beside it: the README's QLoRA command itself
    gives the body above; torchrun's --nproc_per_node × --nnodes is the GPU count of a distributed recipe;
    `key=value` overrides nested keys, `~key` removes one (config/_utils.py _merge_yaml_and_cli_args)."""
    (tmp_path / "3B_qlora_single_device.yaml").write_text((DATA / QLORA_3B).read_text())
    (tmp_path / "70B_lora.yaml").write_text((DATA / "torchtune--llama3_1--70B_lora.yaml").read_text())
    readme = tmp_path / "readme.sh"
    readme.write_text("# README 'Optimization flags', row QLoRA\ntune run lora_finetune_single_device --config "
                      "3B_qlora_single_device \\\n" + " \\\n".join(README_QLORA_OVERRIDES) + "\n")
    imported = import_file(readme)
    assert imported.format == "torchtune" and imported.body == README_QLORA_BODY
    dist = tmp_path / "dist.sh"
    dist.write_text("tune run --nproc_per_node 4 --nnodes=2 lora_finetune_distributed --config 70B_lora.yaml "
                    "model.lora_rank=8 ~seed && echo done\n")
    imported = import_file(dist)
    assert imported.body["hardware"] == {"num_gpus": 8, "sharding": "fsdp"}
    assert imported.body["lora"]["r"] == 8 and "seed" not in by_key(imported.notes)
    for command, key in [
        ("tune run --nproc_per_node 2 lora_finetune_single_device --config 3B_qlora_single_device.yaml",
         "--nproc_per_node"),  # tune run: 'Recipe … does not support distributed training.'
        ("tune run lora_finetune_single_device --config llama3_2/3B_lora_single_device", "--config"),  # built-in
        ("tune run lora_finetune_single_device 3B_qlora_single_device.yaml", "--config"),
        ("tune run lora_finetune_single_device --config 3B_qlora_single_device.yaml batch_size", "batch_size"),
        ("tune run lora_finetune_single_device --config 3B_qlora_single_device.yaml ~loss._component_",
         "~loss._component_"),
        ("tune run lora_finetune_single_device --config 3B_qlora_single_device.yaml batch_size=0", "batch_size"),
    ]:
        dist.write_text(command + "\n")
        with pytest.raises(ConfigImportError) as err:
            import_file(dist)
        assert err.value.key == key, command
    # prose that mentions the command (not at a line's start) stays YAML
    assert parse_text("description: use tune run to train\nbatch_size: 2\n", "r.yaml") == {
        "description": "use tune run to train", "batch_size": 2}


def test_unmodelled_stale_and_absent_keys() -> None:
    """QAT's `quantizer` and knowledge distillation's `teacher_model` are unsupported; `fsdp: {cpu_offload}` (older
    configs, e.g. llama3_1/405B_qlora.yaml at v0.4.0) is read by no v0.4.0 recipe; `dtype: null` is fp32
    (training.get_dtype(None)); an absent `compile` and `enable_activation_checkpointing` take the recipes' cfg.get
    default, false, noted as assumed."""
    data = load()
    data.update(quantizer={"_component_": "torchtune.training.quantization.Int8DynActInt4WeightQATQuantizer"},
                teacher_model={"_component_": "torchtune.models.llama3_1.llama3_1_8b"}, fsdp={"cpu_offload": False},
                dtype=None)
    del data["compile"], data["enable_activation_checkpointing"], data["enable_activation_offloading"]
    imported = import_data(data, LORA_8B)
    training = imported.body["training"]
    assert (training["precision"], training["torch_compile"], training["gradient_checkpointing"]) == ("fp32", False,
                                                                                                      False)
    notes = by_key(imported.notes)
    assert [notes[k][0].kind for k in ("quantizer", "teacher_model", "fsdp")] == ["unsupported", "unsupported",
                                                                                  "ignored"]
    assert "fsdp_cpu_offload" in notes["fsdp"][0].message
    assert [(notes[k][0].kind, notes[k][0].field) for k in ("compile", "enable_activation_checkpointing")] == [
        ("assumed", "training.torch_compile"), ("assumed", "training.gradient_checkpointing")]
    estimate(PlanRequest.model_validate(imported.body))


def test_optimizer_in_bwd_with_accumulation_is_refused_by_the_estimate() -> None:
    """optimizer_in_bwd and gradient_accumulation_steps pass through as the file gives them; the estimate refuses the
    pair naming training.gradient_accumulation_steps, as full_finetune_single_device.py's __init__ does ("Gradient
    accumulation is not supported with optimizer in bwd")."""
    name = "torchtune--llama3_1--8B_full_single_device.yaml"
    data = load(name)
    data["gradient_accumulation_steps"] = 4
    body = import_data(data, name).body
    assert (body["training"]["optimizer_in_bwd"], body["training"]["gradient_accumulation_steps"]) == (True, 4)
    with pytest.raises(PlanError) as err:
        estimate(PlanRequest.model_validate(body))
    assert err.value.loc == ("training", "gradient_accumulation_steps")


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for p in parents:
        data = data[p]
    if value is _DELETE:
        del data[last]
    else:
        data[last] = value


_DELETE = object()


@pytest.mark.parametrize(("path", "value", "key"), [
    ("batch_size", 0, "batch_size"),
    ("batch_size", _DELETE, "batch_size"),
    ("gradient_accumulation_steps", "8", "gradient_accumulation_steps"),
    ("dtype", "fp16", "dtype"),
    ("model._component_", "torchtune.models.phi3.lora_phi3_mini", "model._component_"),
    ("model.lora_attn_modules", ["q_proj", "gate_proj"], "model.lora_attn_modules"),
    ("model.lora_attn_modules", [], "model.lora_attn_modules"),
    ("model.lora_rank", 0, "model.lora_rank"),
    ("model.apply_lora_to_mlp", "yes", "model.apply_lora_to_mlp"),
    ("loss._component_", "torchtune.modules.loss.ForwardKLWithChunkedOutputLoss", "loss._component_"),
    ("dataset.packed", True, "tokenizer.max_seq_len"),  # packing needs max_seq_len (null in the file)
    ("enable_activation_checkpointing", False, "enable_activation_offloading"),  # with offloading on, below
    ("compile", "true", "compile"),
])
def test_bad_values_are_refused_naming_the_key(path: str, value: Any, key: str) -> None:
    data = copy.deepcopy(load())
    _set(data, path, value)
    if key == "enable_activation_offloading":
        data["enable_activation_offloading"] = True
    with pytest.raises(ConfigImportError) as err:
        import_data(data, LORA_8B)
    assert err.value.key == key


def test_builder_refusals() -> None:
    """The llama3_2 and qwen2_5 0.5B–3B builders refuse apply_lora_to_output (tied output) and gemma's take no such
    argument; lora_llama3_1_405b has no use_dora; an unmapped family (gemma2) is refused naming the key;
    full_finetune_distributed's custom_sharded_layers beyond tok_embeddings/output is not modelled."""
    data = load()
    data["model"]["apply_lora_to_output"] = True
    for builder in ("llama3_2.lora_llama3_2_3b", "qwen2_5.lora_qwen2_5_3b", "gemma.lora_gemma_2b"):
        data["model"]["_component_"] = f"torchtune.models.{builder}"
        with pytest.raises(ConfigImportError) as err:
            import_data(data, LORA_8B)
        assert err.value.key == "model.apply_lora_to_output"
    data["model"]["_component_"] = "torchtune.models.gemma2.lora_gemma2_2b"
    with pytest.raises(ConfigImportError) as err:
        import_data(data, LORA_8B)
    assert err.value.key == "model._component_" and "Llama, Qwen2.5, Mistral and Gemma builders" in err.value.message
    data["model"].update(_component_="torchtune.models.llama3_1.lora_llama3_1_405b", apply_lora_to_output=False,
                         use_dora=True)
    with pytest.raises(ConfigImportError) as err:
        import_data(data, LORA_8B)
    assert err.value.key == "model.use_dora"
    full = load("torchtune--llama3_1--70B_full.yaml")
    full["custom_sharded_layers"] = ["tok_embeddings", "layers.0"]
    with pytest.raises(ConfigImportError) as err:
        import_data(full, "70B_full.yaml")
    assert err.value.key == "custom_sharded_layers"


def test_detected_by_torchtune_keys() -> None:
    """A file without model._component_ is still torchtune by its own keys (here it then lacks the model)."""
    fmt, why = detect({"enable_activation_checkpointing": True, "optimizer_in_bwd": False, "batch_size": 2})
    assert fmt == "torchtune" and "enable_activation_checkpointing" in why


def test_cli_estimates_a_torchtune_config(tmp_path: Path) -> None:
    """`peft-planner estimate FILE --num-gpus 8` on 70B_lora.yaml (distributed: FSDP over 8 GPUs); a bad value exits 2
    naming the key."""
    def run(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "estimate", str(path), "--json", *extra], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    ok = run(DATA / "torchtune--llama3_1--70B_lora.yaml", "--num-gpus", "8")
    assert ok.returncode == 0, ok.stderr
    assert f'"trainable": {EXPECTED["torchtune--llama3_1--70B_lora.yaml"][1]}' in ok.stdout
    assert "detected torchtune recipe config" in ok.stderr and "fsdp over 8 GPUs" in ok.stdout
    bad = tmp_path / "8B_lora_single_device.yaml"
    bad.write_text((DATA / LORA_8B).read_text().replace("dtype: bf16", "dtype: fp16"))
    out = run(bad)
    assert out.returncode == 2 and "dtype" in out.stderr
