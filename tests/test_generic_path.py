"""The generic path against the hand-written rules (the 11 supported families) and end to end through the
API and the CLI (a small real architecture outside the rules)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.adapters import plan_adapters
from app.core.architectures import parse_config
from app.core.generic import Resolution, config_key, inventory_from_data, register, target_spec
from app.core.inventory import build_inventory
from app.core.request import LoraSpec
from app.core.static_memory import quantized_modules
from app.main import app
from app.models.build import build

from .conftest import TINY_CONFIGS
from .reference.generic import fine_tuner_model, peft_counts

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SPECS = [LoraSpec(target_modules="all-linear"), LoraSpec(target_modules=["q_proj", "v_proj"]),
         LoraSpec(target_modules="all-linear", modules_to_save=["lm_head"], bias="all")]
# A real architecture outside the rules, small: OLMo-2's shapes at 2 layers and a 512-token vocabulary.
OLMO2 = {"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": 64, "intermediate_size": 128,
         "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 512}


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_rules_equal_the_generic_path(family: str) -> None:
    cfg = copy.deepcopy(TINY_CONFIGS[family])
    key = config_key(cfg)
    specs = [target_spec(s, dora=d) for s in SPECS for d in (False, True)]
    data = build(cfg, key, specs, 200_000)
    generic = inventory_from_data(data["inventory"])
    register(key, generic, {t: Resolution.from_data(r) for t, r in data["resolutions"].items()})
    rules = build_inventory(parse_config(cfg))

    assert generic.total_params == rules.total_params
    assert {t.name: t.shape for t in generic.tensors} == {t.name: t.shape for t in rules.tensors}
    assert sorted(quantized_modules(generic)) == sorted(quantized_modules(rules))
    for spec in SPECS:
        for method in ("lora", "dora"):
            try:
                expected = plan_adapters(rules, spec, method=method).trainable_params
            except Exception as exc:  # the rules refuse: PEFT refuses too
                assert data["resolutions"][json.dumps(target_spec(spec, dora=method == "dora"), sort_keys=True,
                                                      separators=(",", ":"))]["error"], exc
                continue
            assert plan_adapters(generic, spec, method=method).trainable_params == expected, (spec, method)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(app)


def test_api_estimates_a_model_outside_the_rules(client: TestClient) -> None:
    body = {"model": {"config": OLMO2}, "method": "lora", "lora": {"r": 16, "target_modules": "all-linear"}}
    r = client.post("/api/v1/estimate", json=body)
    assert r.status_code == 200, r.text
    trainable, all_params = peft_counts(fine_tuner_model(OLMO2), r=16, target_modules="all-linear")
    got = r.json()
    assert (got["parameters"]["trainable"], got["parameters"]["all_params"]) == (trainable, all_params)
    assert got["peak"]["provisional"] is True and "Olmo2ForCausalLM" in " ".join(got["assumptions"])
    # another rank and method: answered from the registry, no new build
    r = client.post("/api/v1/estimate", json={**body, "method": "qdora", "lora": {"r": 64, "target_modules":
                                                                                  "all-linear"}})
    assert r.status_code == 200
    # PEFT's own refusal, quoted, under the field it concerns
    r = client.post("/api/v1/estimate", json={**body, "lora": {"target_modules": ["c_attn"]}})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"][:3] == ["body", "lora", "target_modules"] and "PEFT 0.21.2 refuses" in detail["msg"]
    assert "not found in the base model" in detail["msg"]


def test_unbuildable_config_is_a_422_naming_the_field(client: TestClient) -> None:
    r = client.post("/api/v1/estimate", json={"model": {"config": {**OLMO2, "num_hidden_layers": -1}}})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "model", "config", "num_hidden_layers"]
    r = client.post("/api/v1/estimate", json={"model": {"config": {**OLMO2, "hidden_size": "wide"}}})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "model", "config"] and "transformers 5.24 refuses" in detail["msg"]
    # PEFT has no default target_modules for olmo2: its message, under lora.target_modules
    r = client.post("/api/v1/estimate", json={"model": {"config": OLMO2}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "lora", "target_modules"]
    r = client.post("/api/v1/estimate", json={"model": {"config": {"model_type": "nope", "auto_map": {}}}})
    assert r.status_code == 422 and "trust_remote_code" in r.json()["detail"][0]["msg"]


def test_cli_estimates_a_model_outside_the_rules(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(OLMO2))
    env = {**os.environ, "PEFT_PLANNER_GENERIC_CACHE_PATH": str(tmp_path / "generic.sqlite3")}
    out = subprocess.run([sys.executable, "-m", "app.cli", "estimate", "--model", str(path), "--r", "16",
                          "--target-modules", "all-linear", "--json"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    trainable, _ = peft_counts(fine_tuner_model(OLMO2), r=16, target_modules="all-linear")
    assert json.loads(out.stdout)["parameters"]["trainable"] == trainable
    assert (tmp_path / "generic.sqlite3").exists()  # built once, stored for the next process


def test_second_process_reads_the_store(tmp_path: Path) -> None:
    """A build survives a restart: a fresh process answers from the SQLite store without a worker."""
    env = {**os.environ, "PEFT_PLANNER_GENERIC_CACHE_PATH": str(tmp_path / "generic.sqlite3")}
    code = ("import json,sys; from app.core import PlanRequest, estimate; from app.models import generic as g;"
            f"req = PlanRequest.model_validate({{'model': {{'config': {OLMO2!r}}}}});"
            "req = req.model_copy(update={'lora': req.lora.model_copy(update={'target_modules': 'all-linear'})});"
            "g.ensure_generic(req); print(g._POOL is None, estimate(req).parameters.trainable)")
    first = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    second = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    assert first.stdout.split()[0] == "False" and second.stdout.split() == ["True", first.stdout.split()[1]]


