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

Both are bounded by this machine's cores (clients, replicas, workers and PostgreSQL share them): read the
ratio 2 vs 1 replicas together with ``os.cpu_count()`` and the load average that it prints.

    .venv/bin/python bench/fleet.py [--workers 3] [--jobs 12] [--clients 8] [--seconds 10]
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

from tests.fleet_procs import Api, Worker, wait_for  # noqa: E402
from tests.pgcluster import Cluster, create_database  # noqa: E402
from tests.test_fleet import ENV, FLEET_GPUS, JOB  # noqa: E402

ESTIMATE = {"model": "meta-llama/Llama-3.2-1B", "method": "qlora"}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    cluster = Cluster()
    work = Path(tempfile.mkdtemp(prefix="peft-planner-bench-"))
    procs: list[Any] = []
    try:
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
