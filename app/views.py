"""Display helpers for the Jinja pages: byte formatting, stacked-bar geometry (no arithmetic of the plan)."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.result import EstimateResult
from app.core.units import format_bytes

# (memory field, label, colour): the order of the stacked bar and the legend.
SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("weights", "Weights", "#4c78a8"),
    ("quantization_constants", "Quant. constants", "#9ecae9"),
    ("adapter_weights", "Adapters", "#f58518"),
    ("gradients", "Gradients", "#e45756"),
    ("optimizer_states", "Optimizer states", "#72b7b2"),
    ("activations", "Activations", "#54a24b"),
    ("overhead", "CUDA context + allocator", "#bab0ac"),
)


@dataclass(frozen=True)
class Segment:
    key: str
    label: str
    colour: str
    nbytes: int
    x: float
    width: float

    @property
    def text(self) -> str:
        return format_bytes(self.nbytes)


def bar_segments(result: EstimateResult, scale_bytes: int, width: float = 100.0) -> list[Segment]:
    """Segments of the stacked bar, in percent of ``scale_bytes`` (a common scale for side-by-side bars)."""
    mem = result.memory.model_dump()
    out: list[Segment] = []
    x = 0.0
    for key, label, colour in SEGMENTS:
        nbytes = mem[key]
        w = width * nbytes / scale_bytes if scale_bytes else 0.0
        out.append(Segment(key, label, colour, nbytes, x, w))
        x += w
    return out
