"""PEFT DoRA's identity matrix: the analytic peak against the real PEFT 0.21.2 step (trace engine).

``DoraLinearLayer.get_lora_weight`` (peft/tuners/lora/dora.py) builds ``torch.eye(in_features)`` in the
adapter dtype (fp32) and pushes it through lora_A under autocast (a bf16 K×K copy), in the forward and
again in the checkpointed recompute. The configs below give the MLP a wide down projection (K = 8192) and
a small vocabulary so that this transient, not the logits, sets the peak; the test checks it does.
"""

from __future__ import annotations

from typing import Any

import pytest

from app.core import PlanRequest, estimate
from app.core.catalog import gpu
from app.core.overhead import cublas_workspace_bytes
from app.trace.engine import run_trace

pytestmark = pytest.mark.slow

WIDE_MLP = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 1024,
            "intermediate_size": 8192, "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 8,
            "head_dim": 128, "vocab_size": 1024, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False}


@pytest.mark.parametrize(("method", "lora", "training"), [
    ("dora", {}, {}),  # peak in the checkpointed recompute of down_proj
    ("qdora", {"lora_dropout": 0.05}, {}),  # dropout: DoRA recomputes F.linear(x, W) and saves W
    ("qdora", {}, {"gradient_checkpointing": False}),  # peak in the forward
])
def test_dora_identity_transient_matches_trace(method: str, lora: dict[str, Any], training: dict[str, Any]) -> None:
    req = PlanRequest.model_validate({
        "model": {"config": WIDE_MLP}, "method": method,
        "lora": {"r": 16, "target_modules": "all-linear", **lora},
        "training": {"micro_batch_size": 1, "seq_len": 512, **training}})
    traced = run_trace(req)
    eye = traced.largest[0]
    assert (eye.op, eye.shape, eye.dtype) == ("eye", (8192, 8192), "float32")  # the transient sets the peak
    analytic = estimate(req).memory.peak - cublas_workspace_bytes(gpu(req.hardware.gpu).arch)
    assert analytic == pytest.approx(traced.peak_bytes, rel=0.02)
