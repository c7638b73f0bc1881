"""FastAPI dependency aliases (``Annotated``), the only place routers get shared objects from."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.calibration.service import CalibrationService, service_for
from app.settings import Settings, get_settings
from app.trace.service import TraceService

SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_trace_service(request: Request, settings: SettingsDep) -> TraceService:
    """One trace service per app, created on first use (no torch import until a trace runs)."""
    service = getattr(request.app.state, "trace_service", None)
    if service is None:
        service = TraceService(settings.trace_timeout_s, settings.trace_concurrency)
        request.app.state.trace_service = service
    return service


TraceServiceDep = Annotated[TraceService, Depends(get_trace_service)]


def get_calibration_service(request: Request) -> CalibrationService:
    """The app's calibration job store + workers, created on first use (see app/calibration/service.py)."""
    return service_for(request.app)


CalibrationServiceDep = Annotated[CalibrationService, Depends(get_calibration_service)]
