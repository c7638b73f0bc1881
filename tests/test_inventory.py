"""The inventory equals the real transformers module tree: names, shapes, totals."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.architectures import SUPPORTED_MODEL_TYPES, parse_config
from app.core.inventory import build_inventory

from .reference.hf import meta_model

pytestmark = pytest.mark.slow


def test_tensors_and_modules_match_transformers(tiny_config: dict[str, Any]) -> None:
    model = meta_model(tiny_config)
    inv = build_inventory(parse_config(tiny_config))

    real = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    ours = {t.name: t.shape for t in inv.tensors}
    assert ours == real
    assert {m.name for m in inv.modules} == {n for n, _ in model.named_modules() if n}
    assert inv.total_params == model.num_parameters()

    for m in inv.modules:
        real_mod = model.get_submodule(m.name)
        kind = type(real_mod).__name__
        if m.kind == "linear":
            assert kind == "Linear", m.name
            assert (real_mod.in_features, real_mod.out_features) == (m.in_features, m.out_features)
        elif m.kind == "conv1d":
            assert kind == "Conv1D", m.name
            assert (real_mod.nx, real_mod.nf) == (m.in_features, m.out_features)
        elif m.kind == "embedding":
            assert "Embedding" in kind, m.name
        else:
            assert kind not in ("Linear", "Conv1D"), m.name


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_family_defaults_match_transformers(model_type: str) -> None:
    """A config that only names its model_type gets transformers' own defaults (full-size model)."""
    cfg = {"model_type": model_type}
    model = meta_model(cfg)
    assert build_inventory(parse_config(cfg)).total_params == model.num_parameters()


def test_gpt2_generic_config_names() -> None:
    """GPT2Config.attribute_map: hidden_size/num_hidden_layers/... set n_embd/n_layer/... as transformers does."""
    cfg = {"model_type": "gpt2", "hidden_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4,
           "max_position_embeddings": 256, "vocab_size": 500}
    assert build_inventory(parse_config(cfg)).total_params == meta_model(cfg).num_parameters()
