"""Bytes bitsandbytes allocates for a quantized weight (bitsandbytes 0.50.2).

4-bit (``Params4bit`` / ``QuantState``, ``bitsandbytes/functional.py: quantize_4bit``):
- packed data: uint8 of shape ((n+1)//2, 1) → ``(n+1)//2`` bytes;
- per-block absmax, ``nb = ceil(n / blocksize)`` blocks: float32 ``4·nb`` bytes, or with double
  quantization (``compress_statistics``) uint8 ``nb`` bytes plus the nested state: float32 absmax of
  ``ceil(nb/256)`` blocks, its own 256-entry float32 code (1,024 bytes, copied per layer since 0.46)
  and a 0-dim float32 offset;
- the 16-entry float32 NF4/FP4 code table (64 bytes), one per layer.
8-bit (LLM.int8, ``Int8Params``): int8 ``CB`` (n bytes) + float32 row scales ``SCB`` (4·out bytes).
Sizes are tensor ``nbytes``; the CUDA allocator rounds each up to 512 B (``overhead`` covers that).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.units import ceil_div

NESTED_BLOCKSIZE = 256
CODE_4BIT_BYTES = 16 * 4
NESTED_CODE_BYTES = 256 * 4
OFFSET_BYTES = 4


@dataclass(frozen=True)
class QuantBytes:
    """Storage of one quantized weight: ``data`` (packed/int8 values) and ``constants`` (everything else)."""

    data: int
    constants: int

    @property
    def total(self) -> int:
        return self.data + self.constants


def nf4_bytes(numel: int, *, blocksize: int = 64, double_quant: bool = True) -> QuantBytes:
    """4-bit (NF4 or FP4: same storage) bytes of a weight with ``numel`` elements."""
    blocks = ceil_div(numel, blocksize)
    if double_quant:
        constants = blocks + 4 * ceil_div(blocks, NESTED_BLOCKSIZE) + NESTED_CODE_BYTES + OFFSET_BYTES
    else:
        constants = 4 * blocks
    return QuantBytes(data=(numel + 1) // 2, constants=constants + CODE_4BIT_BYTES)


def int8_bytes(out_features: int, in_features: int) -> QuantBytes:
    """LLM.int8 bytes of an (out, in) weight: int8 values + one float32 scale per output row."""
    return QuantBytes(data=out_features * in_features, constants=4 * out_features)


def constants_bits_per_param(*, blocksize: int = 64, double_quant: bool) -> float:
    """Asymptotic quantization-constant bits per parameter (the QLoRA paper's figure).

    Without double quantization: 32/blocksize (0.5 bit at 64). With it: 8/blocksize + 32/(blocksize·256)
    (≈0.127 bit at 64). Per-layer fixed tables (code, nested code, offset) are excluded here.
    """
    if double_quant:
        return 8 / blocksize + 32 / (blocksize * NESTED_BLOCKSIZE)
    return 32 / blocksize
