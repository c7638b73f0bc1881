"""The ASGI app: JSON API v1, the planner page, static files, OpenAPI at /docs."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.calibration.service import calibration_lifespan
from app.core.errors import PlanError
from app.jobs.pg import StoreUnavailable
from app.routers import api_v1, calibrate, pages, trace, workers
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


def plan_error_detail(exc: PlanError) -> list[dict[str, object]]:
    """A PlanError in FastAPI's validation-error shape, so clients parse one format."""
    return [{"loc": ["body", *exc.loc], "msg": exc.message, "type": "plan_error"}]


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="peft-planner",
        version="0.1.0",
        summary="Parameters and GPU memory of FFT, LoRA, QLoRA and DoRA fine-tuning runs, before you buy GPUs.",
        lifespan=calibration_lifespan,
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

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)}, headers={"Retry-After": "2"})

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.include_router(api_v1.router)
    app.include_router(trace.router)
    app.include_router(calibrate.router)
    app.include_router(workers.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=ROOT / "static"), name="static")
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


app = create_app()
