"""The analytic-vs-trace agreement grid: run the trace engine on every case, cache it, print the error table.

    .venv/bin/python bench/trace_grid.py            # compare the analytic model with the cached traces
    .venv/bin/python bench/trace_grid.py --regen    # re-run every trace (minutes) and rewrite the cache
    .venv/bin/python bench/trace_grid.py --switches [--regen]   # the switch cases (docs/switches.md)

The cache (tests/data/trace_grid.json) is what tests/test_activation_model.py checks the analytic model
against; it stores each case's request body and the traced peak in bytes. The switch cases (Liger,
activation offloading, packing / padding-free, reentrant checkpointing, each beside its base run) are
cached in tests/data/trace_grid_switches.json and checked by tests/test_switches.py.
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

CACHE = ROOT / "tests" / "data" / "trace_grid.json"
SWITCH_CACHE = ROOT / "tests" / "data" / "trace_grid_switches.json"

# (model, method, lora overrides, training overrides); every family × method × GC × batch × seq × dropout × optim
# fmt: off
CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    ("meta-llama/Llama-3.2-1B", "lora", {}, {"micro_batch_size": 1, "seq_len": 2048}),
    ("meta-llama/Llama-3.2-1B", "lora", {"lora_dropout": 0.05}, {"micro_batch_size": 4, "seq_len": 1024, "gradient_checkpointing": False}),
    ("meta-llama/Llama-3.2-1B", "qlora", {}, {"micro_batch_size": 2, "seq_len": 4096}),
    ("meta-llama/Llama-3.2-1B", "qlora", {"lora_dropout": 0.05}, {"micro_batch_size": 1, "seq_len": 8192, "gradient_checkpointing": False, "optim": "paged_adamw_8bit"}),
    ("meta-llama/Llama-3.2-1B", "dora", {}, {"micro_batch_size": 8, "seq_len": 512}),
    ("meta-llama/Llama-3.2-1B", "qdora", {"lora_dropout": 0.05}, {"micro_batch_size": 2, "seq_len": 2048}),
    ("meta-llama/Llama-3.2-1B", "full", {}, {"micro_batch_size": 4, "seq_len": 2048, "optim": "adamw_torch"}),
    ("meta-llama/Llama-3.2-1B", "full", {}, {"micro_batch_size": 1, "seq_len": 1024, "gradient_checkpointing": False, "optim": "adamw_bnb_8bit"}),
    ("HuggingFaceTB/SmolLM2-135M", "lora", {}, {"micro_batch_size": 16, "seq_len": 256, "gradient_checkpointing": False}),
    ("HuggingFaceTB/SmolLM2-135M", "full", {}, {"micro_batch_size": 16, "seq_len": 512, "precision": "bf16-mixed", "optim": "adamw_torch_fused"}),
    ("HuggingFaceTB/SmolLM2-135M", "qdora", {}, {"micro_batch_size": 4, "seq_len": 2048, "gradient_checkpointing": False}),
    ("mistralai/Mistral-7B-v0.3", "qlora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("mistralai/Mistral-7B-v0.3", "lora", {"lora_dropout": 0.05}, {"micro_batch_size": 2, "seq_len": 2048}),
    ("mistralai/Mistral-7B-v0.3", "dora", {}, {"micro_batch_size": 1, "seq_len": 1024, "gradient_checkpointing": False}),
    ("mistralai/Mixtral-8x7B-v0.1", "qlora", {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}, {"micro_batch_size": 1, "seq_len": 2048}),
    ("mistralai/Mixtral-8x7B-v0.1", "lora", {}, {"micro_batch_size": 2, "seq_len": 1024, "gradient_checkpointing": False}),
    ("Qwen/Qwen2.5-0.5B", "lora", {}, {"micro_batch_size": 8, "seq_len": 1024}),
    ("Qwen/Qwen2.5-0.5B", "qlora", {"lora_dropout": 0.05}, {"micro_batch_size": 4, "seq_len": 2048, "gradient_checkpointing": False}),
    ("Qwen/Qwen2.5-0.5B", "full", {}, {"micro_batch_size": 2, "seq_len": 4096, "optim": "adafactor"}),
    ("Qwen/Qwen2.5-0.5B", "dora", {"lora_dropout": 0.05}, {"micro_batch_size": 2, "seq_len": 512, "gradient_checkpointing": False}),
    ("Qwen/Qwen2.5-7B", "qdora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("Qwen/Qwen3-0.6B", "lora", {}, {"micro_batch_size": 4, "seq_len": 2048, "attn_implementation": "flash_attention_2"}),
    ("Qwen/Qwen3-0.6B", "qlora", {}, {"micro_batch_size": 16, "seq_len": 512}),
    ("Qwen/Qwen3-0.6B", "full", {}, {"micro_batch_size": 1, "seq_len": 8192, "optim": "paged_adamw_32bit"}),
    ("Qwen/Qwen3-0.6B", "dora", {}, {"micro_batch_size": 2, "seq_len": 1024, "attn_implementation": "eager", "gradient_checkpointing": False}),
    ("Qwen/Qwen3-8B", "qlora", {"lora_dropout": 0.05}, {"micro_batch_size": 2, "seq_len": 2048}),
    ("Qwen/Qwen3-30B-A3B", "qlora", {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}, {"micro_batch_size": 1, "seq_len": 2048}),
    ("Qwen/Qwen3-30B-A3B", "lora", {}, {"micro_batch_size": 1, "seq_len": 4096, "optim": "adamw_bnb_8bit"}),
    ("google/gemma-2b", "lora", {}, {"micro_batch_size": 2, "seq_len": 2048}),
    ("google/gemma-2b", "qlora", {}, {"micro_batch_size": 1, "seq_len": 4096, "gradient_checkpointing": False}),
    ("google/gemma-2-2b", "lora", {"lora_dropout": 0.05}, {"micro_batch_size": 4, "seq_len": 1024}),
    ("google/gemma-2-2b", "qdora", {}, {"micro_batch_size": 1, "seq_len": 2048}),
    ("google/gemma-2-2b", "full", {}, {"micro_batch_size": 1, "seq_len": 2048, "optim": "lion_8bit"}),
    ("google/gemma-3-1b-pt", "lora", {}, {"micro_batch_size": 2, "seq_len": 4096}),
    ("google/gemma-3-1b-pt", "qlora", {}, {"micro_batch_size": 8, "seq_len": 512, "gradient_checkpointing": False}),
    ("google/gemma-3-1b-pt", "dora", {"lora_dropout": 0.05}, {"micro_batch_size": 1, "seq_len": 2048}),
    ("microsoft/Phi-3-mini-4k-instruct", "lora", {}, {"micro_batch_size": 2, "seq_len": 2048}),
    ("microsoft/Phi-3-mini-4k-instruct", "qlora", {}, {"micro_batch_size": 1, "seq_len": 4096, "gradient_checkpointing": False}),
    ("microsoft/Phi-3-mini-4k-instruct", "qdora", {"lora_dropout": 0.05}, {"micro_batch_size": 2, "seq_len": 1024}),
    ("openai-community/gpt2", "full", {}, {"micro_batch_size": 8, "seq_len": 1024, "precision": "fp32", "gradient_checkpointing": False}),
    ("openai-community/gpt2", "lora", {"lora_dropout": 0.05}, {"micro_batch_size": 16, "seq_len": 512}),
    ("openai-community/gpt2", "dora", {}, {"micro_batch_size": 4, "seq_len": 1024, "gradient_checkpointing": False, "optim": "sgd"}),
    ("openai-community/gpt2", "qlora", {}, {"micro_batch_size": 4, "seq_len": 1024}),
    ("meta-llama/Llama-3.1-8B", "qlora", {}, {"micro_batch_size": 1, "seq_len": 2048}),
    ("meta-llama/Llama-3.1-8B", "lora", {}, {"micro_batch_size": 2, "seq_len": 4096}),
    ("meta-llama/Llama-3.1-8B", "full", {}, {"micro_batch_size": 1, "seq_len": 2048, "optim": "adamw_torch"}),
    ("meta-llama/Llama-3.1-8B", "qdora", {}, {"micro_batch_size": 1, "seq_len": 8192}),
    ("meta-llama/Llama-3.1-8B", "dora", {"lora_dropout": 0.05}, {"micro_batch_size": 1, "seq_len": 2048}),
    # DoRA's identity matrix (in_features² of down_proj) in the checkpointed recompute sets the peak
    ("mistralai/Mistral-7B-v0.3", "dora", {}, {"micro_batch_size": 1, "seq_len": 1024}),
    ("mistralai/Mistral-7B-v0.3", "qdora", {"lora_dropout": 0.05}, {"micro_batch_size": 1, "seq_len": 1024}),
    # weight-heavy steps (the resident states dwarf the activations): 70B/32B QLoRA, 8B LoRA and 7B full fine-tuning
    # at short sequences; they anchor the allocator-reserve rule's static term (bench/allocator_grid.py)
    ("meta-llama/Llama-2-70b-hf", "qlora", {"lora_dropout": 0.1}, {"micro_batch_size": 2, "seq_len": 2048}),
    ("meta-llama/Llama-3.1-70B", "qlora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    ("Qwen/Qwen2.5-32B", "qlora", {}, {"micro_batch_size": 1, "seq_len": 2048}),
    ("meta-llama/Llama-3.1-8B", "lora", {}, {"micro_batch_size": 1, "seq_len": 512}),
    ("mistralai/Mistral-7B-v0.3", "full", {}, {"micro_batch_size": 1, "seq_len": 512, "optim": "adamw_bnb_8bit"}),
]

# The switches of issue 13 on real models, each next to the same run without it (training overrides only).
_L1B, _Q06, _M7B, _Q8B = "meta-llama/Llama-3.2-1B", "Qwen/Qwen3-0.6B", "mistralai/Mistral-7B-v0.3", "Qwen/Qwen3-8B"
_FA2 = {"attn_implementation": "flash_attention_2"}
SWITCH_CASES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    (_L1B, "lora", {}, {"micro_batch_size": 2, "seq_len": 2048}),
    (_L1B, "lora", {}, {"micro_batch_size": 2, "seq_len": 2048, "use_liger_kernel": True}),
    (_L1B, "lora", {}, {"micro_batch_size": 2, "seq_len": 2048, "activation_offloading": True}),
    (_L1B, "lora", {}, {"micro_batch_size": 2, "seq_len": 2048, "gradient_checkpointing_kwargs": {"use_reentrant": True}}),
    (_L1B, "lora", {}, {"micro_batch_size": 2, "seq_len": 2048, **_FA2}),
    (_L1B, "lora", {}, {"micro_batch_size": 2, "seq_len": 2048, "packing": True, **_FA2}),
    (_L1B, "lora", {}, {"micro_batch_size": 2, "seq_len": 1024, "gradient_checkpointing": False}),
    (_L1B, "lora", {}, {"micro_batch_size": 2, "seq_len": 1024, "gradient_checkpointing": False, "use_liger_kernel": True}),
    (_L1B, "lora", {}, {"micro_batch_size": 2, "seq_len": 1024, "gradient_checkpointing": False, "activation_offloading": True}),
    (_Q06, "qlora", {}, {"micro_batch_size": 4, "seq_len": 2048}),
    (_Q06, "qlora", {}, {"micro_batch_size": 4, "seq_len": 2048, "use_liger_kernel": True}),
    (_Q06, "qlora", {}, {"micro_batch_size": 4, "seq_len": 2048, "activation_offloading": True}),
    (_Q06, "qlora", {}, {"micro_batch_size": 4, "seq_len": 2048, "padding_free": True, **_FA2}),
    (_M7B, "qlora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    (_M7B, "qlora", {}, {"micro_batch_size": 1, "seq_len": 4096, "use_liger_kernel": True}),
    (_Q8B, "lora", {}, {"micro_batch_size": 1, "seq_len": 4096}),
    (_Q8B, "lora", {}, {"micro_batch_size": 1, "seq_len": 4096, "use_liger_kernel": True}),
    (_Q8B, "lora", {}, {"micro_batch_size": 1, "seq_len": 4096, "activation_offloading": True}),
    # gradient accumulation (a later micro-batch beside the accumulated gradients), next to the single-batch step
    (_L1B, "full", {}, {"micro_batch_size": 1, "seq_len": 1024}),
    (_L1B, "full", {}, {"micro_batch_size": 1, "seq_len": 1024, "gradient_accumulation_steps": 4}),
    (_L1B, "full", {}, {"micro_batch_size": 2, "seq_len": 2048, "gradient_checkpointing": False,
                        "gradient_accumulation_steps": 8}),
    (_Q06, "qlora", {}, {"micro_batch_size": 4, "seq_len": 2048, "gradient_accumulation_steps": 4}),
    (_Q8B, "lora", {"modules_to_save": ["lm_head"]}, {"micro_batch_size": 1, "seq_len": 4096}),
    (_Q8B, "lora", {"modules_to_save": ["lm_head"]}, {"micro_batch_size": 1, "seq_len": 4096,
                                                      "gradient_accumulation_steps": 8}),
    ("meta-llama/Llama-3.1-8B", "full", {}, {"micro_batch_size": 1, "seq_len": 1024, "gradient_accumulation_steps": 2}),
]
SWITCH_KEYS = ("use_liger_kernel", "activation_offloading", "gradient_checkpointing_kwargs", "packing", "padding_free",
               "gradient_accumulation_steps")
# fmt: on


def switch_name(request_body: dict[str, Any]) -> str:
    """The switch a case turns on ('-' for a base run)."""
    tr = request_body["training"]
    names = {"gradient_checkpointing_kwargs": "use_reentrant"}
    return ",".join(names.get(k, k) for k in SWITCH_KEYS if tr.get(k)) or "-"


def body(model: str, method: str, lora: dict[str, Any], training: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "method": method, "lora": {"r": 16, "target_modules": "all-linear", **lora},
            "training": training}


def bodies(cases: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = CASES) -> list[dict[str, Any]]:
    return [body(*case) for case in cases]


def analytic_tensor_peak(request_body: dict[str, Any]) -> int:
    """The estimate's peak without the cuBLAS workspaces (the trace counts tensors only)."""
    from app.core import PlanRequest, estimate
    from app.core.catalog import gpu
    from app.core.overhead import cublas_workspace_bytes

    req = PlanRequest.model_validate(request_body)
    return estimate(req).memory.peak - cublas_workspace_bytes(gpu(req.hardware.gpu).arch)


def regenerate(only: set[int] | None = None, *, switches: bool = False) -> list[dict[str, Any]]:
    """Trace every case (or the cases whose index is in ``only``, keeping the others from the cache)."""
    from app.core import PlanRequest
    from app.trace.engine import run_trace

    cache = SWITCH_CACHE if switches else CACHE
    old = json.loads(cache.read_text()) if only is not None and cache.exists() else []
    rows = []
    for i, b in enumerate(bodies(SWITCH_CASES if switches else CASES)):
        if only is not None and i not in only and i < len(old) and old[i]["request"] == b:
            rows.append(old[i])
            continue
        t0 = time.perf_counter()
        result = run_trace(PlanRequest.model_validate(b))
        rows.append({"request": b, "trace_peak_bytes": result.peak_bytes, "trace_phase": result.peak_phase,
                     "trace_phases": result.phases, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"traced {b['model']} {b['method']}: {result.peak_bytes} B ({rows[-1]['seconds']} s)", flush=True)
        cache.write_text(json.dumps(rows, indent=1) + "\n")  # progress survives an interrupted run
    cache.write_text(json.dumps(rows, indent=1) + "\n")  # with the cached cases after the last traced one
    return rows


def table(rows: list[dict[str, Any]]) -> list[float]:
    errors = []
    print(f"{'model':34} {'method':6} {'b':>3} {'s':>5} {'gc':>3} {'drop':>4} {'optim':18} {'switch':22} "
          f"{'trace GiB':>9} {'analytic GiB':>12} {'err %':>7} phase")
    for row in rows:
        b = row["request"]
        tr = b["training"]
        analytic = analytic_tensor_peak(b)
        err = 100 * (analytic - row["trace_peak_bytes"]) / row["trace_peak_bytes"]
        errors.append(err)
        print(f"{b['model'][:34]:34} {b['method']:6} {tr.get('micro_batch_size', 1):>3} {tr.get('seq_len', 2048):>5} "
              f"{'on' if tr.get('gradient_checkpointing', True) else 'off':>3} {b['lora'].get('lora_dropout', 0):>4} "
              f"{tr.get('optim', 'adamw_torch'):18} {switch_name(b):22} {row['trace_peak_bytes'] / 2**30:9.3f} "
              f"{analytic / 2**30:12.3f} "
              f"{err:+7.2f} {row['trace_phase']}")
    abs_err = [abs(e) for e in errors]
    print(f"\n{len(errors)} cases: median |error| {statistics.median(abs_err):.2f}%, max |error| {max(abs_err):.2f}%")
    by_switch: dict[str, list[float]] = {}
    for row, err in zip(rows, abs_err, strict=True):
        by_switch.setdefault(switch_name(row["request"]), []).append(err)
    if len(by_switch) > 1:
        for name, errs in by_switch.items():
            print(f"  {name:30} {len(errs):3} cases: median |error| {statistics.median(errs):.2f}%, "
                  f"max {max(errs):.2f}%")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--regen", action="store_true", help="re-run every trace and rewrite the cache")
    parser.add_argument("--only", type=int, nargs="*",
                        help="with --regen: re-trace only these case indexes (and cases missing from the cache)")
    parser.add_argument("--switches", action="store_true", help="the switch cases (tests/data/trace_grid_switches.json)")
    args = parser.parse_args()
    cache = SWITCH_CACHE if args.switches else CACHE
    if args.regen or not cache.exists():
        rows = regenerate(set(args.only) if args.only is not None else None, switches=args.switches)
    else:
        rows = json.loads(cache.read_text())
    table(rows)


if __name__ == "__main__":
    main()
