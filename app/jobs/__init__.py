"""Job stores behind one interface: SQLite (one machine, the default) or PostgreSQL (a fleet).

``PEFT_PLANNER_DATABASE_URL=postgresql://…`` selects :class:`app.jobs.pg.PgJobStore` (API replicas and
``peft-planner worker`` processes on GPU nodes share it); otherwise the SQLite file
``PEFT_PLANNER_DATABASE_PATH`` and the API's in-process worker are used as before. See docs/deployment.md.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from app.calibration.store import JobStore
from app.settings import Settings

LEARN_FROM_JOBS = 500  # finished jobs read for fitted overheads / measured slowdowns (as the SQLite helpers did)


class JobStoreLike(Protocol):
    """What the routers and the calibration service use; both stores implement it with the same meaning."""

    def create(self, request: dict[str, Any], device: str, warmup_steps: int, measure_steps: int,
               estimate: dict[str, Any] | None, model_dir: str | None = None, status: str = "queued") -> str: ...
    def progress(self, job_id: str, percent: float, text: str) -> None: ...
    def finish(self, job_id: str, status: str, *, result: dict[str, Any] | None = None, error: str | None = None,
               progress_text: str | None = None) -> bool: ...
    def cancel(self, job_id: str) -> str | None: ...
    def recover(self) -> int: ...
    def get(self, job_id: str) -> dict[str, Any] | None: ...
    def list(self, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]: ...
    def count(self) -> int: ...
    def queued_devices(self) -> list[str]: ...


_pg_stores: dict[tuple[str, float, int], Any] = {}
_pg_lock = threading.Lock()


def pg_store(settings: Settings) -> Any:
    """The process's :class:`~app.jobs.pg.PgJobStore` for ``settings.database_url`` (one pool per URL; the
    migrations run when it is first opened)."""
    from app.jobs.pg import PgJobStore

    assert settings.database_url is not None
    key = (settings.database_url, settings.worker_lease_s, settings.worker_max_attempts)
    with _pg_lock:
        store = _pg_stores.get(key)
        if store is None:
            store = PgJobStore(settings.database_url, lease_s=settings.worker_lease_s,
                               max_attempts=settings.worker_max_attempts)
            _pg_stores[key] = store
        return store


def open_store(settings: Settings) -> JobStoreLike:
    return pg_store(settings) if settings.database_url else JobStore(settings.database_path)


def recent_jobs(settings: Settings, limit: int = LEARN_FROM_JOBS) -> list[dict[str, Any]]:
    """The newest ``limit`` jobs of the configured store, for learning from calibrations (every node's when the
    store is PostgreSQL); empty when the SQLite file does not exist yet."""
    if not settings.database_url and not Path(settings.database_path).exists():
        return []
    return open_store(settings).list(limit=limit)
