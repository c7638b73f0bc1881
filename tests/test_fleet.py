"""A fleet on this machine: real PostgreSQL, uvicorn API replicas and ``peft-planner worker`` processes.

CPU calibrations of a one-layer llama (1 warm-up + 1 measured step) stand in for GPU work; the workers
advertise different catalog GPU ids on ``cpu`` slots. The same scenario runs against SQLite with the API's
in-process worker (one process: that store's deployment).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from app.core import PlanRequest, estimate
from app.jobs.gpus import catalog_gpu_id
from app.jobs.pg import PgJobStore
from app.main import create_app
from app.settings import Settings, get_settings

from .conftest import TINY_CONFIGS
from .fleet_procs import Api, Worker, wait_for
from .pgcluster import Cluster, create_database

FLEET_GPUS = ("nvidia-l4", "nvidia-a100-80gb", "nvidia-h100-sxm-80gb")
WANTED = (None, *FLEET_GPUS)  # job i asks for WANTED[i % 4] (None: any worker)
JOB: dict[str, Any] = {"model": {"config": dict(TINY_CONFIGS["llama"], num_hidden_layers=1)}, "method": "lora",
                       "lora": {"r": 4}, "training": {"micro_batch_size": 1, "seq_len": 32},
                       "warmup_steps": 1, "measure_steps": 1}
ENV = {"PEFT_PLANNER_TOKEN": "t", "PEFT_PLANNER_WORKER_LEASE_S": "2", "PEFT_PLANNER_WORKER_MAX_ATTEMPTS": "3",
       "PEFT_PLANNER_CALIBRATION_TIMEOUT_S": "300"}
FINAL = ("done", "failed", "oom", "cancelled", "interrupted")


@pytest.fixture(scope="module")
def cluster() -> Any:
    c = Cluster()
    yield c
    c.destroy()


def _reference_peak() -> int:
    """The trace engine's count of the same step on fake tensors (equal to a CPU calibration to the byte,
    tests/test_calibration.py)."""
    from app.trace.engine import run_trace

    body = {k: v for k, v in JOB.items() if k not in ("warmup_steps", "measure_steps")}
    return run_trace(PlanRequest.model_validate(body), fake=True).peak_bytes


def _running_job(api: Api, ours: list[str]) -> dict[str, Any] | None:
    listing = api.call("GET", "/api/v1/calibrations?limit=100")
    return next((j for j in listing["items"] if j["status"] == "running" and j["id"] in ours), None)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_thirty_jobs_complete_exactly_once(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pg = backend == "postgresql"
    env = dict(ENV)
    if pg:
        cl: Cluster = request.getfixturevalue("cluster")
        env["PEFT_PLANNER_DATABASE_URL"] = url = create_database(cl, "fleet")
    else:
        env["PEFT_PLANNER_DATABASE_PATH"] = str(tmp_path / "jobs.sqlite3")
    apis = [Api(env, tmp_path, "api-0"), *([Api(env, tmp_path, "api-1")] if pg else [])]
    workers = [Worker(env, tmp_path, f"w{i}", gpu) for i, gpu in enumerate(FLEET_GPUS)] if pg else []
    procs = [*apis, *workers]
    try:
        ids: list[str] = []

        def submit(i: int) -> None:
            body = {**JOB, "worker_gpu": WANTED[i % 4]} if pg else JOB
            created = apis[i % len(apis)].call("POST", "/api/v1/calibrations", body)
            assert created["status"] == "queued"
            ids.append(created["id"])

        # cancellation from another replica (PG: a GPU no worker has keeps it queued)
        doomed = apis[0].call("POST", "/api/v1/calibrations", {**JOB, "worker_gpu": "nvidia-t4"} if pg else JOB)
        cancelled = apis[-1].call("DELETE", f"/api/v1/calibrations/{doomed['id']}")
        assert cancelled["status"] == "cancelled"
        assert cancelled["previous_status"] in (("queued",) if pg else ("queued", "running"))

        for i in range(15):
            submit(i)
        victim = wait_for(lambda: _running_job(apis[-1], ids), 300, "a running job")
        if pg:  # kill -9 the worker running it; a new worker with the same GPU joins
            dead = next(w for w in workers if w.name == victim["run"]["worker_id"])
            dead.kill9()
            workers.append(Worker(env, tmp_path, dead.name + "-b", dead.gpu))
            procs.append(workers[-1])
            apis[0].kill9()  # and an API replica
            apis[0] = Api(env, tmp_path, "api-0b")
            procs.append(apis[0])
        else:  # kill -9 the API process (and with it the in-process worker) mid-job, start it again
            apis[0].kill9()
            apis[0] = Api(env, tmp_path, "api-0b")
            procs.append(apis[0])
        for i in range(15, 22):
            submit(i)
        if pg:  # PostgreSQL restarts under the running fleet
            cl.restart()
        for i in range(22, 30):
            submit(i)

        def all_final() -> list[dict[str, Any]] | None:
            jobs = [apis[-1].call("GET", f"/api/v1/calibrations/{job_id}") for job_id in ids]
            return jobs if all(j["status"] in FINAL for j in jobs) else None

        jobs = wait_for(all_final, 900, "30 final jobs", every_s=2)
        statuses = {j["id"]: j["status"] for j in jobs}
        peak = _reference_peak()
        if pg:
            assert set(statuses.values()) == {"done"}, statuses
        else:  # only the job that was running when the process was killed may be interrupted (never lost)
            interrupted = [k for k, v in statuses.items() if v == "interrupted"]
            assert set(statuses.values()) <= {"done", "interrupted"} and len(interrupted) <= 1, statuses
            assert all(k == victim["id"] for k in interrupted)
        for job in jobs:
            if job["status"] == "done":
                assert job["result"]["peak_allocated_bytes"] == peak, job["id"]
        # identical answers from every replica: jobs, listing, pages, an estimate
        for api in apis[:-1]:
            for job in jobs:
                assert api.call("GET", f"/api/v1/calibrations/{job['id']}") == job
            assert api.call("GET", "/api/v1/calibrations?limit=100") == apis[-1].call(
                "GET", "/api/v1/calibrations?limit=100")
            assert api.call("POST", "/api/v1/estimate", {"model": "meta-llama/Llama-3.2-1B"}) == apis[-1].call(
                "POST", "/api/v1/estimate", {"model": "meta-llama/Llama-3.2-1B"})
        for api in apis:
            page = api.page("/calibrations?offset=0")
            assert all(job_id[:8] in page for job_id in ids)
        if not pg:
            return
        # exactly once, on a matching worker: one 'done' attempt per job, on the GPU it asked for
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT job_id, worker_id, worker_gpu, outcome FROM calibration_attempts "
                                "ORDER BY job_id, attempt").fetchall()
        attempts: dict[str, list[tuple[str, str, str]]] = {}
        for job_id, worker_id, gpu, outcome in rows:
            attempts.setdefault(job_id, []).append((worker_id, gpu, outcome))
        gpu_of = {w.name: w.gpu for w in workers}
        for i, job_id in enumerate(ids):
            done = [a for a in attempts[job_id] if a[2] == "done"]
            assert len(done) == 1, attempts[job_id]
            worker_id, gpu, _ = done[0]
            assert gpu_of[worker_id] == gpu and gpu in ((WANTED[i % 4],) if WANTED[i % 4] else FLEET_GPUS)
            assert statuses[job_id] == "done"
        assert attempts[victim["id"]][0][2] == "lease expired" and attempts[victim["id"]][0][0] == dead.name
        # the fleet as every replica lists it: the killed worker is lost, the others alive
        listed = [api.call("GET", "/api/v1/workers") for api in apis]
        states = {w["id"]: w for w in listed[0]["items"]}
        assert {w["id"] for w in listed[1]["items"]} == set(states) == set(gpu_of)
        assert states[dead.name]["state"] == "lost"
        assert all(states[w.name]["state"] in ("idle", "busy") for w in workers if w is not dead)
        assert all(states[w.name]["slots"][0]["gpu"] == w.gpu for w in workers)
        assert dead.name in apis[1].page("/workers")
        # cancelling a running job on another replica: its worker loses the lease and kills the run
        # 30 steps of 12 layers at 2 x 2048 tokens (~0.5 s each on this CPU): a warm worker runs JOB's steps in
        # well under one heartbeat (lease_s / 3), and its refused result would be all the log shows
        long = apis[0].call("POST", "/api/v1/calibrations", {
            **JOB, "model": {"config": dict(TINY_CONFIGS["llama"], num_hidden_layers=12)},
            "training": {"micro_batch_size": 2, "seq_len": 2048}, "measure_steps": 20, "warmup_steps": 10,
            "worker_gpu": "nvidia-l4"})
        wait_for(lambda: apis[1].call("GET", f"/api/v1/calibrations/{long['id']}")["status"] == "running", 120,
                 "the long job to run")
        assert apis[1].call("DELETE", f"/api/v1/calibrations/{long['id']}")["previous_status"] == "running"
        runner = next(w for w in workers if w.gpu == "nvidia-l4" and w.popen.poll() is None)
        wait_for(lambda: f"lease of {long['id']} lost" in runner.log.read_text(), 60, "the worker to stop the run")
        job = apis[0].call("GET", f"/api/v1/calibrations/{long['id']}")
        assert job["status"] == "cancelled" and job["result"] is None
    finally:
        for proc in procs:
            proc.stop()


def test_migrations_are_safe_when_replicas_start_together(cluster: Cluster) -> None:
    url = create_database(cluster, "migrate")
    applied: list[int] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            store = PgJobStore(url)
            applied.append(store.migrate())
            store.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with psycopg.connect(url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM peft_planner_schema").fetchall()]
    assert versions == [1, 2, 3, 4]  # applied once; every later start (and each store's second migrate) applies nothing
    assert applied == [0] * 6


def test_leases_guard_completion_and_requeue(cluster: Cluster) -> None:
    """A worker whose lease expired cannot complete the job another worker now runs; attempts are bounded."""
    import time

    store = PgJobStore(create_database(cluster, "leases"), lease_s=0.5, max_attempts=2)
    job_id = store.create({"model": "x"}, "cpu", 1, 1, None, wanted_gpu="nvidia-l4")
    assert store.claim("a", "nvidia-a100-80gb", "cpu") is None  # another GPU
    assert store.claim("a", "nvidia-l4", "cuda:0") is None  # a cpu job is not run on a GPU slot
    first = store.claim("a", "nvidia-l4", "cpu")
    assert first["attempts"] == 1 and store.heartbeat("a", [first["lease_token"]]) == {first["lease_token"]}
    time.sleep(0.7)
    assert store.recover() == 1 and store.get(job_id)["status"] == "queued"
    second = store.claim("b", "nvidia-l4", "cpu")
    assert store.heartbeat("a", [first["lease_token"]]) == set()  # "a" learns it lost the job
    assert not store.finish(job_id, "done", result={"by": "a"}, token=first["lease_token"])
    assert store.finish(job_id, "done", result={"by": "b"}, token=second["lease_token"])
    assert store.get(job_id)["result"] == {"by": "b"} and store.get(job_id)["worker_id"] == "b"
    # bounded: the second expiry of a job interrupts it
    other = store.create({"model": "y"}, "cpu", 1, 1, None)
    for _ in range(2):
        store.claim("c", "cpu", "cpu")
        time.sleep(0.7)
        store.recover()
    job = store.get(other)
    assert job["status"] == "interrupted" and "attempt 2 of 2" in job["error"]
    assert [a["outcome"] for a in store.attempts(other)] == ["lease expired", "lease expired"]
    store.close()


def test_estimates_learn_from_every_nodes_calibrations(cluster: Cluster) -> None:
    """Calibrations finished by different workers on the same GPU model fit the overhead (the hand-derived
    figures of tests/test_calibration.py::test_estimates_learn_from_gpu_calibrations); a GPU job counts for
    the GPU its worker has, not the request's hardware.gpu."""
    url = create_database(cluster, "learn")
    store = PgJobStore(url)
    rows = [("node-1", 10_000_000_000, 10_500_000_000, 11_550_000_000, 12_150_000_000),
            ("node-2", 20_000_000_000, 19_000_000_000, 20_900_000_000, 21_600_000_000),
            ("node-3", 15_000_000_000, 15_300_000_000, 16_524_000_000, 17_124_000_000)]
    ids = []
    for node, predicted, allocated, reserved, used in rows:
        job_id = store.create({"model": "meta-llama/Llama-3.2-1B", "hardware": {"gpu": "nvidia-a100-80gb"}},
                              "cuda:0", 1, 2, {"memory": {"peak": predicted}})
        token = store.claim(node, "nvidia-h100-sxm-80gb", "cuda:0")["lease_token"]
        assert store.finish(job_id, "done", token=token, result={
            "peak_allocated_bytes": allocated, "peak_reserved_bytes": reserved, "device_used_bytes": used})
        ids.append(job_id)
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(database_url=url)
    body = {"model": "meta-llama/Llama-3.1-8B", "method": "qlora", "hardware": {"gpu": "nvidia-h100-sxm-80gb"}}
    with TestClient(app) as client:
        data = client.post("/api/v1/estimate", json=body).json()
        peak = estimate(PlanRequest.model_validate(body)).memory.peak
        assert data["memory"]["overhead"] == 600_000_000 + int(0.1 * peak)
        assert sorted(data["calibration"]["used"]) == sorted(ids)
        a100 = client.post("/api/v1/estimate", json={**body, "hardware": {"gpu": "nvidia-a100-80gb"}}).json()
        assert a100["calibration"] is None
    store.close()


def test_worker_gpu_is_checked(cluster: Cluster, tmp_path: Path) -> None:
    body = {**JOB, "worker_gpu": "nvidia-k80"}
    for settings in (Settings(token="t", database_url=create_database(cluster, "checks")),
                     Settings(token="t", database_path=tmp_path / "jobs.sqlite3")):
        app = create_app()
        app.dependency_overrides[get_settings] = lambda s=settings: s
        with TestClient(app) as client:
            r = client.post("/api/v1/calibrations", json=body, headers={"Authorization": "Bearer t"})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "worker_gpu"], r.text
            if settings.database_url:
                assert "nvidia-h100-sxm-80gb" in r.json()["detail"][0]["msg"]
            else:
                assert "PEFT_PLANNER_DATABASE_URL" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize(("name", "total", "expected"), [
    # names as torch.cuda.get_device_properties().name reports them; totals from the catalog (same source)
    ("NVIDIA A100-SXM4-80GB", 85100068864, "nvidia-a100-80gb"),
    ("NVIDIA A100-PCIE-40GB", 42298834944, "nvidia-a100-40gb"),
    ("NVIDIA H100 80GB HBM3", 85520809984, "nvidia-h100-sxm-80gb"),
    ("NVIDIA H100 PCIe", 85520809984, "nvidia-h100-pcie-80gb"),
    ("NVIDIA H100 NVL", 100485038080, "nvidia-h100-nvl-94gb"),
    ("NVIDIA H200", 150754820096, "nvidia-h200-141gb"),
    ("NVIDIA GeForce RTX 4090", 25757220864, "nvidia-rtx-4090"),
    ("NVIDIA GeForce RTX 4060 Ti", 17179869184, "nvidia-rtx-4060-ti-16gb"),
    ("NVIDIA RTX A6000", 51040485376, "nvidia-rtx-a6000"),
    ("NVIDIA RTX 6000 Ada Generation", 51002867712, "nvidia-rtx-6000-ada"),
    ("Tesla T4", 15835398144, "nvidia-t4"),
    ("Tesla V100-SXM2-32GB", 34089730048, "nvidia-v100-32gb"),
    ("NVIDIA L4", 23580639232, "nvidia-l4"),
    ("NVIDIA GeForce GTX 1080", 8589934592, None),  # not in the catalog: the worker asks for --gpu
])
def test_catalog_gpu_id_from_device_name_and_memory(name: str, total: int, expected: str | None) -> None:
    assert catalog_gpu_id(name, total) == expected


def test_single_server_lists_its_in_process_worker(tmp_path: Path) -> None:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(token="t", database_path=tmp_path / "jobs.sqlite3")
    with TestClient(app) as client:
        data = client.get("/api/v1/workers").json()
        assert data["store"] == "sqlite" and data["total"] == 1
        assert data["items"][0]["state"] == "idle" and data["items"][0]["slots"] == []  # no job yet: no thread
        page = client.get("/workers")
        assert page.status_code == 200 and data["items"][0]["id"] in page.text


@pytest.mark.slow
def test_api_runs_a_worker_only_when_configured(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    url = create_database(cluster, "inapi")
    monkeypatch.setenv("PEFT_PLANNER_WORKER_GPUS", "nvidia-l4")
    for in_api in (False, True):
        app = create_app()
        app.dependency_overrides[get_settings] = lambda in_api=in_api: Settings(
            token="t", database_url=url, worker_in_api=in_api, worker_lease_s=2)
        with TestClient(app) as client:
            job_id = client.post("/api/v1/calibrations", json={**JOB, "worker_gpu": "nvidia-l4"},
                                 headers={"Authorization": "Bearer t"}).json()["id"]
            fleet = client.get("/api/v1/workers").json()["items"]
            if not in_api:  # nobody runs it: it stays queued (and is run by the next app, which has a worker)
                time.sleep(3)
                assert fleet == [] and client.get(f"/api/v1/calibrations/{job_id}").json()["status"] == "queued"
                continue
            assert [w["slots"][0]["gpu"] for w in fleet] == ["nvidia-l4"] and fleet[0]["id"].endswith("-api")

            def both_done(client: TestClient = client) -> list[dict[str, Any]] | None:
                items = client.get("/api/v1/calibrations").json()["items"]
                return items if sum(j["status"] == "done" for j in items) == 2 else None

            done = wait_for(both_done, 300, "both jobs", every_s=1)
            assert {j["run"]["worker_id"] for j in done} == {fleet[0]["id"]}
