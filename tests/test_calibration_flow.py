"""Calibration flow: the card a job measured is detected and results are learned under it; the planner's
"calibrate this plan"; cancelling from the page; measured vs predicted per phase (real CPU runs)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from app.calibration.devices import measured_device
from app.calibration.store import JobStore, calibration_samples
from app.core import PlanRequest
from app.core.catalog import gpu_for_device, gpus
from app.core.overhead import cublas_workspace_bytes
from app.forms import form_to_body

from .test_calibration import AUTH, LORA_BODY, _body, _client, _wait

# Device names as torch.cuda.get_device_properties(i).name (= nvidia-smi's "name") reports them, with
# total_memory from the catalog's measured values (app/core/data/gpus.json, vram_bytes and their sources).
DEVICES = [
    ("NVIDIA GeForce RTX 4090", 25757220864, "nvidia-rtx-4090"),
    ("NVIDIA A100-SXM4-80GB", 85100068864, "nvidia-a100-80gb"),
    ("NVIDIA A100-SXM4-40GB", 42298834944, "nvidia-a100-40gb"),  # same name part, the memory decides
    ("NVIDIA H100 80GB HBM3", 85520809984, "nvidia-h100-sxm-80gb"),  # torch's name of the SXM part
    ("NVIDIA H100 PCIe", 85520809984, "nvidia-h100-pcie-80gb"),  # same memory, the name decides
    ("NVIDIA H100 NVL", 100485038080, "nvidia-h100-nvl-94gb"),
    ("NVIDIA H200", 150754820096, "nvidia-h200-141gb"),
    ("Tesla T4", 15835398144, "nvidia-t4"),
    ("Tesla V100-SXM2-32GB", 34089730048, "nvidia-v100-32gb"),
    ("NVIDIA RTX 6000 Ada Generation", 51002867712, "nvidia-rtx-6000-ada"),
    ("NVIDIA RTX A6000", 51040485376, "nvidia-rtx-a6000"),
    ("NVIDIA GeForce RTX 4070 Ti SUPER", 17170825216, "nvidia-rtx-4070-ti-super-16gb"),
    ("AMD Instinct MI300X", 205822885888, "amd-mi300x"),
    # not catalog cards: never mapped to a neighbour
    ("NVIDIA A100 80GB PCIe", 85100068864, None),  # the catalog's A100 80GB is the SXM part
    ("NVIDIA H200 NVL", 150754820096, None),
    ("NVIDIA GeForce RTX 4060 Ti", 8585216000, None),  # the 8 GB card; the catalog has the 16 GB one
    ("NVIDIA GeForce RTX 4080 SUPER", 17170825216, None),
    ("NVIDIA A10", 23673372672, None),
    ("NVIDIA GeForce RTX 4090 Laptop GPU", 17171480576, None),
]


@pytest.mark.parametrize(("name", "total", "expected"), DEVICES)
def test_device_name_and_memory_to_catalog_id(name: str, total: int, expected: str | None) -> None:
    assert gpu_for_device(name, total) == expected
    assert expected is None or expected in gpus()


def test_measured_device_from_the_environment() -> None:
    assert measured_device({"device": "cpu", "cpu": "x86_64"}) == "cpu"
    assert measured_device({"device": "cuda:0", "gpu_name": "NVIDIA GeForce RTX 4090",
                            "gpu_total_bytes": 25757220864}) == "nvidia-rtx-4090"
    # unknown cards are stored as measured, never mapped to a default
    assert measured_device({"device": "cuda:1", "gpu_name": "NVIDIA H200 NVL",
                            "gpu_total_bytes": 150754820096}) == "NVIDIA H200 NVL"
    assert measured_device(None) is None


def test_results_are_learned_under_the_measured_card(tmp_path: Path) -> None:
    """A job whose plan named the A100 80GB but that ran on an RTX 4090 teaches the 4090, not the A100."""
    db = tmp_path / "db.sqlite3"
    store = JobStore(db)
    job = store.create({"model": "meta-llama/Llama-3.2-1B", "hardware": {"gpu": "nvidia-a100-80gb"}}, "cuda:0", 1, 2,
                       {"memory": {"peak": 10_000_000_000}})
    store.finish(job, "done", result={
        "peak_allocated_bytes": 10_200_000_000, "peak_reserved_bytes": 11_000_000_000,
        "device_used_bytes": 11_600_000_000,
        "environment": {"device": "cuda:0", "gpu_name": "NVIDIA GeForce RTX 4090", "gpu_total_bytes": 25757220864},
        "measured_device": "nvidia-rtx-4090"})
    assert store.get(job)["measured_device"] == "nvidia-rtx-4090"
    assert calibration_samples(db, "nvidia-a100-80gb") == []
    [sample] = calibration_samples(db, "nvidia-rtx-4090")
    # the estimate was made for the A100 (Ampere: two 8 MiB + 128 KiB cuBLAS workspaces); the 4090 (Ada) has
    # the same workspaces, so the predicted peak is unchanged; an H100 (Hopper, 2 x 32 MiB) would add the gap
    assert cublas_workspace_bytes("ampere") == cublas_workspace_bytes("ada") == 2 * (8 * 2**20 + 8 * 16 * 2**10)
    assert sample.job_id == job and sample.predicted_peak == 10_000_000_000
    with _client(db) as client:
        body = {"model": "meta-llama/Llama-3.1-8B", "method": "qlora"}
        assert client.post("/api/v1/estimate", json=body).json()["calibration"] is None  # default: A100
        rtx = client.post("/api/v1/estimate", json={**body, "hardware": {"gpu": "nvidia-rtx-4090"}}).json()
        assert rtx["calibration"]["used"] == [job]
        assert client.get(f"/api/v1/calibrations/{job}").json()["measured_device"] == "nvidia-rtx-4090"


def test_a_database_without_the_column_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite3"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE calibration_jobs (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, started_at TEXT, "
                "finished_at TEXT, status TEXT NOT NULL, progress_text TEXT NOT NULL DEFAULT '', progress_percent "
                "REAL NOT NULL DEFAULT 0, request_json TEXT NOT NULL, device TEXT NOT NULL, warmup_steps INTEGER "
                "NOT NULL, measure_steps INTEGER NOT NULL, model_dir TEXT, result_json TEXT, error TEXT, "
                "estimate_json TEXT)")
    con.execute("INSERT INTO calibration_jobs VALUES ('old', '2026-01-01', NULL, NULL, 'done', '', 100, ?, 'cuda:0', "
                "1, 2, NULL, ?, NULL, ?)",
                (json.dumps({"model": "m", "hardware": {"gpu": "nvidia-a100-80gb"}}),
                 json.dumps({"peak_allocated_bytes": 100, "peak_reserved_bytes": 110, "device_used_bytes": 200,
                             "environment": {"device": "cuda:0", "gpu_name": "NVIDIA H100 80GB HBM3",
                                             "gpu_total_bytes": 85520809984}}),
                 json.dumps({"memory": {"peak": 90}})))
    con.commit()
    con.close()
    store = JobStore(db)
    # the migration reads the card from the stored environment (H100 80GB HBM3, 85,520,809,984 bytes)
    assert store.get("old")["measured_device"] == "nvidia-h100-sxm-80gb"
    assert calibration_samples(db, "nvidia-a100-80gb") == []
    [sample] = calibration_samples(db, "nvidia-h100-sxm-80gb")  # read from the stored environment
    # predicted for the A100 (Ampere workspaces), moved to the H100's (Hopper: 2 x 32 MiB)
    assert sample.predicted_peak == 90 - cublas_workspace_bytes("ampere") + 2 * 32 * 2**20


# --- "calibrate this plan" --------------------------------------------------------------------------------------
PLAN_QUERY = {"model": "Qwen/Qwen2.5-0.5B", "method": "qlora", "r": "16", "target_modules": "all-linear",
              "seq_len": "1024", "gpu": "nvidia-rtx-4090", "tokens": "100M"}


def _textarea(html: str) -> dict[str, Any]:
    start = html.index('<textarea id="request_json" name="request_json" rows="14">') + len(
        '<textarea id="request_json" name="request_json" rows="14">')
    import html as html_mod

    return json.loads(html_mod.unescape(html[start:html.index("</textarea>", start)]))


def test_calibrate_this_plan_prefills_the_form(tmp_path: Path) -> None:
    # the page's form fields read as the planner reads them, every default spelled out
    PLAN = PlanRequest.model_validate(form_to_body(PLAN_QUERY)).model_dump(mode="json")
    assert PLAN["method"] == "qlora" and PLAN["lora"]["r"] == 16 and PLAN["training"]["seq_len"] == 1024
    with _client(tmp_path / "db.sqlite3") as client:
        planner = client.get("/", params=PLAN_QUERY)
        assert 'formaction="/calibrate/plan"' in planner.text and "Calibrate this plan" in planner.text
        for nav in ('href="/calibrate"', 'href="/calibrations"'):
            assert nav in planner.text
        # the planner's button posts its form fields (the no-JS path of the same form)
        page = client.post("/calibrate/plan", data=PLAN_QUERY)
        assert page.status_code == 200 and 'id="from-plan"' in page.text
        assert _textarea(page.text) == PLAN
        assert 'name="token"' in page.text and client.get("/api/v1/calibrations").json()["total"] == 0
        # a pasted config.json travels too
        pasted = client.post("/calibrate/plan", data={**PLAN_QUERY, "config": json.dumps(LORA_BODY["model"]["config"])})
        assert _textarea(pasted.text)["model"] == {"config": LORA_BODY["model"]["config"]}
        # a link with the planner's query string does the same
        assert _textarea(client.get("/calibrate", params=PLAN_QUERY).text) == PLAN


# --- real CPU runs ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cpu_calibration_records_cpu_and_teaches_no_gpu(tmp_path: Path) -> None:
    body = _body(LORA_BODY, hardware={"gpu": "nvidia-a100-80gb"})
    with _client(tmp_path / "db.sqlite3") as client:
        job_id = client.post("/api/v1/calibrations", json=body, headers=AUTH).json()["id"]
        job = _wait(client, job_id)
        assert job["status"] == "done", job["error"]
        assert job["measured_device"] == "cpu" and job["result"]["measured_device"] == "cpu"
        assert job["request"]["hardware"]["gpu"] == "nvidia-a100-80gb"
        for gpu in ("nvidia-a100-80gb", "nvidia-rtx-4090"):
            est = client.post("/api/v1/estimate", json={"model": LORA_BODY["model"], "hardware": {"gpu": gpu}}).json()
            assert est["calibration"] is None  # no `calibration.used` entry from the cpu run
        assert calibration_samples(tmp_path / "db.sqlite3", "nvidia-a100-80gb") == []
        # measured vs predicted per phase: the same live-storage counter as the trace engine, phase by phase
        phases = {p["name"]: p for p in job["comparison"]["phases"]}
        assert set(phases) == {"forward", "loss", "backward", "optimizer"}
        measured = job["result"]["phases"]
        for name, p in phases.items():
            assert p["measured_bytes"] == measured[name] > 0
        peak = phases[job["comparison"]["predicted_phase"]]
        assert peak["predicted_bytes"] == job["comparison"]["predicted_peak_bytes"]
        assert abs(peak["error_percent"]) <= 5.0  # the peak's own bound (tests/test_calibration.py)
        page = client.get(f"/calibrations/{job_id}").text
        assert 'id="cmp-phases"' in page and all(f'data-phase="{n}"' in page for n in phases)
        assert "cpu (its results teach no GPU" in page


@pytest.mark.slow
def test_cancel_button_needs_the_token(tmp_path: Path) -> None:
    with _client(tmp_path / "db.sqlite3") as client:
        first = client.post("/api/v1/calibrations", json=_body(LORA_BODY), headers=AUTH).json()["id"]
        second = client.post("/api/v1/calibrations", json=_body(LORA_BODY), headers=AUTH).json()["id"]
        page = client.get(f"/calibrations/{second}").text
        assert f'action="/calibrations/{second}/cancel"' in page and 'name="token"' in page
        wrong = client.post(f"/calibrations/{second}/cancel", data={"token": "nope"})
        assert wrong.status_code == 401 and 'class="errors"' in wrong.text and "Bearer" in wrong.text
        assert client.get(f"/api/v1/calibrations/{second}").json()["status"] == "queued"
        done = client.post(f"/calibrations/{second}/cancel", data={"token": "t"}, follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"] == f"/calibrations/{second}"
        assert client.get(f"/api/v1/calibrations/{second}").json()["status"] == "cancelled"
        after = client.get(f"/calibrations/{second}").text
        assert "/cancel" not in after and "cal-status-cancelled" in after
        assert client.post("/calibrations/nope/cancel", data={"token": "t"}).status_code == 404
        client.post(f"/calibrations/{first}/cancel", data={"token": "t"})
        deadline = time.monotonic() + 30
        while client.get(f"/api/v1/calibrations/{first}").json()["status"] not in ("cancelled", "done"):
            assert time.monotonic() < deadline
            time.sleep(0.2)


@pytest.mark.gpu
def test_cuda_calibration_records_the_card_it_measured() -> None:
    """The GPU twin of the cpu test above: a real CUDA run names the catalog id of its device."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: the cpu twin is test_cpu_calibration_records_cpu_and_teaches_no_gpu")
    from app.calibration.measure import calibrate

    result = calibrate(PlanRequest.model_validate(_body(LORA_BODY)), "cuda:0", 1, 1, None)
    props = torch.cuda.get_device_properties(0)
    assert result["environment"]["gpu_name"] == props.name
    card = gpu_for_device(props.name, props.total_memory)
    assert result["measured_device"] == (card or props.name)
    if card is not None:
        assert abs(gpus()[card].vram_bytes - props.total_memory) <= 0.05 * gpus()[card].vram_bytes
