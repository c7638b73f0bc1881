"""The trace engine: fake-tensor steps equal real CPU steps to the byte, and its static bytes equal the core's."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.core.adapters import plan_adapters
from app.core.allocator import FREE
from app.core.architectures import parse_config
from app.core.catalog import gpu
from app.core.inventory import build_inventory
from app.core.overhead import cublas_workspace_bytes, outside_allocator_bytes
from app.core.precision import dtypes_for
from app.core.request import PlanRequest
from app.core.static_memory import static_memory
from app.trace.counter import LiveBytesCounter
from app.trace.engine import _replay_stream, run_trace

from .conftest import TINY_CONFIGS

pytestmark = pytest.mark.slow

CASES: list[tuple[str, str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("llama", "lora", {"target_modules": "all-linear"}, {}, {}),
    ("llama", "qlora", {"lora_dropout": 0.05}, {}, {}),
    ("llama", "qdora", {"target_modules": "all-linear"}, {"gradient_checkpointing": False}, {}),
    ("llama_bias", "dora", {"lora_dropout": 0.1, "bias": "all"}, {"optim": "adamw_torch_fused"}, {}),
    ("mixtral", "lora", {"target_modules": "all-linear"}, {"optim": "adamw_bnb_8bit"}, {}),
    ("qwen3_moe", "full", {}, {"precision": "bf16-mixed", "optim": "adamw_torch_fused"}, {}),
    ("qwen2", "qlora", {"target_modules": "all-linear", "modules_to_save": ["lm_head"]},
     {"optim": "paged_adamw_32bit"}, {"bnb_4bit_use_double_quant": False}),
    ("gemma2", "qlora", {"target_modules": "all-linear"}, {"precision": "fp32", "optim": "paged_adamw_8bit"},
     {"prepare_kbit": False}),
    ("gemma3_text", "lora", {"target_modules": "all-linear"}, {"attn_implementation": "eager", "optim": "lion_8bit"},
     {}),
    ("phi3", "dora", {"target_modules": "all-linear"}, {"optim": "adafactor", "gradient_checkpointing": False}, {}),
    ("gpt2", "full", {}, {"optim": "sgd", "momentum": 0.9, "attn_implementation": "sdpa"}, {}),
    ("mistral", "qdora", {"lora_dropout": 0.05}, {"gradient_checkpointing": True, "optim": "lion_32bit"},
     {"bnb_4bit_quant_type": "fp4"}),
]


def _request(family: str, method: str, lora: dict[str, Any], training: dict[str, Any],
             quant: dict[str, Any]) -> PlanRequest:
    return PlanRequest(
        model={"config": copy.deepcopy(TINY_CONFIGS[family])}, method=method, lora={"r": 4, **lora},
        training={"seq_len": 48, "micro_batch_size": 2, **training}, quantization=quant,
    )


@pytest.mark.parametrize(("family", "method", "lora", "training", "quant"), CASES)
def test_fake_step_equals_real_cpu_step(family: str, method: str, lora: dict[str, Any], training: dict[str, Any],
                                        quant: dict[str, Any]) -> None:
    req = _request(family, method, lora, training, quant)
    fake, real = run_trace(req, fake=True), run_trace(req, fake=False)
    assert fake.peak_bytes == real.peak_bytes
    assert fake.peak_rounded_bytes == real.peak_rounded_bytes
    assert fake.phases == real.phases
    assert fake.static == real.static
    assert fake.peak_phase == real.peak_phase
    # the same allocator figures (real CPU ops make a few more scalar storages: the event counts differ)
    assert {k: v for k, v in fake.allocator.items() if k != "events"} == \
        {k: v for k, v in real.allocator.items() if k != "events"}


@pytest.mark.parametrize(("family", "method", "lora", "training", "quant"), CASES)
def test_trace_static_bytes_equal_core(family: str, method: str, lora: dict[str, Any], training: dict[str, Any],
                                       quant: dict[str, Any]) -> None:
    req = _request(family, method, lora, training, quant)
    traced = run_trace(req, fake=True)
    inv = build_inventory(parse_config(copy.deepcopy(TINY_CONFIGS[family])))
    plan = plan_adapters(inv, req.lora, method=method)
    sm = static_memory(inv, plan, req, dtypes_for(req))
    assert traced.trainable_params == plan.trainable_params
    assert traced.static["weights"] == sm.weights.total
    assert traced.static["quantization_constants"] == sm.constants.total
    assert traced.static["adapter_weights"] == sm.adapters.total
    assert traced.static["optimizer_states"] == sm.optimizer.total


@pytest.mark.parametrize(("family", "method", "lora", "training", "quant"), [CASES[1], CASES[6]])
def test_recorded_stream_is_the_counted_step(family: str, method: str, lora: dict[str, Any],
                                             training: dict[str, Any], quant: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded allocation stream holds every counted storage: its running sum of 512-byte-rounded
    sizes after the peak reset peaks at the counter's rounded peak plus the two cuBLAS workspaces the
    stream adds (paged optimizer states, CASES[6], are left out of both). The replay allocates at least
    that (blocks the allocator does not split carry their remainder) and reserves at least what it
    allocates; nvidia-smi adds the memory outside the allocator."""
    req = _request(family, method, lora, training, quant)
    seen: list[LiveBytesCounter] = []
    original = _replay_stream

    def keep(counter: LiveBytesCounter, r: PlanRequest) -> dict[str, Any]:
        seen.append(counter)
        return original(counter, r)

    monkeypatch.setattr("app.trace.engine._replay_stream", keep)
    traced = run_trace(req, fake=True)
    stream = seen[0].stream
    index = stream.index_map()
    start = index[stream.reset_at]
    sizes: dict[int, int] = {}
    live = peak = 0
    for n, (ident, nbytes) in enumerate(stream.events()):
        if nbytes == FREE:
            live -= sizes.pop(ident, 0)
        else:
            sizes[ident] = max(-(-nbytes // 512) * 512, 512) if nbytes else 0
            live += sizes[ident]
        if n >= start:
            peak = max(peak, live)
    workspace = cublas_workspace_bytes(gpu(req.hardware.gpu).arch)
    assert peak == traced.peak_rounded_bytes + workspace
    alloc = traced.allocator
    assert peak <= alloc["max_allocated_bytes"] <= alloc["max_reserved_bytes"]
    assert alloc["nvidia_smi_bytes"] == alloc["max_reserved_bytes"] + outside_allocator_bytes(1)
    assert alloc["failed_requests"] == 0
