"""Issue 10: inputs that used to give 500s, strict types, the one error shape, limits, the OpenAPI contract."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core import PlanRequest, estimate
from app.core.architectures import LIMITS
from app.main import create_app
from app.settings import Settings, get_settings

from .conftest import TINY_CONFIGS

JSON = {"content-type": "application/json"}
TINY = json.dumps(TINY_CONFIGS["llama"])[:-1]  # '{..."tie_word_embeddings": false' for appending one key


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    app = create_app()
    db = tmp_path_factory.mktemp("db") / "planner.sqlite3"
    app.dependency_overrides[get_settings] = lambda: Settings(token="t", database_path=db)
    return TestClient(app, raise_server_exceptions=False)


def _detail(r: Any) -> list[dict[str, Any]]:
    """The one error shape: {"detail": [{"loc": [...], "msg": str, "type": str}]}."""
    body = r.json()
    assert set(body) == {"detail"}, body
    assert body["detail"] and all(set(d) == {"loc", "msg", "type"} for d in body["detail"]), body
    return body["detail"]


# --- every 500 of the issue, now a 4xx naming the field --------------------------------------------------------
@pytest.mark.parametrize(("raw", "loc"), [
    ('{"model": "meta-llama/Llama-3.1-8B", "lora": {"lora_alpha": Infinity}}', ["body", "lora", "lora_alpha"]),
    ('{"model": "meta-llama/Llama-3.1-8B", "lora": {"lora_alpha": 1e400}}', ["body", "lora", "lora_alpha"]),
    ('{"model": "meta-llama/Llama-3.1-8B", "lora": {"lora_alpha": NaN}}', ["body", "lora", "lora_alpha"]),
    *[(f'{{"model": {{"config": {TINY}, "max_position_embeddings": {v}}}}}}}',
       ["body", "model", "config", "max_position_embeddings"])
      for v in ('"4096"', "[4096]", "NaN", "Infinity", "-Infinity", "0", "1e3")],
    ('{"model": {"config": {"model_type": ["llama"]}}}', ["body", "model", "config", "model_type"]),
    ('{"model": {"config": {"model_type": {"a": 1}}}}', ["body", "model", "config", "model_type"]),
    ('{"model": "\\ud800"}', ["body", "model"]),
    ('{"model": "meta-llama/Llama-3.1-8B", "hardware": {"gpu": "\\udfff"}}', ["body", "hardware", "gpu"]),
    ('{"model": {"config": {"model_type": "llama", "name": "\\ud800"}}}', ["body", "model", "ModelConfig", "config"]),
    ('{"model": "meta-llama/Llama-3.1-8B", "lora": {"target_modules": ["q_proj\\ud800"]}}',
     ["body", "lora", "target_modules"]),
    ("[" * 50_000 + "]" * 50_000, ["body"]),
    ("{not json", ["body", 1]),
])
def test_former_server_errors_are_422(client: TestClient, raw: str, loc: list[Any]) -> None:
    r = client.post("/api/v1/estimate", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    assert loc in [d["loc"] for d in _detail(r)]  # a str | ModelConfig union reports one error per member


def test_page_refuses_infinite_alpha(client: TestClient) -> None:
    r = client.get("/", params={"lora_alpha": "inf"})
    assert r.status_code == 422 and "finite number" in r.text
    r = client.get("/api/v1/fit", params={"lora_alpha": "1e400"})
    assert r.status_code == 422 and _detail(r)[0]["loc"] == ["query", "lora", "lora_alpha"]


@pytest.mark.parametrize("path", ["/api/v1/calibrations", "/calibrations"])
def test_offset_past_int64_is_422(client: TestClient, path: str) -> None:
    for offset in (2**63, 2**64 + 5, 10**30):
        r = client.get(path, params={"offset": str(offset)})
        assert r.status_code == 422, r.text
        assert _detail(r)[0]["loc"] == ["query", "offset"]


def test_deeply_nested_json_on_calibrate_is_422(client: TestClient) -> None:
    r = client.post("/calibrate", content="[" * 100_000 + "]" * 100_000,
                    headers={**JSON, "authorization": "Bearer t"})
    assert r.status_code == 422, r.text
    assert _detail(r)[0] == {"loc": ["body"], "type": "json_invalid",
                             "msg": "the request body is nested deeper than the JSON parser allows (about 1,000 "
                                    "levels)"}


# --- strict types ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("section", "field", "value"), [
    ("lora", "r", "8"), ("lora", "r", True), ("lora", "r", 8.0), ("training", "seq_len", "512"),
    ("training", "micro_batch_size", False), ("hardware", "num_gpus", "2"), ("training", "gradient_checkpointing", 1),
    ("training", "gradient_checkpointing", "true"), ("lora", "lora_alpha", "16"),
    ("lora", "layers_to_transform", [True]),
])
def test_strict_types(client: TestClient, section: str, field: str, value: Any) -> None:
    body = {"model": "meta-llama/Llama-3.1-8B", section: {field: value}}
    r = client.post("/api/v1/estimate", json=body)
    assert r.status_code == 422, r.text
    assert _detail(r)[0]["loc"][:3] == ["body", section, field]


def test_integers_are_fine_for_floats(client: TestClient) -> None:
    r = client.post("/api/v1/estimate", json={"model": "meta-llama/Llama-3.1-8B", "lora": {"lora_alpha": 16}})
    assert r.status_code == 200, r.text


def test_page_form_still_converts_query_strings(client: TestClient) -> None:
    """The page's flat fields are strings; the form parser converts them (lax), the JSON API does not."""
    from app.forms import parse_form

    req, errors = parse_form({"model": "meta-llama/Llama-3.1-8B", "r": "16", "lora_alpha": "32", "seq_len": "512",
                              "gradient_checkpointing": "off", "num_gpus": "2", "sharding": "zero3"})
    assert errors == []
    assert (req.lora.r, req.lora.lora_alpha, req.training.seq_len, req.hardware.num_gpus) == (16, 32.0, 512, 2)
    assert req.training.gradient_checkpointing is False
    r = client.get("/api/v1/fit", params={"r": "16", "seq_len": "512"})
    assert r.status_code == 200, r.text


# --- the one error shape, correct locs -------------------------------------------------------------------------
def test_every_4xx_has_one_shape(client: TestClient) -> None:
    cases = [
        client.get("/api/v1/models/no/such-model"),
        client.get("/api/v1/calibrations/nope"),
        client.delete("/api/v1/calibrations/nope"),
        client.delete("/api/v1/calibrations/nope", headers={"authorization": "Bearer t"}),
        client.post("/api/v1/calibrations", json={}),
        client.get("/no/such/page"),
        client.put("/api/v1/estimate"),
        client.post("/api/v1/estimate", content="{", headers=JSON),
        client.post("/api/v1/estimate", content=b"x" * 2_000_000, headers=JSON),
    ]
    assert [r.status_code for r in cases] == [404, 404, 401, 404, 401, 404, 405, 422, 413]
    locs = [_detail(r)[0]["loc"] for r in cases]
    assert locs[:5] == [["path", "model_id"], ["path", "job_id"], ["header", "authorization"], ["path", "job_id"],
                        ["header", "authorization"]]


# --- limits ------------------------------------------------------------------------------------------------------
def test_catastrophic_regex_is_answered_at_once(client: TestClient) -> None:
    """Python's re takes hours on this pattern against one module name (nested quantifier over two alternatives
    that match the same character, then a 'Z' that never comes); RE2 answers in linear time."""
    started = time.monotonic()
    r = client.post("/api/v1/estimate", json={"model": "meta-llama/Llama-3.1-8B",
                                              "lora": {"target_modules": "(?:.|.){1,30}Z"}})
    assert r.status_code == 422 and "matches no module name" in _detail(r)[0]["msg"]
    assert time.monotonic() - started < 30  # generous: catches the hang, not a speed figure


@pytest.mark.parametrize("pattern", [r"(q)\1_proj", r"(?=q).*", r"(?<=\.)q_proj", "a{2000}"])
def test_regex_outside_the_linear_time_subset_is_refused(client: TestClient, pattern: str) -> None:
    r = client.post("/api/v1/estimate", json={"model": "meta-llama/Llama-3.1-8B",
                                              "lora": {"target_modules": pattern}})
    assert r.status_code == 422
    assert _detail(r)[0]["loc"] == ["body", "lora", "target_modules"]
    assert "linear time" in _detail(r)[0]["msg"]


def test_regex_matches_like_python_re_fullmatch() -> None:
    """PEFT uses re.fullmatch; on the accepted subset RE2 selects the same modules (checked against re here)."""
    import re

    from app.core.adapters import plan_adapters
    from app.core.architectures import parse_config
    from app.core.catalog import model_config
    from app.core.inventory import build_inventory

    inv = build_inventory(parse_config(model_config("meta-llama/Llama-3.1-8B")))
    for pattern in [r".*\.(q|v)_proj", r"model\.layers\.[0-3]\..*_proj", r".*mlp\.(gate|up)_proj", r"(?i).*Q_PROJ",
                    r".*layers\.\d{2}\.self_attn\.o_proj"]:
        lora = PlanRequest.model_validate({"model": "x", "lora": {"target_modules": pattern}}).lora
        plan = plan_adapters(inv, lora, method="lora")
        expected = sorted(m.name for m in inv.modules if re.fullmatch(pattern, m.name))
        assert sorted(m.name for m in plan.targets) == expected, pattern


@pytest.mark.parametrize(("field", "value"), [
    ("modules_to_save", ["lm_head"] * 65), ("target_parameters", ["x"] * 65), ("target_modules", ["q_proj"] * 65),
    ("layers_to_transform", list(range(257))), ("layers_to_transform", [256]), ("modules_to_save", ["x" * 129]),
    ("target_modules", "q" * 257),
])
def test_list_limits(client: TestClient, field: str, value: Any) -> None:
    r = client.post("/api/v1/estimate", json={"model": "meta-llama/Llama-3.1-8B", "lora": {field: value}})
    assert r.status_code == 422, r.text
    assert _detail(r)[0]["loc"][:3] == ["body", "lora", field]


def test_limits_endpoint_lists_every_limit(client: TestClient) -> None:
    data = client.get("/api/v1/limits").json()
    assert data["config"]["dimensions"]["num_hidden_layers"] == LIMITS["num_hidden_layers"] == 256
    assert data["lora"]["modules_to_save"]["max_names"] == 64
    assert data["lora"]["target_modules"]["regex_max_chars"] == 256
    assert data["fit"] == {"workers": 2, "queue": 8, "timeout_s": 60.0}
    assert data["calibration"]["list_max_offset"] == 1_000_000_000
    assert data["max_body_bytes"] == 1_048_576


def test_config_over_the_layer_limit_is_refused() -> None:
    cfg = dict(TINY_CONFIGS["llama"], num_hidden_layers=257)
    from app.core import PlanError

    with pytest.raises(PlanError, match="between 1 and 256"):
        estimate(PlanRequest.model_validate({"model": {"config": cfg}}))


# --- OpenAPI: every status each operation returns, with its schema ----------------------------------------------
def test_openapi_lists_error_statuses(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/api/v1/estimate", "post"): {"200", "413", "422", "429", "503"},
        ("/api/v1/fit", "post"): {"200", "413", "422", "429", "503", "504"},
        ("/api/v1/fit", "get"): {"200", "422", "429", "503", "504"},
        ("/api/v1/trace", "post"): {"200", "413", "422", "429", "503", "504"},
        ("/api/v1/calibrations", "post"): {"202", "401", "403", "413", "422"},
        ("/api/v1/calibrations/{job_id}", "delete"): {"200", "401", "403", "404", "422"},
        ("/api/v1/models/{model_id}", "get"): {"200", "404", "422"},
    }
    for (path, method), codes in expected.items():
        responses = paths[path][method]["responses"]
        assert set(responses) == codes, (path, method, sorted(responses))
        for code in codes - {"200", "202"}:
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema["$ref"] in ("#/components/schemas/ErrorResponse",
                                      "#/components/schemas/HTTPValidationError"), (path, code)


# --- security ----------------------------------------------------------------------------------------------------
def test_pages_send_security_headers(client: TestClient) -> None:
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in r.text and " style=" not in r.text  # no inline script or style attribute
    assert client.get("/api/v1/gpus").headers["x-content-type-options"] == "nosniff"


def test_model_dir_outside_allowed_dirs_reveals_nothing(tmp_path: Path) -> None:
    allowed = tmp_path / "models"
    (allowed / "tiny").mkdir(parents=True)
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(token="t", database_path=tmp_path / "db.sqlite3",
                                                              model_dirs=str(allowed))
    body = {"model": {"config": TINY_CONFIGS["llama"]}, "lora": {"r": 4},
            "training": {"micro_batch_size": 1, "seq_len": 16}, "device": "cpu"}
    with TestClient(app) as c:
        answers = []
        for path in ("/etc", "/no/such/dir", str(allowed / ".." / "models" / ".." / ".."), str(tmp_path)):
            r = c.post("/api/v1/calibrations", json={**body, "model_dir": path}, headers={"authorization": "Bearer t"})
            assert r.status_code == 422
            answers.append(_detail(r)[0])
        assert all(a == answers[0] for a in answers), answers  # same answer whether the path exists or not
        assert answers[0]["loc"] == ["body", "model_dir"]
        r = c.post("/api/v1/calibrations", json={**body, "model_dir": str(allowed / "missing")},
                   headers={"authorization": "Bearer t"})
        assert r.status_code == 422 and "not a directory" in _detail(r)[0]["msg"]


def test_calibration_errors_redacted_for_anonymous_readers(tmp_path: Path) -> None:
    from app.calibration.store import JobStore

    db = tmp_path / "db.sqlite3"
    store = JobStore(db)
    stored = PlanRequest.model_validate({"model": {"config": TINY_CONFIGS["llama"]}}).model_dump(mode="json")
    job = store.create(stored, "cpu", 1, 2, None,
                       model_dir="/srv/secret/models/llama")
    store.claim_next("cpu")
    store.finish(job, "failed", error="OSError: /srv/secret/models/llama/config.json: no such file\n\nTraceback "
                                      '(most recent call last):\n  File "/home/op/app/calibration/measure.py"')
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(token="t", database_path=db)
    with TestClient(app) as c:
        anon = c.get(f"/api/v1/calibrations/{job}").json()
        assert anon["error"] == "OSError: …: no such file" and anon["model_dir"] == "…/llama"
        listed = c.get("/api/v1/calibrations").json()["items"][0]
        assert "/srv" not in json.dumps(listed) and "Traceback" not in json.dumps(listed)
        page = c.get(f"/calibrations/{job}").text
        assert "/srv/secret" not in page and "measure.py" not in page
        full = c.get(f"/api/v1/calibrations/{job}", headers={"authorization": "Bearer t"}).json()
        assert "Traceback" in full["error"] and full["model_dir"] == "/srv/secret/models/llama"


def test_cuda_request_does_not_import_torch_into_the_api(tmp_path: Path) -> None:
    """The device count comes from a child process (app/calibration/service.py: _cuda_devices)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from app.main import create_app\n"
        "from app.settings import Settings, get_settings\n"
        "app = create_app()\n"
        f"app.dependency_overrides[get_settings] = lambda: Settings(token='t', database_path={str(tmp_path / 'd')!r})\n"
        "body = {'model': {'config': " + repr(TINY_CONFIGS["llama"]) + "}, 'device': 'cuda:7'}\n"
        "r = TestClient(app).post('/api/v1/calibrations', json=body, headers={'authorization': 'Bearer t'})\n"
        "assert r.status_code == 422 and r.json()['detail'][0]['loc'] == ['body', 'device'], r.text\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False"


# --- calibrations summarised once per finished job --------------------------------------------------------------
def _finish_gpu_job(store: Any, gpu: str, predicted: int, allocated: int, reserved: int, used: int) -> str:
    job = store.create({"model": "meta-llama/Llama-3.2-1B", "hardware": {"gpu": gpu}}, "cuda:0", 1, 2,
                       {"memory": {"peak": predicted}})
    # a real calibration records the card it measured (app/calibration/devices.py): summaries are keyed by it
    store.finish(job, "done", result={"peak_allocated_bytes": allocated, "peak_reserved_bytes": reserved,
                                      "device_used_bytes": used, "otf_dequant_slowdown": 1.5,
                                      "measured_device": gpu})
    return job


def test_summary_follows_each_finished_job_and_old_databases_are_summarised(tmp_path: Path) -> None:
    import sqlite3

    from app.calibration.store import JobStore, calibration_summary, measured_slowdowns

    db = tmp_path / "db.sqlite3"
    store = JobStore(db)
    # context = used − reserved = 0.6 GB; reserve = (reserved − allocated)/allocated = 10%; gap = +5%
    first = _finish_gpu_job(store, "nvidia-l4", 10_000_000_000, 10_500_000_000, 11_550_000_000, 12_150_000_000)
    summary = calibration_summary(db, "nvidia-l4")
    assert (summary.job_ids, summary.context_bytes, summary.reserve_fraction) == ((first,), 600_000_000, 0.1)
    # a second job (context 0.7 GB, gap −5%): medians of two, min/max gaps; read again after the write
    second = _finish_gpu_job(store, "nvidia-l4", 20_000_000_000, 19_000_000_000, 20_900_000_000, 21_600_000_000)
    summary = calibration_summary(db, "nvidia-l4")
    assert set(summary.job_ids) == {first, second} and summary.context_bytes == 650_000_000
    assert (round(summary.gap_low, 6), round(summary.gap_high, 6)) == (-0.05, 0.05)
    assert calibration_summary(db, "nvidia-a100-80gb") is None
    assert measured_slowdowns(db, "meta-llama/Llama-3.2-1B") == {"qlora": 1.5}
    # a database written before summaries existed (user_version 0, no table) is summarised when opened
    with sqlite3.connect(db) as raw:
        raw.execute("DROP TABLE calibration_summaries")
        raw.execute("PRAGMA user_version=0")
    JobStore(db)
    rebuilt = calibration_summary(db, "nvidia-l4")
    assert set(rebuilt.job_ids) == {first, second} and rebuilt.context_bytes == 650_000_000
