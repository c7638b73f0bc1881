"""A plan as its trainer's config (app/exporters): every export, read back through the importer of that format
(app/importers, the same code the CLI and the API use), gives the plan's request again, field for field; what a
format cannot carry is listed, never silently dropped. The page shows the config of the plan's framework."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from app.core import PlanRequest, estimate
from app.core.frameworks import FRAMEWORKS
from app.exporters import framework_config
from app.exporters.axolotl import axolotl_config
from app.exporters.base import Export
from app.exporters.hf import python_snippet
from app.exporters.litgpt import litgpt_config
from app.exporters.llama_factory import llama_factory_config
from app.exporters.ms_swift import ms_swift_command
from app.exporters.torchtune import torchtune_config
from app.exporters.trl import trl_recipe
from app.exporters.unsloth import unsloth_script
from app.importers import import_data, parse_text
from app.importers.axolotl import from_axolotl
from app.importers.cli_args import parse_command
from app.importers.litgpt import from_litgpt
from app.importers.llama_factory import from_llama_factory
from app.importers.ms_swift import from_ms_swift
from app.importers.torchtune import from_torchtune
from app.importers.trl import from_trl
from app.importers.tune_run import parse_tune_run
from app.main import create_app

MODEL = "meta-llama/Llama-3.1-8B"
# Plans every format can carry (LLaMA-Factory: explicit LoRA targets and use_reentrant, LoRA bases in bf16)
PLANS: list[dict[str, Any]] = [
    {"method": "lora", "lora": {"target_modules": ["q_proj", "v_proj"]},
     "training": {"gradient_checkpointing_kwargs": {"use_reentrant": False}}},
    {"method": "qlora", "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"},
     "training": {"micro_batch_size": 2, "seq_len": 4096, "packing": True, "attn_implementation": "flash_attention_2",
                  "use_liger_kernel": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}}},
    {"method": "full", "training": {"precision": "bf16", "optim": "adamw_bnb_8bit",
                                    "gradient_accumulation_steps": 4, "gradient_checkpointing": False,
                                    "activation_offloading": True},
     "hardware": {"num_gpus": 4, "sharding": "fsdp", "offload_param": "cpu", "offload_optimizer": "cpu"}},
    {"method": "qdora", "lora": {"r": 8, "target_modules": ["q_proj", "v_proj"], "use_rslora": True},
     "quantization": {"bnb_4bit_use_double_quant": False},
     "training": {"gradient_checkpointing_kwargs": {"use_reentrant": True}},
     "hardware": {"num_gpus": 2, "sharding": "zero3", "offload_optimizer": "cpu", "reduce_bucket_size": 200_000_000}},
    {"method": "full", "training": {"precision": "fp32", "gradient_checkpointing": False,
                                    "attn_implementation": "sdpa"}, "hardware": {"num_gpus": 2, "sharding": "ddp"}},
    {"method": "dora", "lora": {"target_modules": "all-linear", "modules_to_save": ["lm_head"]},
     "training": {"gradient_checkpointing": False, "attn_implementation": "eager"}},
    {"method": "qlora", "quantization": {"load_in_8bit": True}, "lora": {"target_modules": "all-linear"},
     "training": {"optim": "paged_adamw_8bit", "gradient_checkpointing": False}},
    {"method": "lora", "lora": {"target_modules": "all-linear"},
     "training": {"gradient_accumulation_steps": 8, "gradient_checkpointing": False},
     "hardware": {"num_gpus": 8, "sharding": "zero2"}},
]
def _yaml(read: Callable[..., tuple[dict[str, Any], Any]]) -> Callable[[str], dict[str, Any]]:
    return lambda text: read(yaml.safe_load(text))[0]


FORMATS: dict[str, tuple[Callable[[PlanRequest], Export], Callable[[str], dict[str, Any]]]] = {
    "trl": (trl_recipe, _yaml(from_trl)),
    "axolotl": (axolotl_config, _yaml(from_axolotl)),
    "llama-factory": (llama_factory_config, _yaml(from_llama_factory)),
    # the text a user pastes into a shell, parsed as a launch command (the CLI's own reading of .sh files)
    "ms-swift": (ms_swift_command, lambda text: from_ms_swift(parse_command(text, "train.sh"))[0]),
}
NOT_EXPRESSIBLE = {("ms-swift", 2): "training.activation_offloading", ("ms-swift", 4): "precision 'fp32'"}
"""Plans a format cannot carry: ms-swift has no activation-offloading argument its importer maps, and always trains
with autocast (no fp32 run)."""


def _plan(framework: str, spec: dict[str, Any]) -> PlanRequest:
    body = {"model": MODEL, **spec}
    body["training"] = {**spec.get("training", {}), "framework": framework}
    return PlanRequest.model_validate(body)


@pytest.mark.parametrize("framework", sorted(FORMATS))
@pytest.mark.parametrize("spec", PLANS, ids=[f"{p['method']}-{i}" for i, p in enumerate(PLANS)])
def test_export_reads_back_as_the_same_plan(framework: str, spec: dict[str, Any]) -> None:
    export, read = FORMATS[framework]
    req = _plan(framework, spec)
    out = export(req)
    missing = NOT_EXPRESSIBLE.get((framework, PLANS.index(spec)))
    if missing is not None:
        assert any(missing in line for line in out.unexpressed), out.unexpressed
        return
    assert out.unexpressed == []  # every other setting of these plans has a key in each format
    body = read(out.text())  # the text a user copies, parsed as the trainer would
    # the launcher gives the GPU count (the files cannot; ms-swift's NPROC_PER_NODE can); DDP is the launcher's
    hardware = {**body.get("hardware", {}), "num_gpus": req.hardware.num_gpus, "gpu": req.hardware.gpu}
    if req.hardware.sharding == "ddp":
        hardware["sharding"] = "ddp"
    back = PlanRequest.model_validate({**body, "hardware": hardware})
    expected = req.model_dump(mode="json")
    # none of these frameworks calls PEFT's prepare_model_for_kbit_training on the plan's say-so (app/core/frameworks.py
    # kbit_upcast is not "request"): quantization.prepare_kbit has no key in their files and no effect on the plan
    assert FRAMEWORKS[framework].kbit_upcast != "request"
    expected["quantization"]["prepare_kbit"] = back.quantization.prepare_kbit
    assert back.model_dump(mode="json") == expected
    launch = out.title + out.text()
    assert str(req.hardware.num_gpus) in launch if req.hardware.num_gpus > 1 else "NPROC" not in launch


@pytest.mark.parametrize("framework", ["trl", "llama-factory", "ms-swift"])
@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16-mixed"])
def test_mixed_precision_full_fine_tuning_reads_back(framework: str, precision: str) -> None:
    """fp32 master weights with autocast: TRL loads float32 and sets bf16/fp16; LLaMA-Factory casts the trainable
    parameters to fp32 with bf16/fp16; ms-swift loads float32 and autocasts (axolotl has no such mode: listed as not
    expressible, below)."""
    export, read = FORMATS[framework]
    req = _plan(framework, {"method": "full", "training": {"precision": precision, "gradient_checkpointing": False}})
    out = export(req)
    body = read(out.text())
    assert out.unexpressed == [] and body["training"]["precision"] == precision


@pytest.mark.parametrize(("framework", "spec", "phrase"), [
    ("axolotl", {"method": "lora", "training": {"precision": "bf16-mixed"}}, "precision 'bf16-mixed'"),
    ("axolotl", {"method": "lora", "training": {"padding_free": True, "attn_implementation": "flash_attention_2"}},
     "padding_free"),
    ("trl", {"method": "qlora", "training": {"precision": "bf16-mixed"}}, "bnb_4bit_compute_dtype bfloat16"),
    ("trl", {"method": "lora", "lora": {"bias": "all"}}, "lora.bias 'all'"),
    ("trl", {"method": "lora", "transformers_version": "4.57"}, "transformers 4.57"),
    ("llama-factory", {"method": "lora"}, "lora.target_modules None"),
    ("llama-factory", {"method": "lora", "training": {"precision": "fp32"}}, "precision 'fp32'"),
    ("llama-factory", {"method": "lora", "training": {"torch_compile": True}}, "training.torch_compile"),
])
def test_what_a_format_cannot_carry_is_listed(framework: str, spec: dict[str, Any], phrase: str) -> None:
    body = {"model": MODEL, **spec, "training": {**spec.get("training", {}), "framework": framework}}
    out = FORMATS[framework][0](PlanRequest.model_validate(body))
    assert any(phrase in line for line in out.unexpressed), out.unexpressed
    assert out.text().startswith("# not expressible here: ")


SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LITGPT_PLANS: list[dict[str, Any]] = [
    {"method": "lora", "lora": {"target_modules": ["q_proj", "v_proj"]}},
    {"method": "qlora", "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                                 "target_modules": [*SEVEN, "lm_head"]},
     "training": {"micro_batch_size": 2, "seq_len": 512}},
    {"method": "qlora", "quantization": {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
     "lora": {"target_modules": ["q_proj", "k_proj", "v_proj"]}},
    {"method": "full", "training": {"precision": "bf16", "micro_batch_size": 4, "gradient_accumulation_steps": 8}},
    {"method": "full", "training": {"precision": "bf16-mixed", "seq_len": 1024}},
    {"method": "lora", "lora": {"r": 64, "lora_dropout": 0.0, "target_modules": ["o_proj", "lm_head"]},
     "training": {"precision": "fp32"}},
    # phi's own names: dense (attention output), fc1/fc2 (litgpt's lora_mlp)
    {"model": "microsoft/phi-2", "method": "lora",
     "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2", "lm_head"]}},
    # Phi-3's fused qkv_proj adapted in q and v only (lora_key false: LoRAQKVLinear's enable_lora)
    {"model": "microsoft/Phi-3-mini-4k-instruct", "method": "qlora",
     "lora": {"target_modules": ["qkv_proj", "gate_up_proj", "down_proj"], "enable_lora": [True, False, True]}},
]
"""litgpt's own plans (its loop has no gradient checkpointing; targets in its flags' order: the importer lists them
so)."""


def _litgpt_plan(spec: dict[str, Any]) -> PlanRequest:
    return _plan("litgpt", {**spec, "training": {"gradient_checkpointing": False, **spec.get("training", {})}})


@pytest.mark.parametrize("spec", LITGPT_PLANS, ids=[f"{p['method']}-{i}" for i, p in enumerate(LITGPT_PLANS)])
def test_litgpt_export_reads_back_as_the_same_plan(spec: dict[str, Any]) -> None:
    """The litgpt config reads back through from_litgpt (the importer of ``litgpt finetune_* --config``) as the same
    request, field for field; ``global_batch_size`` carries the accumulation (÷ one device ÷ micro-batch)."""
    req = _litgpt_plan(spec)
    out = litgpt_config(req)
    assert out.unexpressed == []
    data = yaml.safe_load(out.text())
    tr = req.training
    assert data["train"]["global_batch_size"] == tr.micro_batch_size * tr.gradient_accumulation_steps
    assert ("lora_r" in data) == (req.method != "full") and out.title.startswith(
        "litgpt config: litgpt finetune_" + ("full" if req.method == "full" else "lora"))
    body, _ = from_litgpt(data)
    back = PlanRequest.model_validate({**body, "hardware": req.hardware.model_dump(mode="json")})
    assert back.model_dump(mode="json") == req.model_dump(mode="json")


def test_litgpt_all_linear_reads_back_as_its_seven_modules() -> None:
    """PEFT's 'all-linear' is litgpt's five flags without lora_head: it comes back as the seven module names, and the
    planner counts the same trainable parameters for both (Llama-3.1-8B, r 8: 32 layers × 8 × (q 4096+4096, k and v
    4096+1024 each, o 4096+4096, gate and up 4096+14336 each, down 14336+4096) = 20,971,520)."""
    req = _litgpt_plan({"method": "qlora", "lora": {"target_modules": "all-linear"}})
    data = yaml.safe_load(litgpt_config(req).text())
    assert [k for k in data if k.startswith("lora_") and data[k] is True] == [
        "lora_query", "lora_key", "lora_value", "lora_projection", "lora_mlp"]
    body, _ = from_litgpt(data)
    assert body["lora"]["target_modules"] == SEVEN
    back = PlanRequest.model_validate(body)
    assert estimate(back).parameters.trainable == estimate(req).parameters.trainable == 32 * 8 * (
        2 * 8192 + 2 * 5120 + 3 * 18432)


@pytest.mark.parametrize(("spec", "phrase"), [
    ({"method": "dora"}, "method 'dora' (litgpt has no DoRA)"),
    ({"method": "lora", "training": {"gradient_checkpointing": True}}, "training.gradient_checkpointing"),
    ({"method": "lora", "training": {"precision": "fp16-mixed"}}, "precision 'fp16-mixed'"),
    ({"method": "lora", "lora": {"target_modules": ["q_proj", "down_proj"]}}, "without gate_proj, up_proj"),
    ({"method": "lora", "lora": {"target_modules": ["q_proj", "embed_tokens"]}}, "embed_tokens (no litgpt flag)"),
    ({"method": "qlora", "quantization": {"load_in_8bit": True}}, "quantization.load_in_8bit"),
    ({"method": "lora", "lora": {"lora_alpha": 2.5}}, "lora.lora_alpha 2.5 (litgpt takes an integer)"),
    ({"method": "full", "training": {"optim": "adamw_bnb_8bit"}}, "optim 'adamw_bnb_8bit'"),
    ({"method": "lora", "hardware": {"num_gpus": 2, "sharding": "fsdp"}}, "2 GPUs, sharding 'fsdp'"),
    ({"method": "lora", "training": {"packing": True, "attn_implementation": "flash_attention_2"}}, "training.packing"),
])
def test_what_litgpt_cannot_carry_is_listed(spec: dict[str, Any], phrase: str) -> None:
    body = {"model": MODEL, **spec, "training": {"gradient_checkpointing": False, **spec.get("training", {}),
                                                 "framework": "hf-trainer"}}
    out = litgpt_config(PlanRequest.model_validate(body))
    assert any(phrase in line for line in out.unexpressed), out.unexpressed
    assert out.text().startswith("# not expressible here: ")


TORCHTUNE_PLANS: list[dict[str, Any]] = [
    {"method": "lora", "lora": {"target_modules": ["q_proj", "v_proj"]}, "training": {"num_output_chunks": 8}},
    {"method": "qlora", "lora": {"r": 16, "lora_alpha": 32.0, "target_modules": [*SEVEN, "lm_head"]},
     "training": {"micro_batch_size": 2, "seq_len": 4096, "packing": True, "activation_offloading": True,
                  "num_output_chunks": 16}},
    {"method": "full", "training": {"optim": "paged_adamw_8bit", "optimizer_in_bwd": True, "num_output_chunks": 0,
                                    "torch_compile": True}},
    {"method": "full", "training": {"precision": "fp32", "optim": "adamw_torch_fused", "gradient_accumulation_steps": 4,
                                    "gradient_checkpointing": False, "num_output_chunks": 8,
                                    "custom_sharded_layers": ["tok_embeddings", "output"]},
     "hardware": {"num_gpus": 4, "sharding": "fsdp"}},
    {"method": "dora", "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "lora_dropout": 0.05},
     "training": {"num_output_chunks": 8},
     "hardware": {"num_gpus": 2, "sharding": "fsdp", "offload_param": "cpu", "offload_optimizer": "cpu"}},
    {"method": "qdora", "lora": {"target_modules": SEVEN}, "training": {"precision": "fp32", "num_output_chunks": 4},
     "quantization": {"bnb_4bit_compute_dtype": "float32"}},
    {"method": "full", "training": {"optim": "sgd", "momentum": 0.9, "num_output_chunks": 8}},
]
"""torchtune's own plans (targets in the importer's order: q, k, v, o, the MLP, lm_head)."""


def _tune_plan(spec: dict[str, Any], model: Any = MODEL) -> PlanRequest:
    body = {"model": model, **spec}
    # torchtune's attention is always torch SDPA (the importer says so); its NF4 computes in the training dtype
    body["training"] = {"attn_implementation": "sdpa", **spec.get("training", {}), "framework": "torchtune"}
    return PlanRequest.model_validate(body)


def _tune_read_back(out: Export, tmp_path: Path) -> dict[str, Any]:
    """The export as a user runs it: its YAML saved as config.yaml, read through the ``tune run`` command of its
    title (the recipe and ``--nproc_per_node`` decide single-device or FSDP, as torchtune's CLI does)."""
    (tmp_path / "config.yaml").write_text(out.text())
    run = parse_tune_run(out.title.split(": ", 1)[1].split(" (", 1)[0], "run.sh")
    assert run is not None
    return from_torchtune(run, "run.sh", tmp_path)[0]


@pytest.mark.parametrize("spec", TORCHTUNE_PLANS, ids=[f"{p['method']}-{i}" for i, p in enumerate(TORCHTUNE_PLANS)])
def test_torchtune_export_reads_back_as_the_same_plan(spec: dict[str, Any], tmp_path: Path) -> None:
    """The config, launched by its ``tune run`` command, reads back through from_torchtune as the same request,
    field for field (torchtune never runs PEFT's prepare_model_for_kbit_training: prepare_kbit has no key)."""
    req = _tune_plan(spec)
    out = torchtune_config(req)
    assert out.unexpressed == []
    body = _tune_read_back(out, tmp_path)
    back = PlanRequest.model_validate({**body, "hardware": {**body.get("hardware", {}), "gpu": req.hardware.gpu}})
    expected = req.model_dump(mode="json")
    assert FRAMEWORKS["torchtune"].kbit_upcast != "request"
    expected["quantization"]["prepare_kbit"] = back.quantization.prepare_kbit
    assert back.model_dump(mode="json") == expected
    data = yaml.safe_load(out.text())
    assert data["model"]["_component_"].startswith("torchtune.models.llama3_1.")
    distributed = req.hardware.sharding == "fsdp"
    assert ("--nproc_per_node" in out.title) == distributed == ("fsdp_cpu_offload" in data)


@pytest.mark.parametrize(("model", "method", "component"), [
    ("Qwen/Qwen2.5-0.5B", "qlora", "torchtune.models.qwen2_5.lora_qwen2_5_0_5b"),  # no qlora_ builder
    ("meta-llama/Llama-3.2-1B", "lora", "torchtune.models.llama3_2.lora_llama3_2_1b"),
    ("google/gemma-2b", "full", "torchtune.models.gemma.gemma_2b"),
])
def test_torchtune_builders_of_other_families(model: str, method: str, component: str, tmp_path: Path) -> None:
    """Qwen2.5 QLoRA is its lora_ builder with quantize_base; tied outputs (Llama 3.2, Qwen2.5, Gemma) write no
    apply_lora_to_output; the plan still reads back."""
    req = _tune_plan({"method": method, "lora": {"target_modules": ["q_proj", "v_proj"]},
                      "training": {"num_output_chunks": 8}}, model)
    out = torchtune_config(req)
    data = yaml.safe_load(out.text())
    assert data["model"]["_component_"] == component and out.unexpressed == []
    assert "apply_lora_to_output" not in data["model"]
    assert data["model"].get("quantize_base") is (True if method == "qlora" else None)
    body = _tune_read_back(out, tmp_path)
    assert (body["model"], body["method"]) == (model, method)


def test_torchtune_code_llama_is_its_builder(tmp_path: Path) -> None:
    """A Code Llama plan (the importer's config.json of the builder's shapes) exports to code_llama2 builders."""
    from app.importers.torchtune import code_llama2_config

    req = _tune_plan({"method": "qlora", "lora": {"target_modules": ["q_proj", "v_proj"]},
                      "training": {"num_output_chunks": 8}}, {"config": code_llama2_config("code_llama2_7b")})
    out = torchtune_config(req)
    assert yaml.safe_load(out.text())["model"]["_component_"] == "torchtune.models.code_llama2.qlora_code_llama2_7b"
    assert yaml.safe_load(out.text())["tokenizer"]["_component_"] == "torchtune.models.llama2.llama2_tokenizer"
    assert _tune_read_back(out, tmp_path)["model"] == {"config": code_llama2_config("code_llama2_7b")}


@pytest.mark.parametrize(("spec", "phrase"), [
    ({"method": "lora", "lora": {"target_modules": ["q_proj", "lm_head"]}, "model": "meta-llama/Llama-3.2-1B"},
     "tied to the embeddings"),
    ({"method": "lora", "lora": {"target_modules": ["gate_proj", "up_proj", "down_proj"]}}, "lora_attn_modules must"),
    ({"method": "lora", "lora": {"target_modules": ["q_proj", "up_proj"]}}, "without down_proj, gate_proj"),
    ({"method": "lora", "training": {"precision": "bf16-mixed"}}, "precision 'bf16-mixed'"),
    ({"method": "qlora", "quantization": {"bnb_4bit_quant_type": "fp4"}}, "bitsandbytes fp4"),
    ({"method": "qlora", "quantization": {"load_in_8bit": True}}, "quantization.load_in_8bit"),
    ({"method": "full", "training": {"optim": "lion_8bit"}}, "optim 'lion_8bit'"),
    ({"method": "lora", "hardware": {"num_gpus": 2, "sharding": "zero3"}}, "2 GPUs, sharding 'zero3'"),
    ({"method": "lora", "training": {"attn_implementation": "eager"}}, "attn_implementation 'eager'"),
    ({"method": "lora", "training": {"use_liger_kernel": True}}, "training.use_liger_kernel"),
    ({"method": "lora", "training": {"activation_offloading": True, "gradient_checkpointing": False}},
     "activation offloading without checkpointing"),
])
def test_what_torchtune_cannot_carry_is_listed(spec: dict[str, Any], phrase: str) -> None:
    model = spec.pop("model", MODEL)
    out = torchtune_config(_tune_plan(spec, model))
    assert any(phrase in line for line in out.unexpressed), out.unexpressed
    assert out.text().startswith("# not expressible here: ")


def test_torchtune_export_of_a_model_without_a_builder_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """No torchtune builder builds Qwen3: the API answers 422 naming ``model``, the CLI exits 2, and the page shows
    no framework config (the HF snippet only)."""
    from app.cli import main

    body = {"model": "Qwen/Qwen3-0.6B", "method": "lora", "training": {"framework": "torchtune"}}
    client = TestClient(create_app())
    r = client.post("/api/v1/export", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "model", r.json()
    assert "torchtune builds its own models" in r.json()["detail"][0]["msg"]
    assert main(["export", "--model", "Qwen/Qwen3-0.6B", "--format", "torchtune", "-q"]) == 2
    assert "torchtune builds its own models" in capsys.readouterr().err
    assert framework_config(PlanRequest.model_validate(body)) is None


UNSLOTH_PLANS: list[dict[str, Any]] = [
    {"method": "lora", "lora": {"target_modules": SEVEN}},
    {"method": "qlora", "lora": {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj", "v_proj"],
                                 "modules_to_save": ["lm_head"], "use_rslora": True},
     "training": {"micro_batch_size": 4, "seq_len": 1024, "gradient_accumulation_steps": 8,
                  "optim": "paged_adamw_8bit"}},
    {"method": "qlora", "quantization": {"load_in_8bit": True}, "lora": {"target_modules": SEVEN, "lora_dropout": 0.05},
     "training": {"gradient_checkpointing": False}},
    {"method": "full", "training": {"precision": "bf16", "gradient_checkpointing": False, "optim": "adamw_bnb_8bit"}},
    {"method": "full", "training": {"precision": "fp32", "seq_len": 512}},
    {"method": "qlora", "lora": {"target_modules": SEVEN}, "training": {"precision": "fp32"},
     "quantization": {"bnb_4bit_compute_dtype": "float32"}},
]
"""Unsloth's own plans (one GPU, its attention kernels: no attn_implementation)."""


def _unsloth_back(out: Export) -> dict[str, Any]:
    """The script as a user saves it (train.py), read back by the CLI's own file reader (never run)."""
    imported = import_data(parse_text(out.text(), "train.py"), "train.py")
    assert imported.format == "unsloth"
    return imported.body


@pytest.mark.parametrize("spec", UNSLOTH_PLANS, ids=[f"{p['method']}-{i}" for i, p in enumerate(UNSLOTH_PLANS)])
def test_unsloth_export_reads_back_as_the_same_plan(spec: dict[str, Any]) -> None:
    """The Unsloth script reads back through the Unsloth importer (ast, not executed) as the same request, field
    for field (Unsloth never runs PEFT's prepare_model_for_kbit_training: prepare_kbit has no argument)."""
    req = _plan("unsloth", spec)
    out = unsloth_script(req)
    assert out.unexpressed == [] and out.filename == "train.py"
    compile(out.text(), "train.py", "exec")  # valid Python
    back = PlanRequest.model_validate(_unsloth_back(out))
    expected = req.model_dump(mode="json")
    assert FRAMEWORKS["unsloth"].kbit_upcast != "request"
    expected["quantization"]["prepare_kbit"] = back.quantization.prepare_kbit
    assert back.model_dump(mode="json") == expected


def test_unsloth_all_linear_is_its_seven_projections() -> None:
    req = _plan("unsloth", {"method": "qlora", "lora": {"target_modules": "all-linear"}})
    back = PlanRequest.model_validate(_unsloth_back(unsloth_script(req)))
    assert back.lora.target_modules == SEVEN
    assert estimate(back).parameters.trainable == estimate(req).parameters.trainable == 32 * 8 * (
        2 * 8192 + 2 * 5120 + 3 * 18432)


@pytest.mark.parametrize(("spec", "phrase"), [
    ({"method": "dora"}, "method 'dora' (no DoRA argument"),
    ({"method": "lora", "lora": {"target_modules": ["q_proj", "lm_head"]}}, "lora.target_modules lm_head"),
    ({"method": "lora", "training": {"precision": "bf16-mixed"}}, "precision 'bf16-mixed'"),
    ({"method": "qlora", "quantization": {"bnb_4bit_quant_type": "fp4"}}, "bitsandbytes fp4"),
    ({"method": "lora", "training": {"attn_implementation": "sdpa"}}, "attn_implementation 'sdpa'"),
    ({"method": "lora", "training": {"use_liger_kernel": True}}, "training.use_liger_kernel"),
    ({"method": "lora", "hardware": {"num_gpus": 2, "sharding": "ddp"}}, "2 GPUs, sharding 'ddp'"),
])
def test_what_unsloth_cannot_carry_is_listed(spec: dict[str, Any], phrase: str) -> None:
    out = unsloth_script(_plan("unsloth", spec))
    assert any(phrase in line for line in out.unexpressed), out.unexpressed
    assert out.text().startswith("# not expressible here: ")
    compile(out.text(), "train.py", "exec")


def test_the_cli_and_the_api_offer_every_exporter() -> None:
    from typing import get_args, get_type_hints

    from app.cli_export import EXPORT_FORMATS
    from app.exporters import EXPORTERS
    from app.routers.export import post_export

    assert set(EXPORT_FORMATS) == set(EXPORTERS) == set(get_args(get_args(get_type_hints(post_export)["format"])[0]))


def test_framework_config_follows_the_plan() -> None:
    assert framework_config(_plan("hf-trainer", {"method": "lora"})) is None
    assert framework_config(_plan("trl", {"method": "lora"})).filename == "recipe.yaml"
    assert framework_config(_plan("axolotl", {"method": "lora"})).filename == "config.yml"
    assert framework_config(_plan("llama-factory", {"method": "lora"})).filename == "config.yaml"
    assert framework_config(_plan("ms-swift", {"method": "lora"})).filename == "train.sh"
    assert framework_config(_plan("litgpt", {"method": "lora"})).title.startswith("litgpt config: litgpt finetune_lora")
    assert framework_config(_plan("unsloth", {"method": "lora"})).filename == "train.py"
    assert framework_config(_plan("torchtune", {"method": "lora"})).title.startswith(
        "torchtune config: tune run lora_finetune_single_device")
    # the HF snippet of another framework's plan says what it is
    assert python_snippet(_plan("trl", {"method": "lora"})).startswith("# The HF Trainer equivalent")
    assert python_snippet(_plan("hf-trainer", {"method": "lora"})).startswith("import torch")


def test_page_shows_the_frameworks_config() -> None:
    client = TestClient(create_app())
    page = client.get("/", params={"model": MODEL, "method": "qlora", "framework": "axolotl"})
    assert page.status_code == 200
    assert "axolotl config: axolotl train config.yml" in page.text and "adapter: qlora" in page.text
    data = client.get("/compare.json", params={"model": MODEL, "method": "lora", "framework": "trl"}).json()
    recipe = yaml.safe_load(data["snippets"]["framework"])
    assert recipe["use_peft"] is True and recipe["model_name_or_path"] == MODEL
    page = client.get("/", params={"model": MODEL, "method": "qlora", "framework": "litgpt",
                                   "gradient_checkpointing": "off"})
    assert "litgpt config: litgpt finetune_lora --config config.yaml" in page.text
    assert "quantize: bnb.nf4-dq" in page.text
    plain = client.get("/compare.json", params={"model": MODEL, "method": "lora"}).json()
    assert plain["snippets"]["framework"] is None


def test_api_exports_and_converts() -> None:
    """POST /api/v1/export: the plan's own framework by default, another with ``format`` (a conversion: the
    recipe reads back as the same plan under that framework), 422 naming ``format`` where none exists."""
    client = TestClient(create_app())
    body = {"model": MODEL, "method": "qlora", "lora": {"target_modules": "all-linear"},
            "training": {"framework": "axolotl", "seq_len": 4096}}
    own = client.post("/api/v1/export", json=body).json()
    assert own["format"] == "axolotl" and own["filename"] == "config.yml" and own["unexpressed"] == []
    assert yaml.safe_load(own["text"])["lora_target_linear"] is True
    trl = client.post("/api/v1/export", params={"format": "trl"}, json=body).json()
    back, _ = from_trl(yaml.safe_load(trl["text"]))
    assert back["training"]["seq_len"] == 4096 and back["method"] == "qlora" and back["training"]["framework"] == "trl"
    refused = client.post("/api/v1/export", json={**body, "training": {"framework": "lit-gpt"}})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", "format"]
    bad = client.post("/api/v1/export", params={"format": "swift"}, json=body)
    assert bad.status_code == 422 and any(d["loc"][-1] == "format" for d in bad.json()["detail"])


def test_cli_export_converts_an_axolotl_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``peft-planner export`` reads a config like ``estimate`` does and prints another trainer's: an axolotl YAML
    to a LLaMA-Factory YAML that reads back to the same run; ``--exact`` refuses what the target cannot carry."""
    from app.cli import main

    src = tmp_path / "axolotl.yml"
    src.write_text(yaml.safe_dump({"base_model": MODEL, "adapter": "qlora", "load_in_4bit": True, "lora_r": 32,
                                   "lora_alpha": 16, "lora_target_linear": True, "sequence_len": 2048,
                                   "micro_batch_size": 2, "gradient_checkpointing": True, "optimizer": "adamw_torch",
                                   "bf16": True, "flash_attention": True}))
    assert main(["export", str(src), "--format", "llama-factory", "-q"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert (out["lora_rank"], out["lora_target"], out["cutoff_len"], out["quantization_bit"]) == (32, "all", 2048, 4)
    body, _ = from_llama_factory(out)
    assert body["method"] == "qlora" and body["training"]["micro_batch_size"] == 2
    assert main(["export", str(src), "--format", "llama-factory", "--exact",
                 "--precision", "bf16-mixed", "-q"]) == 2
    assert "cannot carry: precision 'bf16-mixed'" in capsys.readouterr().err
