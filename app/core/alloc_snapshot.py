"""Read a ``torch.cuda.memory._snapshot()`` (recorded with ``_record_memory_history``) for replay.

The format is the one documented in ``torch/cuda/memory.py`` (``_snapshot``'s docstring): a dict with
``segments`` (the allocator's state at the end) and ``device_traces`` (per device, the allocator's actions
in order: ``alloc``, ``free_requested``, ``free_completed``, ``segment_alloc``, ``segment_free``,
``segment_map``, ``segment_unmap``, ``oom``, ``snapshot``; each with ``addr``, ``size`` and ``stream``).
An ``alloc`` entry's ``size`` is the requested byte count (``record_trace(ALLOC, ptr, orig_size, …)`` in
``alloc_found_block``); blocks are identified by address.

:func:`load_snapshot` turns a trace into the simulator's ``(id, nbytes)`` / ``(id, FREE)`` events (a free
at ``free_completed``, when the block is back in the pool) and replays the allocator's own segment
actions to get the *recorded* ``max_memory_reserved`` to compare the simulator with. The trace must start
from an empty allocator (``_record_memory_history`` enabled before the first CUDA allocation, a ring
buffer large enough for the whole run); otherwise :class:`SnapshotError` says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.core.allocator import FREE

_GROW = ("segment_alloc", "segment_map")
_SHRINK = ("segment_free", "segment_unmap")
_IGNORED = ("free_requested", "oom", "snapshot", "user_defined")


class SnapshotError(ValueError):
    """A snapshot that cannot be replayed (the message says which entry and why)."""


@dataclass
class RecordedTrace:
    """A snapshot's trace as simulator events, and what the real allocator did (bytes)."""

    events: list[tuple[int, int]]
    max_reserved: int
    reserved_end: int
    segment_actions: int
    ooms: int
    segments_total_size: int


def load_snapshot(snapshot: Mapping[str, Any], device: int = 0) -> RecordedTrace:
    """Events and recorded reserved bytes of ``device``'s trace in a ``_snapshot()`` dict."""
    traces = snapshot.get("device_traces")
    if not isinstance(traces, list) or device >= len(traces) or not isinstance(traces[device], list):
        raise SnapshotError(f"no device_traces for device {device}: record with "
                            "torch.cuda.memory._record_memory_history() before taking the snapshot")
    events: list[tuple[int, int]] = []
    live: dict[int, int] = {}
    reserved = max_reserved = actions = ooms = 0
    next_id = 0
    for n, entry in enumerate(traces[device]):
        action = entry.get("action")
        addr, size = entry.get("addr"), entry.get("size", 0)
        if action == "alloc":
            if addr in live:
                raise SnapshotError(f"entry {n}: address {addr} allocated twice without a free")
            live[addr] = next_id
            events.append((next_id, int(size)))
            next_id += 1
        elif action == "free_completed":
            ident = live.pop(addr, None)
            if ident is None:
                raise SnapshotError(f"entry {n}: free of address {addr} that the trace never allocated "
                                    "(the recording did not start from an empty allocator)")
            events.append((ident, FREE))
        elif action in _GROW or action in _SHRINK:
            actions += 1
            reserved += int(size) if action in _GROW else -int(size)
            if reserved < 0:
                raise SnapshotError(f"entry {n}: {action} of a segment the trace never allocated")
            max_reserved = max(max_reserved, reserved)
        elif action == "oom":
            ooms += 1
        elif action not in _IGNORED:
            raise SnapshotError(f"entry {n}: unknown action {action!r}")
    segments = snapshot.get("segments", [])
    total = sum(int(s.get("total_size", 0)) for s in segments if s.get("device", device) == device)
    return RecordedTrace(events, max_reserved, reserved, actions, ooms, total)
