"""The shipped catalogs: model ``config.json`` files keyed by hub id, and GPUs.

Model files live in ``app/core/data/models/<org>--<name>.json`` (the hub's config.json verbatim);
GPUs in ``app/core/data/gpus.json`` (VRAM in bytes as ``torch.cuda.get_device_properties().total_memory``
reports it where measured, dense bf16 TFLOP/s, bandwidth in bytes/s, indicative price with its date).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from app.core.errors import PlanError

DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True)
class Gpu:
    id: str
    name: str
    vendor: str
    vram_bytes: int
    vram_is_measured: bool
    bf16_tflops: float
    fp32_tflops: float
    memory_bandwidth_bytes_per_s: int
    arch: str
    compute_capability: str
    form: str
    price_usd_per_hour: float | None
    price_date: str
    source: str
    tdp_watts: int | None = None  # board power (NVIDIA specifications), for the power cost of an owned card
    purchase_price_usd: float | None = None  # consumer/workstation cards: what buying one costs
    purchase_price_date: str | None = None  # when the catalog's purchase price was entered (YYYY-MM)
    purchase_price_source: str | None = None


@cache
def model_configs() -> dict[str, dict[str, Any]]:
    """Hub id → config.json of every catalog model, sorted by id (read once)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((DATA_DIR / "models").glob("*.json")):
        out[path.stem.replace("--", "/", 1)] = json.loads(path.read_text())
    return out


def model_config(model_id: str) -> dict[str, Any]:
    configs = model_configs()
    if model_id not in configs:
        raise PlanError(
            ("model",),
            f"unknown model {model_id!r}; use a catalog id (GET /api/v1/models lists {len(configs)}) "
            "or pass {'config': {...config.json...}}",
        )
    return configs[model_id]


@cache
def gpus() -> dict[str, Gpu]:
    """GPU id → :class:`Gpu`, in catalog order (VRAM ascending)."""
    rows = json.loads((DATA_DIR / "gpus.json").read_text())
    return {row["id"]: Gpu(**row) for row in rows}


def gpu(gpu_id: str) -> Gpu:
    table = gpus()
    if gpu_id not in table:
        raise PlanError(("hardware", "gpu"), f"unknown gpu {gpu_id!r}; one of: {', '.join(table)}")
    return table[gpu_id]
