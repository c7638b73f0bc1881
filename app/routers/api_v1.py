"""JSON API v1: estimate, model catalog, GPU catalog. Thin: parse, call the core, return."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.calibration.store import calibration_samples
from app.core import PlanError, PlanRequest, estimate
from app.core.calibrated import apply_calibrations
from app.core.catalog import gpus, model_config, model_configs
from app.core.fit import FitRequest, FitResult, fit, parse_budget
from app.core.result import EstimateResult
from app.deps import SettingsDep
from app.forms import parse_form
from app.jobs import recent_jobs
from app.model_info import model_detail, model_row

router = APIRouter(prefix="/api/v1", tags=["v1"])


@router.post("/estimate", response_model=EstimateResult)
def post_estimate(req: PlanRequest, settings: SettingsDep) -> EstimateResult:
    """Parameters and per-GPU memory (bytes) of one fine-tuning run; with finished GPU calibrations of the
    requested GPU in the job store (every fleet node's), the overhead is fitted from them and ``calibration``
    names them."""
    samples = calibration_samples(recent_jobs(settings), req.hardware.gpu)
    return apply_calibrations(estimate(req), req.hardware.gpu, samples)


@router.get("/models")
def list_models() -> list[dict[str, Any]]:
    """Catalog models with their architecture summary and exact parameter count."""
    return [model_row(model_id) for model_id in model_configs()]


@router.get("/models/{model_id:path}")
def get_model(model_id: str) -> dict[str, Any]:
    """A catalog model's config.json and inventory summary (parameters by group, adaptable modules)."""
    model_config(model_id)  # 422 with the list size when unknown
    return model_detail(model_id)


@router.get("/gpus")
def list_gpus() -> list[dict[str, Any]]:
    """GPU catalog: VRAM bytes, dense bf16 TFLOP/s, memory bandwidth (bytes/s), indicative price."""
    return [vars(g) for g in gpus().values()]


@router.post("/fit", response_model=FitResult)
def post_fit(body: FitRequest) -> FitResult:
    """What fits a per-GPU budget (bytes; default: hardware.gpu's VRAM): the largest micro_batch_size, seq_len
    and lora.r, the highest-fidelity method, and for every catalog GPU one card or the smallest ZeRO-3 group."""
    budget, source = body.resolved_budget()
    try:
        return fit(body.request, budget, source)
    except PlanError as exc:  # the plan sits under "request" in this body
        raise PlanError(("request", *exc.loc), exc.message) from exc


@router.get("/fit", response_model=FitResult, responses={422: {"description": "form, budget or plan error"}})
def get_fit(request: Request, budget: str | None = None) -> FitResult | JSONResponse:
    """POST /fit from the planner page's flat query parameters (model, method, r, seq_len, gpu, …) plus
    ``budget`` ('24GiB', '24GB' or bytes; empty = hardware.gpu's VRAM). Errors: 422, detail[].loc is
    ['query', 'budget'] or ['query', *PlanRequest path] (e.g. ['query', 'lora', 'r'] for the form field r)."""
    req, errors = parse_form(dict(request.query_params))
    detail = [_form_error(e) for e in errors]
    budget_bytes = None
    if budget is not None and budget.strip():
        try:
            budget_bytes = parse_budget(budget)
        except ValueError as exc:
            detail.append({"loc": ["query", "budget"], "msg": str(exc), "type": "value_error"})
    if req is None or detail:
        return JSONResponse(status_code=422, content={"detail": detail})
    try:
        return fit(req, budget_bytes, "hardware.gpu" if budget_bytes is None else "budget")
    except PlanError as exc:
        return JSONResponse(status_code=422, content={"detail": [
            {"loc": ["query", *exc.loc], "msg": exc.message, "type": "plan_error"}]})


def _form_error(message: str) -> dict[str, object]:
    """parse_form's 'lora.r: Input should be …' as {'loc': ['query', 'lora', 'r'], 'msg': …}."""
    where, _, msg = message.partition(": ")
    return {"loc": ["query", *where.split(".")], "msg": msg or message, "type": "form_error"}
