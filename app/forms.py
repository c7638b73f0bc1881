"""The planner page's form (flat query parameters, so a plan is a shareable URL) ↔ :class:`PlanRequest`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from app.core.request import PlanRequest

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B"
DEFAULT_TARGETS = "all-linear"  # the page's default; the API's is PEFT's per-architecture default
_BOOL = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}


def _targets(text: str) -> list[str] | str | None:
    text = text.strip()
    if not text:
        return None
    if text.lower() == "all-linear" or any(ch in text for ch in "*()[]\\|^$+?"):
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


def form_to_body(form: Mapping[str, str], config_text: str | None = None) -> dict[str, Any]:
    """A JSON body for /api/v1/estimate from the page's flat form fields (unknown fields are ignored)."""
    def pick(*keys: str) -> dict[str, Any]:
        return {k: form[k] for k in keys if form.get(k, "") != ""}

    def flags(*keys: str) -> dict[str, Any]:
        return {k: _BOOL.get(form[k].lower(), form[k]) for k in keys if form.get(k, "") != ""}

    lora: dict[str, Any] = pick("r", "lora_alpha", "lora_dropout", "bias")
    lora["target_modules"] = _targets(form.get("target_modules", DEFAULT_TARGETS))
    if form.get("modules_to_save", "").strip():
        lora["modules_to_save"] = [m.strip() for m in form["modules_to_save"].split(",") if m.strip()]
    body: dict[str, Any] = {
        "model": form.get("model") or DEFAULT_MODEL,
        "method": form.get("method") or "lora",
        "lora": lora,
        "quantization": {**pick("bnb_4bit_quant_type", "bnb_4bit_compute_dtype", "blocksize"),
                         **flags("bnb_4bit_use_double_quant", "prepare_kbit", "load_in_8bit")},
        "training": {**pick("precision", "optim", "micro_batch_size", "seq_len", "attn_implementation"),
                     **flags("gradient_checkpointing")},
        "hardware": pick("gpu", "num_gpus", "sharding"),
    }
    if config_text and config_text.strip():
        try:
            body["model"] = {"config": json.loads(config_text)}
        except json.JSONDecodeError as exc:
            body["model"] = {"config": f"invalid JSON: {exc.msg} at line {exc.lineno}"}
    return body


def parse_form(form: Mapping[str, str], config_text: str | None = None) -> tuple[PlanRequest | None, list[str]]:
    """The request, or None and readable errors naming each field."""
    body = form_to_body(form, config_text)
    try:
        return PlanRequest.model_validate(body), []
    except ValidationError as exc:
        return None, [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
