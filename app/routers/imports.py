"""Configs people already have, uploaded: ``POST /api/v1/import`` answers the PlanRequest body they map to and
every note (what each file was read as; keys unknown, unsupported, ignored or assumed), and ``POST /import`` shows
the planner page with that plan in its form. Thin: read the files, call app.importers, render.

The importers run as the CLI's do (app/importers), except that they read no file a config names: on the server
such a path is on the user's machine (:func:`app.importers.without_local_files`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field
from starlette.datastructures import FormData, UploadFile

from app.deps import SettingsDep
from app.errors import api_error, error_responses
from app.forms import body_to_form
from app.importers import ConfigImportError, ImportNote, import_texts, planner_defaults
from app.limits import MAX_IMPORT_FILES, MAX_IMPORT_VALUES, MAX_UPLOAD_BYTES
from app.routers.pages import render_page
from app.settings import Settings

router = APIRouter()

KEPT_FROM_PAGE = ("gpu", "tokens", "mfu", "price", "qlora_slowdown", "dora_slowdown", "usd_per_kwh", "buy_price")
"""Page fields a trainer config does not say (the card, and the time and cost inputs): an import keeps what the
form held."""


class Note(BaseModel):
    source: str = Field(description="the file, as uploaded (or 'planner' for a planner default)")
    key: str = Field(description="the key inside the file, e.g. 'fsdp_config.offload_params'")
    kind: str = Field(description="detected, unknown, unsupported, ignored, assumed or note (docs/cli.md)")
    message: str
    field: str | None = Field(None, description="kind 'assumed': the request field given a default")
    value: Any = Field(None, description="kind 'assumed': the default it was given")


class ImportResult(BaseModel):
    request: dict[str, Any] = Field(description="the PlanRequest body: POST it to /api/v1/estimate")
    notes: list[Note] = Field(description="per file: what it was read as (kind 'detected'), then each key that did "
                              "not map one-to-one; last, the planner's defaults for fields no file gave")
    page: str | None = Field(description="the planner page for this plan; null when the model is a config.json, "
                             "which is not part of a URL (POST /import shows it)")


def _count_values(node: Any, limit: int) -> int:
    """JSON values in ``node``, counted until ``limit`` is passed (a YAML alias bomb is not walked to its end)."""
    seen, stack = 0, [node]
    while stack and seen <= limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return seen


def run_import(files: list[tuple[str, str]]) -> tuple[dict[str, Any], list[ImportNote]]:
    """The merged body and notes of uploaded ``(name, text)`` files, or the API error naming the file."""
    if not files:
        raise api_error(422, ["body"], "no file: upload one or more trainer configs (multipart, any field name) or "
                        "send one as the body", "no_file")
    try:
        body, notes = import_texts(files)
    except ConfigImportError as exc:
        loc: list[str | int] = ["body", exc.source, *([exc.key] if exc.key else [])]
        raise api_error(422, loc, exc.message, "import_error") from None
    if _count_values(body, MAX_IMPORT_VALUES) > MAX_IMPORT_VALUES:
        raise api_error(413, ["body"], f"the imported plan has more than {MAX_IMPORT_VALUES} JSON values", "too_large")
    try:
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError):
        raise api_error(422, ["body"], "the imported plan holds a value JSON cannot carry (NaN, Infinity, binary "
                        "data, a date, a set): write it as a number or a string", "not_json") from None
    return body, notes + planner_defaults(body)


def _decoded(name: str, raw: bytes) -> tuple[str, str]:
    if len(raw) > MAX_UPLOAD_BYTES:
        raise api_error(413, ["body", name], f"over {MAX_UPLOAD_BYTES // 1024} KiB", "too_large")
    try:
        return name, raw.decode("utf-8")
    except UnicodeDecodeError:
        raise api_error(422, ["body", name], "not UTF-8 text: upload the YAML, JSON or script itself",
                        "not_text") from None


async def _uploads(form: FormData, text_fields: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(name, text) of each uploaded file part with a file name, then each non-empty pasted text field."""
    out: list[tuple[str, str]] = []
    parts = [v for _, v in form.multi_items() if isinstance(v, UploadFile) and v.filename]
    if len(parts) > MAX_IMPORT_FILES:
        raise api_error(413, ["body"], f"at most {MAX_IMPORT_FILES} files in one import", "too_many_files")
    for part in parts:
        out.append(_decoded(part.filename or "upload", await part.read(MAX_UPLOAD_BYTES + 1)))
    for field in text_fields:
        text = form.get(field)
        if isinstance(text, str) and text.strip():
            out.append(_decoded(f"pasted {field}", text.encode("utf-8")))
    return out


def _page_url(body: dict[str, Any]) -> str | None:
    form, config_text = body_to_form(body)
    return None if config_text is not None else "/?" + urlencode(form)


@router.post("/api/v1/import", tags=["v1"], response_model=ImportResult, responses=error_responses(413, 422))
async def post_import(request: Request, filename: str = "upload") -> ImportResult:
    """Trainer configs → the PlanRequest body. Upload them as multipart parts (any field name; merged in order,
    later files winning, as the CLI merges its FILEs), or send one file as the body with ``filename`` naming it.
    Formats: axolotl, TRL, LLaMA-Factory, ms-swift, litgpt and torchtune YAML (or their command lines), Unsloth
    scripts, HF TrainingArguments, accelerate configs, PEFT adapter_config.json, BitsAndBytesConfig, a model's
    config.json, a DeepSpeed config, a PlanRequest (docs/cli.md). A path inside a config (a model directory, a
    DeepSpeed JSON) is not read: upload that file with the config."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=MAX_IMPORT_FILES + 1) as form:  # closes the uploads' spooled files
            files = await _uploads(form)
    else:
        raw = await request.body()
        files = [_decoded(filename[:200], raw)] if raw.strip() else []
    body, notes = await run_in_threadpool(run_import, files)
    return ImportResult(request=body, notes=[Note(**vars(n)) for n in notes], page=_page_url(body))


@router.post("/import", response_class=HTMLResponse, include_in_schema=False)
async def import_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The planner form's "Import" button: the planner page with the imported plan in its form and the notes above
    the results; an import error is shown as the page's error (422), naming the file."""
    async with request.form(max_files=MAX_IMPORT_FILES + 1) as form:  # closes the uploads' spooled files
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            files = await _uploads(form, ("train_config",))
        except HTTPException as exc:
            return await _failed_import(request, fields, settings, exc)
    try:
        body, notes = await run_in_threadpool(run_import, files)
    except HTTPException as exc:
        return await _failed_import(request, fields, settings, exc)
    imported, config_text = body_to_form(body)
    kept = {k: fields[k] for k in KEPT_FROM_PAGE if fields.get(k) and k not in imported}
    notes = [n for n in notes if not (n.kind == "assumed" and n.field == "hardware.gpu" and "gpu" in kept)]
    return await run_in_threadpool(render_page, request, {**kept, **imported}, config_text, settings, [], notes)


async def _failed_import(request: Request, fields: dict[str, str], settings: Settings,
                         exc: HTTPException) -> HTMLResponse:
    """The planner page as submitted, with the import's error (the API's detail, naming the file) as its error."""
    errors = [f"import: {': '.join(str(p) for p in d['loc'][1:])}: {d['msg']}" for d in exc.detail]
    return await run_in_threadpool(render_page, request, fields, None, settings, errors)
