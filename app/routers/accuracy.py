"""How close the planner is to real runs: ``GET /api/v1/accuracy`` (JSON) and the page ``/accuracy``.

The published comparison (app/accuracy/table.py) runs ~130 estimates once per process and planner version, inside
the bounded estimate pool (rows of models outside the hand-written rules first go through the generic path: the
build and the traced activation fit, waited for); later requests read the cached table and the job store's
finished CUDA calibrations.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.accuracy.calibrations import AccuracyReport, accuracy_report
from app.core.request import PlanRequest
from app.deps import EstimatePoolDep, SettingsDep
from app.errors import error_responses
from app.models.resolve import resolve_request
from app.routers.calibrate import templates
from app.settings import Settings

router = APIRouter(tags=["accuracy"])


def _report(settings: Settings, check: Callable[[], None]) -> AccuracyReport:
    def prepare(req: PlanRequest) -> PlanRequest:  # a generic model's fit is waited for: the table is cached
        return resolve_request(req, fit_wait_s=settings.generic_peak_fit_timeout_s)[0]

    return accuracy_report(settings, check, prepare)


@router.get("/api/v1/accuracy", response_model=AccuracyReport, responses=error_responses(429, 503))
async def accuracy(request: Request, pool: EstimatePoolDep, settings: SettingsDep) -> AccuracyReport:
    """Published peak-memory measurements (every row whose settings can be known, with the counter its source read:
    allocated → peak, reserved → peak + allocator reserve, nvidia-smi → total) next to the planner's figure, per
    source, per framework and overall (median |error|, share within 10%, OOM verdicts); the rows skipped and why;
    and this server's finished GPU calibrations (measured peak vs the estimate recorded with the job)."""
    return await pool.run(request, lambda check: _report(settings, check))


@router.get("/accuracy", response_class=HTMLResponse, include_in_schema=False)
async def accuracy_page(request: Request, pool: EstimatePoolDep, settings: SettingsDep) -> HTMLResponse:
    report = await pool.run(request, lambda check: _report(settings, check))
    return templates.TemplateResponse(request, "accuracy.html", {"report": report})
