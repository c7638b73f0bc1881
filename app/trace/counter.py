"""Count the bytes of every live tensor storage while a real training step runs (fake or real tensors).

A ``TorchDispatchMode`` sees every aten op; each output's untyped storage is counted once (tied
weights, views and in-place ops share storage) and released through a weak reference when Python
frees it, which is exactly when the CUDA caching allocator would get the block back. ``nbytes`` are
the storages' sizes; ``rounded`` rounds each block up to 512 B as ``CUDACachingAllocator`` does.

CUDA kernels that allocate scratch memory the CPU/fake op does not (bitsandbytes' dequantize-then-matmul
fallback of ``gemm_4bit`` for more than 1,536 rows) are charged as a transient at that op.

The counter also records the allocation stream in order (:class:`AllocationStream`): every storage's
allocation and release and each transient as an allocation freed at once, with the event index where
each phase starts, so that :mod:`app.core.allocator` can replay it through the caching allocator.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary, weakref

from app.core.allocator import FREE

BLOCK = 512


def _round(n: int) -> int:
    return -(-n // BLOCK) * BLOCK if n else 0


@dataclass
class LiveTensor:
    nbytes: int
    shape: tuple[int, ...]
    dtype: str
    op: str
    phase: str
    counted: bool = True
    ident: int = 0


@dataclass
class PhaseStats:
    peak_bytes: int = 0
    peak_rounded: int = 0


@dataclass
class Snapshot:
    """The largest live tensors when the peak was reached."""

    phase: str = ""
    largest: list[LiveTensor] = field(default_factory=list)


@dataclass
class AllocationStream:
    """Allocations ``(id, nbytes)`` and releases ``(id, FREE)`` in order, stored flat as 64-bit pairs."""

    flat: array = field(default_factory=lambda: array("q"))
    marks: dict[int, str] = field(default_factory=dict)  # event index → the phase starting there
    reset_at: int | None = None  # event index of reset_peak (torch.cuda.reset_peak_memory_stats)
    excluded: set[int] = field(default_factory=set)  # ids outside the caching allocator (paged states)

    def __len__(self) -> int:
        return len(self.flat) // 2

    def add(self, ident: int, nbytes: int) -> None:
        self.flat.append(ident)
        self.flat.append(nbytes)

    def events(self) -> list[tuple[int, int]]:
        """The events without the excluded storages."""
        f, skip = self.flat, self.excluded
        return [(f[i], f[i + 1]) for i in range(0, len(f), 2) if f[i] not in skip]

    def index_map(self) -> list[int]:
        """For each event index of the full stream, its index in :meth:`events` (marks move with it)."""
        out, kept = [], 0
        f, skip = self.flat, self.excluded
        for i in range(0, len(f), 2):
            out.append(kept)
            kept += f[i] not in skip
        out.append(kept)
        return out


TransientRule = Callable[[Any, tuple[Any, ...], dict[str, Any]], int]


class LiveBytesCounter(TorchDispatchMode):
    """Tracks live storage bytes, the peak, the phase of the peak and the largest tensors at the peak."""

    def __init__(self, transient_rules: dict[Any, TransientRule] | None = None, top: int = 12) -> None:
        super().__init__()
        self.live = 0
        self.live_rounded = 0
        self.peak = 0
        self.peak_rounded = 0
        self.phase = "setup"
        self.phases: dict[str, PhaseStats] = {}
        self.snapshot = Snapshot()
        self._info: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: list[weakref.ref] = []
        self._rules = transient_rules or {}
        self._top = top
        self.stream = AllocationStream()
        self._next_id = 0
        self._host = False

    # --- phases -------------------------------------------------------------------------------
    def set_phase(self, name: str) -> None:
        self.phase = name
        self.stream.marks[len(self.stream)] = name
        self.phases.setdefault(name, PhaseStats())
        self._observe(self.live, self.live_rounded)

    def reset_peak(self) -> None:
        """Like ``torch.cuda.reset_peak_memory_stats()``: the peak restarts from what is live now."""
        self.peak, self.peak_rounded = self.live, self.live_rounded
        self.stream.reset_at = len(self.stream)
        self.phases = {}
        self.snapshot = Snapshot(self.phase, self._largest())

    # --- tracking ---------------------------------------------------------------------------------
    def track(self, tensors: Iterable[Any], op: str = "existing") -> None:
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            if st in self._info:
                continue
            info = LiveTensor(st.nbytes(), tuple(t.shape), str(t.dtype).removeprefix("torch."), op, self.phase,
                              ident=self._new_id())
            self.stream.add(info.ident, info.nbytes)
            self._info[st] = info
            if self._host:
                info.counted = False
                self.stream.excluded.add(info.ident)
                continue
            self.live += info.nbytes
            self.live_rounded += _round(info.nbytes)
            self._refs.append(weakref.ref(st, self._released(info)))
        self._observe(self.live, self.live_rounded)

    def exclude(self, tensors: Iterable[torch.Tensor]) -> None:
        """Stop counting these storages (e.g. paged optimizer states, which live outside the allocator)."""
        for t in tensors:
            info = self._info.get(t.untyped_storage())
            if info is not None and info.counted:
                info.counted = False
                self.stream.excluded.add(info.ident)
                self.live -= info.nbytes
                self.live_rounded -= _round(info.nbytes)

    @contextmanager
    def host(self) -> Iterator[None]:
        """Storages made inside are host memory (activation offloading's CPU copies): not counted."""
        self._host = True
        try:
            yield
        finally:
            self._host = False

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def inject(self, nbytes: int) -> None:
        """An allocation the CPU step does not make but the CUDA one keeps for the process (cuBLAS
        workspaces): recorded in the stream only, not in the live counts."""
        self.stream.add(self._new_id(), nbytes)

    def _released(self, info: LiveTensor) -> Callable[[weakref.ref], None]:
        def cb(_ref: weakref.ref) -> None:
            self.stream.add(info.ident, FREE)
            if info.counted:
                self.live -= info.nbytes
                self.live_rounded -= _round(info.nbytes)

        return cb

    def _observe(self, live: int, rounded: int) -> None:
        stats = self.phases.setdefault(self.phase, PhaseStats())
        stats.peak_bytes = max(stats.peak_bytes, live)
        stats.peak_rounded = max(stats.peak_rounded, rounded)
        if rounded > self.peak_rounded:
            self.peak_rounded = rounded
        if live > self.peak:
            self.peak = live
            self.snapshot = Snapshot(self.phase, self._largest())

    def _largest(self) -> list[LiveTensor]:
        live = (info for _, info in self._info.items() if info.counted)
        return heapq.nlargest(self._top, live, key=lambda i: i.nbytes)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        rule = self._rules.get(func)
        if rule is not None:
            extra = rule(func, args, kwargs)
            if extra:
                self._observe(self.live + extra, self.live_rounded + _round(extra))
                ident = self._new_id()
                self.stream.add(ident, extra)
                self.stream.add(ident, FREE)
        out = func(*args, **kwargs)
        if getattr(func, "is_view", False):
            # a view aliases its input's storage (fake mode can hand out a fresh storage object for the
            # detach of a deep-copied parameter; it allocates nothing)
            return out
        flat, _ = tree_flatten(out)
        self.track(flat, op=str(func.overloadpacket.__name__) if hasattr(func, "overloadpacket") else str(func))
        return out
