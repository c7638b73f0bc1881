"""Summaries of catalog models for the API and the page (from the core's inventory)."""

from __future__ import annotations

from typing import Any

from app.core.adapters import adaptable_names
from app.core.architectures import PEFT_DEFAULT_TARGET_MODULES
from app.core.catalog import model_config, model_source
from app.core.errors import PlanError
from app.core.generic import model_inventory


def model_row(model_id: str) -> dict[str, Any]:
    """The catalog row of a model. An architecture outside the hand-written rules is built by the generic path
    on its first estimate (or ``GET /api/v1/models/{id}``); until then the row has its id, ``model_type``,
    source and ``total_params: null`` with the reason in ``inventory``."""
    try:
        inv = model_inventory(model_id)[1]
    except PlanError as exc:
        cfg = model_config(model_id)
        return {"id": model_id, "model_type": cfg.get("model_type"), "total_params": None,
                "source": model_source(model_id), "inventory": exc.message}
    a = inv.arch
    return {
        "id": model_id,
        "source": model_source(model_id),
        "model_type": a.model_type,
        "total_params": inv.total_params,
        "num_hidden_layers": a.num_hidden_layers,
        "hidden_size": a.hidden_size,
        "intermediate_size": a.intermediate_size,
        "num_attention_heads": a.num_attention_heads,
        "num_key_value_heads": a.num_key_value_heads,
        "head_dim": a.head_dim,
        "vocab_size": a.vocab_size,
        "num_experts": a.num_experts,
        "tie_word_embeddings": a.tie_word_embeddings,
    }


def model_detail(model_id: str) -> dict[str, Any]:
    inv = model_inventory(model_id)[1]
    return {
        **model_row(model_id),
        "config": model_config(model_id),
        "params_by_group": inv.params_by_group(),
        "adaptable_modules": adaptable_names(inv),
        "peft_default_target_modules": PEFT_DEFAULT_TARGET_MODULES.get(inv.arch.model_type),
        "linear_modules": sum(1 for m in inv.modules if m.kind in ("linear", "conv1d")),
    }
