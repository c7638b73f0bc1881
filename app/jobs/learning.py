"""What the estimates learn from stored calibrations, whichever store holds them.

- SQLite (one machine): the per-card and per-model summaries that :class:`app.calibration.store.JobStore`
  rewrites when a job finishes (constant time per estimate, cached until the file changes).
- PostgreSQL (a fleet): every node's finished jobs, the newest :data:`app.jobs.LEARN_FROM_JOBS` of them,
  summarised per request with the same rules (:func:`app.core.calibrated.summarise`): a job teaches the card it
  measured (``measured_device`` from its environment, else the worker's detected catalog GPU), never the
  request's ``hardware.gpu``; CPU jobs teach nothing.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from app.calibration import store as sqlite_store
from app.calibration.devices import measured_device
from app.core.calibrated import CalibrationSample, CalibrationSummary, summarise
from app.core.catalog import gpu
from app.core.errors import PlanError
from app.core.overhead import cublas_workspace_bytes
from app.core.request import PlanRequest
from app.core.throughput import achieved_mfu
from app.jobs import recent_jobs
from app.settings import Settings

PG_VERSION_S = 5
"""Cached answers that read a PostgreSQL store are renewed at least this often (seconds): another node's
finished job reaches every replica's page within it."""


def data_version(settings: Settings) -> tuple[int, ...]:
    """A key part that changes when the stored calibrations may have changed (see the module docstring)."""
    if settings.database_url:
        return (int(time.time() // PG_VERSION_S),)
    return sqlite_store.data_version(settings.database_path)


def calibration_summary(settings: Settings, gpu_id: str) -> CalibrationSummary | None:
    if not settings.database_url:
        return sqlite_store.calibration_summary(settings.database_path, gpu_id)
    return summarise(gpu_id, [s for job in _gpu_jobs(settings, gpu_id) if (s := _sample(job, gpu_id)) is not None])


def measured_slowdowns(settings: Settings, model: str) -> dict[str, float]:
    if not settings.database_url:
        return sqlite_store.measured_slowdowns(settings.database_path, model)
    ratios = [r for job in _done_on_cuda(settings) if job["request"].get("model") == model
              and isinstance(r := (job.get("result") or {}).get("otf_dequant_slowdown"), int | float) and r > 0]
    return {"qlora": statistics.median(ratios)} if ratios else {}


def measured_mfus(settings: Settings) -> dict[str, float]:
    if not settings.database_url:
        return sqlite_store.measured_mfus(settings.database_path)
    by_gpu: dict[str, list[float]] = {}
    for job in _done_on_cuda(settings):
        card = _card(job)
        try:
            spec = gpu(card) if card is not None else None
            if spec is None:
                continue
            req, result = PlanRequest.model_validate(job["request"]), job["result"]
            twin = result.get("sixteen_bit_base") or {}
            if twin.get("tokens_per_s"):  # a 4-bit job counts by its 16-bit twin: the slowdown is not counted twice
                req, tps = req.model_copy(update={"method": twin["method"]}), float(twin["tokens_per_s"])
            else:
                tps = float(result["tokens_per_s"])
            by_gpu.setdefault(spec.id, []).append(achieved_mfu(req, tps, spec))
        except (KeyError, TypeError, ValueError):  # PlanError and pydantic's ValidationError are ValueErrors
            continue
    return {g: statistics.median(v) for g, v in by_gpu.items()}


def _done_on_cuda(settings: Settings) -> list[dict[str, Any]]:
    return [job for job in recent_jobs(settings) if job["status"] == "done"
            and str(job["device"]).startswith("cuda") and job.get("result")]


def _card(job: dict[str, Any]) -> str | None:
    result = job.get("result") or {}
    return result.get("measured_device") or measured_device(result.get("environment")) or job.get("worker_gpu")


def _gpu_jobs(settings: Settings, gpu_id: str) -> list[dict[str, Any]]:
    return [job for job in _done_on_cuda(settings) if _card(job) == gpu_id]


def _sample(job: dict[str, Any], gpu_id: str) -> CalibrationSample | None:
    """A fitting sample; the stored estimate's peak is moved from the requested card's cuBLAS workspaces to the
    measured one's, as the SQLite summaries do."""
    result, est = job["result"], job.get("estimate") or {}
    try:
        requested = (job["request"].get("hardware") or {}).get("gpu", gpu_id)
        predicted = (int(est["memory"]["peak"]) - cublas_workspace_bytes(gpu(requested).arch)
                     + cublas_workspace_bytes(gpu(gpu_id).arch))
        return CalibrationSample(job["id"], predicted, int(result["peak_allocated_bytes"]),
                                 int(result["peak_reserved_bytes"]), int(result["device_used_bytes"]))
    except (KeyError, TypeError, ValueError, PlanError):
        return None
