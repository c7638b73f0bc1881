"""Which card a calibration measured: the catalog id of the device it ran on, learned under that id.

A calibration teaches the estimates of the card it measured, not of the request's ``hardware.gpu`` (the page's
default is an A100 80GB; a run on an RTX 4090 must not move the A100's figures). Pure Python: reads the
environment block :func:`app.calibration.measure.environment` records (torch's ``get_device_properties``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.core.catalog import gpu_for_device

CPU = "cpu"


def measured_device(environment: Mapping[str, Any] | None) -> str | None:
    """``"cpu"`` for a CPU run; the catalog GPU id of a CUDA device (name + total memory,
    :func:`app.core.catalog.gpu_for_device`); else the device name as measured (never mapped to a default);
    None when the environment was not recorded (a job that failed before measuring)."""
    if not environment:
        return None
    name = environment.get("gpu_name")
    if not name:
        return CPU if str(environment.get("device", "")).startswith("cpu") else None
    total = environment.get("gpu_total_bytes")
    return (gpu_for_device(str(name), int(total)) if isinstance(total, int) else None) or str(name)
