"""SQLite job store for calibrations (stdlib ``sqlite3``, WAL mode, one short connection per call).

A job row keeps the request, the device and step counts, the planner's estimate for the same request (taken
when the job was created), progress, and the measured result. :meth:`JobStore.recover` runs at startup:
jobs that were ``running`` when the process died become ``interrupted``; ``queued`` jobs stay queued.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import threading
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.core.calibrated import CalibrationSample

STATUSES = ("queued", "running", "done", "failed", "oom", "cancelled", "interrupted")
FINAL = ("done", "failed", "oom", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calibration_jobs (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('queued','running','done','failed','oom','cancelled','interrupted')),
    progress_text TEXT NOT NULL DEFAULT '',
    progress_percent REAL NOT NULL DEFAULT 0,
    request_json TEXT NOT NULL,
    device TEXT NOT NULL,
    warmup_steps INTEGER NOT NULL,
    measure_steps INTEGER NOT NULL,
    model_dir TEXT,
    result_json TEXT,
    error TEXT,
    estimate_json TEXT
);
CREATE INDEX IF NOT EXISTS calibration_jobs_created ON calibration_jobs (created_at DESC);
CREATE INDEX IF NOT EXISTS calibration_jobs_status ON calibration_jobs (status, created_at);
"""

_JSON_COLUMNS = {"request_json": "request", "result_json": "result", "estimate_json": "estimate"}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JobStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # serialises writes of this process (SQLite locks across processes)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit; explicit BEGIN below
        db.row_factory = sqlite3.Row
        return db

    def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        with self._lock:
            db = self._connect()
            try:
                return db.execute(sql, args).rowcount
            finally:
                db.close()

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        out = dict(row)
        for column, key in _JSON_COLUMNS.items():
            raw = out.pop(column)
            out[key] = json.loads(raw) if raw is not None else None
        return out

    # --- writes -------------------------------------------------------------------------------------
    def create(self, request: dict[str, Any], device: str, warmup_steps: int, measure_steps: int,
               estimate: dict[str, Any] | None, model_dir: str | None = None, status: str = "queued") -> str:
        job_id = str(uuid.uuid4())
        self._write(
            "INSERT INTO calibration_jobs (id, created_at, status, request_json, device, warmup_steps, measure_steps,"
            " model_dir, estimate_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, now(), status, json.dumps(request), device, warmup_steps, measure_steps, model_dir,
             json.dumps(estimate) if estimate is not None else None),
        )
        return job_id

    def claim_next(self, device: str) -> dict[str, Any] | None:
        """Atomically move the oldest queued job of ``device`` to running and return it."""
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute("SELECT id FROM calibration_jobs WHERE status='queued' AND device=? "
                                 "ORDER BY created_at, rowid LIMIT 1", (device,)).fetchone()
                if row is None:
                    db.execute("COMMIT")
                    return None
                db.execute("UPDATE calibration_jobs SET status='running', started_at=?, progress_text=?, "
                           "progress_percent=0 WHERE id=?", (now(), "starting the worker process", row["id"]))
                db.execute("COMMIT")
                job = db.execute("SELECT * FROM calibration_jobs WHERE id=?", (row["id"],)).fetchone()
            finally:
                db.close()
        return self._row(job)

    def progress(self, job_id: str, percent: float, text: str) -> None:
        self._write("UPDATE calibration_jobs SET progress_percent=?, progress_text=? WHERE id=? AND status='running'",
                    (round(float(percent), 1), text[:500], job_id))

    def finish(self, job_id: str, status: str, *, result: dict[str, Any] | None = None, error: str | None = None,
               progress_text: str | None = None) -> bool:
        """Record a final status, unless the job already has one (a cancel wins over a late result)."""
        if status not in FINAL:
            raise ValueError(f"not a final status: {status}")
        return self._write(
            "UPDATE calibration_jobs SET status=?, finished_at=?, result_json=?, error=?, "
            "progress_text=COALESCE(?, progress_text), progress_percent=CASE WHEN ?='done' THEN 100 "
            "ELSE progress_percent END WHERE id=? AND status IN ('queued','running')",
            (status, now(), json.dumps(result) if result is not None else None, error, progress_text, status,
             job_id),
        ) == 1

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the status it had (None: no such job)."""
        job = self.get(job_id)
        if job is None:
            return None
        if job["status"] in ("queued", "running"):
            self.finish(job_id, "cancelled", error="cancelled by request", progress_text="cancelled")
        return job["status"]

    def set_status(self, job_id: str, status: str) -> None:
        """For tests and administration: force a status (e.g. simulate a crash while running)."""
        self._write("UPDATE calibration_jobs SET status=? WHERE id=?", (status, job_id))

    def recover(self) -> int:
        """Startup: jobs left running by a dead process become interrupted. Returns how many."""
        return self._write(
            "UPDATE calibration_jobs SET status='interrupted', finished_at=?, "
            "error='the service stopped while this job was running' WHERE status='running'", (now(),))

    # --- reads --------------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        db = self._connect()
        try:
            return self._row(db.execute("SELECT * FROM calibration_jobs WHERE id=?", (job_id,)).fetchone())
        finally:
            db.close()

    def list(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        db = self._connect()
        try:
            rows = db.execute("SELECT * FROM calibration_jobs ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                              (limit, offset)).fetchall()
        finally:
            db.close()
        return [self._row(r) for r in rows]  # type: ignore[misc]

    def count(self) -> int:
        db = self._connect()
        try:
            return db.execute("SELECT COUNT(*) FROM calibration_jobs").fetchone()[0]
        finally:
            db.close()

    def queued_devices(self) -> list[str]:
        db = self._connect()
        try:
            rows = db.execute("SELECT DISTINCT device FROM calibration_jobs WHERE status='queued'").fetchall()
        finally:
            db.close()
        return [r[0] for r in rows]


def measured_slowdowns(jobs: Iterable[dict[str, Any]], model: str) -> dict[str, float]:
    """Median measured 4-bit-vs-16-bit step-time ratio of finished GPU calibrations of ``model`` among ``jobs``
    (any store's, see :func:`app.jobs.recent_jobs`), keyed like the planner's slowdown factors ("qlora");
    empty when there is no such job."""
    ratios = [
        job["result"]["otf_dequant_slowdown"]
        for job in jobs
        if job["status"] == "done" and str(job["device"]).startswith("cuda")
        and job["request"].get("model") == model and (job.get("result") or {}).get("otf_dequant_slowdown")
    ]
    return {"qlora": statistics.median(ratios)} if ratios else {}


def calibration_samples(jobs: Iterable[dict[str, Any]], gpu_id: str) -> list[CalibrationSample]:
    """Finished GPU calibrations among ``jobs`` that ran on ``gpu_id`` (the fleet worker's detected GPU, else the
    request's hardware.gpu), as fitting samples."""
    out = []
    for job in jobs:
        result, est = job.get("result") or {}, job.get("estimate") or {}
        if job["status"] != "done" or not str(job["device"]).startswith("cuda") or not est:
            continue
        if (job.get("worker_gpu") or (job["request"].get("hardware") or {}).get("gpu", "nvidia-a100-80gb")) != gpu_id:
            continue
        try:
            out.append(CalibrationSample(job["id"], int(est["memory"]["peak"]), int(result["peak_allocated_bytes"]),
                                         int(result["peak_reserved_bytes"]), int(result["device_used_bytes"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out
