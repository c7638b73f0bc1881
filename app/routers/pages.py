"""Server-rendered pages: the planner at /. Works without JavaScript; the URL carries the inputs."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, UploadFile
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.core import PlanError, estimate, format_bytes
from app.core.catalog import gpus, model_configs
from app.core.request import LoraSpec, QuantizationSpec, TrainingSpec
from app.forms import DEFAULT_MODEL, form_to_body, parse_form
from app.views import SEGMENTS, bar_segments

ROOT = Path(__file__).resolve().parent.parent.parent
templates = Jinja2Templates(directory=ROOT / "templates")
templates.env.filters["bytes"] = format_bytes
templates.env.filters["thousands"] = lambda n: f"{n:,}"

MAX_UPLOAD_BYTES = 256 * 1024

router = APIRouter(include_in_schema=False)


def _render(request: Request, form: dict[str, str], config_text: str | None) -> HTMLResponse:
    req, errors = parse_form(form, config_text)
    result = None
    if req is not None:
        try:
            result = estimate(req)
        except PlanError as exc:
            errors = [f"{'.'.join(str(p) for p in exc.loc)}: {exc.message}"]
    body = form_to_body(form, config_text)
    context = {
        "request": request,
        "form": form,
        "body": body,
        "config_text": config_text or "",
        "models": list(model_configs()),
        "gpus": list(gpus().values()),
        "result": result,
        "errors": errors,
        "segments": bar_segments(result, result.memory.total) if result else [],
        "legend": SEGMENTS,
        "defaults": {"lora": LoraSpec(), "quant": QuantizationSpec(), "training": TrainingSpec()},
        "default_model": DEFAULT_MODEL,
    }
    return templates.TemplateResponse(request, "index.html", context, status_code=422 if errors else 200)


@router.get("/", response_class=HTMLResponse)
def planner(request: Request) -> HTMLResponse:
    return _render(request, dict(request.query_params), None)


@router.post("/", response_class=HTMLResponse)
async def planner_with_config(request: Request) -> HTMLResponse:
    """Same page for a pasted or uploaded config.json (multipart or urlencoded form)."""
    data = await request.form()
    form = {k: v for k, v in data.items() if isinstance(v, str)}
    config_text = form.pop("config", "") or None
    upload = data.get("config_file")
    if isinstance(upload, UploadFile) and upload.filename:
        raw = await upload.read(MAX_UPLOAD_BYTES + 1)
        config_text = raw[:MAX_UPLOAD_BYTES].decode("utf-8", errors="replace") if len(raw) <= MAX_UPLOAD_BYTES \
            else '"config_file over 256 KiB"'
    return _render(request, form, config_text)
