"""What the card holds beyond allocated bytes: the caching allocator's reserve and memory outside it.

:func:`allocator_reserve` is the analytic path's reserve (``max_memory_reserved − max_memory_allocated``):
a rule per allocator setting (default / ``expandable_segments:True``) and gradient checkpointing (on /
off), linear in the step's block-size pattern:

- ``logits``: the fp32 logits, micro_batch·seq_len·vocab·4 bytes, the largest transient blocks of the
  step (bf16 logits, their fp32 copy, log-softmax and their gradients are of this size or half of it);
  once freed, their segments are split by smaller requests and a later logits-size block needs a new one;
- ``layer``: one decoder layer's backward (recomputed activations with checkpointing, gradients,
  bitsandbytes' dequantized weights), the repeating mid-size blocks;
- ``activations``: what is alive at the peak besides weights, adapters, gradients and optimizer states
  (``memory.activations``: many mid-size blocks, rounding and 20 MiB segments of 1–10 MiB requests);
  weights and optimizer states are allocated once, in segments of their own size, and add little;
- ``peak``: the allocated peak.

The coefficients (``data/allocator_reserve.json``) are fitted by ``bench/allocator_grid.py --fit`` on the
simulated reserve of traced steps (the trace grid's recorded allocation streams replayed through
:mod:`app.core.allocator` on an A100 80GB) and checked against them by tests/test_reserved.py.

:func:`trace_report` replays a traced step's allocation stream (``app/trace/counter.py``) through the
simulator (:mod:`app.core.allocator`) on the card's capacity and reports ``max_memory_reserved``, the
fragmentation at the peak, the OOMs, what ``expandable_segments:True`` would change and what
``nvidia-smi`` would show (reserved + CUDA context + NCCL, :mod:`app.core.overhead`).
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from typing import Any, NamedTuple

from app.core.activations import ActivationModel
from app.core.alloc_conf import AllocatorConfig, parse_alloc_conf
from app.core.allocator import AllocatorStats, replay
from app.core.catalog import DATA_DIR, gpu
from app.core.overhead import outside_allocator_bytes
from app.core.request import PlanRequest
from app.core.units import format_bytes

RULES_FILE = DATA_DIR / "allocator_reserve.json"
FEATURES = ("logits", "layer", "activations", "peak")


class Reserve(NamedTuple):
    """The allocator reserve in bytes and the rule that gave it (readable, with its figures)."""

    bytes: int
    rule: str


@cache
def _rules() -> dict[str, Any]:
    return json.loads(RULES_FILE.read_text())


def reserve_features(req: PlanRequest, vocab_size: int, act: ActivationModel, activations: int,
                     peak: int) -> dict[str, int]:
    """The block-size pattern the rule reads (bytes): see the module docstring."""
    t = req.training
    # fp32 size of the largest block of logits (the full b·s·V unless the framework's loss works in chunks)
    return {"logits": act.logits_block or t.micro_batch_size * t.seq_len * vocab_size * 4,
            "layer": act.backward_layer + act.backward_transient, "activations": activations, "peak": peak}


def rule_group(config: AllocatorConfig, checkpointed: bool) -> str:
    return (f"{'expandable_segments' if config.expandable_segments else 'default'}/"
            f"{'checkpointed' if checkpointed else 'not_checkpointed'}")


def allocator_reserve(features: dict[str, int], config: AllocatorConfig, checkpointed: bool) -> Reserve:
    """The fitted rule of the request's group applied to its features (bytes), at least the group's minimum."""
    data = _rules()
    group = rule_group(config, checkpointed)
    rule = data["rules"][group]
    coef = rule["coefficients"]
    value = max(int(sum(coef[k] * features[k] for k in FEATURES)), rule["min_bytes"])
    terms = " + ".join(f"{coef[k]:.3g}·{k} ({format_bytes(features[k])})" for k in FEATURES if coef[k])
    text = (f"{group}: max({terms or '0'}, {format_bytes(rule['min_bytes'])}); "
            f"fitted on {rule['cases']} simulated traces")
    unmodelled = [name for name, on in (("max_split_size_mb", config.max_split_size is not None),
                                        ("roundup_power2_divisions", any(config.roundup_power2_divisions)),
                                        ("garbage_collection_threshold", config.garbage_collection_threshold > 0))
                  if on]
    if unmodelled:
        text += f" ({', '.join(unmodelled)}: not in the analytic rule; POST /api/v1/trace replays them)"
    return Reserve(value, text)


def expandable_variant(config: AllocatorConfig) -> AllocatorConfig | None:
    """The same settings with ``expandable_segments:True``; None when they already have it."""
    return None if config.expandable_segments else replace(config, expandable_segments=True)


def trace_report(events: list[tuple[int, int]], marks: dict[int, str], reset_at: int | None,
                 req: PlanRequest) -> dict[str, Any]:
    """The allocator's view of a traced step on ``req.hardware.gpu`` (bytes): see the module docstring.

    The capacity cudaMalloc can use is the card's ``vram_bytes`` minus the memory outside the allocator.
    """
    outside = outside_allocator_bytes(req.hardware.num_gpus)
    capacity = gpu(req.hardware.gpu).vram_bytes - outside
    config = parse_alloc_conf(req.hardware.pytorch_cuda_alloc_conf)
    stats = replay(events, config, capacity, marks, reset_at)
    out = _summary(stats)
    variant = expandable_variant(config)
    expandable = replay(events, variant, capacity, marks, reset_at) if variant else stats
    out.update({
        "pytorch_cuda_alloc_conf": req.hardware.pytorch_cuda_alloc_conf,
        "events": len(events),
        "capacity_bytes": capacity,
        "outside_allocator_bytes": outside,
        "nvidia_smi_bytes": stats.max_reserved + outside,
        "expandable_segments_max_reserved_bytes": expandable.max_reserved,
        "expandable_segments_saves_bytes": stats.max_reserved - expandable.max_reserved,
    })
    return out


def _summary(s: AllocatorStats) -> dict[str, Any]:
    return {
        "max_allocated_bytes": s.max_allocated,
        "max_reserved_bytes": s.max_reserved,
        "reserve_bytes": s.max_reserved - s.max_allocated,
        "reserved_at_peak_bytes": s.reserved_at_peak,
        "fragmentation_at_peak": round(s.fragmentation_at_peak, 6),
        "largest_free_block_at_peak_bytes": s.largest_free_block_at_peak,
        "peak_phase": s.peak_phase,
        "reserved_peak_phase": s.reserved_peak_phase,
        "phases_reserved_bytes": s.phases,
        "cuda_malloc_calls": s.cuda_malloc_calls,
        "cuda_free_calls": s.cuda_free_calls,
        "alloc_retries": s.alloc_retries,
        "failed_requests": s.failed_requests,
        "largest_failed_request_bytes": s.largest_failed_request,
        "first_oom": vars(s.first_oom) if s.first_oom else None,
    }
