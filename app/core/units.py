"""Byte sizes of dtypes and human formatting of byte counts (binary units: KiB, MiB, GiB)."""

from __future__ import annotations

DTYPE_BYTES: dict[str, int] = {
    "fp32": 4,
    "bf16": 2,
    "fp16": 2,
    "int8": 1,
    "uint8": 1,
}

KiB = 1024
MiB = 1024**2
GiB = 1024**3


def format_bytes(n: int) -> str:
    """Render a byte count with a binary unit (GiB/MiB/KiB); never 'GB' for 2**30."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n >= GiB:
        return f"{sign}{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{sign}{n / MiB:.1f} MiB"
    if n >= KiB:
        return f"{sign}{n / KiB:.1f} KiB"
    return f"{sign}{n} B"


def parse_bytes(text: str) -> int:
    """Parse '24GiB', '80 GiB', '512MiB', '24GB' (decimal), or a plain integer number of bytes."""
    s = text.strip().replace(" ", "")
    units = {
        "TiB": 1024**4, "GiB": GiB, "MiB": MiB, "KiB": KiB,
        "TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3, "B": 1,
    }
    for suffix, factor in units.items():
        if s.endswith(suffix):
            number = s[: -len(suffix)]
            try:
                return int(float(number) * factor)
            except (ValueError, OverflowError):
                break
    try:
        return int(s)
    except (ValueError, OverflowError):
        raise ValueError(f"cannot read {text!r} as a size; use e.g. 24GiB, 512MiB or a number of bytes") from None


def ceil_div(a: int, b: int) -> int:
    """Integer ceil(a / b) for non-negative a and positive b."""
    return -(-a // b)
