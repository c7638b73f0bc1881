"""The planner page's form (flat query parameters, so a plan is a shareable URL) ↔ :class:`PlanRequest`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from app.core.request import PlanRequest, parse_target_modules
from app.core.throughput import DEFAULT_TOKENS, MIN_MFU

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B"
DEFAULT_TARGETS = "all-linear"  # the page's default; the API's is PEFT's per-architecture default
_BOOL = {"on": True, "true": True, "1": True, "yes": True, "off": False, "false": False, "0": False, "no": False}


_INT_FIELDS = frozenset({"r", "micro_batch_size", "gradient_accumulation_steps", "seq_len", "blocksize", "num_gpus",
                         "reduce_bucket_size", "stage3_prefetch_bucket_size", "num_output_chunks"})
_FLOAT_FIELDS = frozenset({"lora_alpha", "lora_dropout", "momentum"})


def _typed(key: str, text: str) -> Any:
    """A form field as the JSON type the API wants ("8" → 8, "0.05" → 0.05): the API is strict, so the body
    (also shown as the page's curl snippet) must carry numbers. Text that is no number stays text, and the
    validation error names the field."""
    try:
        if key in _INT_FIELDS:
            return int(text.strip())
        if key in _FLOAT_FIELDS:
            return float(text.strip())
    except ValueError:
        return text
    return text


def _items(text: str) -> list[str]:
    """A comma-separated form field as its non-empty, stripped items."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _flag(text: str) -> Any:
    """'on'/'off' (true/false, 1/0, yes/no) as a bool; other text stays text, so the validation error names it."""
    return _BOOL.get(text.strip().lower(), text)


def form_to_body(form: Mapping[str, str], config_text: str | None = None) -> dict[str, Any]:
    """A JSON body for /api/v1/estimate from the page's flat form fields (unknown fields are ignored)."""
    def pick(*keys: str) -> dict[str, Any]:
        return {k: _typed(k, form[k]) for k in keys if form.get(k, "") != ""}

    def flags(*keys: str) -> dict[str, Any]:
        return {k: _flag(form[k]) for k in keys if form.get(k, "") != ""}

    def lists(*keys: str, item: Any = str) -> dict[str, Any]:
        """Comma-separated fields as lists; an empty field is left out (the API's null)."""
        return {k: [item(t) for t in _items(form[k])] for k in keys if _items(form.get(k, ""))}

    def whole(text: str) -> Any:
        """A list item that should be a whole number; other text stays text for the validation error."""
        return int(text) if text.lstrip("-").isdigit() else text

    lora: dict[str, Any] = {**pick("r", "lora_alpha", "lora_dropout", "bias"), **flags("use_rslora"),
                            **lists("modules_to_save", "target_parameters"),
                            **lists("layers_to_transform", item=whole), **lists("enable_lora", item=_flag)}
    lora["target_modules"] = parse_target_modules(form.get("target_modules", DEFAULT_TARGETS))
    training: dict[str, Any] = {
        **pick("precision", "optim", "momentum", "micro_batch_size", "gradient_accumulation_steps", "seq_len",
               "attn_implementation", "framework", "num_output_chunks"),
        **flags("gradient_checkpointing", "use_liger_kernel", "activation_offloading", "packing", "padding_free",
                "torch_compile", "optimizer_in_bwd"),
        **lists("custom_sharded_layers"),
    }
    if form.get("use_reentrant", "") != "":  # empty: what transformers passes by default
        training["gradient_checkpointing_kwargs"] = {"use_reentrant": _flag(form["use_reentrant"])}
    body: dict[str, Any] = {
        "model": form.get("model") or DEFAULT_MODEL,
        **pick("transformers_version", "torch_version"),
        "method": form.get("method") or "lora",
        "lora": lora,
        "quantization": {**pick("bnb_4bit_quant_type", "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage",
                                "blocksize"),
                         **flags("bnb_4bit_use_double_quant", "prepare_kbit", "load_in_8bit")},
        "training": training,
        "hardware": pick("gpu", "num_gpus", "sharding", "pytorch_cuda_alloc_conf", "offload_optimizer",
                         "offload_param", "reduce_bucket_size", "stage3_prefetch_bucket_size"),
    }
    if config_text and config_text.strip():
        try:
            body["model"] = {"config": json.loads(config_text)}
        except json.JSONDecodeError as exc:
            body["model"] = {"config": f"invalid JSON: {exc.msg} at line {exc.lineno}"}
    return body


_NESTED = {("training", "gradient_checkpointing_kwargs"): {"use_reentrant": "use_reentrant"}}
"""Request objects inside a section whose fields are flat page fields (section, field) → {key: page field}."""


def _text(value: Any) -> str:
    """A request value as the page's form text: booleans 'on'/'off', lists comma-separated, null empty."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(_text(v) for v in value)
    return "" if value is None else str(value)


def body_to_form(body: Mapping[str, Any]) -> tuple[dict[str, str], str | None]:
    """The page's flat form for a request body, the inverse of :func:`form_to_body` (an imported config shown on
    the page), and the config.json text when the model is given by its config (not part of a URL). A section field
    the body leaves out is left out, except ``target_modules``: absent, it is PEFT's default (the empty field)."""
    form: dict[str, str] = {}
    config_text = None
    model = body.get("model")
    if isinstance(model, Mapping):
        config_text = json.dumps(model.get("config"), indent=2)
    elif model is not None:
        form["model"] = _text(model)
    for key in ("method", "transformers_version", "torch_version"):
        if key in body:
            form[key] = _text(body[key])
    for section in ("lora", "quantization", "training", "hardware"):
        fields = body.get(section)
        for name, value in (fields.items() if isinstance(fields, Mapping) else ()):
            nested = _NESTED.get((section, name))
            if nested is not None and isinstance(value, Mapping):
                form.update({nested[k]: _text(v) for k, v in value.items() if k in nested})
            else:
                form[name] = _text(value)
    form.setdefault("target_modules", "")
    return form, config_text


def parse_form(form: Mapping[str, str], config_text: str | None = None) -> tuple[PlanRequest | None, list[str]]:
    """The request, or None and readable errors naming each field."""
    body = form_to_body(form, config_text)
    try:
        return PlanRequest.model_validate(body), []
    except ValidationError as exc:
        return None, [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]


# ------------------------------------------------------------------------------ time and cost inputs

TOKEN_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
METHODS = ("full", "lora", "qlora", "dora", "qdora")


@dataclass(frozen=True)
class CostOptions:
    """The page's time/cost inputs (query parameters ``tokens``, ``mfu``, ``price`` (the form's GPU),
    ``price_<gpu id>`` (any catalog GPU), ``qlora_slowdown``, ``dora_slowdown``, and for buy vs rent
    ``usd_per_kwh``, ``buy_price`` (the form's GPU) and ``buy_<gpu id>``); empty or absent fields take the
    throughput module's defaults (MFU: per GPU class, or measured by this server's calibrations)."""

    tokens: int = DEFAULT_TOKENS
    mfu: float | None = None  # one MFU for every GPU; None: CLASS_MFU or measured_mfu per GPU
    price: float | None = None  # USD per GPU-hour for the form's GPU, instead of the catalog's
    qlora_slowdown: float | None = None
    dora_slowdown: float | None = None
    prices: dict[str, float] = field(default_factory=dict)  # price_<gpu id>=USD per GPU-hour, any catalog GPU
    usd_per_kwh: float | None = None  # electricity price for owned cards; None: power not counted
    buy_price: float | None = None  # USD per card for the form's GPU, instead of the catalog's purchase price
    purchase_prices: dict[str, float] = field(default_factory=dict)  # buy_<gpu id>=USD per card
    measured_mfu: dict[str, float] = field(default_factory=dict)  # this server's calibrations (not a form field)

    @property
    def slowdown(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.qlora_slowdown is not None:
            out["qlora"] = self.qlora_slowdown
        if self.dora_slowdown is not None:
            out["dora"] = self.dora_slowdown
        return out


def parse_tokens(text: str) -> int:
    """'100M', '1.5B', '2e8', '100,000,000' or '250k' → a positive token count."""
    s = text.strip().lower().replace(",", "").replace("_", "").replace(" ", "")
    factor = 1
    if s and s[-1] in TOKEN_SUFFIXES:
        factor, s = TOKEN_SUFFIXES[s[-1]], s[:-1]
    try:
        value = float(s) * factor
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a token count; use e.g. 100M, 1.5B or 200000000") from None
    if not 1 <= value <= 1e16 or value != value:
        raise ValueError("must be between 1 and 10^16 tokens")
    return round(value)


def parse_cost_options(form: Mapping[str, str]) -> tuple[CostOptions, list[str]]:
    """Time/cost inputs from the page's flat form, and readable errors naming each field."""
    errors: list[str] = []
    values: dict[str, Any] = {}

    def number(key: str, low: float, high: float) -> None:
        text = form.get(key, "").strip()
        if not text:
            return
        try:
            v = float(text)
        except ValueError:
            errors.append(f"{key}: not a number: {text!r}")
            return
        if not low <= v <= high:
            errors.append(f"{key}: must be at least {low:g} and at most {high:g}")
            return
        values[key] = v

    if form.get("tokens", "").strip():
        try:
            values["tokens"] = parse_tokens(form["tokens"])
        except ValueError as exc:
            errors.append(f"tokens: {exc}")
    number("mfu", MIN_MFU, 1.0)
    number("price", 0.0, 10_000.0)
    number("qlora_slowdown", 0.1, 100.0)
    number("dora_slowdown", 0.1, 100.0)
    number("usd_per_kwh", 0.0, 100.0)
    number("buy_price", 0.0, 1_000_000.0)
    prices: dict[str, float] = {}
    purchase: dict[str, float] = {}
    for key in form:
        for prefix, out, high in (("price_", prices, 10_000.0), ("buy_", purchase, 1_000_000.0)):
            if key.startswith(prefix) and key != "buy_price" and form[key].strip():
                number(key, 0.0, high)
                if key in values:
                    out[key.removeprefix(prefix)] = values.pop(key)
    return CostOptions(**values, prices=prices, purchase_prices=purchase), errors


def selected_method(form: Mapping[str, str]) -> str:
    """The method whose details the page shows (its tab); 'lora' when absent or unknown."""
    m = form.get("method", "")
    return m if m in METHODS else "lora"
