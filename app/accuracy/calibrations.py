"""GET /api/v1/accuracy's report: the published table and this server's finished GPU calibrations as accuracy
evidence: each done job measured on CUDA (result kind 'cuda'), its measured peak (``torch.cuda.max_memory_allocated``)
and device total next to the estimate recorded with the job when it was created
(:func:`app.calibration.service.comparison`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from app.accuracy.table import Prepare, PublishedTable, Summary, published_table, summary_of
from app.calibration.service import comparison
from app.jobs import LEARN_FROM_JOBS, recent_jobs
from app.settings import Settings


class CalibrationRow(BaseModel):
    job_id: str
    finished_at: str | None
    model: str = Field(description="catalog/Hub id, or 'pasted config'")
    method: str
    framework: str
    gpu: str = Field(description="the card the job measured (measured_device), else the request's GPU")
    micro_batch_size: int | None
    seq_len: int | None
    predicted_peak_bytes: int
    measured_peak_bytes: int | None
    peak_error_percent: float | None
    predicted_total_bytes: int
    measured_total_bytes: int | None
    total_error_percent: float | None


def calibration_row(job: dict[str, Any]) -> CalibrationRow | None:
    """A finished job (request, stored estimate, result) as a row; None unless it finished."""
    cmp = comparison(job)
    if cmp is None:
        return None
    req = job.get("request") or {}
    training, hardware = req.get("training") or {}, req.get("hardware") or {}
    model = req.get("model")
    return CalibrationRow(
        job_id=job["id"], finished_at=job.get("finished_at"),
        model=model if isinstance(model, str) else "pasted config", method=str(req.get("method", "lora")),
        framework=str(training.get("framework", "hf-trainer")),
        gpu=str(job.get("measured_device") or hardware.get("gpu") or "?"),
        micro_batch_size=training.get("micro_batch_size"), seq_len=training.get("seq_len"),
        predicted_peak_bytes=cmp["predicted_peak_bytes"], measured_peak_bytes=cmp["measured_peak_bytes"],
        peak_error_percent=cmp["peak_error_percent"], predicted_total_bytes=cmp["predicted_total_bytes"],
        measured_total_bytes=cmp["measured_total_bytes"], total_error_percent=cmp["total_error_percent"],
    )


def gpu_calibrations(settings: Settings, limit: int = LEARN_FROM_JOBS) -> list[CalibrationRow]:
    """The newest ``limit`` jobs' finished CUDA calibrations (the configured store: SQLite or PostgreSQL)."""
    out = []
    for job in recent_jobs(settings, limit):
        if job.get("status") != "done" or (job.get("result") or {}).get("kind") != "cuda":
            continue
        row = calibration_row(job)
        if row is not None:
            out.append(row)
    return out


def calibration_summary(rows: list[CalibrationRow]) -> Summary:
    """The published table's figures on the calibrations' peaks (``max_memory_allocated`` vs the estimate's peak)."""
    return summary_of("this server's GPU calibrations",
                      [r.peak_error_percent / 100 for r in rows if r.peak_error_percent is not None])


class AccuracyReport(BaseModel):
    """GET /api/v1/accuracy: the published comparison and this server's finished GPU calibrations beside it."""

    published: PublishedTable
    calibrations: list[CalibrationRow]
    calibration_summary: Summary
    gpu_runs: list[CalibrationRow] = Field(description="the project's own GPU runs (app/accuracy/data) against "
                                           "today's estimates")
    gpu_runs_summary: Summary
    gpu_runs_environment: dict[str, Any] = Field(description="the card, driver, CUDA and library versions they ran on")


def accuracy_report(settings: Settings, check: Callable[[], None] | None = None,
                    prepare: Prepare | None = None) -> AccuracyReport:
    """The published table (computed once per planner version, :func:`published_table`; ``prepare``: see
    :data:`app.accuracy.table.Prepare`) and the store's finished CUDA calibrations (read on every call: a few
    hundred rows of the job store)."""
    from app.accuracy.gpu_runs import gpu_run_rows, gpu_runs_file, gpu_runs_summary

    rows = gpu_calibrations(settings)
    runs = gpu_run_rows()
    return AccuracyReport(published=published_table(check, prepare=prepare), calibrations=rows,
                          calibration_summary=calibration_summary(rows), gpu_runs=list(runs),
                          gpu_runs_summary=gpu_runs_summary(runs), gpu_runs_environment=gpu_runs_file()["environment"])
