"""Benchmark (not a test): a fleet on loopback — calibration jobs per minute and API estimate throughput
with 1 and 2 API replicas against one PostgreSQL.

Starts Debian's PostgreSQL in a temporary directory (tests/pgcluster.py), ``--workers`` worker processes
(CPU slots advertising catalog GPU ids) and 1, then 2 uvicorn replicas (one process each). Per replica
count:

- estimates: after 5 untimed calls to each replica, ``--clients`` threads POST the same
  ``/api/v1/estimate`` body (Llama-3.2-1B, QLoRA) round-robin over the replicas for ``--seconds``;
  prints requests/s and p50/p99 latency in ms;
- jobs: after one warm-up job per worker (imports torch & co. in the warm process), ``--jobs`` CPU
  calibrations of a one-layer llama (1 warm-up + 1 measured step) submitted round-robin over the
  replicas; prints jobs/minute from the first submission to the last job done.

Traces (``--part traces``): one API replica with ``PEFT_PLANNER_TRACE_ON_WORKERS=busy`` (its one trace
worker, and the fleet's cpu slots when it is busy), alone, then with 1 and 2 ``peft-planner worker``
processes. Per step, ``--traces`` distinct traces (a 4-layer llama, LoRA, seq_len 256 + 8·i: no cache hits)
are posted at once by as many clients after a warm-up round (one trace per trace worker: the imports);
prints traces/minute from the first post to the last answer, and where they ran.

All are bounded by this machine's cores (clients, replicas, workers and PostgreSQL share them): read the
ratios together with ``os.cpu_count()`` and the load average that it prints.

    .venv/bin/python bench/fleet.py [--part all|replicas|traces] [--workers 3] [--jobs 12] [--clients 8]
        [--seconds 10] [--traces 6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import TINY_CONFIGS  # noqa: E402
from tests.fleet_procs import Api, Worker, wait_for  # noqa: E402
from tests.pgcluster import Cluster, create_database  # noqa: E402
from tests.test_fleet import ENV, FLEET_GPUS, JOB  # noqa: E402
from tests.test_fleet_traces import post  # noqa: E402

ESTIMATE = {"model": "meta-llama/Llama-3.2-1B", "method": "qlora"}


def trace_body(i: int) -> dict[str, Any]:
    """The ``i``-th distinct trace of the bench (a 4-layer llama, LoRA r=4, seq_len 256 + 8·i)."""
    return {"model": {"config": dict(TINY_CONFIGS["llama"], num_hidden_layers=4)}, "method": "lora",
            "lora": {"r": 4}, "training": {"micro_batch_size": 1, "seq_len": 256 + 8 * i}}


def estimates(apis: list[Api], clients: int, seconds: float) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 latency (ms) of POST /api/v1/estimate spread over ``apis``."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            apis[i % len(apis)].call("POST", "/api/v1/estimate", ESTIMATE)
            with lock:
                latencies.append(time.perf_counter() - t0)
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    q = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, 1000 * q[49], 1000 * q[98]


def jobs_per_minute(apis: list[Api], n: int) -> float:
    ids = [apis[i % len(apis)].call("POST", "/api/v1/calibrations", JOB)["id"] for i in range(n)]
    start = time.monotonic()

    def finished() -> bool:
        return all(apis[0].call("GET", f"/api/v1/calibrations/{j}")["status"] == "done" for j in ids)

    wait_for(finished, 1800, f"{n} jobs", every_s=0.5)
    return 60 * n / (time.monotonic() - start)


def traces_per_minute(api: Api, first: int, n: int) -> float:
    """Post traces ``first`` … ``first + n - 1`` at once (one client each); traces/minute until the last answer."""
    answers: list[int] = []

    def client(i: int) -> None:
        status, body = post(api, "/api/v1/trace", trace_body(i), timeout_s=1800)
        assert status == 200 and body["cached"] is False, (status, body)
        answers.append(status)

    threads = [threading.Thread(target=client, args=(first + k,)) for k in range(n)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == n
    return 60 * n / (time.monotonic() - start)


def bench_traces(cluster: Cluster, work: Path, n: int, procs: list[Any]) -> None:
    import psycopg

    url = create_database(cluster, "bench_traces")
    env = {**ENV, "PEFT_PLANNER_DATABASE_URL": url, "PEFT_PLANNER_TRACE_ON_WORKERS": "busy",
           "PEFT_PLANNER_TRACE_QUEUE": str(4 * n), "PEFT_PLANNER_TRACE_FLEET_QUEUE": str(4 * n),
           "PEFT_PLANNER_TRACE_TIMEOUT_S": "600", "PEFT_PLANNER_TRACE_FLEET_WAIT_S": "600"}
    api = Api(env, work, "api-traces")
    procs.append(api)
    first = 0
    print(f"traces: {n} at once per step, one API replica (1 trace worker, PEFT_PLANNER_TRACE_ON_WORKERS=busy)")
    for workers in (0, 1, 2):
        while len(procs) - 1 < workers:
            procs.append(Worker(env, work, f"tw{len(procs)}", "cpu"))
        if workers:  # until the new worker is registered (it imports torch & co. in its warm process meanwhile)
            wait_for(lambda w=workers: _live_slots(url) >= w, 120, "the workers")
        traces_per_minute(api, first, 1 + workers)  # warm-up: the API's trace worker and each worker's imports
        first += 1 + workers
        tpm = traces_per_minute(api, first, n)
        with psycopg.connect(url) as conn:
            on_workers = conn.execute("SELECT count(*) FROM calibration_jobs WHERE kind='trace' AND status='done' "
                                      "AND (request->'training'->>'seq_len')::int >= %s", (256 + 8 * first,)).fetchone()
        first += n
        print(f"API + {workers} worker(s): {tpm:5.1f} traces/min ({on_workers[0]} of {n} ran on workers); "
              f"load average {os.getloadavg()[0]:.1f}")


def _live_slots(url: str) -> int:
    from app.jobs.pg import PgJobStore

    store = PgJobStore(url)
    try:
        return store.trace_load()[0]
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "replicas", "traces"), default="all")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--traces", type=int, default=6)
    args = parser.parse_args()
    cluster = Cluster()
    work = Path(tempfile.mkdtemp(prefix="peft-planner-bench-"))
    procs: list[Any] = []
    try:
        if args.part in ("all", "traces"):
            bench_traces(cluster, work, args.traces, procs)
            for proc in procs:
                proc.stop()
            procs.clear()
        if args.part == "traces":
            return
        env = {**ENV, "PEFT_PLANNER_DATABASE_URL": create_database(cluster, "bench")}
        apis = [Api(env, work, "api-0")]
        procs.append(apis[0])
        workers = [Worker(env, work, f"w{i}", FLEET_GPUS[i % len(FLEET_GPUS)]) for i in range(args.workers)]
        procs.extend(workers)
        jobs_per_minute(apis, args.workers)  # warm-up: each worker's warm process imports torch & co.
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {args.workers} workers, "
              f"{args.clients} estimate clients × {args.seconds:g} s, {args.jobs} jobs")
        for replicas in (1, 2):
            if len(apis) < replicas:
                apis.append(Api(env, work, f"api-{len(apis)}"))
                procs.append(apis[-1])
            for api in apis:  # warm each replica (first-call caches, pool connections) before timing
                for _ in range(5):
                    api.call("POST", "/api/v1/estimate", ESTIMATE)
            rps, p50, p99 = estimates(apis, args.clients, args.seconds)
            jpm = jobs_per_minute(apis, args.jobs)
            print(f"{replicas} replica(s): estimates {rps:7.1f} req/s (p50 {p50:6.1f} ms, p99 {p99:6.1f} ms); "
                  f"calibrations {jpm:5.1f} jobs/min; load average {os.getloadavg()[0]:.1f}")
    finally:
        for proc in procs:
            proc.stop()
        cluster.destroy()


if __name__ == "__main__":
    main()
