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

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.templating import Jinja2Templates
from pydantic import Field, ValidationError

from app.calibration.measure import MAX_MEASURE_STEPS, MAX_WARMUP_STEPS
from app.calibration.service import CalibrationService, comparison, redacted
from app.core.catalog import gpus
from app.core.errors import PlanError
from app.core.request import PlanRequest
from app.core.units import format_bytes
from app.deps import CalibrationServiceDep, SettingsDep
from app.errors import api_error, error_responses
from app.forms import form_to_body
from app.limits import MAX_LIST_LIMIT, MAX_OFFSET
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent
templates = Jinja2Templates(directory=ROOT / "templates")
templates.env.filters["bytes"] = lambda n: format_bytes(n) if isinstance(n, int) else "—"
templates.env.globals["gpu_ids"] = frozenset(gpus())

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


def _token_ok(settings: Settings, presented: str | None) -> bool:
    """The presented token equals the configured one (constant-time comparison)."""
    return bool(settings.token) and presented is not None and hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), settings.token.encode())


def _check_token(settings: Settings, presented: str | None) -> None:
    if not settings.token:
        raise api_error(403, ["header", "authorization"], DISABLED, "disabled")
    if not _token_ok(settings, presented):
        raise api_error(401, ["header", "authorization"], "a valid 'Authorization: Bearer <token>' header is required",
                        "unauthorized", headers={"WWW-Authenticate": "Bearer"})


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


BEARER = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="the server's PEFT_PLANNER_TOKEN (calibrations run work on its devices)")
"""The OpenAPI security scheme of the endpoints that start or stop work, so /docs' "Authorize" can send it."""


def require_token(settings: SettingsDep,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None) -> None:
    """Dependency: the bearer token that enables work on the server's devices."""
    _check_token(settings, credentials.credentials if credentials is not None else None)


def is_token_holder(settings: SettingsDep,
                    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)] = None) -> bool:
    """Dependency: whether the reader presented the token (full error details, server paths) or not."""
    return _token_ok(settings, credentials.credentials if credentials is not None else None)


TokenHolderDep = Annotated[bool, Depends(is_token_holder)]


def _submit(service: CalibrationService, body: CalibrationBody) -> str:
    return service.submit(body.plan_request(), body.device, body.warmup_steps, body.measure_steps, body.model_dir,
                          body.worker_gpu)


def _view(job: dict[str, Any], full: bool) -> dict[str, Any]:
    """A job as JSON; ``full`` (token holder) includes tracebacks and server paths, else they are redacted."""
    job = job if full else redacted(job)
    out = {key: job.get(key) for key in ("id", "status", "device", "measured_device", "warmup_steps",
                                         "measure_steps", "model_dir", "created_at", "started_at", "finished_at",
                                         "error")}
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
             responses={202: {"description": "queued; Location names the job"},
                        **error_responses(401, 403, 413, 422)})
def create_calibration(body: CalibrationBody, service: CalibrationServiceDep) -> JSONResponse:
    """Queue a calibration: build the model with random weights (or ``model_dir``), run ``warmup_steps`` then
    ``measure_steps`` real training steps on ``device`` and record the measured memory and time next to the
    planner's estimate. Needs ``Authorization: Bearer <PEFT_PLANNER_TOKEN>``."""
    return _created(_submit(service, body))


Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


@router.get("/api/v1/calibrations", responses=error_responses(422))
def list_calibrations(service: CalibrationServiceDep, full: TokenHolderDep,
                      limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 50, offset: Offset = 0) -> dict[str, Any]:
    """Calibration jobs, newest first. Errors of failed jobs carry tracebacks and server paths only for the
    token holder (``Authorization: Bearer``); others get the first line with paths replaced by '…'."""
    jobs = service.store.list(limit, offset)
    return {"total": service.store.count(), "limit": limit, "offset": offset,
            "items": [_view(j, full) for j in jobs]}


def _not_found(job_id: str) -> HTTPException:
    return api_error(404, ["path", "job_id"], f"no calibration {job_id!r}", "not_found")


@router.get("/api/v1/calibrations/{job_id}", responses=error_responses(404))
def get_calibration(job_id: str, service: CalibrationServiceDep, full: TokenHolderDep) -> dict[str, Any]:
    """One job: status, progress, the measured result, the stored estimate and predicted-vs-measured error %."""
    job = service.store.get(job_id)
    if job is None:
        raise _not_found(job_id)
    return _view(job, full)


@router.delete("/api/v1/calibrations/{job_id}", dependencies=[Depends(require_token)],
               responses=error_responses(401, 403, 404))
def cancel_calibration(job_id: str, service: CalibrationServiceDep) -> dict[str, Any]:
    """Cancel a job: a queued one is dropped, a running one's worker process is killed."""
    before = service.workers.cancel(job_id)
    if before is None:
        raise _not_found(job_id)
    job = service.store.get(job_id)
    return {"id": job_id, "previous_status": before, "status": job["status"] if job else before}


# --- alias and pages ----------------------------------------------------------------------------------------
@router.get("/calibrate", response_class=HTMLResponse, include_in_schema=False)
def calibrate_form(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The form; with the planner's query parameters (``/calibrate?model=…&method=qlora&…``) it holds that plan."""
    query = dict(request.query_params)
    if query:
        return _form(request, settings, _plan_json(form_to_body(query)), {}, status=200, from_plan=True)
    return _form(request, settings, EXAMPLE_BODY, {}, status=200)


def _plan_json(body: dict[str, Any]) -> str:
    """The planner's plan as the request JSON, every default spelled out (as typed when it does not validate:
    the calibrate form then names the field)."""
    try:
        return json.dumps(PlanRequest.model_validate(body).model_dump(mode="json"), indent=2)
    except ValidationError:
        return json.dumps(body, indent=2)


@router.post("/calibrate/plan", response_class=HTMLResponse, include_in_schema=False)
async def calibrate_this_plan(request: Request, settings: SettingsDep) -> HTMLResponse:
    """'Calibrate this plan' from the planner: its form fields (a pasted config.json included) → the calibrate
    form holding that plan as JSON, to be sent with the token. Starts nothing."""
    async with request.form() as data:  # closes the uploads' spooled files
        form = {k: v for k, v in data.items() if isinstance(v, str)}
    config_text = form.pop("config", "") or None
    return _form(request, settings, _plan_json(form_to_body(form, config_text)), {}, status=200, from_plan=True)


EXAMPLE_BODY = json.dumps({
    "model": {"config": {"model_type": "llama", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 176,
                         "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2}},
    "method": "lora", "lora": {"r": 4, "target_modules": "all-linear"},
    "training": {"micro_batch_size": 2, "seq_len": 64},
}, indent=2)


def _form(request: Request, settings: Settings, body_json: str, form: dict[str, Any], status: int,
          errors: list[str] | None = None, from_plan: bool = False) -> HTMLResponse:
    return templates.TemplateResponse(request, "calibration.html", {
        "mode": "form", "body_json": body_json, "form": form, "errors": errors or [],
        "enabled": bool(settings.token), "disabled_message": DISABLED, "from_plan": from_plan,
        "max_warmup": MAX_WARMUP_STEPS, "max_measure": MAX_MEASURE_STEPS,
    }, status_code=status)


@router.post("/calibrate", status_code=202, response_model=None, openapi_extra={"security": [{"bearer": []}]},
             responses={303: {"description": "form submitted: redirect to the job's page"},
                        **error_responses(400, 401, 403, 413, 422)})
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
            return _form(request, settings, body_json, form, exc.status_code, [exc.detail[0]["msg"]])
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
    _check_token(settings, _bearer(request.headers.get("authorization")))
    try:
        payload = await request.json()
    except ValueError:
        raise api_error(422, ["body"], "a JSON object is required", "json_invalid") from None
    except RecursionError:
        raise api_error(422, ["body"], "the request body is nested deeper than the JSON parser allows "
                        "(about 1,000 levels)", "json_invalid") from None
    try:
        body = CalibrationBody.model_validate(payload)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    return _created(_submit(service, body))


@router.get("/calibrations", response_class=HTMLResponse, include_in_schema=False)
def calibrations_page(request: Request, service: CalibrationServiceDep, offset: Offset = 0) -> HTMLResponse:
    jobs = service.store.list(50, offset)
    rows = [{"job": j, "cmp": comparison(j)} for j in jobs]
    return templates.TemplateResponse(request, "calibrations.html", {
        "rows": rows, "total": service.store.count(), "offset": offset})


@router.get("/calibrations/{job_id}", response_class=HTMLResponse, include_in_schema=False)
def calibration_page(request: Request, job_id: str, service: CalibrationServiceDep) -> HTMLResponse:
    """A job's page (always redacted: a page request carries no bearer token)."""
    return _detail(request, service, job_id)


def _detail(request: Request, service: CalibrationService, job_id: str, errors: list[str] | None = None,
            status: int = 200) -> HTMLResponse:
    job = service.store.get(job_id)
    if job is None:
        raise _not_found(job_id)
    active = job["status"] in ("queued", "running")
    return templates.TemplateResponse(request, "calibration.html", {
        "mode": "detail", "job": redacted(job), "cmp": comparison(job), "errors": errors or [],
        "refresh": active and not errors, "cancellable": active}, status_code=status)


@router.post("/calibrations/{job_id}/cancel", response_class=HTMLResponse, include_in_schema=False,
             response_model=None)
async def cancel_from_page(request: Request, job_id: str, service: CalibrationServiceDep,
                           settings: SettingsDep) -> Response:
    """The job page's cancel button (HTML forms cannot send DELETE): form field ``token``; same effect as
    ``DELETE /api/v1/calibrations/{id}``, then back to the job page."""
    form = await request.form()
    try:
        _check_token(settings, str(form.get("token", "")) or None)
    except HTTPException as exc:
        return _detail(request, service, job_id, [exc.detail[0]["msg"]], exc.status_code)
    if service.workers.cancel(job_id) is None:
        raise _not_found(job_id)
    return RedirectResponse(f"/calibrations/{job_id}", status_code=303)
