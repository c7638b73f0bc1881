"""Calibration: measure a real adapter step on a device and compare it with the estimate.

POST /api/v1/calibrations (and the alias POST /calibrate) start GPU/CPU work and need
``Authorization: Bearer <PEFT_PLANNER_TOKEN>``; with no token configured they answer 403. Reading jobs and
results is open. Pages: GET /calibrate (form), /calibrations (history), /calibrations/{id} (detail).
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import Field, ValidationError

from app.calibration.measure import MAX_MEASURE_STEPS, MAX_WARMUP_STEPS
from app.calibration.service import CalibrationService, comparison
from app.core.errors import PlanError
from app.core.request import PlanRequest
from app.core.units import format_bytes
from app.deps import CalibrationServiceDep, SettingsDep
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
templates = Jinja2Templates(directory=ROOT / "templates")
templates.env.filters["bytes"] = lambda n: format_bytes(n) if isinstance(n, int) else "—"

router = APIRouter(tags=["calibration"])

DISABLED = ("calibration is disabled on this server: set the environment variable PEFT_PLANNER_TOKEN to a "
            "secret and restart, then send it as 'Authorization: Bearer <token>'")


class CalibrationBody(PlanRequest):
    """A PlanRequest plus where and how long to measure."""

    device: str = Field("cpu", description="'cpu' (tiny models only) or 'cuda:N'")
    warmup_steps: int = Field(1, ge=0, le=MAX_WARMUP_STEPS)
    measure_steps: int = Field(2, ge=1, le=MAX_MEASURE_STEPS)
    model_dir: str | None = Field(None, description="a local checkpoint directory on the server (from_pretrained)")
    worker_gpu: str | None = Field(None, description="fleet only (PEFT_PLANNER_DATABASE_URL): run on a worker slot "
                                   "with this catalog GPU id (or 'cpu'); None: any worker whose device kind matches")

    def plan_request(self) -> PlanRequest:
        return PlanRequest.model_validate(self.model_dump(exclude={"device", "warmup_steps", "measure_steps",
                                                                   "model_dir", "worker_gpu"}))


def _check_token(settings: Settings, presented: str | None) -> None:
    if not settings.token:
        raise HTTPException(status_code=403, detail=DISABLED)
    if presented is None or not hmac.compare_digest(presented.encode(), settings.token.encode()):
        raise HTTPException(status_code=401, detail="a valid 'Authorization: Bearer <token>' header is required",
                            headers={"WWW-Authenticate": "Bearer"})


def require_token(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Dependency: the bearer token that enables work on the server's devices."""
    token = None
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    _check_token(settings, token)


def _submit(service: CalibrationService, body: CalibrationBody) -> str:
    return service.submit(body.plan_request(), body.device, body.warmup_steps, body.measure_steps, body.model_dir,
                          body.worker_gpu)


def _view(job: dict[str, Any]) -> dict[str, Any]:
    out = {key: job[key] for key in ("id", "status", "device", "warmup_steps", "measure_steps", "model_dir",
                                     "created_at", "started_at", "finished_at", "error")}
    out["progress"] = {"percent": job["progress_percent"], "text": job["progress_text"]}
    out["request"] = job["request"]
    out["result"] = job["result"]
    out["estimate"] = job["estimate"]
    out["comparison"] = comparison(job)
    out["run"] = {key: job.get(key) for key in ("wanted_gpu", "worker_id", "worker_gpu", "attempts")}  # fleet
    return out


def _created(job_id: str) -> JSONResponse:
    return JSONResponse(status_code=202, content={"id": job_id, "status": "queued"},
                        headers={"Location": f"/api/v1/calibrations/{job_id}"})


# --- JSON API ------------------------------------------------------------------------------------------
@router.post("/api/v1/calibrations", status_code=202, dependencies=[Depends(require_token)],
             responses={202: {"description": "queued; Location names the job"}})
def create_calibration(body: CalibrationBody, service: CalibrationServiceDep) -> JSONResponse:
    """Queue a calibration: build the model with random weights (or ``model_dir``), run ``warmup_steps`` then
    ``measure_steps`` real training steps on ``device`` and record the measured memory and time next to the
    planner's estimate. Needs ``Authorization: Bearer <PEFT_PLANNER_TOKEN>``."""
    return _created(_submit(service, body))


@router.get("/api/v1/calibrations")
def list_calibrations(service: CalibrationServiceDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                      offset: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """Calibration jobs, newest first."""
    jobs = service.store.list(limit, offset)
    return {"total": service.store.count(), "limit": limit, "offset": offset, "items": [_view(j) for j in jobs]}


@router.get("/api/v1/calibrations/{job_id}")
def get_calibration(job_id: str, service: CalibrationServiceDep) -> dict[str, Any]:
    """One job: status, progress, the measured result, the stored estimate and predicted-vs-measured error %."""
    job = service.store.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no calibration {job_id}")
    return _view(job)


@router.delete("/api/v1/calibrations/{job_id}", dependencies=[Depends(require_token)])
def cancel_calibration(job_id: str, service: CalibrationServiceDep) -> dict[str, Any]:
    """Cancel a job: a queued one is dropped, a running one's worker process is killed."""
    before = service.workers.cancel(job_id)
    if before is None:
        raise HTTPException(status_code=404, detail=f"no calibration {job_id}")
    job = service.store.get(job_id)
    return {"id": job_id, "previous_status": before, "status": job["status"] if job else before}


# --- alias and pages ----------------------------------------------------------------------------------------
@router.get("/calibrate", response_class=HTMLResponse, include_in_schema=False)
def calibrate_form(request: Request, settings: SettingsDep) -> HTMLResponse:
    return _form(request, settings, EXAMPLE_BODY, {}, status=200)


EXAMPLE_BODY = json.dumps({
    "model": {"config": {"model_type": "llama", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 176,
                         "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2}},
    "method": "lora", "lora": {"r": 4, "target_modules": "all-linear"},
    "training": {"micro_batch_size": 2, "seq_len": 64},
}, indent=2)


def _form(request: Request, settings: Settings, body_json: str, form: dict[str, Any], status: int,
          errors: list[str] | None = None) -> HTMLResponse:
    return templates.TemplateResponse(request, "calibration.html", {
        "mode": "form", "body_json": body_json, "form": form, "errors": errors or [],
        "enabled": bool(settings.token), "disabled_message": DISABLED,
        "max_warmup": MAX_WARMUP_STEPS, "max_measure": MAX_MEASURE_STEPS,
    }, status_code=status)


@router.post("/calibrate", status_code=202, response_model=None)
async def calibrate_alias(request: Request, service: CalibrationServiceDep,
                          settings: SettingsDep) -> Response:
    """Alias of POST /api/v1/calibrations (JSON body + bearer token), also accepting the /calibrate form
    (fields ``request_json``, ``device``, ``warmup_steps``, ``measure_steps``, ``token``; redirects to the job)."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = dict(await request.form())
        body_json = str(form.get("request_json", ""))
        try:
            _check_token(settings, str(form.get("token", "")) or None)
        except HTTPException as exc:
            return _form(request, settings, body_json, form, exc.status_code, [str(exc.detail)])
        try:
            payload = json.loads(body_json)
            if not isinstance(payload, dict):
                raise ValueError("the request must be a JSON object")
            payload.update(device=str(form.get("device") or "cpu"),
                           warmup_steps=int(form.get("warmup_steps") or 1),
                           measure_steps=int(form.get("measure_steps") or 2))
            body = CalibrationBody.model_validate(payload)
            job_id = _submit(service, body)
        except ValidationError as exc:
            msgs = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            return _form(request, settings, body_json, form, 422, msgs)
        except PlanError as exc:
            return _form(request, settings, body_json, form, 422, [str(exc)])
        except ValueError as exc:
            return _form(request, settings, body_json, form, 422, [f"request: {exc}"])
        return RedirectResponse(f"/calibrations/{job_id}", status_code=303)
    require_token(settings, request.headers.get("authorization"))
    try:
        payload = await request.json()
    except ValueError:
        raise HTTPException(status_code=422, detail=[{"loc": ["body"], "msg": "a JSON object is required",
                                                      "type": "json_invalid"}]) from None
    try:
        body = CalibrationBody.model_validate(payload)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    return _created(_submit(service, body))


@router.get("/calibrations", response_class=HTMLResponse, include_in_schema=False)
def calibrations_page(request: Request, service: CalibrationServiceDep,
                      offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
    jobs = service.store.list(50, offset)
    rows = [{"job": j, "cmp": comparison(j)} for j in jobs]
    return templates.TemplateResponse(request, "calibrations.html", {
        "rows": rows, "total": service.store.count(), "offset": offset})


@router.get("/calibrations/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def calibration_page(request: Request, job_id: str, service: CalibrationServiceDep) -> HTMLResponse:
    job = service.store.get(job_id)
    if job is None:
        raise HTTPException(status_code=404, detail=f"no calibration {job_id}")
    return templates.TemplateResponse(request, "calibration.html", {
        "mode": "detail", "job": job, "cmp": comparison(job),
        "refresh": job["status"] in ("queued", "running")})
