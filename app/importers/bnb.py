"""transformers ``BitsAndBytesConfig`` (``to_dict()`` or the diff-only ``to_json_string()``) → ``quantization``.

Field names and defaults: transformers 5.24 ``src/transformers/utils/quantization_config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.importers.common import ConfigImportError, ImportNote, is_unset

_DTYPES = {
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}
BNB_IRRELEVANT = frozenset({"_load_in_4bit", "_load_in_8bit", "llm_int8_threshold"})
BNB_KEYS = frozenset({
    "quant_method", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
    "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage", "llm_int8_skip_modules",
    "llm_int8_enable_fp32_cpu_offload", "llm_int8_has_fp16_weight",
}) | BNB_IRRELEVANT
# transformers.BitsAndBytesConfig's defaults, for keys a diff-only to_json_string() leaves out.
TRANSFORMERS_BNB_DEFAULTS = {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
                             "bnb_4bit_compute_dtype": "float32"}


def compute_dtype(value: Any) -> str | None:
    """'bfloat16', 'torch.bfloat16', 'bf16', torch.bfloat16 → 'bfloat16' (None when not a known dtype)."""
    text = str(value).strip().lower()
    return _DTYPES.get(text.removeprefix("torch."))


def bnb_keys(data: Mapping[str, Any], source: str, prefix: str = "") -> tuple[dict[str, Any], dict[str, bool],
                                                                               list[ImportNote]]:
    """Map bitsandbytes keys: (quantization fields, {'load_in_4bit'/'load_in_8bit': bool} given, notes)."""
    quant: dict[str, Any] = {}
    flags: dict[str, bool] = {}
    notes: list[ImportNote] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key == "quant_method":
            if value not in (None, "bitsandbytes"):
                raise ConfigImportError(source, path, f"{value!r} is not supported; the planner models "
                                        "bitsandbytes quantization only")
        elif key in ("load_in_4bit", "load_in_8bit"):
            if value is not None:
                flags[key] = bool(value)
        elif key in ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant"):
            if value is not None:
                quant[key] = value
        elif key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
            # quant_storage also takes uint8 (transformers' default); compute dtypes are the float ones
            storage = key == "bnb_4bit_quant_storage"
            uint8 = storage and str(value).strip().lower().removeprefix("torch.") == "uint8"
            dtype = "uint8" if uint8 else compute_dtype(value) if value is not None else None
            if value is not None and dtype is None:  # (None: not set, the planner's default)
                allowed = "uint8, bfloat16, float16, float32" if storage else "bfloat16, float16, float32"
                notes.append(ImportNote(source, path, "unsupported", f"{value!r} is not one of {allowed}; ignored"))
            elif dtype is not None:
                quant[key] = dtype
        elif key == "llm_int8_skip_modules":
            if not is_unset(value):
                notes.append(ImportNote(
                    source, path, "unsupported",
                    f"modules kept unquantized ({value!r}) are not modelled: the planner quantizes every linear "
                    "layer except lm_head (transformers' default); those modules will weigh more than estimated",
                ))
        elif key == "llm_int8_enable_fp32_cpu_offload":
            if value:
                notes.append(ImportNote(source, path, "unsupported",
                                        "CPU offload of modules is not modelled: everything is counted on the GPU"))
        elif key == "llm_int8_has_fp16_weight":
            if value:
                notes.append(ImportNote(source, path, "unsupported",
                                        "int8 layers keeping fp16 weights are not modelled (weights counted as int8)"))
        elif key in BNB_IRRELEVANT:
            continue
        else:
            notes.append(ImportNote(source, path, "unknown", "not a transformers BitsAndBytesConfig field; ignored"))
    return quant, flags, notes


def from_bnb(data: Mapping[str, Any], source: str = "bitsandbytes config") -> tuple[dict[str, Any], list[ImportNote]]:
    """A transformers ``BitsAndBytesConfig`` dict → body with ``method: qlora`` and ``quantization``.

    Keys a diff-only ``to_json_string()`` omits take transformers' defaults (fp4, no double quant, float32
    compute), as ``BitsAndBytesConfig(**data)`` would. 8-bit: ``quantization.load_in_8bit``; the 4-bit
    fields do not apply and are not copied.
    """
    quant, flags, notes = bnb_keys(data, source)
    in4 = flags.get("load_in_4bit", bool(data.get("_load_in_4bit")))
    in8 = flags.get("load_in_8bit", bool(data.get("_load_in_8bit")))
    if in4 and in8:
        raise ConfigImportError(source, "load_in_4bit", "load_in_4bit and load_in_8bit are both true; pick one")
    if not (in4 or in8):
        notes.append(ImportNote(source, "load_in_4bit", "unsupported",
                                "neither load_in_4bit nor load_in_8bit is true: no quantization; method not set"))
        return {}, notes
    if in8:
        return {"method": "qlora", "quantization": {"load_in_8bit": True}}, notes
    for key, default in TRANSFORMERS_BNB_DEFAULTS.items():
        if key not in quant and key not in data:
            quant[key] = default
            notes.append(ImportNote(source, key, "note", f"absent: transformers' default {default!r}"))
    quant["load_in_8bit"] = False
    return {"method": "qlora", "quantization": quant}, notes
