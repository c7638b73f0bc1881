"""training.gradient_accumulation_steps: what a later micro-batch of an accumulation window runs beside.

The analytic-vs-trace checks are in tests/test_switches.py (two-layer models of real widths, traced live) and the
real-size grid in bench/trace_grid.py --switches. Here: the rule per sharding, derived by hand from the trainers'
code (HF Trainer's ``no_sync`` under FSDP, torchtune's recipes without it, DeepSpeed's own accumulation), the
published rows' settings, and the 422s.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.accuracy.rows import map_row, read_rows
from app.core import PlanRequest, estimate
from app.core.errors import PlanError
from app.main import create_app

LLAMA_1B = "meta-llama/Llama-3.2-1B"


def _phases(training: dict[str, Any], hardware: dict[str, Any] | None = None, method: str = "full",
            lora: dict[str, Any] | None = None) -> dict[str, int]:
    res = estimate(PlanRequest(model=LLAMA_1B, method=method, lora=lora or {},
                               training={"micro_batch_size": 1, "seq_len": 1024, **training},
                               hardware=hardware or {}))
    return {p.name: p.bytes for p in res.peak.phases}


def _trainable(method: str = "full", lora: dict[str, Any] | None = None) -> int:
    return estimate(PlanRequest(model=LLAMA_1B, method=method, lora=lora or {})).parameters.trainable


@pytest.mark.parametrize(("hardware", "framework", "grad_bytes"), [
    # one GPU: the bf16 gradients of every parameter (full fine-tuning in bf16: 2 bytes each)
    ({}, "hf-trainer", lambda n: 2 * n),
    # DDP keeps a full replica's gradients (no_sync only skips the all-reduce)
    ({"num_gpus": 4, "sharding": "ddp"}, "hf-trainer", lambda n: 2 * n),
    # HF Trainer + FSDP: accelerator.no_sync on every micro-batch but the last: unsharded, on every GPU
    ({"num_gpus": 4, "sharding": "fsdp"}, "hf-trainer", lambda n: 2 * n),
    ({"num_gpus": 4, "sharding": "fsdp"}, "trl", lambda n: 2 * n),
    # FSDP mixed precision (fp32 shards, bf16 compute): no_sync leaves autograd's gradient of the bf16 unsharded
    # flat parameter on .grad (torch fsdp/_runtime_utils.py _post_backward_hook returns before any cast):
    # 2 bytes per parameter, not the shards' 4
    ({"num_gpus": 4, "sharding": "fsdp", "precision": "bf16-mixed"}, "hf-trainer", lambda n: 2 * n),
    # torchtune's full_finetune_distributed reduce-scatters every micro-batch: this GPU's shard
    ({"num_gpus": 4, "sharding": "fsdp"}, "torchtune", lambda n: -(-2 * n // 4)),
    # DeepSpeed ZeRO-2 (HF Trainer leaves accumulation to DeepSpeed): its bf16 gradient partition
    # (stage_1_and_2.py averaged_gradients, accumulated with add_ between micro-batches)
    ({"num_gpus": 4, "sharding": "zero2"}, "hf-trainer", lambda n: -(-2 * n // 4)),
    # ZeRO-1 keeps every parameter's bf16 gradient
    ({"num_gpus": 4, "sharding": "zero1"}, "hf-trainer", lambda n: 2 * n),
    # ZeRO-3 reduces into the fp32 partitions it holds in every micro-batch anyway: nothing more
    ({"num_gpus": 4, "sharding": "zero3"}, "hf-trainer", lambda n: 0),
])
def test_a_later_micro_batch_runs_beside_the_accumulated_gradients(hardware: dict[str, Any], framework: str,
                                                                    grad_bytes: Any) -> None:
    hardware = dict(hardware)
    training = {"framework": framework, "precision": hardware.pop("precision", "bf16")}
    one = _phases(training, hardware)
    many = _phases({**training, "gradient_accumulation_steps": 8}, hardware)
    expected = grad_bytes(_trainable())
    # forward and loss hold nothing else new; the optimizer step is the same step
    assert many["forward"] - one["forward"] == expected
    assert many["loss"] - one["loss"] == expected
    assert many["optimizer"] == one["optimizer"]


def test_zero2_later_backward_holds_two_gradient_partitions() -> None:
    """DeepSpeed ZeRO-2 (stage_1_and_2.py): the accumulated partition stays as views into the first micro-batch's
    ``grads_in_partition`` buffer, and a later micro-batch's first reduction allocates a whole new one (bf16,
    ⌈2Ψ/4⌉ bytes on 4 GPUs) that lives through its backward. The layers' backward of a later micro-batch therefore
    holds both; the step after the last epilogue holds one."""
    hardware = {"num_gpus": 4, "sharding": "zero2"}
    partition = -(-2 * _trainable() // 4)
    one = _phases({"gradient_checkpointing": True}, hardware)
    many = _phases({"gradient_checkpointing": True, "gradient_accumulation_steps": 4}, hardware)
    # checkpointed Llama-3.2-1B at 1024 tokens: the backward peaks at its end (the tied embedding's two gradient
    # parts and their sum beside the partition), where a later micro-batch adds the accumulated partition; no
    # gradient is added in place (.grad is cleared by every epilogue: each new one is stolen by AccumulateGrad)
    assert many["backward"] - one["backward"] == partition
    assert many["forward"] - one["forward"] == partition
    assert many["optimizer"] == one["optimizer"]


def test_the_count_does_not_matter_beyond_two() -> None:
    """Every micro-batch after the first holds the same gradients (zero_grad runs only after the step)."""
    two = _phases({"gradient_accumulation_steps": 2})
    assert _phases({"gradient_accumulation_steps": 64}) == two
    assert _phases({"gradient_accumulation_steps": 1}) != two


def test_lora_accumulates_only_the_adapters_gradients() -> None:
    """LoRA r16 on q/v: the fp32 adapter gradients (4 bytes per trainable parameter) are all that accumulates."""
    lora = {"r": 16, "target_modules": ["q_proj", "v_proj"]}
    one = _phases({}, method="lora", lora=lora)
    many = _phases({"gradient_accumulation_steps": 4}, method="lora", lora=lora)
    assert many["forward"] - one["forward"] == 4 * _trainable("lora", lora)


def test_assumptions_say_what_accumulation_keeps() -> None:
    res = estimate(PlanRequest(model=LLAMA_1B, method="full", training={"gradient_accumulation_steps": 4},
                               hardware={"num_gpus": 2, "sharding": "fsdp"}))
    line = next(a for a in res.assumptions if a.startswith("gradient_accumulation_steps 4"))
    assert "no_sync" in line and "unsharded" in line


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


@pytest.mark.parametrize("value", [0, -3, 65_537, 2.5, "eight"])
def test_invalid_counts_are_a_422_naming_the_field(client: TestClient, value: Any) -> None:
    r = client.post("/api/v1/estimate", json={"model": LLAMA_1B, "training": {"gradient_accumulation_steps": value}})
    assert r.status_code == 422, r.text
    assert any(d["loc"] == ["body", "training", "gradient_accumulation_steps"] for d in r.json()["detail"])


def test_torchtune_refuses_accumulation_with_optimizer_in_bwd() -> None:
    """recipes/full_finetune_single_device.py raises "Gradient accumulation is not supported with optimizer in
    bwd"; the planner says so on the field."""
    with pytest.raises(PlanError) as exc:
        estimate(PlanRequest(model=LLAMA_1B, method="full", training={
            "framework": "torchtune", "optimizer_in_bwd": True, "gradient_accumulation_steps": 2}))
    assert list(exc.value.loc) == ["training", "gradient_accumulation_steps"]


ROWS = {row["row_id"]: row for row in read_rows()}


@pytest.mark.parametrize(("row_id", "steps"), [
    ("148", 8),  # Qwen README: "batch size of 1 and gradient accumulation of 8"
    ("56", 2),  # PEFT's 70B FSDP QLoRA example: gradient_accumulation_steps 2
    ("69", 128),  # lit-gpt finetune/lora.py: batch_size 128 // micro_batch_size 1
    ("72", 64),  # the same at micro_batch_size 2
    ("145", 8),  # litgpt config_hub/finetune/tiny-llama/full.yaml: global_batch_size 32 // micro_batch_size 4
    ("128", 16),  # llama-3.2-1B/full.yaml: 64 // 4
    ("146", 1),  # tiny-llama/lora.yaml: 8 // 8
    ("10", 64),  # torchtune llama3_1/8B_lora_single_device.yaml @30b8519e8
    ("13", 1),  # torchtune llama3_1/70B_full.yaml
    ("24", 1),  # the 2024-11 flags table states 1
])
def test_published_rows_take_their_recipes_accumulation(row_id: str, steps: int) -> None:
    assert map_row(ROWS[row_id]).req.training.gradient_accumulation_steps == steps
