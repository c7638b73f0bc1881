"""Schemathesis over /openapi.json (in-process ASGI transport): stateless and stateful, real catalog ids.

Checks: no server error, every status documented for its operation, every body and content type as the
schema says. Not checked: ``positive_data_acceptance`` (a schema-valid body may still be an impossible plan,
e.g. an unknown model id or a seq_len beyond GPT-2's positions: 422 by design). ``POST /api/v1/trace`` runs
a real training step per valid case and has its own tests (tests/test_trace_api.py, test_supervision.py).
Cases: 220 positive + 220 negative per operation (fit: 25 + 25, each fit runs ~200 estimates), then 120
stateful scenarios of up to 10 calls: over 3,000 calls in all (the test counts them).
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import run_state_machine_as_test
from schemathesis import GenerationMode
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
# The first request for a generic-path catalog model (35 of the catalog's 106) starts the build worker and
# builds that model (seconds; several times that on a loaded machine): a bound that only catches a hang.
REQUEST_TIMEOUT_S = 120


DATA = tempfile.TemporaryDirectory(prefix="schemathesis-")  # removed at interpreter exit


def _app() -> Any:
    app = create_app()
    db = Path(DATA.name) / "planner.sqlite3"  # no token: calibration requests are refused (403), reads are open
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


def _run_stateless(op: Any, mode: GenerationMode, examples: int) -> int:
    calls = [0]

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        calls[0] += 1
        case.call_and_validate(checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

    run()
    return calls[0]


def test_schemathesis_stateless_and_stateful() -> None:
    """Every operation with schema-valid (positive) and schema-invalid (negative) data, then stateful
    sequences along the links schemathesis infers (list → item, create → read/delete). Counts every call."""
    counts: dict[str, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        examples = 25 if op.path == "/api/v1/fit" else 220  # a fit runs ~200 estimates
        counts[f"{op.label} positive"] = _run_stateless(op, GenerationMode.POSITIVE, examples)
        try:
            counts[f"{op.label} negative"] = _run_stateless(op, GenerationMode.NEGATIVE, examples)
        except Unsatisfiable:  # no schema-invalid request exists: no input (GET /api/v1/gpus), or only an
            counts[f"{op.label} negative"] = 0  # unconstrained string path parameter (any text is a string)
    stateful = [0]

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"timeout": REQUEST_TIMEOUT_S}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            stateful[0] += 1
            case.validate_response(response, checks=CHECKS)

    run_state_machine_as_test(Workflow, settings=settings(
        max_examples=120, stateful_step_count=10, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck)))
    counts["stateful"] = stateful[0]
    total = sum(counts.values())
    print(f"schemathesis: {total} calls, 0 failures: {counts}")
    assert total >= 3000, counts
    assert counts["stateful"] >= 300, counts
