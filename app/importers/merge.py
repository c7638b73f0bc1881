"""Merging several imported bodies in order: sections field by field, methods combined, overrides noted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.importers.common import SECTIONS, ImportNote


def combine_methods(first: str, second: str) -> tuple[str, bool]:
    """Two methods' union: DoRA from either side, quantization from either side (lora + qlora = qlora,
    dora + qlora = qdora). ``full`` against an adapter method cannot combine: the second wins, flagged True."""
    if first == second:
        return first, False
    if "full" in (first, second):
        return second, True
    dora = first in ("dora", "qdora") or second in ("dora", "qdora")
    quantized = first in ("qlora", "qdora") or second in ("qlora", "qdora")
    return {(False, False): "lora", (True, False): "dora", (False, True): "qlora", (True, True): "qdora"}[
        (dora, quantized)], False


def merge(bodies: Sequence[Mapping[str, Any]], sources: Sequence[str] | None = None) -> tuple[dict[str, Any],
                                                                                              list[ImportNote]]:
    """Merge bodies in order (e.g. adapter_config.json + a BitsAndBytesConfig + a plan with hardware).

    Sections (lora, quantization, training, hardware) merge field by field, later files winning; ``method``
    combines (see :func:`combine_methods`), so LoRA + bitsandbytes is qlora and DoRA + bitsandbytes qdora.
    A field two files set differently is reported as a note naming both files.
    """
    names = list(sources) if sources is not None else [f"#{i + 1}" for i in range(len(bodies))]
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    notes: list[ImportNote] = []
    for body, source in zip(bodies, names, strict=True):
        for key, value in body.items():
            if key == "method" and "method" in out:
                method, clash = combine_methods(out["method"], value)
                if clash:
                    notes.append(ImportNote(source, "method", "note", f"{value!r} replaces {out['method']!r} "
                                            f"from {origin['method']}"))
                out["method"] = method
                origin["method"] = source
            elif key in SECTIONS and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                for field, v in value.items():
                    path = f"{key}.{field}"
                    if field in out[key] and out[key][field] != v:
                        notes.append(ImportNote(source, path, "note", f"{v!r} replaces {out[key][field]!r} "
                                                f"from {origin.get(path, '?')}"))
                    out[key][field] = v
                    origin[path] = source
            else:
                if key in out and out[key] != value:
                    shown = "a config.json" if isinstance(value, Mapping) else repr(value)
                    notes.append(ImportNote(source, key, "note", f"{shown} replaces the value from {origin[key]}"))
                out[key] = dict(value) if key in SECTIONS and isinstance(value, Mapping) else value
                origin[key] = source
                if key in SECTIONS and isinstance(value, Mapping):
                    for field in value:
                        origin[f"{key}.{field}"] = source
    return out, notes
