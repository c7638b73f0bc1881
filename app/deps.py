"""FastAPI dependency aliases (``Annotated``), the only place routers get shared objects from."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.calibration.service import CalibrationService, service_for
from app.pool import HeavyPool
from app.settings import Settings, get_settings
from app.trace.service import TraceService

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_trace_service(request: Request, settings: SettingsDep) -> TraceService:
    """One trace service per app, created on first use (no torch import until a trace runs); with a database URL
    it can hand traces to the fleet's workers (app/jobs/traces.py)."""
    service = getattr(request.app.state, "trace_service", None)
    if service is None:
        fleet = None
        if settings.database_url and settings.trace_on_workers != "never":
            from app.jobs import pg_store
            from app.jobs.traces import FleetTraces

            fleet = FleetTraces(pg_store(settings), settings.trace_timeout_s, settings.trace_fleet_queue,
                                settings.trace_fleet_wait_s)
        service = TraceService(settings.trace_timeout_s, settings.trace_concurrency, settings.trace_queue,
                               settings.trace_import_timeout_s, fleet=fleet, offload=settings.trace_on_workers)
        request.app.state.trace_service = service
    return service


TraceServiceDep = Annotated[TraceService, Depends(get_trace_service)]


def get_calibration_service(request: Request) -> CalibrationService:
    """The app's calibration job store + workers, created on first use (see app/calibration/service.py)."""
    return service_for(request.app)


CalibrationServiceDep = Annotated[CalibrationService, Depends(get_calibration_service)]


def _pool(request: Request, kind: str, workers: int, queue: int, timeout_s: float | None) -> HeavyPool:
    pool = getattr(request.app.state, f"{kind}_pool", None)
    if pool is None:
        pool = HeavyPool(kind, workers, queue, timeout_s)
        setattr(request.app.state, f"{kind}_pool", pool)
    return pool


def get_fit_pool(request: Request, settings: SettingsDep) -> HeavyPool:
    """The app's bounded pool for fit searches (settings fit_workers, fit_queue, fit_timeout_s)."""
    return _pool(request, "fit", settings.fit_workers, settings.fit_queue, settings.fit_timeout_s)


def get_estimate_pool(request: Request, settings: SettingsDep) -> HeavyPool:
    """The app's bounded pool for estimates and page renders: few CPU threads, so that the event loop (and
    /healthz) keeps getting the GIL under load (settings estimate_workers, estimate_queue). No time budget: one
    estimate is bounded by the input limits (docs/limits.md)."""
    return _pool(request, "estimate", settings.estimate_workers, settings.estimate_queue, None)


FitPoolDep = Annotated[HeavyPool, Depends(get_fit_pool)]
EstimatePoolDep = Annotated[HeavyPool, Depends(get_estimate_pool)]
