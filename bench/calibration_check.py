"""Benchmark (not a test): the planner against the project's GPU runs (app/accuracy/data/gpu_runs_h200.json, measured
by bench/calibrate_grid.py), per run and per method.

Columns (bytes shown in GiB = 2^30; err% = 100·(ours − measured)/measured):

- peak: ``torch.cuda.max_memory_allocated`` vs today's estimated peak;
- reserved: ``max_memory_reserved`` vs the estimate's ``memory.reserved`` (peak + the fitted allocator reserve,
  app/core/reserved.py); ``replay`` is the run's recorded allocator history replayed through app/core/allocator.py
  from an empty allocator (what a fresh process would reserve for the very same allocations);
- total: device memory in use vs ``memory.total``;
- with ``--trace``: the trace engine's fake-tensor step of the same request, its allocation stream replayed through
  the simulator (max allocated, max reserved), against the card (seconds per run on this CPU).

The 18 runs shared one process: each after the first found ~504 MiB of segments cached by earlier runs, which its
measured reserved and total include (``replay`` does not).

    .venv/bin/python bench/calibration_check.py [--trace]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.accuracy.gpu_runs import gpu_runs_file  # noqa: E402
from app.core import PlanRequest, estimate  # noqa: E402
from app.core.units import GiB  # noqa: E402


def err(ours: int | None, measured: int | None) -> float | None:
    return 100 * (ours - measured) / measured if ours and measured else None


def fmt(e: float | None) -> str:
    return f"{e:+7.2f}" if e is not None else "      —"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", action="store_true", help="also trace each run's step (minutes on a CPU)")
    args = parser.parse_args(argv)
    data = gpu_runs_file()
    env = data["environment"]
    print(f"{env['gpu_name']}, driver {env['driver']}, CUDA {env['cuda']}, "
          + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    header = (f"{'run':<8} {'model':<14} {'method':<6} {'b×s':>7} {'peak':>6} {'err%':>7} {'resv':>6} {'err%':>7} "
              f"{'replay':>6} {'err%':>7} {'total':>6} {'err%':>7}"
              + (f" | {'tr.alloc':>8} {'err%':>7} {'tr.resv':>7} {'err%':>7} {'vs rpl':>7}" if args.trace else ""))
    print(header + "\n" + "-" * len(header))
    by_method: dict[str, list[tuple[float | None, ...]]] = defaultdict(list)
    for run in data["runs"]:
        req = PlanRequest.model_validate(run["request"])
        res = run["result"]
        mem = estimate(req).memory
        replay = res["allocator_replay"]["simulated_max_reserved_bytes"]
        errors = (err(mem.peak, res["peak_allocated_bytes"]), err(mem.reserved, res["peak_reserved_bytes"]),
                  err(mem.reserved, replay), err(mem.total, res["device_used_bytes"]))
        t = req.training
        line = (f"{run['id']:<8} {req.model.split('/')[-1][:14]:<14} {req.method:<6} "
                f"{t.micro_batch_size}×{t.seq_len:<5} {res['peak_allocated_bytes'] / GiB:6.2f} {fmt(errors[0])} "
                f"{res['peak_reserved_bytes'] / GiB:6.2f} {fmt(errors[1])} {replay / GiB:6.2f} {fmt(errors[2])} "
                f"{res['device_used_bytes'] / GiB:6.2f} {fmt(errors[3])}")
        if args.trace:
            from app.trace.engine import run_trace

            alloc = run_trace(req).allocator
            trace_errors = (err(alloc["max_allocated_bytes"], res["peak_allocated_bytes"]),
                            err(alloc["max_reserved_bytes"], res["peak_reserved_bytes"]),
                            err(alloc["max_reserved_bytes"], replay))
            errors += trace_errors
            line += (f" | {alloc['max_allocated_bytes'] / GiB:8.2f} {fmt(trace_errors[0])} "
                     f"{alloc['max_reserved_bytes'] / GiB:7.2f} {fmt(trace_errors[1])} {fmt(trace_errors[2])}")
        by_method[req.method].append(errors)
        by_method["all"].append(errors)
        print(line, flush=True)
    names = ["peak", "reserved", "reserved vs replay", "total"] + (
        ["trace allocated", "trace reserved", "trace reserved vs replay"] if args.trace else [])
    print("\nmedian |err%| (max |err%|) per method:")
    print(f"{'method':<7} " + " ".join(f"{n:>24}" for n in names))
    for method, rows in by_method.items():
        cells = []
        for i in range(len(names)):
            values = [abs(r[i]) for r in rows if r[i] is not None]
            cells.append(f"{statistics.median(values):.2f} ({max(values):.2f})" if values else "—")
        print(f"{method:<7} " + " ".join(f"{c:>24}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
