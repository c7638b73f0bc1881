"""Per-GPU model states under ZeRO/FSDP/DDP, derived from DeepSpeed's code and its estimator formulas.

DeepSpeed ``runtime/zero/stage_1_and_2.py`` (at 38327e07f): bf16 parameters replicated (2Ψ); fp32 master, fp32
gradients and Adam's two states partitioned (16Ψ/N); the bf16 gradients replicated in stage 1 (2Ψ) and
partitioned in stage 2 (2Ψ/N: ``copy_grads_in_partition`` keeps this rank's, ``clear_grad_attribute`` drops the
others'). Its estimator ``estimate_zero2_model_states_mem_needs`` (4Ψ + 16Ψ/N) counts the stage-2 gradients whole;
the code does not keep them. ``stage3.py: estimate_zero3_model_states_mem_needs``: 18Ψ/N (+ the gathered largest
layer).
"""

from __future__ import annotations

from typing import Any

import pytest

from app.core import PlanRequest, estimate
from app.core.result import EstimateResult
from bench.fsdp_trace import CASES, compare

MODEL = "meta-llama/Llama-3.2-1B"
PSI = 1_235_814_400  # Llama-3.2-1B parameters (transformers num_parameters, tied embeddings once)


def _states(sharding: str, n: int) -> int:
    m = estimate(PlanRequest(model=MODEL, method="full", training={"optim": "adamw_torch"},
                             hardware={"num_gpus": n, "sharding": sharding})).memory
    return m.weights + m.gradients + m.optimizer_states + m.adapter_weights


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zero2_partitions_the_bf16_gradients(n: int) -> None:
    assert _states("zero2", n) == pytest.approx(2 * PSI + 2 * PSI / n + 16 * PSI / n, rel=1e-6)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_zero3_matches_deepspeed_estimator(n: int) -> None:
    assert _states("zero3", n) == pytest.approx(18 * PSI / n, rel=1e-6)


def test_zero1_partitions_only_optimizer_side() -> None:
    # 2Ψ bf16 params + 2Ψ bf16 grads replicated (stage 1 does not partition gradients), 16Ψ/N partitioned
    assert _states("zero1", 4) == pytest.approx(4 * PSI + 16 * PSI / 4, rel=1e-6)


def test_fsdp_and_ddp() -> None:
    single = _states("none", 1)
    assert _states("fsdp", 4) == pytest.approx(single / 4, rel=1e-6)
    ddp = estimate(PlanRequest(model=MODEL, method="full", hardware={"num_gpus": 2, "sharding": "ddp"})).memory
    one = estimate(PlanRequest(model=MODEL, method="full")).memory
    # DDP keeps a full replica and gradient buckets as large as the gradients: the peak grows by them
    assert ddp.peak - one.peak == one.gradients


# Llama-3.2-1B in bf16 (tied embeddings): 128256·2048 embedding, 16 layers, 67,584 norm weights
EMBEDDING_BYTES = 2 * 128256 * 2048  # 525,336,576
NORM_PARAMS = 16 * 2 * 2048 + 2048
A100_WORKSPACE = 2 * (2 * 4096 * 1024 + 8 * 16 * 1024)  # two cuBLAS handles on sm80 (8 MiB + 128 KiB each)


def test_fsdp_optimizer_step_counts_the_local_shard() -> None:
    """torch AdamW (foreach) on FSDP's flat shard: exp_avg_sq.sqrt() of the shard, not of the model. By the step,
    FSDP's final backward callback has resharded every unit (the root too) and each reduce-scatter has freed its
    layer's unsharded gradients: nothing gathered is left (FSDP1 run on CPU: bench/fsdp_trace.py)."""
    res = estimate(PlanRequest(model=MODEL, method="full", training={"optim": "adamw_torch"},
                               hardware={"num_gpus": 2, "sharding": "fsdp"}))
    phases = {p.name: p.bytes for p in res.peak.phases}
    shard = PSI  # bf16 bytes / 2 GPUs
    states = 2 * shard  # exp_avg + exp_avg_sq
    step = (PSI - NORM_PARAMS) * 2 // 2  # the weight-decay group's second moments, this shard's half
    assert phases["optimizer"] == shard + shard + states + step + A100_WORKSPACE


def test_zero3_gathers_the_running_module_and_a_prefetch_bucket() -> None:
    """DeepSpeed fetch_sub_module + HF "auto": largest module (the embedding, bf16) + 0.9·hidden² elements."""
    res = estimate(PlanRequest(model=MODEL, method="full", hardware={"num_gpus": 2, "sharding": "zero3"}))
    by_key = {b.key: b.bytes for b in res.breakdown}
    assert by_key["sharding/gathered_parameters"] == EMBEDDING_BYTES + 2 * int(0.9 * 2048 * 2048)
    # the rest of the activations field at the peak: the activations item, the workspace and ZeRO-3's buffers
    assert res.memory.activations == (by_key[f"activations/{res.peak.phase}"] + by_key["overhead/cublas_workspace"]
                                      + by_key["sharding/gathered_parameters"] + by_key["sharding/zero3_buffers"])


def test_fsdp_qlora_needs_float_quant_storage_and_keeps_constants_whole() -> None:
    from app.core import PlanError

    with pytest.raises(PlanError) as info:
        estimate(PlanRequest(model=MODEL, method="qlora", hardware={"num_gpus": 2, "sharding": "fsdp"}))
    assert info.value.loc == ("quantization", "bnb_4bit_quant_storage")
    single = estimate(PlanRequest(model=MODEL, method="qlora")).memory
    two = estimate(PlanRequest(model=MODEL, method="qlora", quantization={"bnb_4bit_quant_storage": "bfloat16"},
                               hardware={"num_gpus": 2, "sharding": "fsdp"})).memory
    # absmax/nested constants live in each Params4bit.quant_state, which FSDP does not flatten or shard
    assert two.quantization_constants == single.quantization_constants > 0
    assert two.weights == -(-single.weights // 2)


def test_70b_fsdp_qlora_on_two_24gb_cards_does_not_fit() -> None:
    """PEFT's docs (accelerate/fsdp.md) ran Llama-2-70B FSDP-QLoRA on 2×24 GB only with CPU offload; without
    it the run took 35.6 GB per GPU (published_peak_memory.csv rows 57/58)."""
    res = estimate(PlanRequest(
        model="meta-llama/Llama-2-70b-hf", method="qlora",
        lora={"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        quantization={"prepare_kbit": False, "bnb_4bit_quant_storage": "bfloat16"},
        training={"micro_batch_size": 2, "seq_len": 2048, "attn_implementation": "flash_attention_2"},
        hardware={"gpu": "nvidia-rtx-4090", "num_gpus": 2, "sharding": "fsdp"}))
    fits = {f.gpu: f.fits for f in res.fits}
    assert fits["nvidia-rtx-4090"] is False
    assert res.memory.total > 24 * 10**9


def test_fsdp_mixed_precision_computes_on_bf16_copies_of_fp32_shards() -> None:
    """accelerate's FSDP plugin sets ``MixedPrecision(param_dtype=bf16, reduce_dtype=bf16)`` for bf16 mixed precision:
    the step runs on bf16 copies of the all-gathered layers and reduce-scatters bf16 gradients, so everything but the
    fp32 shards is what the bf16 recipe has: the same activations, gathered layers and reduce buffers. The shards:
    fp32 weights and gradients (4 bytes per parameter each) and AdamW's two fp32 states, over 4 GPUs."""
    def run(precision: str) -> EstimateResult:
        return estimate(PlanRequest(model=MODEL, method="full", training={"precision": precision},
                                    hardware={"num_gpus": 4, "sharding": "fsdp"}))

    mixed, bf16 = run("bf16-mixed"), run("bf16")
    assert mixed.memory.activations == bf16.memory.activations
    assert mixed.peak.phase == bf16.peak.phase
    assert any(a.startswith("FSDP mixed precision") for a in mixed.assumptions)
    assert mixed.memory.weights == mixed.memory.gradients == pytest.approx(4 * PSI / 4, abs=4)
    assert mixed.memory.optimizer_states == pytest.approx(8 * PSI / 4, abs=8)
    # without FSDP the autocast recipe keeps its fp32 residual stream: more activations than bf16's
    single = {p: estimate(PlanRequest(model=MODEL, method="full", training={"precision": p})).memory.activations
              for p in ("bf16-mixed", "bf16")}
    assert single["bf16-mixed"] > single["bf16"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[f"{c['method']}-{i}" for i, c in enumerate(CASES)])
def test_fsdp_step_equals_fsdp_itself_on_cpu(case: dict[str, Any]) -> None:
    """torch's FSDP1 wraps and runs the step on CPU against a fake process group (world size 2), as accelerate and
    PEFT configure it (bench/fsdp_trace.py): one GPU's peak equals the analytic estimate within 2%, for QLoRA (packed
    bf16 storage, reentrant checkpointing), LoRA with and without checkpointing, with fp32 weights, and full
    fine-tuning of bf16 and of fp32 weights; with gradient accumulation under accelerate's no_sync, whose unsharded
    gradients accumulate on every GPU."""
    row = compare(case)
    assert row["analytic_fsdp"] == pytest.approx(row["trace_fsdp"], rel=0.02)
    assert row["analytic_1gpu"] == pytest.approx(row["trace_1gpu"], rel=0.02)
