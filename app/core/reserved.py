"""What the card holds beyond allocated bytes: the caching allocator's reserve and memory outside it.

:func:`trace_report` replays a traced step's allocation stream (``app/trace/counter.py``) through the
simulator (:mod:`app.core.allocator`) on the card's capacity and reports ``max_memory_reserved``, the
fragmentation at the peak, the OOMs, what ``expandable_segments:True`` would change and what
``nvidia-smi`` would show (reserved + CUDA context + NCCL, :mod:`app.core.overhead`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from app.core.alloc_conf import AllocatorConfig, parse_alloc_conf
from app.core.allocator import AllocatorStats, replay
from app.core.catalog import gpu
from app.core.overhead import outside_allocator_bytes
from app.core.request import PlanRequest


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
