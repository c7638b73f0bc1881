"""The catalog GPU id of a CUDA device, from the name and total memory torch reports for it.

``torch.cuda.get_device_properties(i)`` gives e.g. ``name="NVIDIA A100-SXM4-80GB"``,
``total_memory=85100068864``; the catalog (app/core/data/gpus.json) names it ``nvidia-a100-80gb``. A catalog
GPU matches when every word of its model name (its name without the vendor/brand words, the memory size and
the parenthesised form factor) appears in the device's name; among those, the most words matched wins, then
the VRAM nearest to the device's (within :data:`VRAM_TOLERANCE`); "(PCIe)" entries need "PCIe" in the name.
"""

from __future__ import annotations

import re

from app.core.catalog import gpus

VRAM_TOLERANCE = 0.10  # drivers reserve different amounts (catalog sources: ±1% measured; ±10% is safe)
_BRAND = {"NVIDIA", "GEFORCE", "TESLA", "AMD", "INSTINCT", "HBM3", "HGX", "GRACE", "HOPPER"}
_SIZE = re.compile(r"^\d+GB$")


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[\s\-_/]+", name.upper()) if w]


def _model_words(catalog_name: str) -> list[str]:
    plain = re.sub(r"\(.*?\)", " ", catalog_name)
    return [w for w in _words(plain) if w not in _BRAND and not _SIZE.match(w)]


def catalog_gpu_id(device_name: str, total_bytes: int) -> str | None:
    """The catalog id of the device, or None when no catalog GPU matches (the worker then needs ``--gpu``)."""
    device = set(_words(device_name))
    best: tuple[int, float, str] | None = None
    for gpu in gpus().values():
        words = _model_words(gpu.name)
        if not words or not all(w in device for w in words):
            continue
        if "(PCIE)" in gpu.name.upper() and "PCIE" not in device:
            continue
        gap = abs(gpu.vram_bytes - total_bytes) / gpu.vram_bytes
        if gap > VRAM_TOLERANCE:
            continue
        key = (-len(words), gap, gpu.id)
        if best is None or key < best:
            best = key
    return best[2] if best else None
