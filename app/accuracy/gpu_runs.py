"""The project's own GPU runs (``data/gpu_runs_h200.json``, written by ``bench/calibrate_grid.py``) against today's
planner: every stored request is estimated again and compared with what the card measured, as a finished
calibration job is (:func:`app.calibration.service.comparison`: peak = ``torch.cuda.max_memory_allocated``, total =
device memory in use). The runs' settings are known exactly (no published table to interpret), so they are the
sharpest of the accuracy sources."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from app.accuracy.calibrations import CalibrationRow, calibration_row
from app.accuracy.table import Summary, summary_of
from app.core import PlanRequest, estimate

RUNS_FILE = Path(__file__).resolve().parent / "data" / "gpu_runs_h200.json"


@cache
def gpu_runs_file() -> dict[str, Any]:
    """The stored runs: ``about``, ``environment`` (card, driver, CUDA, library versions) and ``runs``."""
    return json.loads(RUNS_FILE.read_text())


@cache
def gpu_run_rows() -> tuple[CalibrationRow, ...]:
    """Each stored run beside today's estimate of its request (computed once per process)."""
    data = gpu_runs_file()
    out = []
    for run in data["runs"]:
        req = PlanRequest.model_validate(run["request"])
        job = {"id": run["id"], "request": run["request"], "result": run["result"],
               "estimate": estimate(req).model_dump(mode="json"), "measured_device": run["result"]["measured_device"]}
        row = calibration_row(job)
        if row is not None:
            out.append(row)
    return tuple(out)


def gpu_runs_summary(rows: tuple[CalibrationRow, ...]) -> Summary:
    """The published table's figures on the runs' peaks (``max_memory_allocated`` vs today's estimated peak)."""
    return summary_of("the project's H200 runs",
                      [r.peak_error_percent / 100 for r in rows if r.peak_error_percent is not None])
