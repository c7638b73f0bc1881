"""SQLite job store for calibrations (stdlib ``sqlite3``, WAL mode, one short connection per call).

A job row keeps the request, the device and step counts, the planner's estimate for the same request (taken
when the job was created), progress, and the measured result. :meth:`JobStore.recover` runs at startup:
jobs that were ``running`` when the process died become ``interrupted``; ``queued`` jobs stay queued.
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import threading
import uuid
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.calibration.devices import measured_device
from app.core.calibrated import MAX_SAMPLES, CalibrationSample, CalibrationSummary, summarise
from app.core.catalog import gpu
from app.core.errors import PlanError
from app.core.overhead import cublas_workspace_bytes
from app.core.request import PlanRequest
from app.core.throughput import achieved_mfu

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
    estimate_json TEXT,
    measured_device TEXT
);
CREATE INDEX IF NOT EXISTS calibration_jobs_created ON calibration_jobs (created_at DESC);
CREATE INDEX IF NOT EXISTS calibration_jobs_status ON calibration_jobs (status, created_at);
CREATE TABLE IF NOT EXISTS calibration_summaries (
    key TEXT PRIMARY KEY,  -- 'gpu:<gpu id>' (overhead fit) or 'slowdown:<model id>' (measured QLoRA slowdown)
    summary_json TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""
SCHEMA_VERSION = 3  # 2: calibration_summaries; 3: keyed by measured_device, + MFU (rebuilt on opening an older db)

# A finished GPU job's request fields, read in SQL so summaries read only the rows they need.
_GPU_OF = "measured_device"  # the card the job measured (app/calibration/devices.py), never the request's
_DONE_CUDA = "status='done' AND device LIKE 'cuda%' AND result_json IS NOT NULL"  # GPU evidence of a model
_DONE_ON_GPU = f"{_DONE_CUDA} AND measured_device IS NOT NULL"  # ... and of the card it measured

_JSON_COLUMNS = {"request_json": "request", "result_json": "result", "estimate_json": "estimate"}


def cancel_job(store: Any, job_id: str) -> str | None:
    """Cancel a queued or running job of ``store`` (this SQLite store or app/jobs/pg.py's, whose ``get`` and
    ``finish`` mean the same: a final status is kept, a cancel wins over a late result); returns the status it
    had (None: no such job)."""
    job = store.get(job_id)
    if job is None:
        return None
    if job["status"] in ("queued", "running"):
        store.finish(job_id, "cancelled", error="cancelled by request", progress_text="cancelled")
    return job["status"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class JobStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # serialises writes of this process (SQLite locks across processes)
        with self._lock:
            db = self._connect()
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                columns = {row["name"] for row in db.execute("PRAGMA table_info(calibration_jobs)")}
                if "measured_device" not in columns:  # a database from before the column
                    db.execute("ALTER TABLE calibration_jobs ADD COLUMN measured_device TEXT")
                if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                    self._backfill_measured_devices(db)
                    for (gpu_id,) in db.execute(f"SELECT DISTINCT {_GPU_OF} FROM calibration_jobs "
                                                f"WHERE {_DONE_ON_GPU}").fetchall():
                        self._summarise_gpu(db, gpu_id)
                    for (model,) in db.execute("SELECT DISTINCT json_extract(request_json, '$.model') FROM "
                                               f"calibration_jobs WHERE {_DONE_CUDA}").fetchall():
                        self._summarise_slowdown(db, model)
                    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            finally:
                db.close()

    @staticmethod
    def _backfill_measured_devices(db: sqlite3.Connection) -> None:
        """Rows finished before the ``measured_device`` column: the card read from their stored environment."""
        rows = db.execute("SELECT id, result_json FROM calibration_jobs WHERE measured_device IS NULL "
                          "AND result_json IS NOT NULL").fetchall()
        for job_id, raw in rows:
            device = measured_device((json.loads(raw) or {}).get("environment"))
            if device is not None:
                db.execute("UPDATE calibration_jobs SET measured_device=? WHERE id=?", (device, job_id))

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
        """Record a final status, unless the job already has one (a cancel wins over a late result). A finished
        GPU job updates the summaries of its GPU and model in the same transaction."""
        if status not in FINAL:
            raise ValueError(f"not a final status: {status}")
        measured = measured_device((result or {}).get("environment")) if result is not None else None
        with self._lock:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                changed = db.execute(
                    "UPDATE calibration_jobs SET status=?, finished_at=?, result_json=?, error=?, "
                    "progress_text=COALESCE(?, progress_text), progress_percent=CASE WHEN ?='done' THEN 100 "
                    "ELSE progress_percent END, measured_device=? WHERE id=? AND status IN ('queued','running')",
                    (status, now(), json.dumps(result) if result is not None else None, error, progress_text,
                     status, (result or {}).get("measured_device") or measured, job_id),
                ).rowcount == 1
                row = db.execute(f"SELECT {_GPU_OF}, json_extract(request_json, '$.model') FROM calibration_jobs "
                                 f"WHERE id=? AND {_DONE_CUDA}", (job_id,)).fetchone()
                if changed and row is not None:
                    if row[0] is not None:
                        self._summarise_gpu(db, row[0])
                    self._summarise_slowdown(db, row[1])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                db.close()
        return changed

    # --- summaries (one row per GPU / model, rewritten when one of its jobs finishes) ------------------------
    def _summarise_gpu(self, db: sqlite3.Connection, gpu_id: str) -> None:
        summary = summarise(gpu_id, _samples(db, gpu_id))
        _put_summary(db, f"gpu:{gpu_id}", asdict(summary) if summary is not None else None)
        _put_summary(db, f"mfu:{gpu_id}", _mfu_summary(db, gpu_id))

    def _summarise_slowdown(self, db: sqlite3.Connection, model: str | None) -> None:
        if not isinstance(model, str) or model.startswith("{"):
            return  # a pasted config: no id to look it up by
        rows = db.execute(f"SELECT json_extract(result_json, '$.otf_dequant_slowdown') FROM calibration_jobs WHERE "
                          f"{_DONE_CUDA} AND json_extract(request_json, '$.model')=? "
                          "ORDER BY created_at DESC, rowid DESC LIMIT ?", (model, MAX_SAMPLES)).fetchall()
        ratios = [r[0] for r in rows if isinstance(r[0], int | float) and r[0] > 0]
        _put_summary(db, f"slowdown:{model}", {"qlora": statistics.median(ratios)} if ratios else None)

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the status it had (None: no such job)."""
        return cancel_job(self, job_id)

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


def _put_summary(db: sqlite3.Connection, key: str, value: dict[str, Any] | None) -> None:
    _WRITES[0] += 1
    if value is None:
        db.execute("DELETE FROM calibration_summaries WHERE key=?", (key,))
    else:
        db.execute("INSERT OR REPLACE INTO calibration_summaries (key, summary_json, updated_at) VALUES (?, ?, ?)",
                   (key, json.dumps(value), now()))


def _read_only(path: Path | str) -> sqlite3.Connection | None:
    """A read-only connection, or None when the server has not created the database yet."""
    return sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=30) if Path(path).exists() else None


_WRITES = [0]  # summary writes by this process (its calibration workers): a version no timestamp can miss


def data_version(path: Path | str) -> tuple[int, ...]:
    """Changes whenever the database is written: this process's summary writes, and the modification time and
    size of the file and its WAL (another process's writes); () when there is no database. Part of the key of
    every cached answer that reads stored calibrations."""
    out = [_WRITES[0]]
    for suffix in ("", "-wal"):
        try:
            st = os.stat(f"{path}{suffix}")
        except OSError:
            if not suffix:
                return ()
            continue
        out += [st.st_mtime_ns, st.st_size]
    return tuple(out)


_SUMMARIES: dict[tuple[str, str], tuple[tuple[int, ...], dict[str, Any] | None]] = {}


def _get_summary(path: Path | str, key: str) -> dict[str, Any] | None:
    """One summary row by primary key (constant time in the number of jobs), kept in memory until the database
    changes; None without a database."""
    version = data_version(path)
    if not version:
        return None
    cached = _SUMMARIES.get((str(path), key))
    if cached is not None and cached[0] == version:
        return cached[1]
    value = _read_summary(path, key)
    if len(_SUMMARIES) > 4096:
        _SUMMARIES.clear()
    _SUMMARIES[(str(path), key)] = (version, value)
    return value


def _read_summary(path: Path | str, key: str) -> dict[str, Any] | None:
    db = _read_only(path)
    if db is None:
        return None
    try:
        row = db.execute("SELECT summary_json FROM calibration_summaries WHERE key=?", (key,)).fetchone()
    except sqlite3.OperationalError:  # a database the server has not opened yet (no summaries table)
        return None
    finally:
        db.close()
    return json.loads(row[0]) if row else None


def measured_slowdowns(path: Path | str, model: str) -> dict[str, float]:
    """Median measured 4-bit-vs-16-bit step-time ratio of the newest finished GPU calibrations of ``model``,
    keyed like the planner's slowdown factors ("qlora"); empty when there is no database or no such job."""
    return _get_summary(path, f"slowdown:{model}") or {}


def calibration_summary(path: Path | str, gpu_id: str) -> CalibrationSummary | None:
    """The overhead/error-bar summary of finished calibrations that measured the card ``gpu_id``."""
    raw = _get_summary(path, f"gpu:{gpu_id}")
    return None if raw is None else CalibrationSummary(**{**raw, "job_ids": tuple(raw["job_ids"])})


def calibration_samples(path: Path | str, gpu_id: str) -> list[CalibrationSample]:
    """The fitting samples behind ``gpu_id``'s summary (see :func:`_samples`); empty without a database."""
    db = _read_only(path)
    if db is None:
        return []
    try:
        return _samples(db, gpu_id)
    except sqlite3.OperationalError:  # no measured_device column yet: the server has not opened it
        return []
    finally:
        db.close()


def _samples(db: sqlite3.Connection, gpu_id: str) -> list[CalibrationSample]:
    """The newest :data:`MAX_SAMPLES` finished calibrations that measured the card ``gpu_id`` (``measured_device``,
    app/calibration/devices.py; never the request's hardware.gpu). The stored estimate was made for the request's
    GPU; its peak is moved to ``gpu_id``'s cuBLAS workspaces (the only per-card term of the peak,
    app/core/estimate.py)."""
    rows = db.execute(f"SELECT id, request_json, estimate_json, result_json FROM calibration_jobs WHERE "
                      f"{_DONE_ON_GPU} AND {_GPU_OF}=? ORDER BY created_at DESC, rowid DESC LIMIT ?",
                      (gpu_id, MAX_SAMPLES))
    out = []
    for job_id, req_raw, est_raw, result_raw in rows.fetchall():
        try:
            est, result = json.loads(est_raw), json.loads(result_raw)
            requested = (json.loads(req_raw).get("hardware") or {}).get("gpu", gpu_id)
            predicted = int(est["memory"]["peak"]) - _workspace(requested) + _workspace(gpu_id)
            out.append(CalibrationSample(job_id, predicted, int(result["peak_allocated_bytes"]),
                                         int(result["peak_reserved_bytes"]), int(result["device_used_bytes"])))
        except (KeyError, TypeError, ValueError, PlanError):
            continue
    return out


def _workspace(gpu_id: str) -> int:
    return cublas_workspace_bytes(gpu(gpu_id).arch)


def measured_mfus(path: Path | str) -> dict[str, float]:
    """Median MFU (``app.core.throughput.achieved_mfu``) of the newest finished GPU calibrations, per measured
    catalog GPU: one summary row per card (constant time in the number of jobs); empty without a database."""
    db = _read_only(path)
    if db is None:
        return {}
    try:
        rows = db.execute("SELECT key, summary_json FROM calibration_summaries WHERE key LIKE 'mfu:%'").fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return {key.removeprefix("mfu:"): json.loads(raw)["mfu"] for key, raw in rows}


def _mfu_summary(db: sqlite3.Connection, gpu_id: str) -> dict[str, float] | None:
    """Median achieved MFU of the newest :data:`MAX_SAMPLES` jobs that measured ``gpu_id``. A 4-bit job counts by
    its 16-bit twin's tokens/s, so the QLoRA slowdown is not counted twice."""
    try:
        card = gpu(gpu_id)
    except PlanError:  # a card outside the catalog (stored as measured): no TFLOP/s to divide by
        return None
    values = []
    rows = db.execute(f"SELECT request_json, result_json FROM calibration_jobs WHERE {_DONE_ON_GPU} AND "
                      f"{_GPU_OF}=? ORDER BY created_at DESC, rowid DESC LIMIT ?", (gpu_id, MAX_SAMPLES))
    for req_raw, result_raw in rows.fetchall():
        try:
            req, result = PlanRequest.model_validate_json(req_raw), json.loads(result_raw)
            twin = result.get("sixteen_bit_base") or {}
            if twin.get("tokens_per_s"):
                req, tps = req.model_copy(update={"method": twin["method"]}), float(twin["tokens_per_s"])
            else:
                tps = float(result["tokens_per_s"])
            values.append(achieved_mfu(req, tps, card))
        except (KeyError, TypeError, ValueError):  # PlanError and pydantic's ValidationError are ValueErrors
            continue
    return {"mfu": statistics.median(values)} if values else None
