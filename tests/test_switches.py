"""The switches of issue 13 (docs/switches.md): each changes the analytic estimate by what the traced step
measures, offloading adds host RAM derived by hand, and invalid combinations are a 422 naming the field.

The traced models are two-layer configs with real widths (Llama-3.2-1B's and Qwen3-0.6B's), so that the
activation terms are the size they are in real runs while a fake-tensor step takes seconds.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core import PlanRequest, estimate
from app.core.switches import flce_bytes
from app.main import create_app
from app.trace.engine import run_trace
from bench.trace_grid import SWITCH_CACHE, SWITCH_CASES, analytic_tensor_peak, bodies, switch_name

from .conftest import TINY_CONFIGS

TOLERANCE = 0.02  # the project's analytic-vs-trace tolerance (tests/test_activation_model.py)

WIDE: dict[str, dict[str, Any]] = {
    "llama": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                  num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                  tie_word_embeddings=False),
    "qwen3": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072,
                  num_hidden_layers=2, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                  tie_word_embeddings=True),
}


def _body(family: str, method: str, checkpointing: bool, training: dict[str, Any]) -> dict[str, Any]:
    return {"model": {"config": copy.deepcopy(WIDE[family])}, "method": method,
            "lora": {"r": 16, "target_modules": "all-linear"},
            "training": {"micro_batch_size": 2, "seq_len": 1024, "gradient_checkpointing": checkpointing, **training}}


@cache
def _traced(body_json: str) -> int:
    return run_trace(PlanRequest.model_validate_json(body_json)).peak_bytes


_analytic = analytic_tensor_peak  # the estimate's peak without the cuBLAS workspaces (the trace counts tensors)


FA2 = {"attn_implementation": "flash_attention_2"}
CASES = [
    ("llama", "lora", True, {}, {"use_liger_kernel": True}),
    ("llama", "lora", False, {}, {"use_liger_kernel": True}),
    ("llama", "qlora", True, {}, {"use_liger_kernel": True}),
    ("qwen3", "lora", False, {}, {"use_liger_kernel": True}),
    ("llama", "lora", True, {}, {"activation_offloading": True}),
    ("qwen3", "lora", False, {}, {"activation_offloading": True}),
    ("llama", "lora", True, FA2, {"packing": True}),
    ("llama", "lora", False, FA2, {"padding_free": True}),
    ("llama", "lora", True, {}, {"gradient_checkpointing_kwargs": {"use_reentrant": True}}),
    # gradient accumulation: a later micro-batch runs beside the accumulated gradients
    ("llama", "full", True, {}, {"gradient_accumulation_steps": 4}),
    ("qwen3", "full", False, {}, {"gradient_accumulation_steps": 2}),
    ("llama", "qlora", True, {}, {"gradient_accumulation_steps": 8}),
]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "method", "checkpointing", "base", "switch"), CASES,
                         ids=lambda v: json.dumps(v, separators=(",", ":")) if isinstance(v, dict) else str(v))
def test_switch_changes_the_estimate_by_what_the_trace_measures(family: str, method: str, checkpointing: bool,
                                                                 base: dict[str, Any], switch: dict[str, Any]) -> None:
    off, on = _body(family, method, checkpointing, base), _body(family, method, checkpointing, {**base, **switch})
    traced_off, traced_on = _traced(json.dumps(off)), _traced(json.dumps(on))
    analytic_off, analytic_on = _analytic(off), _analytic(on)
    assert analytic_on == pytest.approx(traced_on, rel=TOLERANCE)
    # the change itself: what the switch saves in the real step, the estimate saves too (within 2% of the
    # change, or of the peak for switches that change little)
    assert analytic_on - analytic_off == pytest.approx(traced_on - traced_off, rel=TOLERANCE,
                                                       abs=TOLERANCE * traced_on)
    if "use_liger_kernel" in switch or ("activation_offloading" in switch and not checkpointing):
        assert traced_off - traced_on > 0.04 * traced_off  # a real saving: the logits / the saved layers
    if "gradient_accumulation_steps" in switch and method == "full":
        assert traced_on - traced_off > 0.04 * traced_off  # a real cost: the bf16 gradients of the whole model


SWITCH_ROWS: list[dict[str, Any]] = json.loads(SWITCH_CACHE.read_text())


def test_switch_grid_cache_is_current() -> None:
    """bench/trace_grid.py --switches: the real-size traces cover every switch next to its base run."""
    assert [r["request"] for r in SWITCH_ROWS] == bodies(SWITCH_CASES), \
        "cache is stale: run bench/trace_grid.py --switches --regen"
    assert {switch_name(r["request"]) for r in SWITCH_ROWS} >= {
        "-", "use_liger_kernel", "activation_offloading", "use_reentrant", "packing", "padding_free",
        "gradient_accumulation_steps"}


def _grid_row(row: dict[str, Any]) -> Any:
    r = row["request"]
    return pytest.param(row, id=f"{r['model']}-{r['method']}-{switch_name(r)}")


@pytest.mark.parametrize("row", [_grid_row(r) for r in SWITCH_ROWS])
def test_switch_grid_analytic_within_2_percent_of_trace(row: dict[str, Any]) -> None:
    assert _analytic(row["request"]) == pytest.approx(row["trace_peak_bytes"], rel=TOLERANCE)


@pytest.mark.slow
def test_switched_fake_step_equals_real_cpu_step() -> None:
    """The stand-ins (Liger's saved tensors, TRL's offload hooks, the flattened row) allocate the same with
    fake tensors as with real ones."""
    switches = {"use_liger_kernel": True, "activation_offloading": True, "padding_free": True,
                "attn_implementation": "flash_attention_2", "gradient_checkpointing_kwargs": {"use_reentrant": True}}
    req = PlanRequest(model={"config": copy.deepcopy(TINY_CONFIGS["llama"])}, method="lora",
                      lora={"r": 4, "target_modules": "all-linear"},
                      training={"seq_len": 48, "micro_batch_size": 2, **switches})
    fake, real = run_trace(req, fake=True), run_trace(req, fake=False)
    assert (fake.peak_bytes, fake.phases) == (real.peak_bytes, real.phases)


def test_liger_leaves_models_without_liger_kernels_alone() -> None:
    """HF Trainer applies Liger only to model types with an apply_liger_kernel_to_<model> (not GPT-2)."""
    body = {"model": "openai-community/gpt2", "method": "lora", "training": {"seq_len": 1024}}
    liger = copy.deepcopy(body)
    liger["training"]["use_liger_kernel"] = True
    assert _analytic(liger) == _analytic(body)


# Llama-3.1-8B: 8,030,261,248 parameters (tied: no; the catalog's count, tests/test_catalog.py)
P_8B = 8_030_261_248


def _memory(hardware: dict[str, Any], method: str = "full", **training: Any) -> dict[str, int]:
    req = PlanRequest(model="meta-llama/Llama-3.1-8B", method=method, hardware=hardware,
                      training=training)
    return estimate(req).memory.model_dump()


def test_zero_offload_host_ram_is_deepspeeds_16_bytes_per_parameter() -> None:
    """ZeRO-2 + offload_optimizer, bf16 full fine-tuning with AdamW: the host holds the fp32 master (4 B), its
    fp32 gradient (4 B) and two fp32 Adam states (8 B) per parameter = 16·Ψ (DeepSpeed's
    estimate_zero2_model_states_mem_needs without its 1.5 buffer factor); no optimizer state or gradient
    stays on a GPU, the bf16 weights (2·Ψ) do."""
    off = _memory({"num_gpus": 2, "sharding": "zero2", "offload_optimizer": "cpu"})
    on_gpu = _memory({"num_gpus": 2, "sharding": "zero2"})
    assert off["host_ram"] == 16 * P_8B
    assert (off["optimizer_states"], off["gradients"]) == (0, 0)
    assert off["weights"] == on_gpu["weights"] == 2 * P_8B
    assert off["peak"] < on_gpu["peak"] - 8 * P_8B // 2  # at least the GPU's fp32 state partition is gone
    assert on_gpu["host_ram"] == 0


def test_zero_infinity_moves_the_parameters_too() -> None:
    """ZeRO-3 + offload_param: the bf16 parameters (2·Ψ) join the 16·Ψ in host memory; no weight partition on
    the GPU (only the gathered modules, counted in activations). ZeRO-3 also keeps its bf16 gradient partitions
    (2·Ψ over all GPUs) on ``self.device``, the CPU under offload_optimizer (stage3.py
    ``grad_partitions_flat_buffer``): 20·Ψ."""
    m = _memory({"num_gpus": 2, "sharding": "zero3", "offload_optimizer": "cpu", "offload_param": "cpu"})
    assert m["host_ram"] == 20 * P_8B
    assert (m["weights"], m["optimizer_states"], m["gradients"]) == (0, 0, 0)


def test_fsdp_cpu_offload_holds_every_shard_in_host_ram() -> None:
    """FSDP cpu_offload with bf16 weights and torch AdamW (states in the parameter dtype): weights 2·Ψ,
    gradients 2·Ψ and two bf16 states 4·Ψ of all shards = 8·Ψ in host memory."""
    m = _memory({"num_gpus": 2, "sharding": "fsdp", "offload_optimizer": "cpu", "offload_param": "cpu"})
    assert m["host_ram"] == 8 * P_8B
    assert (m["weights"], m["optimizer_states"], m["gradients"]) == (0, 0, 0)


def test_activation_offloading_reports_host_ram() -> None:
    """With checkpointing the offloaded tensors are the 32 layer inputs (bf16, T·h): all but the one being
    recomputed leave the GPU, and the host holds them: 31 · 2 · 2048 · 4096 bytes."""
    m = _memory({}, method="lora", activation_offloading=True, seq_len=2048)
    assert m["host_ram"] == 31 * 2 * 2048 * 4096


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


@pytest.mark.parametrize(
    ("body", "loc", "needle"),
    [
        ({"hardware": {"num_gpus": 2, "sharding": "zero2", "offload_param": "cpu"}},
         ["body", "hardware", "offload_param"], "zero3"),
        ({"hardware": {"num_gpus": 2, "sharding": "ddp", "offload_optimizer": "cpu"}},
         ["body", "hardware", "offload_optimizer"], "ZeRO"),
        ({"hardware": {"offload_optimizer": "cpu"}}, ["body", "hardware", "offload_optimizer"], "fsdp"),
        ({"hardware": {"num_gpus": 2, "sharding": "fsdp", "offload_optimizer": "cpu"}},
         ["body", "hardware", "offload_param"], "together"),
        ({"training": {"packing": True}}, ["body", "training", "packing"], "flash_attention_2"),
        ({"training": {"padding_free": True, "attn_implementation": "sdpa"}},
         ["body", "training", "padding_free"], "flash_attention_2"),
    ],
)
def test_invalid_switch_combinations_are_a_422_naming_the_field(client: TestClient, body: dict[str, Any],
                                                                 loc: list[str], needle: str) -> None:
    r = client.post("/api/v1/estimate", json={"model": "meta-llama/Llama-3.1-8B", **body})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][: len(loc)] == loc and needle in d["msg"] for d in detail), detail


FLCE_SHAPE = (4096, 2048, 128256)  # tokens, hidden, vocab: Llama-3.2-1B at 2 × 2048 tokens


def test_flce_stand_in_allocates_what_the_model_says() -> None:
    """CPU twin of the GPU test below: the trace's fused linear cross-entropy stand-in (fake tensors, bf16,
    frozen lm_head, no autocast: Liger's ``_can_use_mm_out`` path) peaks at :func:`flce_bytes` above its
    inputs."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from app.trace.counter import LiveBytesCounter
    from app.trace.switches import _FusedLinearCrossEntropy

    t, h, v = FLCE_SHAPE
    with FakeTensorMode():
        x = torch.empty(t, h, dtype=torch.bfloat16, requires_grad=True)
        w = torch.empty(v, h, dtype=torch.bfloat16)
        y = torch.zeros(t, dtype=torch.long)
        with LiveBytesCounter() as counter:
            counter.track([x, w, y])
            before = counter.live
            loss = _FusedLinearCrossEntropy.apply(x, w, y, None)
        del loss
    assert counter.peak - before == pytest.approx(flce_bytes(t, h, v, 2, 2, mm_out=True), abs=64)  # + scalars


@pytest.mark.gpu
def test_liger_flce_on_cuda_allocates_what_the_model_says() -> None:
    """Liger's own kernel on a GPU peaks at :func:`flce_bytes` above its inputs (within its small scalars)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: Liger's kernels are Triton (the CPU twin is the test above)")
    ops = pytest.importorskip("liger_kernel.ops.fused_linear_cross_entropy",
                              reason="Liger-Kernel is not installed: pip install '.[liger]'")
    t, h, v = FLCE_SHAPE
    x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(v, h, device="cuda", dtype=torch.bfloat16)
    y = torch.randint(0, v, (t,), device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = ops.LigerFusedLinearCrossEntropyFunction.apply(x, w, y)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before == pytest.approx(flce_bytes(t, h, v, 2, 2, mm_out=True), rel=0.01)
    del loss
