"""Compact text for the planner's pages: durations, sizes in dense tables, dollars, FLOPs, token counts and GPU
names. Sizes use GiB / MiB (2^30 / 2^20 bytes, ``app.core.units``); 1 d = 24 h."""

from __future__ import annotations

from app.core.units import GiB, MiB


def format_hours(h: float) -> str:
    """'45 min', '3.2 h', '41 h', '3.5 d' (1 d = 24 h)."""
    if h < 1:
        return f"{max(h * 60, 0.1):.0f} min" if h * 60 >= 1 else f"{h * 3600:.0f} s"
    if h < 10:
        return f"{h:.1f} h"
    if h < 72:
        return f"{h:.0f} h"
    return f"{h / 24:.1f} d" if h < 240 else f"{h / 24:.0f} d"


def format_gib(n: int) -> str:
    """A compact size for dense tables: '61 GiB', '5.3 GiB', '412 MiB'."""
    if n >= 10 * GiB:
        return f"{n / GiB:.0f} GiB"
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB"


def format_usd(x: float | None) -> str:
    if x is None:
        return "no price"
    if x < 10:
        return f"${x:,.2f}"
    return f"${x:,.0f}"


def format_flops(x: float) -> str:
    """FLOPs with an SI prefix: '61.1 GFLOP'."""
    for unit, f in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if x >= f:
            return f"{x / f:.1f} {unit}"
    return f"{x:.0f} FLOP"


def format_tokens(n: int) -> str:
    for unit, f in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= f:
            v = n / f
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.3g}{unit}"
    return str(n)


def short_gpu(name: str) -> str:
    return name.replace("NVIDIA GeForce ", "").replace("NVIDIA ", "")

