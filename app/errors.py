"""The one error shape of every 4xx/5xx answer (FastAPI's validation-error format) and its OpenAPI entries.

Every error body is ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``: ``loc`` starts with where the
problem is (``body``, ``query``, ``path``, ``header``) followed by the field path, or is empty when the
request as a whole is refused (busy, timed out).
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from pydantic import BaseModel, Field


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: 'body'/'query'/'path'/'header', then the field path")
    msg: str = Field(description="what is wrong and what is allowed")
    type: str = Field(description="a machine-readable kind, e.g. 'int_type', 'plan_error', 'busy'")


class ErrorResponse(BaseModel):
    detail: list[ErrorItem]


DESCRIPTIONS: dict[int, str] = {
    400: "the body cannot be read as a form",
    401: "the bearer token is missing or wrong",
    403: "this operation is disabled on this server (no PEFT_PLANNER_TOKEN configured)",
    404: "no such resource",
    413: "request body over the limit (GET /api/v1/limits: max_body_bytes)",
    422: "invalid input: detail[].loc names the field, msg says what is allowed",
    429: "every worker and queue slot for this kind of work is taken; retry after Retry-After seconds",
    503: "the worker died during this request (it is replaced: retry) or the server is shutting down",
    504: "the work ran past its time budget and was stopped (GET /api/v1/limits)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these status codes, each with :class:`ErrorResponse` as its schema."""
    return {code: {"model": ErrorResponse, "description": DESCRIPTIONS[code]} for code in codes}


def api_error(status: int, loc: list[str | int], msg: str, kind: str,
              headers: dict[str, str] | None = None) -> HTTPException:
    """An HTTPException whose detail is already in the one error shape."""
    return HTTPException(status_code=status, detail=[{"loc": loc, "msg": msg, "type": kind}], headers=headers)


def as_detail(status: int, detail: Any, path_loc: list[str | int] | None = None) -> list[dict[str, Any]]:
    """Any HTTPException detail in the one shape (a plain string becomes one item with an empty loc)."""
    if isinstance(detail, list) and all(isinstance(d, dict) and {"loc", "msg", "type"} <= d.keys() for d in detail):
        return detail
    return [{"loc": path_loc or [], "msg": str(detail), "type": f"http_{status}"}]
