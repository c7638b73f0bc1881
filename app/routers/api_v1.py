"""JSON API v1: estimate, fit, model catalog, GPU catalog, limits. Thin: parse, call the core, return."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.cache import ResponseCache
from app.core import PlanError, PlanRequest, estimate
from app.core.calibrated import apply_calibrations
from app.core.catalog import gpus, model_config, model_configs
from app.core.fit import FitRequest, FitResult, fit, parse_budget
from app.core.levers import LeversResult, levers
from app.core.ownership import BuyVsRent, BuyVsRentRequest, plan_buy_vs_rent
from app.core.result import EstimateResult
from app.deps import EstimatePoolDep, FitPoolDep, SettingsDep
from app.errors import api_error, error_responses
from app.forms import parse_form
from app.jobs.learning import calibration_summary, measured_mfus
from app.limits import limits
from app.model_info import model_detail, model_row
from app.models.generic import ensure_generic
from app.models.resolve import resolve_request, with_source
from app.pool import HeavyPool

router = APIRouter(prefix="/api/v1", tags=["v1"])


ESTIMATES = ResponseCache(4096)
"""Catalog-model answers by (canonical request, calibration summary): the static parts are cached by the core
(app/core/estimate.py), the whole JSON here. Pasted configs are not cached (large keys, rarely repeated)."""


@router.post("/estimate", response_model=EstimateResult, responses=error_responses(413, 422, 429, 503))
async def post_estimate(req: PlanRequest, request: Request, settings: SettingsDep,
                        pool: EstimatePoolDep) -> Response:
    """Parameters and per-GPU memory (bytes) of one fine-tuning run; with finished GPU calibrations of the
    requested GPU in the job store (every fleet node's), the overhead is fitted from them and ``calibration``
    names them. ``model`` may be a Hub id outside the catalog (its config.json is fetched; ``source`` says from
    where)."""
    summary = calibration_summary(settings, req.hardware.gpu)
    if isinstance(req.model, str) and req.model in model_configs():
        key: tuple[str, object] | None = (req.model_dump_json(), summary)  # a catalog model: its answer is cached
    else:
        key = None  # a pasted config (large key) or a Hub id (its config may change)
    body = ESTIMATES.get(key) if key is not None else None
    if body is None:
        def answer(check: Callable[[], None]) -> bytes:
            plan, source = resolve_request(req)  # a Hub fetch or a generic build runs in the pool, not the loop
            return apply_calibrations(with_source(estimate(plan), source), summary).model_dump_json().encode()

        body = await pool.run(request, answer)
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
    ensure_generic(PlanRequest(model=model_id))  # an architecture outside the rules: built once (worker, cached)
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
        return await pool.run(request, lambda check: fit(resolve_request(body.request)[0], budget, source, check))
    except PlanError as exc:  # the plan sits under "request" in this body
        raise PlanError(("request", *exc.loc), exc.message) from exc


@router.get("/fit", response_model=FitResult, responses=error_responses(422, 429, 503, 504))
async def get_fit(request: Request, pool: FitPoolDep, budget: str | None = None) -> FitResult | JSONResponse:
    """POST /fit from the planner page's flat query parameters (model, method, r, seq_len, gpu, …) plus
    ``budget`` ('24GiB', '24GB' or bytes; empty = hardware.gpu's VRAM). Errors: 422, detail[].loc is
    ['query', 'budget'] or ['query', *PlanRequest path] (e.g. ['query', 'lora', 'r'] for the form field r)."""
    return await _from_query(request, pool, budget, lambda req, b, check: fit(
        req, b, "hardware.gpu" if b is None else "budget", check))


@router.post("/levers", response_model=LeversResult, responses=error_responses(413, 422, 429, 504))
async def post_levers(body: FitRequest, request: Request, pool: FitPoolDep) -> LeversResult:
    """"Make it fit": the changes that lower this plan's per-GPU total (no fp32 upcast, checkpointing, 8-bit or
    paged optimizer, shorter sequences, smaller micro-batch, smaller r, LoRA/QLoRA, ZeRO-3/FSDP over more cards,
    the cheapest card that holds it), each with its resulting total (bytes), whether it fits the budget, and
    what it costs in speed, fidelity or money. Same body as POST /fit; runs in the fit pool."""
    budget, _ = body.resolved_budget()
    try:
        return await pool.run(request, lambda check: levers(resolve_request(body.request)[0], budget))
    except PlanError as exc:
        raise PlanError(("request", *exc.loc), exc.message) from exc


@router.get("/levers", response_model=LeversResult, responses=error_responses(422, 429, 504))
async def get_levers(request: Request, pool: FitPoolDep, budget: str | None = None) -> LeversResult | JSONResponse:
    """POST /levers from the planner page's flat query parameters plus ``budget`` (as GET /fit)."""
    return await _from_query(request, pool, budget, lambda req, b, check: levers(req, b))


@router.post("/buy-vs-rent", response_model=BuyVsRent, responses=error_responses(413, 422))
def post_buy_vs_rent(body: BuyVsRentRequest, settings: SettingsDep) -> BuyVsRent:
    """Buying consumer/workstation cards that hold the plan vs renting the cheapest cloud GPU that does: purchase
    (USD), run hours, power per run (TDP × USD/kWh when given), break-even runs and hours. Time uses each GPU's
    class MFU, or the MFU measured by this server's calibrations of it, unless ``mfu`` is given."""
    try:
        return plan_buy_vs_rent(body, measured_mfus(settings))
    except PlanError as exc:
        raise PlanError(("request", *exc.loc), exc.message) from exc


async def _from_query(request: Request, pool: HeavyPool, budget: str | None,
                      answer: Callable[[PlanRequest, int | None, Callable[[], None]], BaseModel]) -> Any:
    """``answer(plan, budget bytes, check)`` in the fit pool for the page's query parameters, or a 422 naming
    each bad field."""
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
        return await pool.run(request, lambda check: answer(resolve_request(req)[0], budget_bytes, check))
    except PlanError as exc:
        return JSONResponse(status_code=422, content={"detail": [
            {"loc": ["query", *exc.loc], "msg": exc.message, "type": "plan_error"}]})


def _form_error(message: str) -> dict[str, object]:
    """parse_form's 'lora.r: Input should be …' as {'loc': ['query', 'lora', 'r'], 'msg': …}."""
    where, _, msg = message.partition(": ")
    return {"loc": ["query", *where.split(".")], "msg": msg or message, "type": "form_error"}
