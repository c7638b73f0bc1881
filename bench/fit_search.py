"""Benchmark (not a test): wall time of the "what fits" searches of :mod:`app.core.fit`.

For a few catalog models and methods (LoRA r=16, lora_alpha=32, target_modules="all-linear", seq_len
2048, micro_batch_size 1, gradient checkpointing, budget = the A100-80GB's VRAM) it times:

- search: ``max_micro_batch_size`` + ``max_seq_len`` + ``max_lora_r`` + ``cheapest_method``, each called
  on its own (no memo shared between them), i.e. a full reverse search;
- gpu_plan: ``gpu_plan`` over the whole GPU catalog (one card, else ZeRO-3 over 2..64 cards);
- fit: ``fit`` (what POST /api/v1/fit runs: the searches, methods and gpu_plan sharing one memo).

Each is run once to warm the inventory cache, then ``--repeat`` times; the median is printed in ms with
the number of estimate() calls. ``--profile`` adds a cProfile of one warm search (top functions by
cumulative time). Imports only ``app.core``.

    .venv/bin/python bench/fit_search.py [--repeat 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

from app.core import EstimateResult, PlanRequest, estimate  # noqa: E402
from app.core import fit as fit_module  # noqa: E402
from app.core.catalog import gpu  # noqa: E402
from app.core.fit import cheapest_method, fit, gpu_plan, max_lora_r, max_micro_batch_size, max_seq_len  # noqa: E402

MODELS = (
    "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B",
    "Qwen/Qwen3-30B-A3B",
    "mistralai/Mixtral-8x7B-v0.1",
)
METHODS = ("qlora", "lora")
BUDGET_GPU = "nvidia-a100-80gb"


def request_for(model_id: str, method: str) -> PlanRequest:
    return PlanRequest(
        model=model_id, method=method,
        lora={"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
        training={"seq_len": 2048, "micro_batch_size": 1, "gradient_checkpointing": True},
        hardware={"gpu": BUDGET_GPU},
    )


def full_search(req: PlanRequest) -> str:
    budget = gpu(BUDGET_GPU).vram_bytes
    b = max_micro_batch_size(req, budget)
    s = max_seq_len(req, budget)
    r = max_lora_r(req, budget)
    m = cheapest_method(req, budget)
    return f"mbs={b.value} seq={s.value} r={r.value} best={m.best}"


class CountingEstimate:
    """Wraps fit's estimate to count calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, req: PlanRequest) -> EstimateResult:
        self.calls += 1
        return estimate(req)


def timed(fn: Callable[[], object], repeat: int) -> tuple[str, int, object]:
    """('median/min' ms over `repeat` warm runs, estimate() calls per run, last return value)."""
    counter = CountingEstimate()
    fit_module.estimate = counter
    try:
        out = fn()  # warm-up (inventory cache)
        counter.calls = 0
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            out = fn()
            samples.append((time.perf_counter() - t0) * 1000)
        return f"{statistics.median(samples):.0f}/{min(samples):.0f}", counter.calls // repeat, out
    finally:
        fit_module.estimate = estimate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile one warm search per model")
    args = parser.parse_args(argv)
    print(f"python {platform.python_version()} on {platform.machine()}; budget {BUDGET_GPU} "
          f"({gpu(BUDGET_GPU).vram_bytes:,} B); median of {args.repeat} warm runs\n")
    header = (f"{'model':<28} {'method':<6} {'search ms':>10} {'calls':>5} {'gpu_plan ms':>11} {'calls':>5} "
              f"{'fit ms':>10} {'calls':>5}  answer (search ms: median/min)")
    print(header)
    print("-" * len(header))
    for model_id in MODELS:
        for method in METHODS:
            req = request_for(model_id, method)
            s_ms, s_calls, answer = timed(lambda req=req: full_search(req), args.repeat)
            g_ms, g_calls, _ = timed(lambda req=req: gpu_plan(req), args.repeat)
            f_ms, f_calls, _ = timed(lambda req=req: fit(req), args.repeat)
            print(f"{model_id:<28} {method:<6} {s_ms:>10} {s_calls:>5} {g_ms:>11} {g_calls:>5} "
                  f"{f_ms:>10} {f_calls:>5}  {answer}")
            if args.profile:
                prof = cProfile.Profile()
                prof.enable()
                full_search(req)
                prof.disable()
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(12)
                print("\n".join(line for line in buf.getvalue().splitlines()[6:] if line.strip()))
    print(f"\ntorch imported: {'torch' in sys.modules}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
