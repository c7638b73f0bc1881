"""Benchmark (not a test): HTTP throughput and p99 latency of a real server under bounded loopback load.

Starts uvicorn (as `make run` does) on a free 127.0.0.1 port with a throw-away database, then for each
scenario runs ``--connections`` concurrent httpx clients for ``--seconds`` (each waits for its answer before
the next request) and prints requests/s, p50 and p99, and each scenario's throughput as a ratio of /healthz's.
Scenarios: /healthz; POST /api/v1/estimate for a catalog model; the same for a pasted config.json; GET / (the
planner page); POST /api/v1/fit for a catalog model. Loopback only; stops by itself (at most
scenarios × seconds, plus start-up); the server is stopped at the end.

``--stored-jobs N`` stores N finished GPU calibrations first (estimates and pages then read their summary).
``--fit-at-limits`` instead times one POST /api/v1/fit on a pasted config at the dimension limits (256 layers,
512 experts, all-linear): the figure behind docs/limits.md's fit budget.

    .venv/bin/python bench/load.py [--connections 16] [--seconds 10] [--stored-jobs 500] [--fit-at-limits]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CATALOG = {"model": "meta-llama/Llama-3.1-8B", "method": "qlora", "lora": {"r": 16, "target_modules": "all-linear"}}
PASTED = {"model": {"config": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
                               "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                               "num_key_value_heads": 8}},
          "method": "qlora", "lora": {"r": 16, "target_modules": "all-linear"}}
AT_LIMITS = {"model": {"config": {"model_type": "qwen3_moe", "num_hidden_layers": 256, "num_experts": 512,
                                  "num_attention_heads": 1024, "num_key_value_heads": 1024, "hidden_size": 131072}},
             "lora": {"target_modules": "all-linear"}}
SCENARIOS: list[tuple[str, str, str, Any]] = [
    ("healthz", "GET", "/healthz", None),
    ("estimate (catalog)", "POST", "/api/v1/estimate", CATALOG),
    ("estimate (pasted)", "POST", "/api/v1/estimate", PASTED),
    ("page", "GET", "/?model=meta-llama/Llama-3.1-8B&method=qlora&r=16", None),
    ("fit (catalog)", "POST", "/api/v1/fit", {"request": CATALOG}),
]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _store_jobs(db: Path, count: int) -> None:
    """``count`` finished GPU calibrations of the benchmark's GPU and model (the issue's slowdown: every estimate
    and page view used to re-read them all; now each reads one summary row)."""
    from app.calibration.store import JobStore

    store = JobStore(db)
    request = {"model": CATALOG["model"], "method": "qlora", "hardware": {"gpu": "nvidia-a100-80gb"}}
    for i in range(count):
        job = store.create(request, "cuda:0", 1, 2, {"memory": {"peak": 10_000_000_000}})
        store.finish(job, "done", result={"peak_allocated_bytes": 10_000_000_000 + i * 1_000_000,
                                          "peak_reserved_bytes": 11_000_000_000, "device_used_bytes": 11_600_000_000,
                                          "otf_dequant_slowdown": 1.5})


def _start(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {**os.environ, "PEFT_PLANNER_DATABASE_PATH": str(workdir / "db.sqlite3")}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port",
                             str(port), "--log-level", "warning", "--timeout-graceful-shutdown", "10"],
                            cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


async def _scenario(url: str, method: str, path: str, body: Any, connections: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: set[int] = set()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await client.request(method, path, json=body)  # warm-up (caches)
        stop = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop:
                started = time.perf_counter()
                r = await client.request(method, path, json=body)
                latencies.append(time.perf_counter() - started)
                statuses.add(r.status_code)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.monotonic() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"rps": len(latencies) / elapsed, "p50_ms": 1000 * q[49], "p99_ms": 1000 * q[98], "n": len(latencies),
            "statuses": sorted(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fit-at-limits", action="store_true")
    parser.add_argument("--stored-jobs", type=int, default=0, help="finished GPU calibrations stored first")
    args = parser.parse_args()
    if not 1 <= args.connections <= 256 or not 0 < args.seconds <= 120 or not 0 <= args.stored_jobs <= 10_000:
        raise SystemExit("--connections 1..256, --seconds up to 120, --stored-jobs up to 10,000")
    with tempfile.TemporaryDirectory() as tmp:
        if args.stored_jobs:
            _store_jobs(Path(tmp) / "db.sqlite3", args.stored_jobs)
        proc, url = _start(Path(tmp))
        try:
            if args.fit_at_limits:
                started = time.monotonic()
                r = httpx.post(url + "/api/v1/fit", json={"request": AT_LIMITS}, timeout=600)
                print(f"POST /api/v1/fit at the config limits: {r.status_code} in {time.monotonic() - started:.1f} s")
                return
            print(f"{args.connections} connections, {args.seconds:g} s per scenario, {args.stored_jobs} stored "
                  f"calibrations, {url} (os.cpu_count()={os.cpu_count()})")
            print(f"{'scenario':<20} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'x healthz':>10}  statuses")
            base = None
            for name, method, path, body in SCENARIOS:
                out = asyncio.run(_scenario(url, method, path, body, args.connections, args.seconds))
                base = base or out["rps"]
                print(f"{name:<20} {out['rps']:8.1f} {out['p50_ms']:8.2f} {out['p99_ms']:8.2f} "
                      f"{out['rps'] / base:10.2f}  {out['statuses']}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
