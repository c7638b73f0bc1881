"""Catalog entries of generic-path architectures through the API and the page: listing and suggesting them builds
nothing, and an estimate for one builds it (worker, cached) and equals transformers + PEFT on the meta device."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fastapi.testclient import TestClient

import app.models.generic as generic_path
from app.core.architectures import SUPPORTED_MODEL_TYPES
from app.core.catalog import model_configs
from app.main import create_app

from .reference.generic import peft_counts
from .reference.hf import architecture_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def test_listing_and_page_build_no_model(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /api/v1/models and the page's model suggestions read the catalog only: a build would be a
    worker start and seconds per model, so any build here fails the test."""
    def no_build(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("a model was built while listing the catalog")

    monkeypatch.setattr(generic_path, "run_in_worker", no_build)
    rows = client.get("/api/v1/models").json()
    assert len(rows) == len(model_configs()) >= 100
    generic = [r for r in rows if r["model_type"] not in SUPPORTED_MODEL_TYPES]
    assert len(generic) >= 30
    for row in generic:  # built earlier in this session (a count) or not yet (the reason, no count)
        assert row["source"].startswith("catalog file app/core/data/models/")
        assert row["total_params"] is not None or "no inventory was built" in row["inventory"]
    page = client.get("/")
    assert page.status_code == 200
    assert '<option value="openai/gpt-oss-120b">' in page.text
    assert '<option value="deepseek-ai/DeepSeek-V3">' in page.text


def test_estimate_of_a_generic_catalog_model_equals_transformers_and_peft(client: TestClient) -> None:
    model_id = "microsoft/phi-1_5"
    body = {"model": model_id, "method": "lora",
            "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}, "training": {"seq_len": 256}}
    r = client.post("/api/v1/estimate", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    base = architecture_model(copy.deepcopy(model_configs()[model_id]))
    trainable, all_params = peft_counts(base, r=16, lora_alpha=32, target_modules="all-linear")
    p = out["parameters"]
    assert (p["total"], p["trainable"], p["all_params"]) == (base.num_parameters(), trainable, all_params)
    assert out["source"]["kind"] == "catalog" and out["source"]["hub_id"] == model_id
    assert "public code-index file 1270800079" in out["source"]["origin"]


def test_estimate_of_an_mxfp4_catalog_checkpoint_says_what_the_recipe_loads(client: TestClient) -> None:
    for method in ("lora", "qlora"):
        r = client.post("/api/v1/estimate", json={"model": "openai/gpt-oss-20b", "method": method,
                                                  "lora": {"target_modules": "all-linear"},
                                                  "training": {"seq_len": 256}})
        assert r.status_code == 200, r.text
        notes = [a for a in r.json()["assumptions"] if "MXFP4" in a]
        assert len(notes) == 1 and "dequantized to bf16" in notes[0] and "bitsandbytes 4-bit" in notes[0]
