"""Benchmark (not a test): the generic path's fitted peak against a full trace, and its latency.

For each config.json in tests/data/configs (or those named with ``--only``; ``--copy real`` for the real copies of
Hub files only, the ``copy`` column says which each row is), cut to its first
``--layers`` decoder layers (every per-layer list, e.g. ``layer_types``, sliced with it; real widths, heads,
experts and vocabulary kept: a full trace of 40-90 layers takes minutes on CPU, and fake tensors cost no
memory, so the cut is for time only), and one request (LoRA r=16 on ``--targets``, all-linear unless given; bf16,
gradient checkpointing, ``--seq-len`` tokens, micro-batch 1 unless ``--batch``):

- ``trace``: :func:`app.trace.engine.run_trace` of the cut config (the real step, fake tensors), in GiB;
- ``generic``: the generic path's peak (``resolve_request`` + ``estimate``, fitted from traces of small variants
  of the same config) minus the cuBLAS workspaces (the trace counts tensors only), and the error in %;
- ``first_s``: the first request for that config with a fresh store: the worker build (meta model, PEFT) plus
  the fit (traces of the variants) plus the estimate; the worker is spawned once before the table;
- ``later_ms``: median of ``--repeat`` later requests (``resolve_request`` + ``estimate``) with the same settings
  that vary seq_len (within its power-of-two bucket) and micro-batch, served from the registry;
- ``store_ms``: one request after the in-process registries are cleared (as after a restart): read from the
  persistent store.

    .venv/bin/python bench/generic_peak.py [--only deepseek-ai--DeepSeek-V3 ...] [--copy real] [--layers 8]
        [--seq-len 2048]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GIB = 2**30


def cut_config(cfg: dict[str, Any], layers: int) -> dict[str, Any]:
    """``cfg`` with its text model cut to the first ``layers`` decoder layers: ``num_hidden_layers`` set, every
    per-layer list or pattern string (as long as the old layer count) sliced, and lists of layer indices
    (``moe_layers``, ``attn_layer_indices`` …) filtered."""
    cfg = copy.deepcopy(cfg)
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    old = text.get("num_hidden_layers")
    if not isinstance(old, int) or old <= layers:
        return cfg
    text["num_hidden_layers"] = layers
    for key, value in list(text.items()):
        if isinstance(value, list | str) and len(value) == old and key != "model_type":
            text[key] = value[:layers]
        elif (isinstance(value, list) and "layer" in key and value
              and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            text[key] = [v for v in value if v < layers]
    return cfg


def request(cfg: dict[str, Any], seq_len: int, batch: int = 1, r: int = 16,
            targets: str | list[str] = "all-linear"):  # -> PlanRequest (imported late)
    from app.core import PlanRequest

    return PlanRequest.model_validate({"model": {"config": cfg}, "method": "lora",
                                       "training": {"seq_len": seq_len, "micro_batch_size": batch},
                                       "lora": {"r": r, "lora_alpha": 2 * r, "target_modules": targets}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="config file stems")
    parser.add_argument("--copy", choices=["real", "reconstructed"], default=None, help="only files of this kind")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--targets", default="all-linear",
                        help="LoRA target_modules: 'all-linear' or comma-separated names (PEFT refuses all-linear on "
                        "Mamba mixers' out_proj: e.g. in_proj,q_proj,k_proj,v_proj,o_proj,up_proj,down_proj)")
    args = parser.parse_args()
    os.environ["PEFT_PLANNER_GENERIC_CACHE_PATH"] = str(Path(tempfile.mkdtemp()) / "generic.sqlite3")
    # the service answers the request that starts a fit provisionally after generic_peak_fit_wait_s (15 s); the
    # benchmark's first request waits for the fit (up to its timeout), so first_s is build + fit + estimate
    os.environ.setdefault("PEFT_PLANNER_GENERIC_PEAK_FIT_WAIT_S", "900")
    from app.core import PlanError, estimate, fitted_activations, generic
    from app.core.catalog import gpu
    from app.core.overhead import cublas_workspace_bytes
    from app.models.generic import _pool
    from app.models.resolve import resolve_request
    from app.trace.engine import run_trace
    from bench.config_files import config_files

    started = time.perf_counter()
    _pool().submit(int).result()  # spawn the worker once
    print(f"worker_start_s {time.perf_counter() - started:.1f}; {args.layers} layers, seq_len {args.seq_len}, "
          f"micro-batch {args.batch}, LoRA r=16 {args.targets}, bf16, gradient checkpointing")
    print(f"| {'config':42} | copy | peak  | trace GiB | generic GiB | error % | first s | later ms | store ms |")
    print(f"|{'-' * 44}|------|-------|-----------|-------------|---------|---------|----------|----------|")
    errors = []
    for path, kind in config_files(args.only, args.copy):
        kind = kind[:4]  # real | reco(nstructed)
        cfg = cut_config(json.loads(path.read_text()), args.layers)
        targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
        req = request(cfg, args.seq_len, args.batch, targets=targets)
        t0 = time.perf_counter()
        try:
            result = estimate(resolve_request(req)[0])
        except PlanError as exc:
            print(f"| {path.stem:42} | {kind} | refused: {exc.message[:100]}")
            continue
        first = time.perf_counter() - t0
        workspace = cublas_workspace_bytes(gpu(req.hardware.gpu).arch)
        ours = result.memory.peak - workspace
        # the same settings (rank included) at other lengths of the same length bucket and other micro-batches
        later_reqs = [request(cfg, args.seq_len - 64 * (i % 8), 1 + i % 3, targets=targets) for i in range(args.repeat)]
        times = []
        for later in later_reqs:
            t0 = time.perf_counter()
            estimate(resolve_request(later)[0])
            times.append(time.perf_counter() - t0)
        generic._INVENTORIES.clear()
        generic._RESOLUTIONS.clear()
        fitted_activations._FITS.clear()
        t0 = time.perf_counter()
        estimate(resolve_request(req)[0])
        store = time.perf_counter() - t0
        kinds = "provisional" if result.peak.provisional else "fit"
        try:
            traced = run_trace(resolve_request(req)[0]).peak_bytes
        except Exception as exc:  # the full trace itself cannot run this config
            print(f"| {path.stem:42} | {kind} | {kinds} | trace failed: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        err = 100 * (ours - traced) / traced
        if not result.peak.provisional:
            errors.append((abs(err), kind))
        print(f"| {path.stem:42} | {kind} | {kinds:5} | {traced / GIB:9.3f} | {ours / GIB:11.3f} | {err:+7.2f} | "
              f"{first:7.1f} | {1000 * statistics.median(times):8.2f} | {1000 * store:8.1f} |", flush=True)
    within = [kind for e, kind in errors if e <= 3]
    print(f"fitted: {len(errors)} configs, {len(within)} within 3% of the full trace "
          f"({within.count('real')} of them real copies of Hub files)")
    _pool().shutdown()


if __name__ == "__main__":
    main()
