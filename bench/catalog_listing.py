"""Benchmark (not a test): latency of the catalog listing (``GET /api/v1/models``) and of the planner page
(``GET /``, whose model field suggests every catalog id), in-process through FastAPI's TestClient.

Generic-path catalog entries are listed from their config.json alone (no model is built: their row says
so until an estimate builds them), so both stay flat as the catalog grows. Prints the catalog size, how many
entries take the generic path, and p50/p99 in milliseconds over ``--repeat`` calls after one warm-up call.

    .venv/bin/python bench/catalog_listing.py [--repeat 50]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

from fastapi.testclient import TestClient  # noqa: E402

from app.core.architectures import SUPPORTED_MODEL_TYPES  # noqa: E402
from app.core.catalog import model_configs  # noqa: E402
from app.main import create_app  # noqa: E402


def _percentiles_ms(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return ordered[len(ordered) // 2] / 1e6, p99 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    client = TestClient(create_app())
    configs = model_configs()
    generic = sum(1 for c in configs.values() if c.get("model_type") not in SUPPORTED_MODEL_TYPES)
    print(f"catalog: {len(configs)} models, {generic} on the generic path")
    for path in ("/api/v1/models", "/"):
        assert client.get(path).status_code == 200  # warm-up: catalog files read, inventories parsed
        samples = []
        for _ in range(args.repeat):
            start = time.perf_counter_ns()
            client.get(path)
            samples.append(time.perf_counter_ns() - start)
        p50, p99 = _percentiles_ms(samples)
        print(f"GET {path}: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({args.repeat} calls)")


if __name__ == "__main__":
    main()
