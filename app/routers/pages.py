"""Server-rendered pages: the planner at /. Works without JavaScript; the URL carries the inputs.

- ``GET /``: the compare view (full, LoRA, QLoRA, DoRA, QDoRA side by side) and the selected method's details;
- ``POST /``: the same page for a pasted or uploaded config.json;
- ``GET /compare.json``: the same view as JSON for static/planner.js (numbers, bar geometry, HTML fragments);
- ``GET /estimate.json``: POST /api/v1/estimate's response for the page's plan, as a download.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile  # what request.form() holds (FastAPI's is a subclass)

from app.cache import ResponseCache
from app.core import PlanError, estimate, format_bytes
from app.core.catalog import gpus, model_configs
from app.core.levers import levers
from app.core.request import LoraSpec, QuantizationSpec, TrainingSpec
from app.core.throughput import DEFAULT_SLOWDOWN, DEFAULT_TOKENS
from app.deps import EstimatePoolDep, SettingsDep
from app.exporters import framework_config
from app.exporters.hf import curl_snippet, python_snippet
from app.formatting import format_flops, format_hours, format_tokens, format_usd, short_gpu
from app.forms import DEFAULT_MODEL, form_to_body, parse_cost_options, parse_form
from app.gpu_table import gpu_rows, price_dates, price_source
from app.importers import ImportNote
from app.jobs.learning import data_version, measured_mfus, measured_slowdowns
from app.limits import MAX_UPLOAD_BYTES
from app.models.resolve import resolve_request, with_source
from app.settings import Settings
from app.views import (
    METHODS,
    SEGMENTS,
    bar_label,
    bar_segments,
    build_compare,
    compare_data,
    lever_fields,
    paged_verdict,
    source_text,
    view_globals,
)

ROOT = Path(__file__).resolve().parent.parent.parent
templates = Jinja2Templates(directory=ROOT / "templates")
templates.env.filters["bytes"] = format_bytes
templates.env.filters["thousands"] = lambda n: f"{n:,}"
templates.env.filters["hours"] = format_hours
templates.env.filters["usd"] = format_usd
templates.env.filters["flops"] = format_flops
templates.env.filters["tokens"] = format_tokens
templates.env.filters["short_gpu"] = short_gpu
templates.env.globals.update(view_globals=view_globals, bar_label=bar_label, gpu_rows=gpu_rows,
                             price_dates=price_dates, price_source=price_source, source_text=source_text)

NOT_IN_URL = ("config", "config_file", "train_config", "train_files")
# empty means "default" for these, so links leave them out (not target_modules: empty there = PEFT's default)
DROP_EMPTY = ("tokens", "mfu", "price", "qlora_slowdown", "dora_slowdown", "modules_to_save", "attn_implementation",
              "usd_per_kwh", "buy_price", "target_parameters", "layers_to_transform", "enable_lora", "use_reentrant",
              "momentum", "num_output_chunks", "custom_sharded_layers")

router = APIRouter(include_in_schema=False)


def _query(form: dict[str, str], **changes: str) -> str:
    """The page's query string for ``form`` (a pasted config is not part of it)."""
    merged = {k: v for k, v in {**form, **changes}.items()
              if k not in NOT_IN_URL and not (v == "" and k in DROP_EMPTY)}
    return urlencode(merged)


def _context(request: Request, form: dict[str, str], config_text: str | None, settings: Settings,
             import_errors: Sequence[str] = (), import_notes: Sequence[ImportNote] = ()) -> dict[str, Any]:
    req, errors = parse_form(form, config_text)
    options, option_errors = parse_cost_options(form)
    errors = [*import_errors, *errors, *option_errors]
    if req is not None and isinstance(req.model, str):
        # measured QLoRA slowdowns from this server's GPU calibrations replace the default (not the user's)
        measured = measured_slowdowns(settings, req.model)
        if "qlora" in measured and options.qlora_slowdown is None:
            options = replace(options, qlora_slowdown=measured["qlora"])
    options = replace(options, measured_mfu=measured_mfus(settings))
    view = None
    result = None
    plan, source = req, None  # the core's request: a Hub id becomes its config (the snippets keep the id)
    if req is not None:
        try:
            plan, source = resolve_request(req)
        except PlanError as exc:
            errors = [*errors, f"{'.'.join(str(p) for p in exc.loc)}: {exc.message}"]
            plan = None
    if plan is not None and not option_errors:
        view = build_compare(plan, options, source)
        col = view.column
        result = col.result
        if col.error:
            errors = [col.error]
        if not any(c.ok for c in view.columns):
            view = None  # the plan itself is refused (e.g. an unknown GPU): the error says why
    body = form_to_body(form, config_text)
    base_url = str(request.base_url)
    lever_result = None
    if view is not None and plan is not None and result is not None:
        lever_result = levers(plan)  # the resolved plan: a Hub id's config, a generic model's inventory
    lever_links = ([_query(form, **lever_fields(lv)) for lv in lever_result.levers]
                   if lever_result is not None and config_text is None else [])
    return {
        "request": request,
        "form": form,
        "body": body,
        "config_text": config_text or "",
        "models": list(model_configs()),
        "gpus": list(gpus().values()),
        "result": result,
        "view": view,
        "errors": errors,
        "segments": bar_segments(result, result.memory.total) if result else [],
        "legend": SEGMENTS,
        "methods": METHODS,
        "defaults": {"lora": LoraSpec(), "quant": QuantizationSpec(), "training": TrainingSpec(),
                     "tokens": format_tokens(DEFAULT_TOKENS), "mfu": "per GPU class", "slowdown": DEFAULT_SLOWDOWN},
        "default_model": DEFAULT_MODEL,
        "query": _query(form),
        "tab_query": {m: _query(form, method=m) for m, _, _ in METHODS},
        "curl": curl_snippet(req, base_url) if req is not None else "",
        "python": python_snippet(req) if req is not None else "",
        "framework_config": framework_config(req) if req is not None else None,
        "estimate_json": json.dumps(result.model_dump(mode="json"), indent=2) if result else "",
        "levers": lever_result,
        "lever_links": lever_links,
        "paged_note": paged_verdict(result, view.gpu.vram_bytes) if result and view else "",
        "import_notes": [n for n in import_notes if n.kind != "ignored"],
    }


def render_page(request: Request, form: dict[str, str], config_text: str | None, settings: Settings,
                import_errors: Sequence[str] = (), import_notes: Sequence[ImportNote] = ()) -> HTMLResponse:
    """The planner page for ``form`` (and a pasted config.json); ``import_errors`` / ``import_notes``: what POST
    /import says about the uploaded configs. May fetch a Hub config: runs in a worker thread."""
    context = _context(request, form, config_text, settings, import_errors, import_notes)
    return templates.TemplateResponse(request, "index.html", context, status_code=422 if context["errors"] else 200)


PAGES = ResponseCache(1024)
"""Rendered planner pages by (base URL, raw query string, calibration data version)."""


@router.get("/", response_class=HTMLResponse)
async def planner(request: Request, settings: SettingsDep, pool: EstimatePoolDep) -> Response:
    key = (str(request.base_url), request.url.query, data_version(settings))
    cached = PAGES.get(key)
    if cached is None:
        form = dict(request.query_params)
        page = await pool.run(request, lambda check: render_page(request, form, None, settings))
        cached = page.status_code.to_bytes(2, "big") + bytes(page.body)
        PAGES.put(key, cached)
    return HTMLResponse(cached[2:], status_code=int.from_bytes(cached[:2], "big"))


@router.post("/", response_class=HTMLResponse)
async def planner_with_config(request: Request, settings: SettingsDep) -> HTMLResponse:
    """Same page for a pasted or uploaded config.json (multipart or urlencoded form)."""
    async with request.form() as data:  # closes the uploads' spooled files
        form = {k: v for k, v in data.items() if isinstance(v, str)}
        config_text = form.pop("config", "") or None
        upload = data.get("config_file")
        if isinstance(upload, UploadFile) and upload.filename:
            raw = await upload.read(MAX_UPLOAD_BYTES + 1)
            config_text = raw[:MAX_UPLOAD_BYTES].decode("utf-8", errors="replace") if len(raw) <= MAX_UPLOAD_BYTES \
                else '"config_file over 256 KiB"'
    # a pasted model_type outside the hand-written rules is built in a worker: keep the event loop free
    return await run_in_threadpool(render_page, request, form, config_text, settings)


@router.get("/compare.json")
def compare_json(request: Request, settings: SettingsDep) -> JSONResponse:
    """The compare view for the page's query parameters: per method the display strings, bar segments (percent
    of one common scale), the raw estimate and the time/cost report; plus the page's HTML fragments."""
    form = dict(request.query_params)
    ctx = _context(request, form, None, settings)
    view = ctx["view"]
    fragments = {}
    for name in ("notes", "levers", "costs", "details", "snippets"):
        fragments[name] = templates.get_template(f"_{name}.html").render(ctx) if view else ""
    content = {
        "query": ctx["query"],
        "errors": ctx["errors"],
        **(compare_data(view) if view else {"methods": {}}),
        "fragments": fragments,
        "snippets": {"curl": ctx["curl"], "python": ctx["python"],
                     "framework": ctx["framework_config"].text() if ctx["framework_config"] else None},
        "download": f"/estimate.json?{ctx['query']}",
    }
    return JSONResponse(content, status_code=422 if view is None else 200)


@router.get("/estimate.json")
def estimate_json(request: Request) -> Response:
    """POST /api/v1/estimate's response for the page's plan (query parameters), as a file download."""
    form = dict(request.query_params)
    req, errors = parse_form(form)
    if req is None:
        return JSONResponse({"detail": [{"loc": ["query"], "msg": e, "type": "value_error"} for e in errors]},
                            status_code=422)
    try:
        req, source = resolve_request(req)
        result = with_source(estimate(req), source)
    except PlanError as exc:
        return JSONResponse({"detail": [{"loc": ["query", *exc.loc], "msg": exc.message, "type": "plan_error"}]},
                            status_code=422)
    model = source.hub_id or "pasted-config"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"peft-plan-{model}-{req.method}") + ".json"
    return Response(json.dumps(result.model_dump(mode="json"), indent=2), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
