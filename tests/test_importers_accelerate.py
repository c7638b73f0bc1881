"""accelerate launch configs (``accelerate launch --config_file``) → ``hardware``: PEFT's examples/sft configs (the
ones its 70B memory figures were measured with, tests/data/frameworks/SOURCES.md) and hand-written variants.

The expected bodies are read off the files and accelerate 1.15's plugins: ``num_processes`` is the run's GPU count;
a ``deepspeed_config`` without a JSON file becomes a DeepSpeed config with no bucket sizes, which DeepSpeed fills with
its defaults (runtime/zero/config.py: reduce_bucket_size 5e8, stage3_prefetch_bucket_size 5e7).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app import cli
from app.accuracy.rows import map_row, read_rows
from app.core import PlanRequest, estimate
from app.importers import ConfigImportError, import_data, import_file, load_plan_files

DATA = Path(__file__).parent / "data" / "frameworks"
DS_DEFAULTS = {"reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 50_000_000}


@pytest.mark.parametrize(("name", "body"), [
    # 8 processes, ZeRO-3, no offload; its gradient_accumulation_steps 4 is the trainer's too
    ("deepspeed_config", {"hardware": {"num_gpus": 8, "sharding": "zero3", **DS_DEFAULTS},
                          "training": {"gradient_accumulation_steps": 4}}),
    ("deepspeed_config_z3_qlora", {"hardware": {"num_gpus": 2, "sharding": "zero3", **DS_DEFAULTS}}),
    # fsdp_sharding_strategy SHARD_GRAD_OP shards gradients and optimizer states, not parameters: like ZeRO-2
    ("fsdp_config", {"hardware": {"num_gpus": 8, "sharding": "zero2"}}),
    # FULL_SHARD with fsdp_offload_params: FSDP's CPUOffload moves parameters, gradients and the step together
    ("fsdp_config_qlora", {"hardware": {"num_gpus": 2, "sharding": "fsdp", "offload_optimizer": "cpu",
                                        "offload_param": "cpu"}}),
])
def test_peft_example_configs(name: str, body: dict[str, Any]) -> None:
    imported = import_file(DATA / f"accelerate--peft-sft--{name}.yaml")
    assert imported.detected.startswith("accelerate config")
    assert imported.body == body
    keys = {n.key: n.kind for n in imported.notes}
    assert keys["mixed_precision"] == "note" and keys["tpu_use_sudo"] == "ignored"
    assert "unknown" not in keys.values()


@pytest.mark.parametrize("row_id", ["56", "57", "58"])
def test_the_configs_give_the_published_rows_their_hardware(row_id: str) -> None:
    """PEFT's 70B QLoRA rows were launched with these files (docs/source/accelerate/deepspeed.md, fsdp.md): the
    imported hardware is the one bench/published_check.py maps the row to (row 58 is fsdp_config_qlora without its
    CPU offload, as the docs say)."""
    row = next(r for r in read_rows() if r["row_id"] == row_id)
    name = {"56": "deepspeed_config_z3_qlora", "57": "fsdp_config_qlora", "58": "fsdp_config_qlora"}[row_id]
    hardware = import_file(DATA / f"accelerate--peft-sft--{name}.yaml").body["hardware"]
    if row_id == "58":
        hardware = {k: v for k, v in hardware.items() if not k.startswith("offload")}
    mapped = map_row(row).req.hardware.model_dump(exclude_defaults=True)
    mapped.pop("gpu", None)
    assert hardware == mapped


def test_a_deepspeed_json_file_is_read(tmp_path: Path) -> None:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {
        "stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
        "offload_optimizer": {"device": "cpu"}}}))
    body = import_data({"distributed_type": "DEEPSPEED", "num_processes": 4,
                        "deepspeed_config": {"deepspeed_config_file": "ds.json"}}, "a.yaml",
                       base_dir=tmp_path).body
    assert body == {"hardware": {"num_gpus": 4, "sharding": "zero3", "offload_optimizer": "cpu"}}


@pytest.mark.parametrize(("data", "hardware", "note"), [
    ({"distributed_type": "MULTI_GPU", "num_processes": 4}, {"num_gpus": 4, "sharding": "ddp"}, None),
    ({"distributed_type": "NO", "num_processes": 1, "mixed_precision": "bf16"}, {"num_gpus": 1}, None),
    # FSDP2: reshard_after_forward false keeps the gathered parameters through backward (ZeRO-2-like)
    ({"distributed_type": "FSDP", "num_processes": 2,
      "fsdp_config": {"fsdp_version": 2, "fsdp_reshard_after_forward": False}},
     {"num_gpus": 2, "sharding": "zero2"}, None),
    ({"distributed_type": "FSDP", "num_processes": 2, "fsdp_config": {"fsdp_sharding_strategy": 1}},
     {"num_gpus": 2, "sharding": "fsdp"}, None),
    ({"distributed_type": "FSDP", "num_processes": 16, "fsdp_config": {"fsdp_sharding_strategy": "HYBRID_SHARD"}},
     {"num_gpus": 16}, "fsdp_config.fsdp_sharding_strategy"),
    ({"distributed_type": "XLA", "num_processes": 8}, {"num_gpus": 8}, "distributed_type"),
    ({"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 2, "offload_optimizer_device": "nvme"}},
     {"sharding": "zero2", "reduce_bucket_size": 500_000_000}, "deepspeed.zero_optimization.offload_optimizer"),
])
def test_distributed_types(data: dict[str, Any], hardware: dict[str, Any], note: str | None) -> None:
    imported = import_data(data, "a.yaml")
    assert imported.body.get("hardware", {}) == hardware
    if note is not None:
        assert {n.key: n.kind for n in imported.notes}[note] == "unsupported"


def test_dynamo_backend_compiles() -> None:
    body = import_data({"distributed_type": "NO", "dynamo_config": {"dynamo_backend": "INDUCTOR"}}, "a.yaml").body
    assert body["training"] == {"torch_compile": True}


@pytest.mark.parametrize(("data", "key"), [
    ({"distributed_type": "MULTI_GPU", "num_processes": 0}, "num_processes"),
    ({"distributed_type": "FSDP", "fsdp_config": {"fsdp_sharding_strategy": "HALF_SHARD"}},
     "fsdp_config.fsdp_sharding_strategy"),
    ({"distributed_type": "DEEPSPEED", "deepspeed_config": {"zero_stage": 3, "gradient_accumulation_steps": 0}},
     "deepspeed_config.gradient_accumulation_steps"),
])
def test_bad_values_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigImportError) as info:
        import_data(data, "a.yaml")
    assert info.value.key == key


def test_merged_with_a_plan_and_estimated(tmp_path: Path) -> None:
    """The launch config beside the rest of the run: the estimate is the planner's for the merged request."""
    rest = tmp_path / "plan.json"
    rest.write_text(json.dumps({"model": "meta-llama/Llama-3.1-8B", "method": "qlora",
                                "quantization": {"bnb_4bit_quant_storage": "bfloat16"}}))
    body, notes = load_plan_files([DATA / "accelerate--peft-sft--fsdp_config_qlora.yaml", rest])
    assert body["hardware"] == {"num_gpus": 2, "sharding": "fsdp", "offload_optimizer": "cpu", "offload_param": "cpu"}
    assert notes[0].kind == "detected" and "accelerate config" in notes[0].message
    res = estimate(PlanRequest.model_validate(body))
    assert res.memory.host_ram > 0 and res.memory.weights == 0  # the shards live in host RAM


def test_cli_reads_it() -> None:
    config = str(DATA / "accelerate--peft-sft--deepspeed_config_z3_qlora.yaml")
    args = cli.build_parser().parse_args(["estimate", config, "--model", "meta-llama/Llama-3.1-8B", "--method",
                                          "qlora"])
    body, _ = cli.build_body(args)
    assert body["hardware"] == {"num_gpus": 2, "sharding": "zero3", **DS_DEFAULTS}
