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
    """One trace service per app, created on first use (no torch import until a trace runs)."""
    service = getattr(request.app.state, "trace_service", None)
    if service is None:
        service = TraceService(settings.trace_timeout_s, settings.trace_concurrency, settings.trace_queue,
                               settings.trace_import_timeout_s)
        request.app.state.trace_service = service
    return service


TraceServiceDep = Annotated[TraceService, Depends(get_trace_service)]


def get_calibration_service(request: Request) -> CalibrationService:
    """The app's calibration job store + workers, created on first use (see app/calibration/service.py)."""
    return service_for(request.app)


CalibrationServiceDep = Annotated[CalibrationService, Depends(get_calibration_service)]


def get_fit_pool(request: Request, settings: SettingsDep) -> HeavyPool:
    """The app's bounded pool for fit searches (settings fit_workers, fit_queue, fit_timeout_s)."""
    pool = getattr(request.app.state, "fit_pool", None)
    if pool is None:
        pool = HeavyPool("fit", settings.fit_workers, settings.fit_queue, settings.fit_timeout_s)
        request.app.state.fit_pool = pool
    return pool


FitPoolDep = Annotated[HeavyPool, Depends(get_fit_pool)]
