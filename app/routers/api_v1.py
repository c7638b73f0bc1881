"""JSON API v1: estimate, fit, model catalog, GPU catalog, limits. Thin: parse, call the core, return."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.cache import ResponseCache
from app.calibration.store import calibration_summary
from app.core import PlanError, PlanRequest, estimate
from app.core.calibrated import apply_calibrations
from app.core.catalog import gpus, model_config, model_configs
from app.core.fit import FitRequest, FitResult, fit, parse_budget
from app.core.result import EstimateResult
from app.deps import EstimatePoolDep, FitPoolDep, SettingsDep
from app.errors import api_error, error_responses
from app.forms import parse_form
from app.limits import limits
from app.model_info import model_detail, model_row

router = APIRouter(prefix="/api/v1", tags=["v1"])


ESTIMATES = ResponseCache(4096)
"""Catalog-model answers by (canonical request, calibration summary): the static parts are cached by the core
(app/core/estimate.py), the whole JSON here. Pasted configs are not cached (large keys, rarely repeated)."""


@router.post("/estimate", response_model=EstimateResult, responses=error_responses(413, 422, 429, 503))
async def post_estimate(req: PlanRequest, request: Request, settings: SettingsDep,
                        pool: EstimatePoolDep) -> Response:
    """Parameters and per-GPU memory (bytes) of one fine-tuning run; with finished GPU calibrations of the
    requested GPU on this server, the overhead is fitted from them and ``calibration`` names them."""
    summary = calibration_summary(settings.database_path, req.hardware.gpu)
    key = (req.model_dump_json(), summary) if isinstance(req.model, str) else None
    body = ESTIMATES.get(key) if key is not None else None
    if body is None:
        body = await pool.run(request, lambda check: apply_calibrations(estimate(req), summary).model_dump_json()
                              .encode())
        if key is not None:
            ESTIMATES.put(key, body)
    return Response(body, media_type="application/json")


@router.get("/models")
def list_models() -> list[dict[str, Any]]:
    """Catalog models with their architecture summary and exact parameter count."""
    return [model_row(model_id) for model_id in model_configs()]


@router.get("/models/{model_id:path}", responses=error_responses(404))
def get_model(model_id: str) -> dict[str, Any]:
    """A catalog model's config.json and inventory summary (parameters by group, adaptable modules)."""
    try:
        model_config(model_id)
    except PlanError as exc:
        raise api_error(404, ["path", "model_id"], exc.message, "not_found") from None
    return model_detail(model_id)


@router.get("/gpus")
def list_gpus() -> list[dict[str, Any]]:
    """GPU catalog: VRAM bytes, dense bf16 TFLOP/s, memory bandwidth (bytes/s), indicative price."""
    return [vars(g) for g in gpus().values()]


@router.get("/limits")
def get_limits(settings: SettingsDep) -> dict[str, Any]:
    """Every input limit (sizes, list lengths, config dimensions) and work bound (pools, queues, time budgets in
    seconds) of this server; docs/limits.md explains them."""
    return limits(settings)


@router.post("/fit", response_model=FitResult, responses=error_responses(413, 422, 429, 503, 504))
async def post_fit(body: FitRequest, request: Request, pool: FitPoolDep) -> FitResult:
    """What fits a per-GPU budget (bytes; default: hardware.gpu's VRAM): the largest micro_batch_size, seq_len
    and lora.r, the highest-fidelity method, and for every catalog GPU one card or the smallest ZeRO-3 group.
    Runs in a bounded pool (429 when full, 504 past its time budget; GET /api/v1/limits)."""
    budget, source = body.resolved_budget()
    try:
        return await pool.run(request, lambda check: fit(body.request, budget, source, check))
    except PlanError as exc:  # the plan sits under "request" in this body
        raise PlanError(("request", *exc.loc), exc.message) from exc


@router.get("/fit", response_model=FitResult, responses=error_responses(422, 429, 503, 504))
async def get_fit(request: Request, pool: FitPoolDep, budget: str | None = None) -> FitResult | JSONResponse:
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
    source = "hardware.gpu" if budget_bytes is None else "budget"
    try:
        return await pool.run(request, lambda check: fit(req, budget_bytes, source, check))
    except PlanError as exc:
        return JSONResponse(status_code=422, content={"detail": [
            {"loc": ["query", *exc.loc], "msg": exc.message, "type": "plan_error"}]})


def _form_error(message: str) -> dict[str, object]:
    """parse_form's 'lora.r: Input should be …' as {'loc': ['query', 'lora', 'r'], 'msg': …}."""
    where, _, msg = message.partition(": ")
    return {"loc": ["query", *where.split(".")], "msg": msg or message, "type": "form_error"}
