"""Per-GPU model states under ZeRO/FSDP/DDP against DeepSpeed's own estimator formulas.

DeepSpeed ``runtime/zero/stage_1_and_2.py: estimate_zero2_model_states_mem_needs`` (no offload):
GPU = 4Ψ + 16Ψ/N (bf16 params and grads replicated; fp32 master, fp32 grads and Adam's two states
partitioned); ``stage3.py: estimate_zero3_model_states_mem_needs``: 18Ψ/N (+ the gathered largest layer).
"""

from __future__ import annotations

import pytest

from app.core import PlanRequest, estimate

MODEL = "meta-llama/Llama-3.2-1B"
PSI = 1_235_814_400  # Llama-3.2-1B parameters (transformers num_parameters, tied embeddings once)


def _states(sharding: str, n: int) -> int:
    m = estimate(PlanRequest(model=MODEL, method="full", training={"optim": "adamw_torch"},
                             hardware={"num_gpus": n, "sharding": sharding})).memory
    return m.weights + m.gradients + m.optimizer_states + m.adapter_weights


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zero2_matches_deepspeed_estimator(n: int) -> None:
    assert _states("zero2", n) == pytest.approx(4 * PSI + 16 * PSI / n, rel=1e-6)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zero3_matches_deepspeed_estimator(n: int) -> None:
    assert _states("zero3", n) == pytest.approx(18 * PSI / n, rel=1e-6)


def test_zero1_partitions_only_optimizer_side() -> None:
    # like DeepSpeed's stage-2 estimator: 2Ψ bf16 params + 2Ψ bf16 grads replicated, 16Ψ/N partitioned
    assert _states("zero1", 4) == pytest.approx(4 * PSI + 16 * PSI / 4, rel=1e-6)


def test_fsdp_and_ddp() -> None:
    single = _states("none", 1)
    assert _states("fsdp", 4) == pytest.approx(single / 4, rel=1e-6)
    ddp = estimate(PlanRequest(model=MODEL, method="full", hardware={"num_gpus": 2, "sharding": "ddp"})).memory
    one = estimate(PlanRequest(model=MODEL, method="full")).memory
    # DDP keeps a full replica and gradient buckets as large as the gradients: the peak grows by them
    assert ddp.peak - one.peak == one.gradients
