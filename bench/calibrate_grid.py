"""Calibrate the planner on a real GPU: real adapter and full fine-tuning steps against the estimate.

Run on a machine with a CUDA build of torch (the Docker image's torch is the CPU wheel):

    python -m bench.calibrate_grid --gpu nvidia-h200-141gb --runs-out app/accuracy/data/gpu_runs_h200.json

Each case is the HF Trainer recipe of ``app.calibration.measure`` (bf16 autocast, non-reentrant gradient
checkpointing, adamw_torch, LoRA r=16 alpha=32 on all linear layers) on random weights built from the catalog
config (nothing is downloaded); QLoRA/QDoRA load that checkpoint through ``BitsAndBytesConfig`` (NF4, double
quantization) and also run their 16-bit twin, for the on-the-fly dequantization slowdown. Prints predicted vs
measured (peak = ``torch.cuda.max_memory_allocated``, reserved = ``max_memory_reserved``, total = device memory
in use incl. the CUDA context) and rewrites ``--out`` after every case, so a run cut short keeps what it measured.
Every case runs in a fresh process through the calibration worker's own entry point (``app.calibration.worker``),
as a ``/calibrate`` job does: the allocator starts empty, so reserved and device memory are those of that case
alone (cuBLAS workspaces and cached segments of an earlier case in the same process would stay reserved).
``--budget-s`` stops starting new cases after that many seconds (cases run in the order of ``CASES``: most
informative first). ``--smoke`` runs one tiny LoRA and one tiny QLoRA case (CPU allowed) to check the plumbing.
``--runs-out`` also writes the runs in the form the accuracy report keeps (``app/accuracy/data/gpu_runs_h200.json``:
request and measurement, no estimate), which ``bench/calibration_check.py`` and ``GET /api/v1/accuracy`` compare
with today's planner.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}
# (model, method, seq_len, micro_batch_size), most informative first: the methods on a 1B, the 7B-class QLoRA most
# users run, then a second size, a 256k vocabulary, a wider batch and the short sequences.
CASES: tuple[tuple[str, str, int, int], ...] = (
    ("meta-llama/Llama-3.2-1B", "lora", 2048, 1),
    ("meta-llama/Llama-3.2-1B", "qlora", 2048, 1),
    ("meta-llama/Llama-3.2-1B", "dora", 2048, 1),
    ("meta-llama/Llama-3.2-1B", "full", 2048, 1),
    ("meta-llama/Llama-3.1-8B", "qlora", 2048, 1),
    ("meta-llama/Llama-3.2-3B", "lora", 2048, 1),
    ("meta-llama/Llama-3.2-3B", "qlora", 2048, 1),
    ("meta-llama/Llama-3.2-3B", "dora", 2048, 1),
    ("meta-llama/Llama-3.2-1B", "qdora", 2048, 1),
    ("google/gemma-2-2b", "lora", 2048, 1),
    ("Qwen/Qwen2.5-1.5B", "lora", 2048, 4),
    ("meta-llama/Llama-3.1-8B", "qlora", 512, 4),
    ("meta-llama/Llama-3.2-1B", "lora", 512, 1),
    ("meta-llama/Llama-3.2-1B", "qlora", 512, 1),
    ("meta-llama/Llama-3.2-1B", "dora", 512, 1),
    ("meta-llama/Llama-3.2-3B", "lora", 512, 1),
    ("meta-llama/Llama-3.2-3B", "qlora", 512, 1),
    ("meta-llama/Llama-3.2-3B", "dora", 512, 1),
)
# what the accuracy report keeps of a result (app/accuracy/gpu_runs.py)
KEPT = ("status", "kind", "measured_device", "warmup_steps", "measure_steps", "trainable_params", "all_params",
        "peak_allocated_bytes", "peak_reserved_bytes", "device_used_bytes", "device_total_bytes", "peak_phase",
        "phases", "step_time_s", "tokens_per_s", "otf_dequant_slowdown", "sixteen_bit_base", "allocator_replay",
        "counter", "notes")
ENVIRONMENT = ("gpu_name", "gpu_total_bytes", "compute_capability", "cuda", "cudnn", "driver", "versions", "python")
# a 2-layer Llama whose layer sizes divide by 64 (bitsandbytes' CPU 4-bit kernels): the plumbing, not a figure
SMOKE_CONFIG = {"model_type": "llama", "vocab_size": 320, "hidden_size": 128, "intermediate_size": 256,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "tie_word_embeddings": False}
SMOKE_CASES: tuple[tuple[Any, str, int, int], ...] = (({"config": SMOKE_CONFIG}, "lora", 64, 1),
                                                      ({"config": SMOKE_CONFIG}, "qlora", 64, 1))


def _pct(predicted: int | None, measured: int | None) -> str:
    if not predicted or not measured:
        return "—"
    return f"{100 * (predicted - measured) / measured:+.2f}"


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.2f}" if n else "—"


def request(model: Any, method: str, seq_len: int, micro_batch_size: int, gpu: str) -> Any:
    """The planner request of one case (the HF Trainer recipe above)."""
    from app.core import PlanRequest

    return PlanRequest(
        model=model, method=method, lora=LORA,
        training={"precision": "bf16", "optim": "adamw_torch", "micro_batch_size": micro_batch_size,
                  "seq_len": seq_len, "gradient_checkpointing": True},
        hardware={"gpu": gpu},
    )


def stored_runs(rows: list[dict[str, Any]], about: str) -> dict[str, Any]:
    """The finished rows as the accuracy report keeps them: ``about``, the first run's environment, the runs."""
    done = [r for r in rows if r["result"].get("status") == "done"]
    env = done[0]["result"]["environment"] if done else {}
    return {"about": about, "environment": {k: env.get(k) for k in ENVIRONMENT},
            "runs": [{"id": f"{env.get('gpu_name', 'gpu').split()[-1].lower()}-{i + 1:02d}", "request": r["request"],
                      "result": {k: r["result"][k] for k in KEPT if k in r["result"]}} for i, r in enumerate(done)]}


def run_case(req: Any, device: str, warmup_steps: int, measure_steps: int, timeout_s: float) -> dict[str, Any]:
    """``calibrate`` of ``req`` in a fresh (spawned) worker process; its result, or failed with the error."""
    from app.calibration.worker import _child

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_child, args=("calibration", req.model_dump_json(), device, warmup_steps,
                                            measure_steps, None, out), daemon=True)
    proc.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                message = out.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                return {"status": "failed", "error": f"timed out after {timeout_s:.0f} s"}
            if message[0] == "result":
                return message[1]
            if message[0] == "error":
                return {"status": "failed", "error": message[1], "traceback": message[2]}
    finally:
        proc.kill()
        proc.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--gpu", default="nvidia-h200-141gb",
                        help="catalog GPU id of this card (GET /api/v1/gpus): the estimate's cuBLAS workspace and "
                             "overhead follow its architecture")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--measure-steps", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=None, help="start no new case after this many seconds")
    parser.add_argument("--case-timeout-s", type=float, default=600, help="a case still running is killed")
    parser.add_argument("--smoke", action="store_true", help="two tiny cases (CPU allowed): the plumbing only")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "calibrations_gpu.json")
    parser.add_argument("--runs-out", type=Path, default=None,
                        help="also write the finished runs in the accuracy report's form (see above)")
    parser.add_argument("--about", default="", help="the runs' description stored with --runs-out")
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"calibrate_grid needs a CUDA device: torch {torch.__version__} reports torch.cuda.is_available() "
              "= False (CPU wheel or no GPU visible). Install a CUDA build of torch on a GPU machine, or pass "
              "--smoke --device cpu for the plumbing.", file=sys.stderr)
        return 2

    from app.calibration.service import comparison
    from app.core import estimate

    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    header = (f"{'model':<20} {'method':<6} {'seq':>5} {'mbs':>3} {'peak':>7} {'pred':>7} {'err%':>7} "
              f"{'resv':>7} {'total':>7} {'pred':>7} {'err%':>7} {'slow':>6} {'s':>5} status")
    print(header + "\n" + "-" * len(header), flush=True)
    for model, method, seq_len, mbs in SMOKE_CASES if args.smoke else CASES:
        if args.budget_s is not None and time.monotonic() - started > args.budget_s:
            print(f"budget of {args.budget_s:.0f} s spent: the remaining cases are not run", flush=True)
            break
        req = request(model, method, seq_len, mbs, args.gpu)
        est = estimate(req).model_dump(mode="json")
        case_started = time.monotonic()
        result = run_case(req, args.device, args.warmup_steps, args.measure_steps, args.case_timeout_s)
        seconds = time.monotonic() - case_started
        job = {"request": req.model_dump(mode="json"), "estimate": est, "result": result}
        cmp = comparison(job) or {}
        rows.append({**job, "comparison": cmp})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        if args.runs_out is not None:
            args.runs_out.write_text(json.dumps(stored_runs(rows, args.about), indent=1) + "\n")
        name = model.split("/")[-1] if isinstance(model, str) else "tiny (config)"
        print(f"{name:<20} {method:<6} {seq_len:>5} {mbs:>3} "
              f"{_gib(result.get('peak_allocated_bytes')):>7} {_gib(cmp.get('predicted_peak_bytes')):>7} "
              f"{_pct(cmp.get('predicted_peak_bytes'), cmp.get('measured_peak_bytes')):>7} "
              f"{_gib(result.get('peak_reserved_bytes')):>7} {_gib(result.get('device_used_bytes')):>7} "
              f"{_gib(cmp.get('predicted_total_bytes')):>7} "
              f"{_pct(cmp.get('predicted_total_bytes'), cmp.get('measured_total_bytes')):>7} "
              f"{result.get('otf_dequant_slowdown') or '—':>6} {seconds:>5.0f} {result.get('status')}"
              f"{' at ' + result['does_not_fit_at'] if result.get('does_not_fit_at') else ''}"
              f"{': ' + result['error'][:300] if result.get('error') else ''}", flush=True)
    print(f"\nGiB = 2^30 bytes; err% = 100·(predicted − measured)/measured. Wrote {len(rows)} results to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
