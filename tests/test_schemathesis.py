"""Schemathesis over /openapi.json (in-process ASGI transport): stateless and stateful, real catalog ids.

Checks: no server error, every status documented for its operation, every body and content type as the
schema says. Not checked: ``positive_data_acceptance`` (a schema-valid body may still be an impossible plan,
e.g. an unknown model id or a seq_len beyond GPT-2's positions: 422 by design). ``POST /api/v1/trace`` runs
a real training step per valid case and has its own tests (tests/test_trace_api.py, test_supervision.py).
Cases: 250 per operation stateless (fit: 60, each runs ~200 estimates) plus the stateful run, > 3,000 in all.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.catalog import gpus, model_configs
from app.main import create_app
from app.settings import Settings, get_settings

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MODELS = sorted(model_configs())
GPUS = sorted(gpus())
CASES = {"count": 0}


def _app() -> Any:
    app = create_app()
    db = Path(__file__).resolve().parent.parent / "var" / "schemathesis.sqlite3"  # read-only use: no token
    app.dependency_overrides[get_settings] = lambda: Settings(database_path=db)
    return app


schema = schemathesis.openapi.from_asgi("/openapi.json", _app()).exclude(path="/api/v1/trace")


def _pick(options: list[str], value: Any) -> str | None:
    """A real id for about two thirds of the cases (deterministic in the generated value, so shrinking works)."""
    h = zlib.crc32(repr(value).encode())
    return options[h % len(options)] if h % 3 else None


def _real_ids(body: Any) -> Any:
    if isinstance(body, dict):
        if isinstance(body.get("request"), dict):  # POST /api/v1/fit
            body = {**body, "request": _real_ids(body["request"])}
        if "model" in body and (model := _pick(MODELS, body)):
            body = {**body, "model": model}
        hw = body.get("hardware")
        if isinstance(hw, dict) and (gpu := _pick(GPUS, hw)):
            body = {**body, "hardware": {**hw, "gpu": gpu}}
    return body


@schema.hook
def map_body(context: Any, body: Any) -> Any:
    return _real_ids(body)


@schema.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> dict[str, Any] | None:
    if path_parameters and "model_id" in path_parameters and (model := _pick(MODELS, path_parameters)):
        return {**path_parameters, "model_id": model}
    return path_parameters


@schema.hook
def map_query(context: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    if isinstance(query, dict):
        if (model := _pick(MODELS, query)) is not None:
            query = {**query, "model": model}
        if (gpu := _pick(GPUS, [query])) is not None:
            query = {**query, "gpu": gpu}
    return query


def _examples(case: Any) -> int:
    return 60 if case.operation.path == "/api/v1/fit" else 250


@schema.parametrize()
@settings(max_examples=250, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_stateless(case: Any) -> None:
    if case.operation.path == "/api/v1/fit" and CASES.setdefault(case.operation.label, 0) >= 60:
        return
    CASES[case.operation.label] = CASES.get(case.operation.label, 0) + 1
    CASES["count"] += 1
    case.call_and_validate(checks=CHECKS)


Workflow = schema.as_state_machine()


class TestStateful(Workflow.TestCase):  # type: ignore[name-defined,misc]
    settings = settings(max_examples=60, stateful_step_count=8, deadline=None, derandomize=True, database=None,
                        suppress_health_check=list(HealthCheck))

    def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
        CASES["count"] += 1
        case.validate_response(response, checks=CHECKS)
