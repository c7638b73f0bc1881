"""Frameworks: the trace of each framework's preparation + step against the analytic estimate (docs/frameworks.md).

    .venv/bin/python bench/framework_grid.py            # compare the analytic model with the cached traces
    .venv/bin/python bench/framework_grid.py --regen    # re-run every trace (minutes) and rewrite the cache

TRL runs its own code in the trace (the optional ``trl`` extra); axolotl, LLaMA-Factory and ms-swift are replayed
from their source (they pin other transformers/PEFT releases). The cache (tests/data/framework_grid.json) stores
each case's request and traced peak (bytes). Unsloth is analytic only: its rows compare the estimate with
Unsloth's own published figures (``UNSLOTH_PUBLISHED``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.trace_grid import analytic_tensor_peak  # noqa: E402

CACHE = ROOT / "tests" / "data" / "framework_grid.json"

# (framework, model, method, lora overrides, training overrides): models × methods × switches per framework
# fmt: off
CASES: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("trl", "HuggingFaceTB/SmolLM2-135M", "lora", {}, {"micro_batch_size": 4, "seq_len": 1024}),
    ("trl", "HuggingFaceTB/SmolLM2-135M", "qlora", {}, {"micro_batch_size": 4, "seq_len": 1024}),
    ("trl", "HuggingFaceTB/SmolLM2-135M", "full", {}, {"micro_batch_size": 8, "seq_len": 512, "gradient_checkpointing": False}),
    ("trl", "HuggingFaceTB/SmolLM2-135M", "dora", {"lora_dropout": 0.05}, {"micro_batch_size": 2, "seq_len": 2048}),
    ("trl", "Qwen/Qwen2.5-0.5B", "lora", {}, {"micro_batch_size": 2, "seq_len": 4096}),
    ("trl", "Qwen/Qwen2.5-0.5B", "qlora", {"lora_dropout": 0.05}, {"micro_batch_size": 4, "seq_len": 2048, "gradient_checkpointing": False}),
    ("trl", "Qwen/Qwen2.5-0.5B", "full", {}, {"micro_batch_size": 2, "seq_len": 2048, "precision": "bf16-mixed"}),
    ("trl", "Qwen/Qwen2.5-0.5B", "dora", {}, {"micro_batch_size": 1, "seq_len": 8192}),
    ("trl", "meta-llama/Llama-3.2-1B", "lora", {}, {"micro_batch_size": 1, "seq_len": 8192, "attn_implementation": "flash_attention_2"}),
    ("trl", "meta-llama/Llama-3.2-1B", "qlora", {}, {"micro_batch_size": 2, "seq_len": 4096}),
    ("trl", "meta-llama/Llama-3.2-1B", "full", {}, {"micro_batch_size": 1, "seq_len": 4096, "optim": "adamw_bnb_8bit"}),
    ("trl", "meta-llama/Llama-3.1-8B", "qlora", {}, {"micro_batch_size": 1, "seq_len": 8192}),
    ("trl", "meta-llama/Llama-3.1-8B", "lora", {}, {"micro_batch_size": 2, "seq_len": 2048, "optim": "paged_adamw_8bit"}),
    ("trl", "google/gemma-2-2b", "qlora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("trl", "meta-llama/Llama-3.2-1B", "qdora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("axolotl", "meta-llama/Llama-3.2-1B", "qlora", {}, {"micro_batch_size": 2, "seq_len": 4096}),
    ("axolotl", "Qwen/Qwen2.5-0.5B", "qlora", {"lora_dropout": 0.05}, {"micro_batch_size": 4, "seq_len": 2048, "gradient_checkpointing": False}),
    ("llama-factory", "meta-llama/Llama-3.2-1B", "qlora", {}, {"micro_batch_size": 2, "seq_len": 4096}),
    ("llama-factory", "Qwen/Qwen2.5-0.5B", "full", {}, {"micro_batch_size": 2, "seq_len": 2048}),
    ("llama-factory", "Qwen/Qwen2.5-0.5B", "qdora", {}, {"micro_batch_size": 2, "seq_len": 2048}),
    ("ms-swift", "meta-llama/Llama-3.2-1B", "lora", {}, {"micro_batch_size": 2, "seq_len": 4096}),
    ("ms-swift", "Qwen/Qwen2.5-0.5B", "qlora", {}, {"micro_batch_size": 4, "seq_len": 2048}),
    ("trl", "Qwen/Qwen2.5-0.5B", "full", {}, {"micro_batch_size": 2, "seq_len": 2048, "gradient_accumulation_steps": 4}),
    ("llama-factory", "Qwen/Qwen2.5-0.5B", "full", {}, {"micro_batch_size": 2, "seq_len": 2048, "gradient_accumulation_steps": 8}),
    ("axolotl", "HuggingFaceTB/SmolLM2-135M", "lora", {}, {"micro_batch_size": 4, "seq_len": 1024}),
    ("axolotl", "HuggingFaceTB/SmolLM2-135M", "full", {}, {"micro_batch_size": 8, "seq_len": 512, "gradient_checkpointing": False, "optim": "adamw_bnb_8bit"}),
    ("axolotl", "Qwen/Qwen2.5-0.5B", "dora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("axolotl", "meta-llama/Llama-3.2-1B", "qdora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("axolotl", "meta-llama/Llama-3.2-1B", "lora", {}, {"micro_batch_size": 1, "seq_len": 8192, "attn_implementation": "flash_attention_2"}),
    ("axolotl", "google/gemma-2-2b", "qlora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("axolotl", "Qwen/Qwen3-0.6B", "full", {}, {"micro_batch_size": 2, "seq_len": 2048, "precision": "bf16-mixed"}),
    ("axolotl", "Qwen/Qwen3-0.6B", "lora", {"lora_dropout": 0.05}, {"micro_batch_size": 2, "seq_len": 2048}),
    ("axolotl", "HuggingFaceTB/SmolLM2-135M", "qlora", {}, {"micro_batch_size": 4, "seq_len": 1024, "gradient_accumulation_steps": 4}),
    ("axolotl", "Qwen/Qwen2.5-0.5B", "lora", {}, {"micro_batch_size": 2, "seq_len": 4096, "optim": "paged_adamw_8bit"}),
    ("llama-factory", "HuggingFaceTB/SmolLM2-135M", "lora", {"lora_dropout": 0.05}, {"micro_batch_size": 4, "seq_len": 1024}),
    ("llama-factory", "HuggingFaceTB/SmolLM2-135M", "dora", {}, {"micro_batch_size": 2, "seq_len": 1024, "gradient_checkpointing": False}),
    ("llama-factory", "meta-llama/Llama-3.2-1B", "lora", {}, {"micro_batch_size": 1, "seq_len": 8192, "attn_implementation": "flash_attention_2"}),
    ("llama-factory", "meta-llama/Llama-3.2-1B", "full", {}, {"micro_batch_size": 1, "seq_len": 4096, "optim": "adamw_bnb_8bit"}),
    ("llama-factory", "google/gemma-2-2b", "qlora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("llama-factory", "Qwen/Qwen3-0.6B", "qlora", {"lora_dropout": 0.05}, {"micro_batch_size": 4, "seq_len": 2048, "gradient_checkpointing": False}),
    ("llama-factory", "Qwen/Qwen2.5-0.5B", "full", {}, {"micro_batch_size": 2, "seq_len": 2048, "precision": "bf16-mixed"}),
    ("llama-factory", "Qwen/Qwen3-0.6B", "lora", {}, {"micro_batch_size": 2, "seq_len": 2048, "gradient_accumulation_steps": 4}),
    ("ms-swift", "HuggingFaceTB/SmolLM2-135M", "full", {}, {"micro_batch_size": 8, "seq_len": 512, "gradient_checkpointing": False}),
    ("ms-swift", "HuggingFaceTB/SmolLM2-135M", "qlora", {}, {"micro_batch_size": 4, "seq_len": 1024}),
    ("ms-swift", "Qwen/Qwen2.5-0.5B", "dora", {}, {"micro_batch_size": 1, "seq_len": 8192}),
    ("ms-swift", "Qwen/Qwen2.5-0.5B", "full", {}, {"micro_batch_size": 2, "seq_len": 2048, "precision": "bf16-mixed"}),
    ("ms-swift", "meta-llama/Llama-3.2-1B", "qlora", {}, {"micro_batch_size": 2, "seq_len": 4096}),
    ("ms-swift", "meta-llama/Llama-3.2-1B", "qdora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("ms-swift", "meta-llama/Llama-3.2-1B", "lora", {"lora_dropout": 0.05}, {"micro_batch_size": 1, "seq_len": 8192, "attn_implementation": "flash_attention_2"}),
    ("ms-swift", "google/gemma-2-2b", "lora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("ms-swift", "Qwen/Qwen3-0.6B", "qlora", {"lora_dropout": 0.05}, {"micro_batch_size": 4, "seq_len": 2048, "gradient_checkpointing": False}),
    ("ms-swift", "Qwen/Qwen3-0.6B", "lora", {}, {"micro_batch_size": 2, "seq_len": 2048, "optim": "adamw_bnb_8bit", "gradient_accumulation_steps": 4}),
    ("ms-swift", "HuggingFaceTB/SmolLM2-135M", "dora", {"lora_dropout": 0.05}, {"micro_batch_size": 2, "seq_len": 1024, "gradient_checkpointing": False}),
]
# fmt: on


def body(framework: str, model: str, method: str, lora: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "method": method, "lora": {"r": 16, "target_modules": "all-linear", **lora},
            "training": {"framework": framework, **training}}


def bodies() -> list[dict[str, Any]]:
    return [body(*case) for case in CASES]


def regenerate(only: set[int] | None = None) -> list[dict[str, Any]]:
    """Trace every case (or the cases whose index is in ``only``, keeping the others' cached traces: a case is
    found in the cache by its request, so inserting a case re-traces only that one)."""
    from app.core import PlanRequest
    from app.trace.engine import run_trace

    old = json.loads(CACHE.read_text()) if only is not None and CACHE.exists() else []
    cached = {json.dumps(row["request"], sort_keys=True): row for row in old}
    rows = []
    for i, b in enumerate(bodies()):
        hit = cached.get(json.dumps(b, sort_keys=True))
        if only is not None and i not in only and hit is not None:
            rows.append(hit)
            continue
        t0 = time.perf_counter()
        result = run_trace(PlanRequest.model_validate(b))
        rows.append({"request": b, "trace_peak_bytes": result.peak_bytes, "trace_phase": result.peak_phase,
                     "seconds": round(time.perf_counter() - t0, 1)})
        print(f"traced {b['training']['framework']} {b['model']} {b['method']}: {result.peak_bytes} B "
              f"({rows[-1]['seconds']} s)", flush=True)
        CACHE.write_text(json.dumps(rows, indent=1) + "\n")  # progress survives an interrupted run
    CACHE.write_text(json.dumps(rows, indent=1) + "\n")  # cached rows after the last traced one too
    return rows


def table(rows: list[dict[str, Any]]) -> list[float]:
    errors = []
    print(f"{'framework':13} {'model':28} {'method':6} {'b':>2} {'s':>5} {'gc':>3} {'switches':24} "
          f"{'trace GiB':>9} {'analytic GiB':>12} {'err %':>6}")
    for row in rows:
        b = row["request"]
        tr = b["training"]
        analytic = analytic_tensor_peak(b)
        err = 100 * (analytic - row["trace_peak_bytes"]) / row["trace_peak_bytes"]
        errors.append(err)
        switches = ",".join(f"{k}={v}" for k, v in tr.items()
                            if k not in ("framework", "micro_batch_size", "seq_len", "gradient_checkpointing"))
        if b["lora"].get("lora_dropout"):
            switches = ",".join(filter(None, [switches, f"dropout={b['lora']['lora_dropout']}"]))
        print(f"{tr['framework']:13} {b['model'].split('/')[-1][:28]:28} {b['method']:6} {tr['micro_batch_size']:>2} "
              f"{tr['seq_len']:>5} {'on' if tr.get('gradient_checkpointing', True) else 'off':>3} "
              f"{switches[:24]:24} {row['trace_peak_bytes'] / 2**30:9.3f} {analytic / 2**30:12.3f} {err:+6.2f}")
    abs_err = [abs(e) for e in errors]
    print(f"\n{len(errors)} cases: median |error| {statistics.median(abs_err):.2f}%, max |error| {max(abs_err):.2f}%")
    return errors


# Unsloth's README (commit c60636695c^, "Context length benchmarks"): Llama 3.1 8B Instruct / Llama 3.3 70B Instruct,
# 4-bit QLoRA on all linear layers, rank 32, batch 1, padded sequences; the longest context that fits each card,
# under Unsloth and under "Hugging Face + FA2". None: OOM.
UNSLOTH_PUBLISHED: list[tuple[str, int, int, int | None]] = [
    ("meta-llama/Llama-3.1-8B", 12, 21848, 932),
    ("meta-llama/Llama-3.1-8B", 16, 40724, 2551),
    ("meta-llama/Llama-3.1-8B", 24, 78475, 5789),
    ("meta-llama/Llama-3.1-8B", 40, 153977, 12264),
    ("meta-llama/Llama-3.1-8B", 48, 191728, 15502),
    ("meta-llama/Llama-3.1-8B", 80, 342733, 28454),
    ("meta-llama/Llama-3.1-70B", 48, 12106, None),
    ("meta-llama/Llama-3.1-70B", 80, 89389, 6916),
]


# a catalog card of each size in the table (8 GB: none in the catalog)
CARDS = {12: "nvidia-rtx-3060-12gb", 16: "nvidia-rtx-4060-ti-16gb", 24: "nvidia-rtx-4090", 40: "nvidia-a100-40gb",
         48: "nvidia-rtx-a6000", 80: "nvidia-a100-80gb"}


def max_context(model: str, framework: str, vram_gib: int) -> int:
    """Longest seq_len (batch 1) whose estimated total (peak + CUDA context + allocator reserve) fits the catalog
    card of ``vram_gib`` GB."""
    from app.core.catalog import gpu

    card = CARDS[vram_gib]
    from app.core import PlanRequest, estimate

    def total(seq_len: int) -> int:
        req = PlanRequest.model_validate({
            "model": model, "method": "qlora", "lora": {"r": 32, "lora_alpha": 32, "target_modules": "all-linear"},
            "training": {"framework": framework, "seq_len": seq_len, "micro_batch_size": 1,
                         "attn_implementation": "flash_attention_2"}, "hardware": {"gpu": card}})
        return estimate(req).memory.total

    lo, hi = 0, 1_048_576
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if total(mid) <= gpu(card).vram_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def unsloth_table() -> None:
    """Unsloth's published longest contexts against the planner's (unsloth and hf-trainer frameworks)."""
    print(f"\n{'model':22} {'GB':>4} {'Unsloth':>9} {'ours':>9} {'err %':>7}   {'HF+FA2':>8} {'ours':>8} {'err %':>7}")
    for model, gib, unsloth, hf in UNSLOTH_PUBLISHED:
        ours_u, ours_hf = max_context(model, "unsloth", gib), max_context(model, "hf-trainer", gib)
        hf_err = f"{100 * (ours_hf - hf) / hf:+7.1f}" if hf else "    OOM" if ours_hf == 0 else "       "
        print(f"{model.split('/')[-1]:22} {gib:>4} {unsloth:>9,} {ours_u:>9,} {100 * (ours_u - unsloth) / unsloth:+7.1f}"
              f"   {hf or 'OOM':>8} {ours_hf:>8,} {hf_err}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--regen", action="store_true", help="re-run every trace and rewrite the cache")
    parser.add_argument("--only", type=int, nargs="*",
                        help="with --regen: re-trace only these case indexes (and cases missing from the cache)")
    args = parser.parse_args()
    if args.regen or not CACHE.exists():
        rows = regenerate(set(args.only) if args.only is not None else None)
    else:
        rows = json.loads(CACHE.read_text())
    table(rows)
    unsloth_table()


if __name__ == "__main__":
    main()
