"""API documentation pages served without a CDN: Swagger UI at /docs and ReDoc at /redoc.

The JavaScript/CSS bundles are the ones the pinned ``fastapi-offline`` package ships (mounted at
/static/apidocs by app.main); the pages carry no inline script (static/apidocs-init.js starts Swagger UI,
ReDoc is a custom element that reads its ``spec-url``), so a strict Content-Security-Policy can allow them.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

ROOT = Path(__file__).resolve().parent.parent.parent
ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
"""swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png of fastapi-offline."""

templates = Jinja2Templates(directory=ROOT / "templates")
router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "apidocs.html", {"openapi_url": request.app.openapi_url})


@router.get("/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(request, "redoc.html", {"openapi_url": request.app.openapi_url})
