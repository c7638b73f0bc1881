"""A model's ``config.json`` → ``{"model": {"config": …}}`` (+ its bitsandbytes ``quantization_config``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.importers.bnb import from_bnb
from app.importers.common import ImportNote


def from_model_config(data: Mapping[str, Any], source: str = "config.json") -> tuple[dict[str, Any],
                                                                                      list[ImportNote]]:
    """A model's ``config.json`` → ``{"model": {"config": …}}``; a bitsandbytes ``quantization_config`` in it
    (a pre-quantized checkpoint) is imported too."""
    body: dict[str, Any] = {"model": {"config": dict(data)}}
    notes: list[ImportNote] = []
    qc = data.get("quantization_config")
    if isinstance(qc, Mapping):
        if qc.get("quant_method", "bitsandbytes") == "bitsandbytes":
            q_body, q_notes = from_bnb(qc, source)
            body.update(q_body)
            notes += [ImportNote(n.source, f"quantization_config.{n.key}", n.kind, n.message) for n in q_notes]
        else:
            notes.append(ImportNote(source, "quantization_config", "unsupported",
                                    f"{qc.get('quant_method')!r} quantization is not modelled (bitsandbytes only)"))
    return body, notes
