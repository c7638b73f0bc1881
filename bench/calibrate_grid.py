"""Calibrate the planner on a real GPU: Llama-3.2-1B/3B-shaped models × LoRA/QLoRA/DoRA × seq_len 512/2048.

Run once on a machine with a CUDA build of torch (the Docker image's torch is the CPU wheel):

    python -m bench.calibrate_grid --gpu nvidia-h100-sxm-80gb          # --device cuda:0 by default

Weights are random (built from the catalog config; nothing is downloaded). Prints predicted vs measured
(peak = torch.cuda.max_memory_allocated, reserved = max_memory_reserved, total = device memory in use incl.
the CUDA context) and writes every result to tests/data/calibrations_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B")
METHODS = ("lora", "qlora", "dora")
SEQ_LENS = (512, 2048)


def _pct(predicted: int | None, measured: int | None) -> str:
    if not predicted or not measured:
        return "—"
    return f"{100 * (predicted - measured) / measured:+.2f}"


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.2f}" if n else "—"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--gpu", default="nvidia-h100-sxm-80gb",
                        help="catalog GPU id of this card (GET /api/v1/gpus): the estimate's cuBLAS workspace and "
                             "overhead follow its architecture")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--measure-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "calibrations_gpu.json")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(f"calibrate_grid needs a CUDA device: torch {torch.__version__} reports torch.cuda.is_available() "
              "= False (CPU wheel or no GPU visible). Install a CUDA build of torch on a GPU machine.",
              file=sys.stderr)
        return 2

    from app.calibration.measure import calibrate
    from app.calibration.service import comparison
    from app.core import PlanRequest, estimate

    rows: list[dict[str, Any]] = []
    header = (f"{'model':<24} {'method':<6} {'seq':>5} {'peak':>7} {'pred':>7} {'err%':>7} {'resv':>7} "
              f"{'total':>7} {'pred':>7} {'err%':>7} {'slow':>6} status")
    print(header + "\n" + "-" * len(header))
    for model in MODELS:
        for method in METHODS:
            for seq_len in SEQ_LENS:
                req = PlanRequest(
                    model=model, method=method, lora={"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
                    training={"precision": "bf16", "optim": "adamw_torch", "micro_batch_size": 1,
                              "seq_len": seq_len, "gradient_checkpointing": True},
                    hardware={"gpu": args.gpu},
                )
                est = estimate(req).model_dump(mode="json")
                try:
                    result = calibrate(req, args.device, args.warmup_steps, args.measure_steps, None)
                except Exception as exc:  # keep going: one failing cell should not lose the grid
                    result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                job = {"request": req.model_dump(mode="json"), "estimate": est, "result": result}
                cmp = comparison(job) or {}
                rows.append({**job, "comparison": cmp})
                print(f"{model.split('/')[-1]:<24} {method:<6} {seq_len:>5} "
                      f"{_gib(result.get('peak_allocated_bytes')):>7} {_gib(cmp.get('predicted_peak_bytes')):>7} "
                      f"{_pct(cmp.get('predicted_peak_bytes'), cmp.get('measured_peak_bytes')):>7} "
                      f"{_gib(result.get('peak_reserved_bytes')):>7} {_gib(result.get('device_used_bytes')):>7} "
                      f"{_gib(cmp.get('predicted_total_bytes')):>7} "
                      f"{_pct(cmp.get('predicted_total_bytes'), cmp.get('measured_total_bytes')):>7} "
                      f"{result.get('otf_dequant_slowdown') or '—':>6} {result.get('status')}"
                      f"{' at ' + result['does_not_fit_at'] if result.get('does_not_fit_at') else ''}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nGiB = 2^30 bytes; err% = 100·(predicted − measured)/measured. Wrote {len(rows)} results to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
