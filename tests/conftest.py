"""Shared fixtures: tiny configs of every supported family and real-model builders (meta device)."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

# Models built by the generic path go to a store of this test session, never the checkout's var/.
os.environ.setdefault("PEFT_PLANNER_GENERIC_CACHE_PATH",
                      os.path.join(tempfile.mkdtemp(prefix="peft-planner-generic-"), "generic.sqlite3"))
# Fitting a generic model's activations traces small variants of it (seconds to minutes): only the tests of that
# fit (tests/test_generic_peak.py) turn it on.
os.environ.setdefault("PEFT_PLANNER_GENERIC_PEAK_FIT", "false")
# Tests never reach the Hub: a Hub id outside the catalog reads huggingface_hub's (empty, private) cache only.
# tests/test_hub.py serves a stand-in Hub on 127.0.0.1 to the subprocesses it starts, with its own HF_* values.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = str(Path(tempfile.gettempdir()) / "peft-planner-tests-hf-home")
os.environ.pop("HF_TOKEN", None)

# One small config per supported family, shaped like the real ones (GQA, biases, MoE, fused projections).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(model_type="llama", vocab_size=320, hidden_size=64, intermediate_size=176,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "llama_bias": dict(model_type="llama", vocab_size=320, hidden_size=64, intermediate_size=176,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                       mlp_bias=True, tie_word_embeddings=True),
    "mistral": dict(model_type="mistral", vocab_size=300, hidden_size=64, intermediate_size=160,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=32),
    "mixtral": dict(model_type="mixtral", vocab_size=300, hidden_size=64, intermediate_size=96,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                    num_experts_per_tok=2),
    "qwen2": dict(model_type="qwen2", vocab_size=400, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", vocab_size=400, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24),
    "qwen3_moe": dict(model_type="qwen3_moe", vocab_size=400, hidden_size=64, intermediate_size=128,
                      moe_intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                      decoder_sparse_step=2, mlp_only_layers=[3]),
    "gemma": dict(model_type="gemma", vocab_size=256, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=16),
    "gemma2": dict(model_type="gemma2", vocab_size=256, hidden_size=64, intermediate_size=128,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "gemma3_text": dict(model_type="gemma3_text", vocab_size=256, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    "phi3": dict(model_type="phi3", vocab_size=320, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2),
    "gpt2": dict(model_type="gpt2", vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                 bos_token_id=0, eos_token_id=0),
}


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return copy.deepcopy(TINY_CONFIGS[request.param])
