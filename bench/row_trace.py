"""Benchmark (not a test): trace one published row's step on one GPU and replay it through the caching allocator.

A multi-GPU row's step is traced without its sharding (one GPU holds the whole model: the activations, loss and
layer backward are the same per GPU), the same request estimated analytically, and the traced allocation stream
replayed through :mod:`app.core.allocator` on the row's GPU: what the step itself allocates and reserves, to set
beside what the published figure holds (bench/published_check.py). CPU only (fake tensors); ~40 s for a 70B.

    .venv/bin/python bench/row_trace.py 58            # PEFT's 70B FSDP-QLoRA example, one GPU's step
    .venv/bin/python bench/row_trace.py 58 --json     # the figures as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 2**30
# what a single-GPU trace cannot run: the sharding and its buffers, and host offload
UNSHARDED = {"num_gpus": 1, "sharding": "none", "offload_optimizer": "none", "offload_param": "none",
             "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto"}


def main() -> None:
    from app.accuracy.rows import map_row, read_rows
    from app.core import estimate
    from app.core.catalog import gpus
    from app.trace.engine import run_trace

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("row_id", help="row_id in the published CSV")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    row = next((r for r in read_rows() if r["row_id"] == args.row_id), None)
    if row is None:
        ap.error(f"no row {args.row_id!r}")
    mapped = map_row(row)
    gpu = mapped.req.hardware.gpu if mapped.req.hardware.gpu in gpus() else "nvidia-a100-80gb"
    req = mapped.req.model_copy(update={"hardware": mapped.req.hardware.model_copy(update={**UNSHARDED, "gpu": gpu})})
    est = estimate(req)
    trace = run_trace(req)
    out = {
        "row": args.row_id, "request": req.model_dump(mode="json", exclude_defaults=True),
        "analytic_peak_gib": est.memory.peak / GIB, "trace_peak_gib": trace.peak_bytes / GIB,
        "analytic_vs_trace": (est.memory.peak - trace.peak_bytes) / trace.peak_bytes,
        "rule_reserve_gib": est.allocator.reserve_bytes / GIB,
        "replayed_reserve_gib": trace.allocator["reserve_bytes"] / GIB,
        "replayed_max_reserved_gib": trace.allocator["max_reserved_bytes"] / GIB,
        "published_gib": mapped.published_gib,
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"row {args.row_id} on one {gpu} (sharding stripped): {json.dumps(out['request'])}")
    print(f"  peak: analytic {out['analytic_peak_gib']:.2f} GiB, trace {out['trace_peak_gib']:.2f} GiB "
          f"({100 * out['analytic_vs_trace']:+.2f}%)")
    print(f"  allocator reserve: rule {out['rule_reserve_gib']:.2f} GiB, replayed trace "
          f"{out['replayed_reserve_gib']:.2f} GiB (max reserved {out['replayed_max_reserved_gib']:.2f} GiB)")


if __name__ == "__main__":
    main()
