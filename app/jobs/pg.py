"""PostgreSQL job store (psycopg 3 + psycopg_pool): the shared store of a fleet of API replicas and workers.

It has the public methods of the SQLite :class:`app.calibration.store.JobStore` with the same meaning, so the
routers and the in-process run loop (:class:`app.calibration.worker.DeviceWorker`) use either store, plus a
lease API for workers on other machines (:mod:`app.jobs.fleet`):

- :meth:`PgJobStore.claim` moves the oldest matching queued job to ``running`` with
  ``SELECT … FOR UPDATE SKIP LOCKED`` (concurrent claimers never block on or take the same row), a fresh
  random lease token and ``lease_expires_at = now() + lease``; every attempt is a row of
  ``calibration_attempts``.
- :meth:`PgJobStore.heartbeat` extends the leases a worker still holds and answers which ones it lost
  (cancelled, or expired and requeued): the worker kills those processes.
- :meth:`PgJobStore.finish` with ``token=`` only succeeds while that lease is the job's current one, so a
  job is completed at most once even when a presumed-dead worker comes back.
- :meth:`PgJobStore.recover` (run by every worker before it claims and by the API periodically) requeues
  jobs whose lease expired (``attempts < max_attempts``) or marks them ``interrupted``: never lost.

Why not procrastinate: our job row already is the queue (request, estimate, progress, result and the
attempts are what the pages show from any replica); procrastinate would add a second jobs table to keep in
step with ours, routes by queue name only (we need "this catalog GPU id or any" with one job per GPU at a
time) and recovers stalled jobs through the same kind of lease sweep we would still write. The claim is
the pattern of PostgreSQL's documentation for queues (SELECT … FOR UPDATE SKIP LOCKED, "The Locking
Clause", https://www.postgresql.org/docs/15/sql-select.html).

Schema migrations run at start-up under ``pg_advisory_xact_lock`` (several replicas starting at once wait
for the first one; the others then see its version and apply nothing). Times come from the database's
clock (``now()``), so the machines' clocks do not matter.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from app.calibration.store import FINAL, cancel_job

T = TypeVar("T")

# Key of the advisory lock that serialises migrations (any constant bigint; this is "peftplan" in ASCII).
MIGRATION_LOCK = 0x7065667470_6C616E

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE calibration_jobs (
        id TEXT PRIMARY KEY,
        seq BIGSERIAL NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        started_at TIMESTAMPTZ,
        finished_at TIMESTAMPTZ,
        status TEXT NOT NULL CHECK (status IN ('queued','running','done','failed','oom','cancelled','interrupted')),
        progress_text TEXT NOT NULL DEFAULT '',
        progress_percent DOUBLE PRECISION NOT NULL DEFAULT 0,
        request JSONB NOT NULL,
        device TEXT NOT NULL,
        warmup_steps INTEGER NOT NULL,
        measure_steps INTEGER NOT NULL,
        model_dir TEXT,
        result JSONB,
        error TEXT,
        estimate JSONB,
        wanted_gpu TEXT,
        worker_id TEXT,
        worker_gpu TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_token TEXT,
        lease_expires_at TIMESTAMPTZ
    );
    CREATE INDEX calibration_jobs_created ON calibration_jobs (created_at DESC, seq DESC);
    CREATE INDEX calibration_jobs_queued ON calibration_jobs (created_at, seq) WHERE status = 'queued';
    CREATE INDEX calibration_jobs_running ON calibration_jobs (lease_expires_at) WHERE status = 'running';
    CREATE TABLE calibration_attempts (
        job_id TEXT NOT NULL REFERENCES calibration_jobs (id) ON DELETE CASCADE,
        attempt INTEGER NOT NULL,
        token TEXT NOT NULL UNIQUE,
        worker_id TEXT NOT NULL,
        worker_gpu TEXT NOT NULL,
        claimed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        ended_at TIMESTAMPTZ,
        outcome TEXT,
        PRIMARY KEY (job_id, attempt)
    );
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        last_heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(),
        stopped_at TIMESTAMPTZ,
        versions JSONB NOT NULL,
        slots JSONB NOT NULL
    );
    """,
    # 2: traces (POST /api/v1/trace) are jobs of the same queue, told apart by ``kind``; a trace's request is
    # looked up by equality (the shared trace cache and "join the trace already queued"): a hash index.
    """
    ALTER TABLE calibration_jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'calibration'
        CHECK (kind IN ('calibration', 'trace'));
    DROP INDEX calibration_jobs_created;
    DROP INDEX calibration_jobs_queued;
    CREATE INDEX calibration_jobs_created ON calibration_jobs (kind, created_at DESC, seq DESC);
    CREATE INDEX calibration_jobs_queued ON calibration_jobs (kind, created_at, seq) WHERE status = 'queued';
    CREATE INDEX calibration_jobs_trace_request ON calibration_jobs USING hash (request) WHERE kind = 'trace';
    """,
    # 3: the model/config cache shared by replicas (app/models/shared_cache.py): generic inventories and PEFT
    # resolutions as the SQLite store keeps them (canonical JSON text), and Hub config.json files.
    """
    CREATE TABLE generic_inventories (
        key TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        builds INTEGER NOT NULL DEFAULT 1,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    CREATE TABLE generic_resolutions (
        key TEXT NOT NULL,
        target TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (key, target)
    );
    CREATE TABLE hub_configs (
        endpoint TEXT NOT NULL,
        repo_id TEXT NOT NULL,
        revision TEXT NOT NULL,
        commit_sha TEXT,
        config TEXT NOT NULL,
        origin TEXT NOT NULL,
        fetched_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (endpoint, repo_id, revision)
    );
    """,
    # 4: the generic path's peak fits (app/models/peak_fit.py) beside the inventories, as the SQLite store's
    # ``peak_fits`` table keeps them
    """
    CREATE TABLE generic_peak_fits (
        key TEXT NOT NULL,
        settings TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (key, settings, bucket)
    );
    """,
)
KINDS = ("calibration", "trace")

_JOB_COLUMNS = ("id, created_at, started_at, finished_at, status, progress_text, progress_percent, request, device, "
                "warmup_steps, measure_steps, model_dir, result, error, estimate, wanted_gpu, worker_id, worker_gpu, "
                "attempts, kind")


class StoreUnavailable(Exception):
    """The database cannot be reached (answered as 503 by the API; workers retry)."""


def _iso(value: Any) -> Any:
    """Timestamps as the SQLite store writes them (ISO 8601, UTC, milliseconds)."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds") if isinstance(value, datetime) else value


def _job(row: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else {key: _iso(value) for key, value in row.items()}


class PgJobStore:
    """Calibration jobs, their attempts and the worker registry in PostgreSQL (see the module docstring)."""

    def __init__(self, url: str, *, lease_s: float = 15.0, max_attempts: int = 2, pool_size: int = 4,
                 connect_timeout_s: float = 5.0) -> None:
        self.url, self.lease_s, self.max_attempts = url, lease_s, max_attempts
        self._pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=connect_timeout_s,
            check=psycopg_pool.ConnectionPool.check_connection,
            kwargs={"autocommit": True, "row_factory": dict_row, "options": "-c timezone=UTC",
                    "connect_timeout": max(1, int(connect_timeout_s))},
        )
        self._pool.open(wait=False)
        self.migrate()

    def close(self) -> None:
        self._pool.close()

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A connection from the pool inside one transaction; connection failures → :class:`StoreUnavailable`."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
            raise StoreUnavailable(f"the job database is unavailable: {type(exc).__name__}: {exc}") from exc

    def _one(self, sql: str, args: dict[str, Any] | tuple[Any, ...] = ()) -> dict[str, Any] | None:
        with self.transaction() as conn:
            return conn.execute(sql, args).fetchone()

    def _all(self, sql: str, args: dict[str, Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self.transaction() as conn:
            return conn.execute(sql, args).fetchall()

    def _count(self, sql: str, args: dict[str, Any] | tuple[Any, ...] = ()) -> int:
        with self.transaction() as conn:
            return conn.execute(sql, args).rowcount

    def migrate(self) -> int:
        """Apply the migrations this database lacks; returns how many. Safe with many replicas at once."""
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS peft_planner_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) AS v FROM peft_planner_schema").fetchone()
            current = (row or {}).get("v") or 0
            for version, sql in enumerate(MIGRATIONS[current:], start=current + 1):
                conn.execute(sql)
                conn.execute("INSERT INTO peft_planner_schema (version) VALUES (%s)", (version,))
            return len(MIGRATIONS) - current

    # --- the JobStore interface -----------------------------------------------------------------------
    def create(self, request: dict[str, Any], device: str, warmup_steps: int, measure_steps: int,
               estimate: dict[str, Any] | None, model_dir: str | None = None, status: str = "queued",
               wanted_gpu: str | None = None) -> str:
        job_id = str(uuid.uuid4())
        self._count(
            "INSERT INTO calibration_jobs (id, status, request, device, warmup_steps, measure_steps, model_dir,"
            " estimate, wanted_gpu) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (job_id, status, Jsonb(request), device, warmup_steps, measure_steps, model_dir,
             Jsonb(estimate) if estimate is not None else None, wanted_gpu))
        return job_id

    def progress(self, job_id: str, percent: float, text: str, token: str | None = None) -> None:
        self._count("UPDATE calibration_jobs SET progress_percent=%s, progress_text=%s WHERE id=%s AND "
                    "status='running' AND (%s::text IS NULL OR lease_token=%s)",
                    (round(float(percent), 1), text[:500], job_id, token, token))

    def finish(self, job_id: str, status: str, *, result: dict[str, Any] | None = None, error: str | None = None,
               progress_text: str | None = None, token: str | None = None) -> bool:
        """Record a final status unless the job already has one; with ``token``, only while that lease is the
        job's current one (a worker whose lease expired cannot complete a job another worker now runs)."""
        if status not in FINAL:
            raise ValueError(f"not a final status: {status}")
        with self.transaction() as conn:
            row = conn.execute(
                "UPDATE calibration_jobs SET status=%(status)s, finished_at=now(), result=%(result)s, error=%(error)s,"
                " progress_text=COALESCE(%(text)s, progress_text), lease_token=NULL, lease_expires_at=NULL,"
                " progress_percent=CASE WHEN %(status)s='done' THEN 100 ELSE progress_percent END"
                " WHERE id=%(id)s AND (CASE WHEN %(token)s::text IS NULL THEN status IN ('queued','running')"
                " ELSE status='running' AND lease_token=%(token)s END) RETURNING lease_token",
                {"status": status, "result": Jsonb(result) if result is not None else None, "error": error,
                 "text": progress_text, "id": job_id, "token": token}).fetchone()
            if row is not None:
                conn.execute("UPDATE calibration_attempts SET ended_at=now(), outcome=%s WHERE job_id=%s AND "
                             "ended_at IS NULL", (status, job_id))
            return row is not None

    def cancel(self, job_id: str) -> str | None:
        return cancel_job(self, job_id)

    def set_status(self, job_id: str, status: str) -> None:
        self._count("UPDATE calibration_jobs SET status=%s WHERE id=%s", (status, job_id))

    def recover(self) -> int:
        """Jobs whose lease expired (their worker stopped heartbeating) go back to the queue while attempts are
        left, else become ``interrupted``. Returns how many were touched. Any process may run it at any time."""
        with self.transaction() as conn:
            rows = conn.execute(
                "UPDATE calibration_jobs SET status=CASE WHEN attempts < %(max)s THEN 'queued' ELSE 'interrupted' END,"
                " finished_at=CASE WHEN attempts < %(max)s THEN NULL ELSE now() END,"
                " error=CASE WHEN attempts < %(max)s THEN NULL ELSE 'worker ' || worker_id || ' stopped while running"
                " this job (attempt ' || attempts || ' of ' || %(max)s || ')' END,"
                " progress_text=CASE WHEN attempts < %(max)s THEN 'requeued: worker ' || worker_id || ' stopped'"
                " ELSE 'interrupted' END, progress_percent=0, lease_token=NULL, lease_expires_at=NULL"
                " WHERE status='running' AND lease_expires_at < now() RETURNING id",
                {"max": self.max_attempts}).fetchall()
            if rows:
                conn.execute("UPDATE calibration_attempts SET ended_at=now(), outcome='lease expired' WHERE "
                             "ended_at IS NULL AND job_id = ANY(%s)", ([r["id"] for r in rows],))
            return len(rows)

    def get(self, job_id: str, kind: str = "calibration") -> dict[str, Any] | None:
        """The job ``job_id`` of ``kind`` (the calibration API never sees traces, nor the trace path calibrations)."""
        return _job(self._one(f"SELECT {_JOB_COLUMNS} FROM calibration_jobs WHERE id=%s AND kind=%s", (job_id, kind)))

    def list(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        rows = self._all(f"SELECT {_JOB_COLUMNS} FROM calibration_jobs WHERE kind='calibration' "
                         "ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s", (limit, offset))
        return [_job(r) for r in rows]  # type: ignore[misc]

    def count(self) -> int:
        row = self._one("SELECT count(*) AS n FROM calibration_jobs WHERE kind='calibration'")
        return int(row["n"]) if row else 0

    def queued_devices(self) -> list[str]:
        return [r["device"] for r in self._all("SELECT DISTINCT device FROM calibration_jobs WHERE status='queued' "
                                               "AND kind='calibration'")]

    # --- traces (app/jobs/traces.py) -------------------------------------------------------------------
    def submit_trace(self, request: dict[str, Any], max_queued: int) -> str | None:
        """Queue a trace of ``request`` unless ``max_queued`` traces already wait (then None). The count and the
        insert are one statement; replicas racing at the limit may overshoot it by one each."""
        job_id = str(uuid.uuid4())
        inserted = self._count(
            "INSERT INTO calibration_jobs (id, kind, status, request, device, warmup_steps, measure_steps)"
            " SELECT %s, 'trace', 'queued', %s, 'cpu', 0, 0 WHERE (SELECT count(*) FROM calibration_jobs"
            " WHERE kind='trace' AND status='queued') < %s", (job_id, Jsonb(request), max_queued))
        return job_id if inserted else None

    def find_trace(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The trace of this exact request that is done (newest first), else one queued or running; None if
        neither (failed, cancelled and interrupted traces are not reused)."""
        return _job(self._one(
            f"SELECT {_JOB_COLUMNS} FROM calibration_jobs WHERE kind='trace' AND request=%s AND status IN"
            " ('done','queued','running') ORDER BY status='done' DESC, created_at DESC, seq DESC LIMIT 1",
            (Jsonb(request),)))

    def prune_traces(self, keep_s: float) -> int:
        """Delete traces that finished more than ``keep_s`` ago (the shared trace cache's horizon); how many."""
        return self._count("DELETE FROM calibration_jobs WHERE kind='trace' AND finished_at < now() - "
                           "make_interval(secs => %s)", (keep_s,))

    def trace_load(self) -> tuple[int, int]:
        """(``cpu`` slots of live workers that take traces — a heartbeat within three leases —, traces queued
        or running in the fleet)."""
        row = self._one(
            "SELECT (SELECT count(*) FROM workers w, jsonb_array_elements(w.slots) s WHERE w.stopped_at IS NULL"
            " AND w.last_heartbeat > now() - make_interval(secs => %s) AND s->>'device' = 'cpu'"
            " AND COALESCE((s->>'traces')::boolean, true)) AS slots, (SELECT count(*) FROM calibration_jobs"
            " WHERE kind='trace' AND status IN ('queued', 'running')) AS active", (3 * self.lease_s,))
        return (int(row["slots"]), int(row["active"])) if row else (0, 0)

    # --- the lease API of fleet workers -----------------------------------------------------------------
    def claim(self, worker_id: str, gpu_id: str, device: str,
              kinds: tuple[str, ...] = ("calibration",)) -> dict[str, Any] | None:
        """Take the oldest queued job of ``kinds`` that a slot with catalog GPU ``gpu_id`` on local ``device``
        ('cpu' or 'cuda:N') may run: the job's device kind matches and it wants this GPU or any (a trace is a
        ``cpu`` job that wants any). The returned job has a ``lease_token``; its ``device`` stays the requested
        one."""
        token = secrets.token_hex(16)
        with self.transaction() as conn:
            row = conn.execute(
                "WITH next AS (SELECT id FROM calibration_jobs WHERE status='queued'"
                " AND kind = ANY(%(kinds)s) AND (device='cpu') = %(cpu)s AND (wanted_gpu IS NULL OR wanted_gpu=%(gpu)s)"
                " ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED)"
                " UPDATE calibration_jobs j SET status='running', started_at=now(), attempts=j.attempts+1,"
                " worker_id=%(worker)s, worker_gpu=%(gpu)s, lease_token=%(token)s,"
                " lease_expires_at=now() + make_interval(secs => %(lease)s), progress_percent=0,"
                " progress_text='starting the worker process on ' || %(worker)s"
                f" FROM next WHERE j.id=next.id RETURNING {', '.join('j.' + c for c in _JOB_COLUMNS.split(', '))},"
                " j.lease_token",
                {"cpu": device == "cpu", "gpu": gpu_id, "worker": worker_id, "token": token,
                 "lease": self.lease_s, "kinds": list(kinds)}).fetchone()
            if row is not None:
                conn.execute("INSERT INTO calibration_attempts (job_id, attempt, token, worker_id, worker_gpu) "
                             "VALUES (%s, %s, %s, %s, %s)", (row["id"], row["attempts"], token, worker_id, gpu_id))
        return _job(row)

    def release(self, job_id: str, token: str, reason: str) -> bool:
        """A worker that stops gracefully gives its job back (queued again, or ``interrupted`` when it has used
        its attempts)."""
        with self.transaction() as conn:
            row = conn.execute(
                "UPDATE calibration_jobs SET status=CASE WHEN attempts < %(max)s THEN 'queued' ELSE 'interrupted' END,"
                " finished_at=CASE WHEN attempts < %(max)s THEN NULL ELSE now() END,"
                " error=CASE WHEN attempts < %(max)s THEN NULL ELSE %(reason)s END, progress_text=%(reason)s,"
                " progress_percent=0, lease_token=NULL, lease_expires_at=NULL"
                " WHERE id=%(id)s AND status='running' AND lease_token=%(token)s RETURNING id",
                {"max": self.max_attempts, "reason": reason, "id": job_id, "token": token}).fetchone()
            if row is not None:
                conn.execute("UPDATE calibration_attempts SET ended_at=now(), outcome='released' WHERE token=%s",
                             (token,))
            return row is not None

    def heartbeat(self, worker_id: str, tokens: list[str]) -> set[str]:
        """Extend the worker's leases; returns the tokens it still holds (a missing one: cancelled or expired)."""
        with self.transaction() as conn:
            conn.execute("UPDATE workers SET last_heartbeat=now(), stopped_at=NULL WHERE id=%s", (worker_id,))
            rows = conn.execute(
                "UPDATE calibration_jobs SET lease_expires_at=now() + make_interval(secs => %s) "
                "WHERE status='running' AND lease_token = ANY(%s) RETURNING lease_token",
                (self.lease_s, tokens)).fetchall()
        return {r["lease_token"] for r in rows}

    def register_worker(self, worker_id: str, host: str, pid: int, versions: dict[str, Any],
                        slots: list[dict[str, Any]]) -> None:
        self._count(
            "INSERT INTO workers (id, host, pid, versions, slots) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO "
            "UPDATE SET last_heartbeat=now(), stopped_at=NULL, versions=EXCLUDED.versions, slots=EXCLUDED.slots",
            (worker_id, host, pid, Jsonb(versions), Jsonb(slots)))

    def stop_worker(self, worker_id: str) -> None:
        self._count("UPDATE workers SET stopped_at=now() WHERE id=%s", (worker_id,))

    def workers(self, limit: int = 200) -> list[dict[str, Any]]:
        """Registered workers, newest heartbeat first, each with its slots' current job (from the leases) and a
        state: ``stopped`` (said goodbye), ``lost`` (no heartbeat for 3 leases), ``busy`` or ``idle``."""
        rows = self._all(
            "SELECT w.*, now() AS db_now, COALESCE((SELECT json_agg(json_build_object('id', j.id, 'kind', j.kind,"
            " 'gpu', j.worker_gpu, 'progress', j.progress_percent)) FROM calibration_jobs j WHERE j.worker_id=w.id"
            " AND j.status='running'), '[]') AS running FROM workers w ORDER BY w.last_heartbeat DESC LIMIT %s",
            (limit,))
        out = []
        for row in rows:
            silent_s = (row.pop("db_now") - row["last_heartbeat"]).total_seconds()
            running = row.pop("running")
            state = ("stopped" if row["stopped_at"] else "lost" if silent_s > 3 * self.lease_s
                     else "busy" if running else "idle")
            out.append({**_job(row), "state": state, "seconds_since_heartbeat": round(silent_s, 1),  # type: ignore[dict-item]
                        "running": running})
        return out

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._all("SELECT attempt, worker_id, worker_gpu, claimed_at, ended_at, outcome FROM "
                         "calibration_attempts WHERE job_id=%s ORDER BY attempt", (job_id,))
        return [_job(r) for r in rows]  # type: ignore[misc]


def retrying(call: Callable[[], T], give_up_after_s: float, wait_s: float = 0.5) -> T:
    """``call()`` until the database answers, for at most ``give_up_after_s`` (then the last error)."""
    import time

    deadline = time.monotonic() + give_up_after_s
    while True:
        try:
            return call()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(wait_s)
