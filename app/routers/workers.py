"""The calibration fleet: ``GET /api/v1/workers`` (JSON) and the page ``/workers``.

With PostgreSQL (``PEFT_PLANNER_DATABASE_URL``) these are the registered ``peft-planner worker`` processes
(:meth:`app.jobs.pg.PgJobStore.workers`); with SQLite, this API process's in-process worker.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.deps import CalibrationServiceDep
from app.routers.calibrate import templates

router = APIRouter(tags=["calibration"])


def fleet(service: Any) -> list[dict[str, Any]]:
    if service.settings.database_url:
        return service.store.workers()
    slots = service.workers.slots()
    running = [{"id": s["current_job"], "gpu": None, "progress": None} for s in slots if s["current_job"]]
    host = socket.gethostname()
    return [{"id": f"{host}-{os.getpid()}-in-process", "host": host, "pid": os.getpid(), "started_at": None,
             "last_heartbeat": None, "stopped_at": None, "versions": {}, "slots": slots,
             "state": "busy" if running else "idle", "seconds_since_heartbeat": None, "running": running}]


@router.get("/api/v1/workers")
def list_workers(service: CalibrationServiceDep) -> dict[str, Any]:
    """Calibration workers: id, host, slots (catalog GPU id and device), state (idle, busy, lost, stopped),
    the jobs they run and their last heartbeat (database time)."""
    items = fleet(service)
    return {"store": "postgresql" if service.settings.database_url else "sqlite", "total": len(items),
            "items": items}


@router.get("/workers", response_class=HTMLResponse, include_in_schema=False)
def workers_page(request: Request, service: CalibrationServiceDep) -> HTMLResponse:
    return templates.TemplateResponse(request, "workers.html", {"workers": fleet(service)})
