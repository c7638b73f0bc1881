"""Benchmark (not a test): in-process latency of ``estimate(PlanRequest(...))`` over the whole catalog.

For every catalog model and every method (full, lora, qlora, dora, qdora) it builds the request body
(LoRA r=16, lora_alpha=32, target_modules="all-linear"; seq_len 2048, 1024 for openai-community/gpt2*
whose learned positions stop there), runs it once to warm the caches (catalog, inventory), then times
``--repeat`` calls of ``estimate(PlanRequest(**body))`` with ``time.perf_counter_ns``: request
validation plus the estimate, i.e. the API handler's work without HTTP and JSON.

Prints, per method, p50/p99 in milliseconds across all timed calls and the slowest model (by its own
median), then the overall p50/p99. Imports only ``app.core`` (pure Python): it checks torch stays unloaded.

    .venv/bin/python bench/estimate_latency.py [--repeat 20]     # or: make bench
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

from app.core import PlanError, PlanRequest, estimate  # noqa: E402
from app.core.catalog import model_configs  # noqa: E402

METHODS = ("full", "lora", "qlora", "dora", "qdora")
DEFAULT_REPEAT = 20


def seq_len_for(model_id: str) -> int:
    return 1024 if model_id.startswith("openai-community/gpt2") else 2048


def body_for(model_id: str, method: str) -> dict[str, Any]:
    return {
        "model": model_id,
        "method": method,
        "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
        "training": {"seq_len": seq_len_for(model_id)},
    }


def percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list, in milliseconds."""
    rank = max(1, math.ceil(q / 100 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


def time_one(body: dict[str, Any], repeat: int) -> list[int]:
    estimate(PlanRequest(**body))  # warm-up: catalog read, inventory build (cached per model id)
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        estimate(PlanRequest(**body))
        samples.append(time.perf_counter_ns() - t0)
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="timed calls per (model, method)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    models = list(model_configs())
    print(
        f"estimate(PlanRequest(...)) latency: {len(models)} catalog models x {len(METHODS)} methods, "
        f"1 warm-up + {args.repeat} timed calls each"
    )
    print(
        f"python {platform.python_version()} on {platform.machine()}, {platform.system()}; "
        "LoRA r=16 all-linear; seq_len 2048 (gpt2*: 1024)\n"
    )

    all_ns: list[int] = []
    skipped: dict[str, list[str]] = {}  # PlanError message -> "model method" it refused
    header = f"{'method':<7} {'calls':>6} {'p50 ms':>8} {'p99 ms':>8}  slowest model (its p50 ms)"
    print(header)
    print("-" * len(header))
    for method in METHODS:
        method_ns: list[int] = []
        slowest = ("", -1.0)
        for model_id in models:
            try:
                samples = time_one(body_for(model_id, method), args.repeat)
            except PlanError as exc:
                skipped.setdefault(exc.message, []).append(f"{model_id} {method}")
                continue
            median = percentile(sorted(samples), 50)
            if median > slowest[1]:
                slowest = (model_id, median)
            method_ns.extend(samples)
        all_ns.extend(method_ns)
        if not method_ns:
            print(f"{method:<7} {0:>6} {'-':>8} {'-':>8}  (every model refused)")
            continue
        method_ns.sort()
        print(
            f"{method:<7} {len(method_ns):>6} {percentile(method_ns, 50):>8.3f} {percentile(method_ns, 99):>8.3f}"
            f"  {slowest[0]} ({slowest[1]:.3f})"
        )

    print("-" * len(header))
    if all_ns:
        all_ns.sort()
        print(f"{'overall':<7} {len(all_ns):>6} {percentile(all_ns, 50):>8.3f} {percentile(all_ns, 99):>8.3f}")
    for message, runs in skipped.items():
        print(f"\nskipped, the planner refuses {len(runs)} runs (422 over HTTP): {message}")
        print("  " + ", ".join(runs))
    print(f"\ntorch imported: {'torch' in sys.modules}")
    return 1 if "torch" in sys.modules else 0


if __name__ == "__main__":
    raise SystemExit(main())
