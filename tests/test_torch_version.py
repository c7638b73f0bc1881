"""``torch_version: "2.0"``: torch ≤ 2.0's foreach AdamW step keeps two full-size intermediates per dtype group.

torch 2.0 ``_multi_tensor_adamw``: ``exp_avg_sq_sqrt = torch._foreach_sqrt(exp_avg_sqs)`` then ``denom =
torch._foreach_add(exp_avg_sq_sqrt, eps)``, both alive at ``_foreach_addcdiv_``; pytorch/pytorch#104898 (torch 2.1)
adds eps in place. The installed torch is 2.13, so the figures below are derived by hand from the model's shapes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core import PlanRequest, estimate

LLAMA_1B = "meta-llama/Llama-3.2-1B"
# Llama-3.2-1B config.json: 16 layers, hidden 2048; two RMSNorm weights per layer and the final norm
NORM_PARAMS = (2 * 16 + 1) * 2048


def _optimizer_phase(torch_version: str, optim: str = "adamw_torch") -> int:
    res = estimate(PlanRequest(model=LLAMA_1B, method="full", torch_version=torch_version,
                               training={"optim": optim}))
    return next(p.bytes for p in res.peak.phases if p.name == "optimizer")


def test_torch_2_0_adds_one_intermediate_of_the_largest_group() -> None:
    """HF Trainer's groups: with weight decay (every weight but norms and biases) and without. Full fine-tuning in
    bf16: the decay group is (all parameters − norm weights) × 2 bytes, tied embedding counted once."""
    total = estimate(PlanRequest(model=LLAMA_1B, method="full")).parameters.trainable
    assert total == 1_235_814_400  # transformers' count for Llama-3.2-1B (tests/test_catalog.py checks it live)
    assert _optimizer_phase("2.0") - _optimizer_phase("2.13") == 2 * (total - NORM_PARAMS)


def test_fused_adamw_has_no_intermediates_in_either_release() -> None:
    assert _optimizer_phase("2.0", "adamw_torch_fused") == _optimizer_phase("2.13", "adamw_torch_fused")


def test_versions_and_assumptions_name_it() -> None:
    res = estimate(PlanRequest(model=LLAMA_1B, torch_version="2.0"))
    assert res.versions["models_torch"].startswith("2.0")
    assert any(a.startswith("torch 2.0: the foreach AdamW step keeps two") for a in res.assumptions)
    assert estimate(PlanRequest(model=LLAMA_1B)).versions["models_torch"] == "2.13.0"


def test_unknown_release_is_a_422_field() -> None:
    with pytest.raises(ValidationError) as info:
        PlanRequest(model=LLAMA_1B, torch_version="1.13")
    assert info.value.errors()[0]["loc"] == ("torch_version",)


def test_trace_engine_refuses_2_0() -> None:
    from app.trace.engine import UnsupportedStep, run_trace

    with pytest.raises(UnsupportedStep, match=r"torch 2\.13"):
        run_trace(PlanRequest(model=LLAMA_1B, torch_version="2.0"))


def test_cli_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "estimate", "--model", LLAMA_1B, "--method", "full", "--torch-version", "2.0",
         "--json"], cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["versions"]["models_torch"].startswith("2.0")
