"""Fleet traces and the shared model/config cache, on a real PostgreSQL (Debian's package, tests/pgcluster.py)
with uvicorn API replicas and ``peft-planner worker`` processes (tests/fleet_procs.py).

- ``POST /api/v1/trace`` on replica A runs on a CPU worker; the answer equals :func:`run_trace` run here (the
  same peak to the byte, phase, per-phase peaks, largest tensors); ``kill -9`` of the worker mid-trace: the
  trace is retried on the other worker and the client still gets its answer; replica B answers the same
  request from the shared store without tracing it again.
- Bounds: a full shared queue is a 429 and a trace no worker takes is cancelled with a 503, both with
  ``Retry-After``, and the trace's row keeps its final status.
- A generic model behind a Hub id (a stand-in Hub on 127.0.0.1) estimated on replica A is answered by replica B
  from PostgreSQL: no request to the Hub and no second build (``generic_inventories.builds`` stays 1).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from app.core.request import PlanRequest
from app.jobs.pg import PgJobStore
from app.main import create_app
from app.settings import Settings, get_settings

from .conftest import TINY_CONFIGS
from .fleet_procs import Api, Worker, wait_for
from .hub_standin import StandInHub, config_repo, running_hub
from .pgcluster import Cluster, create_database
from .reference.generic import fine_tuner_model, peft_counts
from .test_generic_path import OLMO2

ENV = {"PEFT_PLANNER_TOKEN": "t", "PEFT_PLANNER_WORKER_LEASE_S": "2", "PEFT_PLANNER_WORKER_MAX_ATTEMPTS": "3",
       "PEFT_PLANNER_TRACE_ON_WORKERS": "always", "PEFT_PLANNER_TRACE_TIMEOUT_S": "300"}
SMALL = {"model": {"config": TINY_CONFIGS["qwen3"]}, "method": "qlora", "lora": {"r": 4},
         "training": {"micro_batch_size": 2, "seq_len": 64}}
# long enough (about 5 s on this CPU) to be killed while it runs
LONG = {"model": {"config": dict(TINY_CONFIGS["llama"], num_hidden_layers=16)}, "method": "lora", "lora": {"r": 4},
        "training": {"micro_batch_size": 1, "seq_len": 1024}}


@pytest.fixture(scope="module")
def cluster() -> Any:
    c = Cluster()
    yield c
    c.destroy()


def post(api: Api, path: str, body: Any, timeout_s: float = 300) -> tuple[int, Any]:
    """POST JSON with a long read timeout (a trace answers when it has run); (status, body)."""
    req = urllib.request.Request(api.url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def reference(body: dict[str, Any]) -> dict[str, Any]:
    """run_trace in this process, as the API's own trace worker would run it."""
    from app.trace.engine import run_trace

    return run_trace(PlanRequest.model_validate(copy.deepcopy(body))).as_dict()


def same_trace(got: dict[str, Any], want: dict[str, Any]) -> None:
    # ``seconds`` is wall time; the allocator replay's event count and the largest tensors' ``ident`` (a
    # counter of the process) depend on what the process traced before (a few process-wide scalars are made
    # once, tests/test_trace_api.py); the figures do not
    drop = ("seconds", "allocator", "largest")
    assert {k: v for k, v in got.items() if k not in drop} == json.loads(json.dumps(
        {k: v for k, v in want.items() if k not in drop}))
    assert [{k: v for k, v in t.items() if k != "ident"} for t in got["largest"]] == json.loads(json.dumps(
        [{k: v for k, v in t.items() if k != "ident"} for t in want["largest"]]))
    assert {k: v for k, v in got["allocator"].items() if k != "events"} == \
        {k: v for k, v in want["allocator"].items() if k != "events"}


def _trace_rows(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT id, status, worker_id FROM calibration_jobs WHERE kind='trace' "
                            "ORDER BY seq").fetchall()


@dataclass
class Fleet:
    url: str
    hub: StandInHub
    workers: list[Worker]
    apis: list[Api]


@pytest.fixture(scope="module")
def fleet(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two CPU workers and two API replicas (each with its own HF_HOME: no shared disk cache) on one database,
    and a stand-in Hub with a model outside the hand-written rules."""
    work = tmp_path_factory.mktemp("fleet-traces")
    url = create_database(cluster, "traces")
    with running_hub({"test-org/olmo2-tiny": config_repo(OLMO2, "olmo2")}) as hub:
        env = {**ENV, "PEFT_PLANNER_DATABASE_URL": url, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
               "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
        procs: list[Any] = []
        try:
            workers = [Worker(env, work, f"t{n}", "cpu") for n in range(2)]
            procs.extend(workers)
            for n in "ab":
                procs.append(Api({**env, "HF_HOME": str(work / f"hf-{n}")}, work, f"api-{n}"))
            yield Fleet(url, hub, workers, procs[2:])
        finally:
            for proc in procs:
                proc.stop()


@pytest.mark.slow
def test_traces_run_on_cpu_workers_and_survive_a_kill(fleet: Fleet) -> None:
    url, (api_a, api_b) = fleet.url, fleet.apis
    status, small = post(api_a, "/api/v1/trace", SMALL)
    assert status == 200, small
    assert small["cached"] is False
    same_trace(small["trace"], reference(SMALL))
    assert [r[1] for r in _trace_rows(url)] == ["done"]  # it ran on a worker, not in the API

    answer: dict[str, Any] = {}
    client = threading.Thread(target=lambda: answer.update(zip(("status", "body"),
                                                               post(api_a, "/api/v1/trace", LONG), strict=True)))
    client.start()
    running = wait_for(lambda: [r for r in _trace_rows(url) if r[1] == "running"], 60, "the long trace to run",
                       every_s=0.1)[0]
    victim = next(w for w in fleet.workers if w.name == running[2])
    time.sleep(1.0)  # into the trace (the other worker finished SMALL, so both warm processes are ready)
    victim.kill9()
    client.join(timeout=300)
    assert answer.get("status") == 200, answer
    same_trace(answer["body"]["trace"], reference(LONG))
    with psycopg.connect(url) as conn:
        attempts = conn.execute("SELECT worker_id, outcome FROM calibration_attempts WHERE job_id=%s "
                                "ORDER BY attempt", (running[0],)).fetchall()
    survivor = next(w for w in fleet.workers if w is not victim)
    assert attempts == [(victim.name, "lease expired"), (survivor.name, "done")]

    # another replica: the same request from the shared store, not traced again
    status, again = post(api_b, "/api/v1/trace", LONG)
    assert status == 200 and again["cached"] is True and again["trace"] == answer["body"]["trace"]
    assert {k: v for k, v in again.items() if k != "cached"} == \
        {k: v for k, v in answer["body"].items() if k != "cached"}
    assert len(_trace_rows(url)) == 2


def test_fleet_trace_queue_is_bounded(cluster: Cluster) -> None:
    """No worker: a queued trace is cancelled after trace_fleet_wait_s (503); a full queue is a 429."""
    url = create_database(cluster, "tracecap")
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(
        database_url=url, trace_on_workers="always", trace_fleet_queue=1, trace_fleet_wait_s=1)
    with TestClient(app) as client:
        r = client.post("/api/v1/trace", json=SMALL)
        assert r.status_code == 503 and r.headers["retry-after"] == "30", r.text
        assert r.json()["detail"][0]["type"] == "no_worker" and "within 1 s" in r.json()["detail"][0]["msg"]
        [(_, status, _)] = _trace_rows(url)
        assert status == "cancelled"  # final, never left queued for a worker to run for nobody
        store = PgJobStore(url)
        assert store.submit_trace({"model": "another replica's trace"}, 1) is not None
        assert store.submit_trace({"model": "one too many"}, 1) is None
        r = client.post("/api/v1/trace", json=SMALL)
        assert r.status_code == 429 and r.headers["retry-after"] == "5", r.text
        assert "1 trace(s) wait" in r.json()["detail"][0]["msg"]
        # finished traces are kept as answers for a while, then pruned
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE calibration_jobs SET finished_at = now() - interval '2 hours' WHERE status = "
                         "'cancelled'")
        assert store.prune_traces(3 * 3600) == 0 and store.prune_traces(3600) == 1
        assert [row[1] for row in _trace_rows(url)] == ["queued"]  # the other replica's, waiting
        store.close()


def test_replicas_share_the_model_and_config_cache(fleet: Fleet) -> None:
    body = {"model": "test-org/olmo2-tiny", "method": "lora", "lora": {"r": 16, "target_modules": "all-linear"}}
    first = fleet.apis[0].call("POST", "/api/v1/estimate", body)
    asked = len(fleet.hub.requests)
    assert asked > 0
    second = fleet.apis[1].call("POST", "/api/v1/estimate", body)
    assert second == first
    assert len(fleet.hub.requests) == asked  # B did not ask the Hub
    trainable, all_params = peft_counts(fine_tuner_model(OLMO2), r=16, target_modules="all-linear")
    assert (first["parameters"]["trainable"], first["parameters"]["all_params"]) == (trainable, all_params)
    with psycopg.connect(fleet.url) as conn:
        builds = conn.execute("SELECT builds FROM generic_inventories").fetchall()
        resolutions = conn.execute("SELECT count(*) FROM generic_resolutions").fetchone()
        hub_rows = conn.execute("SELECT repo_id, revision FROM hub_configs").fetchall()
    assert builds == [(1,)]  # built once, by A; B read it (a second build would have counted 2)
    assert resolutions == (2,)  # PEFT's resolution of the request's targets, for LoRA and for DoRA
    assert hub_rows == [("test-org/olmo2-tiny", "main")]


def test_busy_mode_sends_a_trace_where_fewer_wait(cluster: Cluster) -> None:
    """PEFT_PLANNER_TRACE_ON_WORKERS=busy: local while a local trace worker is free; else to the fleet when fewer
    traces wait per live worker slot there than per local worker here, or when the local queue is full."""
    import asyncio

    from app.jobs.traces import FleetTraces
    from app.trace.service import TraceService

    store = PgJobStore(create_database(cluster, "busy"), lease_s=2)
    service = TraceService(timeout_s=60, concurrency=1, queue=2, fleet=FleetTraces(store, 60, 16, 60))

    async def decide() -> bool:
        return await service._on_fleet()

    assert asyncio.run(decide()) is False  # a local worker is free
    asyncio.run(service._slots.acquire())  # ... now it is busy
    assert asyncio.run(decide()) is False  # no worker registered: wait locally
    store.register_worker("w", "host", 1, {}, [{"device": "cpu", "gpu": "cpu", "traces": True},
                                               {"device": "cuda:0", "gpu": "nvidia-l4", "traces": False}])
    store.register_worker("gpu-only", "host", 2, {}, [{"device": "cpu", "gpu": "cpu", "traces": False}])
    assert store.trace_load() == (1, 0)  # the cpu slot of "w" only
    assert asyncio.run(decide()) is True  # its slot is free
    store.submit_trace({"model": "x"}, 16)
    assert asyncio.run(decide()) is False  # 0 ahead per slot there, 0 waiting here: stay
    service._waiting = 1
    assert asyncio.run(decide()) is True  # 1 waits here
    store.submit_trace({"model": "y"}, 16)
    assert asyncio.run(decide()) is False  # 1 ahead there too
    service._waiting = 2  # the local queue is full: the fleet's own cap decides
    assert asyncio.run(decide()) is True
    service.offload = "never"
    assert asyncio.run(decide()) is False
    store.stop_worker("w")
    service.offload = "busy"
    assert store.trace_load() == (0, 2) and asyncio.run(decide()) is False
    store.close()
