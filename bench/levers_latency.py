"""Benchmark (not a test): in-process latency of ``levers(PlanRequest(...))`` ("make it fit"), which the
planner page computes on every update, over every catalog model on three cards (RTX 4090, RTX 5090, A100 80GB)
for LoRA and QLoRA at 4,096 tokens (LoRA r=16, all-linear). Each request is run once to warm the caches,
then timed ``--repeat`` times with ``time.perf_counter_ns``. Prints p50/p99 (ms), the slowest case and how
many levers the cases got.

    .venv/bin/python bench/levers_latency.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.core import PlanError, PlanRequest  # noqa: E402
from app.core.catalog import model_configs  # noqa: E402
from app.core.levers import levers  # noqa: E402

GPUS = ("nvidia-rtx-4090", "nvidia-rtx-5090", "nvidia-a100-80gb")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    times: list[float] = []
    worst = (0.0, "")
    counts: list[int] = []
    for model_id in model_configs():
        seq = 1024 if model_id.startswith("openai-community/gpt2") else 4096
        for method in ("lora", "qlora"):
            for gpu_id in GPUS:
                req = PlanRequest.model_validate({"model": model_id, "method": method,
                                                  "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
                                                  "training": {"seq_len": seq}, "hardware": {"gpu": gpu_id}})
                try:
                    counts.append(len(levers(req).levers))  # warm-up
                except PlanError:
                    continue
                own = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter_ns()
                    levers(req)
                    own.append((time.perf_counter_ns() - t0) / 1e6)
                times += own
                if statistics.median(own) > worst[0]:
                    worst = (statistics.median(own), f"{model_id} {method} on {gpu_id}")
    times.sort()
    p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
    print(f"levers(): {len(counts)} cases × {args.repeat}: p50 {statistics.median(times):.1f} ms, p99 {p99:.1f} ms; "
          f"slowest {worst[1]} ({worst[0]:.1f} ms); levers per case: median {statistics.median(counts):g}, "
          f"max {max(counts)}")


if __name__ == "__main__":
    main()
