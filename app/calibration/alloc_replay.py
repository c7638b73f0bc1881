"""A calibration's allocator history replayed through the planner's caching-allocator simulator
(:mod:`app.core.allocator`): the CUDA snapshot against what the simulator reserves for the same events, and the
CPU twin on the counted storages' stream. Bytes throughout."""

from __future__ import annotations

from typing import Any


def replay_snapshot(snapshot: dict[str, Any], device_index: int) -> dict[str, Any]:
    """A CUDA run's recorded allocator history replayed through the simulator with the process's
    PYTORCH_CUDA_ALLOC_CONF: the recorded and the simulated max_memory_reserved (bytes) of the whole run."""
    import os

    from app.core.alloc_conf import AllocConfError, parse_alloc_conf
    from app.core.alloc_snapshot import SnapshotError, load_snapshot
    from app.core.allocator import replay

    conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    try:
        recorded = load_snapshot(snapshot, device_index)
        stats = replay(recorded.events, parse_alloc_conf(conf))
    except (SnapshotError, AllocConfError) as exc:
        return {"error": str(exc), "pytorch_cuda_alloc_conf": conf}
    return {"pytorch_cuda_alloc_conf": conf, "events": len(recorded.events),
            "recorded_max_reserved_bytes": recorded.max_reserved,
            "simulated_max_reserved_bytes": stats.max_reserved,
            "recorded_segment_actions": recorded.segment_actions,
            "simulated_cuda_malloc_calls": stats.cuda_malloc_calls,
            "exact": recorded.max_reserved == stats.max_reserved}


def replay_stream(counter: Any) -> dict[str, Any]:
    """The CPU twin of :func:`replay_snapshot`: the counted storages' stream replayed through the simulator
    (simulated max_memory_reserved of the whole run, bytes; nothing recorded to compare with on CPU)."""
    from app.core.allocator import replay

    stream = counter.stream
    stats = replay(stream.events())
    return {"pytorch_cuda_alloc_conf": None, "events": len(stream), "recorded_max_reserved_bytes": None,
            "simulated_max_reserved_bytes": stats.max_reserved, "simulated_cuda_malloc_calls": stats.cuda_malloc_calls,
            "exact": None}
