"""The ASGI app: JSON API v1, the planner page, static files, OpenAPI at /docs and /redoc (local assets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.calibration.service import calibration_lifespan
from app.core.errors import PlanError
from app.errors import as_detail
from app.jobs.pg import StoreUnavailable
from app.pool import ClientGone, watch_exit_signals
from app.routers import accuracy, api_v1, apidocs, calibrate, export, imports, pages, trace, workers
from app.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, counting the bytes as they arrive."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send: Send, limit: int) -> None:
    body = (f'{{"detail":[{{"loc":["body"],"msg":"request body over {limit} bytes",'
            '"type":"too_large"}]}').encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
# Pages load scripts and styles from /static only (no inline <script>, no style attributes) and cannot be framed.
CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from a CDN with an inline script: no CSP there.
NO_CSP_PATHS = ("/docs", "/redoc")


class SecurityHeaders:
    """Add the security headers (and the CSP, except on the API docs pages) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = SECURITY_HEADERS if scope["path"].startswith(NO_CSP_PATHS) else \
            [*SECURITY_HEADERS, (b"content-security-policy", CSP)]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def plan_error_detail(exc: PlanError) -> list[dict[str, object]]:
    """A PlanError in FastAPI's validation-error shape, so clients parse one format."""
    return [{"loc": ["body", *exc.loc], "msg": exc.message, "type": "plan_error"}]


BODY_PARSE_ERROR = "There was an error parsing the body"  # fastapi/routing.py's 400 for an unreadable body


def _unreadable_body(exc: StarletteHTTPException) -> list[dict[str, object]] | None:
    """FastAPI answers 400 when json.loads fails with anything but a JSONDecodeError: in practice a RecursionError
    on deeply nested JSON. That is invalid input like any other JSON error: 422, type json_invalid."""
    if exc.status_code != 400 or exc.detail != BODY_PARSE_ERROR:
        return None
    cause = exc.__cause__
    reason = ("is nested deeper than the JSON parser allows (about 1,000 levels)" if isinstance(cause, RecursionError)
              else f"cannot be read as JSON ({type(cause).__name__})")
    return [{"loc": ["body"], "msg": f"the request body {reason}", "type": "json_invalid"}]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Calibration recovery at startup; at shutdown stop fits, the trace worker and calibration workers."""
    watch_exit_signals()
    async with calibration_lifespan(app):
        try:
            yield
        finally:
            for name in ("fit_pool", "estimate_pool", "trace_service"):
                service = getattr(app.state, name, None)
                if service is not None:
                    service.close()


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="peft-planner",
        version="0.1.0",
        summary="Parameters and GPU memory of FFT, LoRA, QLoRA and DoRA fine-tuning runs, before you buy GPUs.",
        lifespan=lifespan,
        docs_url=None,  # served by app/routers/apidocs.py from local assets, not a CDN
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )

    @app.exception_handler(PlanError)
    async def _plan_error(request: Request, exc: PlanError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": plan_error_detail(exc)})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "value_error")}
            for e in exc.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        unreadable = _unreadable_body(exc)
        if unreadable is not None:
            return JSONResponse(status_code=422, content={"detail": unreadable})
        loc: list[str | int] = {400: ["body"], 404: ["path"], 405: ["path"]}.get(exc.status_code, [])
        return JSONResponse(status_code=exc.status_code, headers=exc.headers,
                            content={"detail": as_detail(exc.status_code, exc.detail, loc)})

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": as_detail(503, str(exc))},
                            headers={"Retry-After": "2"})

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        """On the event loop, never behind the thread pool: answers while heavy work runs."""
        return {"status": "ok"}

    app.include_router(api_v1.router)
    app.include_router(trace.router)
    app.include_router(calibrate.router)
    app.include_router(workers.router)
    app.include_router(accuracy.router)
    app.include_router(export.router)
    app.include_router(imports.router)
    app.include_router(pages.router)
    app.include_router(apidocs.router)
    app.mount("/static/apidocs", StaticFiles(directory=apidocs.ASSETS), name="apidocs")
    app.mount("/static", StaticFiles(directory=ROOT / "static"), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    return app


app = create_app()
