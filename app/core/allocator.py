"""A replay of torch's CUDA caching allocator: reserved bytes, fragmentation, cudaMalloc calls and OOMs.

A model of ``DeviceCachingAllocator`` in ``c10/cuda/CUDACachingAllocator.cpp`` (torch 2.x, the version
the planner models is 2.13) for one device and one stream (a training step runs on the default stream).
It follows these functions of that file, in order of use (the size rules are in :mod:`app.core.alloc_sizes`):

- ``malloc``: ``round_size`` → ``get_pool`` (small pool for ≤ ``kSmallSize`` = 1 MiB) →
  ``get_allocation_size`` → ``get_free_block``; on a miss ``garbage_collect_cached_blocks`` (only with
  ``garbage_collection_threshold`` *and* a memory fraction), then ``alloc_block`` → on failure
  ``release_available_cached_blocks`` + ``alloc_block`` → ``release_cached_blocks`` + ``alloc_block``
  (a retry); still failing is an OOM. Then ``should_split`` and ``alloc_found_block``.
- ``round_size``: < 512 B → 512; with ``roundup_power2_divisions`` for the size's interval and a size
  above 512·divisions → ``roundup_power2_next_division``; else up to a multiple of 512 (``kMinBlockSize``).
- ``get_allocation_size``: ≤ 1 MiB → a 2 MiB segment (``kSmallBuffer``); < 10 MiB (``kMinLargeAlloc``) →
  20 MiB (``kLargeBuffer``); else rounded up to 2 MiB (``kRoundLarge``).
- ``get_free_block``: best fit, the first free block in (stream, size, address) order with size ≥ the
  request (``BlockComparatorSize``); a request < ``max_split_size`` never takes a block ≥ it, a request
  ≥ it takes a block only within ``max_non_split_rounding`` (20 MiB) of the request. With expandable
  segments a block's size for best fit includes the unmapped space right after it.
- ``should_split``: small pool or expandable segments → split when ≥ 512 B remain; large pool → split
  when the request < ``max_split_size`` and more than 1 MiB (``kSmallSize``) remains.
- ``free`` → ``free_block`` → ``try_merge_blocks`` with the previous and next block of the segment.
- ``release_available_cached_blocks``: with ``max_split_size`` set, cudaFree the smallest cached oversize
  block ≥ max(request, max_split_size), else oversize blocks from the largest down until enough.
- ``release_cached_blocks`` → ``release_blocks``: cudaFree every cached block that is a whole segment;
  with expandable segments ``unmap_block`` unmaps the whole pages of every free block.
- ``garbage_collect_cached_blocks``: above ``threshold·allowed`` reserved bytes, cudaFree unsplit cached
  large blocks at least as old (``gc_count``: ``get_free_block`` calls since cached) as the average.
- Expandable segments (Note [Expandable Segments]; ``find_expandable_block``, ``map_block``,
  ``try_allocate_expandable_block``): one segment per pool whose address space is 1⅛ of the device,
  mapped in pages of 2 MiB (small pool) or 20 MiB (large pool) at the lowest address that fits.

Not modelled: other streams (``recordStream`` events), CUDA graph private pools, ``backend:cudaMallocAsync``.
Sizes are integer bytes. ``capacity`` is what cudaMalloc can hand out (the card's memory minus the CUDA
context and other processes); a cudaMalloc or page map that would exceed it fails as on the device.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from app.core.alloc_conf import K_LARGE_BUFFER, AllocatorConfig
from app.core.alloc_sizes import (
    K_MIN_BLOCK_SIZE,
    K_ROUND_LARGE,
    K_SMALL_BUFFER,
    K_SMALL_SIZE,
    allocation_size,
    round_size,
)

FREE = -1
"""The size field of a free event: ``(id, FREE)``; ``(id, nbytes)`` allocates."""
UNBOUNDED_ADDRESS_SPACE = 1 << 46
"""Address space of an expandable segment when no capacity is given (the real one is 1⅛ of the device)."""


class _Segment:
    """An expandable segment: a reserved address range mapped in ``page``-byte pages."""

    __slots__ = ("base", "page", "size")

    def __init__(self, base: int, page: int, size: int) -> None:
        self.base, self.page, self.size = base, page, size


class _Block:
    __slots__ = ("addr", "allocated", "gc_base", "mapped", "next", "prev", "seg", "size", "small")

    def __init__(self, addr: int, size: int, small: bool, seg: _Segment | None = None, mapped: bool = True) -> None:
        self.addr, self.size, self.small, self.seg, self.mapped = addr, size, small, seg, mapped
        self.allocated = False
        self.prev: _Block | None = None
        self.next: _Block | None = None
        self.gc_base = 0

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class _Pool:
    """``BlockPool``: cached free blocks ordered by (size, address), unmapped ones by address."""

    __slots__ = ("blocks", "gc_calls", "keys", "small", "unmapped")

    def __init__(self, small: bool) -> None:
        self.small = small
        self.keys: list[tuple[int, int]] = []
        self.blocks: dict[int, _Block] = {}
        self.unmapped: dict[int, _Block] = {}
        self.gc_calls = 0

    def insert(self, b: _Block) -> None:
        b.gc_base = self.gc_calls  # insert_into_blocks
        insort(self.keys, (b.size, b.addr))
        self.blocks[b.addr] = b

    def remove(self, b: _Block) -> None:
        del self.keys[bisect_left(self.keys, (b.size, b.addr))]
        del self.blocks[b.addr]

    def largest(self) -> int:
        return self.keys[-1][0] if self.keys else 0


@dataclass
class OomInfo:
    """The first request cudaMalloc could not serve, even after freeing the cache (bytes)."""

    request_bytes: int
    event_index: int
    phase: str
    allocated_bytes: int
    reserved_bytes: int


@dataclass
class AllocatorStats:
    """What ``torch.cuda.memory_stats()`` would report after the replay (bytes), plus the state at the peak."""

    max_allocated: int = 0
    max_reserved: int = 0
    reserved_at_peak: int = 0  # reserved when allocated bytes peaked
    largest_free_block_at_peak: int = 0  # the largest cached free block then
    peak_phase: str = ""  # phase of the allocated peak
    reserved_peak_phase: str = ""  # phase where reserved bytes reached their maximum
    reserved_end: int = 0
    cuda_malloc_calls: int = 0
    cuda_free_calls: int = 0
    alloc_retries: int = 0
    failed_requests: int = 0
    largest_failed_request: int = 0
    first_oom: OomInfo | None = None
    phases: dict[str, int] = field(default_factory=dict)

    @property
    def fragmentation_at_peak(self) -> float:
        """Share of reserved bytes cached but not allocated at the allocated peak: 1 − allocated / reserved."""
        return 1 - self.max_allocated / self.reserved_at_peak if self.reserved_at_peak else 0.0

    def as_dict(self) -> dict[str, object]:
        out = {k: v for k, v in vars(self).items() if k != "first_oom"}
        out["fragmentation_at_peak"] = round(self.fragmentation_at_peak, 6)
        out["first_oom"] = vars(self.first_oom) if self.first_oom else None
        return out


class CachingAllocator:
    """One device's ``DeviceCachingAllocator`` on one stream; see the module docstring for what it follows."""

    def __init__(self, config: AllocatorConfig | None = None, capacity: int | None = None,
                 memory_fraction: float | None = None) -> None:
        self.config = config or AllocatorConfig()
        self.capacity = capacity
        # setMemoryFraction: allowed_memory_maximum = fraction · total; garbage collection needs it set
        self.allowed = int(memory_fraction * capacity) if memory_fraction is not None and capacity else None
        self.small, self.large = _Pool(True), _Pool(False)
        self.allocated = 0
        self.reserved = 0
        self.stats = AllocatorStats()
        self.phase = ""
        self._next_addr = 1 << 32
        self._max_split = self.config.max_split_size or (1 << 63)

    # --- public ---------------------------------------------------------------------------------
    def malloc(self, orig_size: int, event_index: int = -1) -> _Block:
        """``malloc``: a block for ``orig_size`` bytes. A request that cannot be served even after
        freeing the cache counts as failed (``stats``) and is then served beyond the capacity, so that the
        replay goes on and finds the largest failing request."""
        size = round_size(orig_size, self.config)
        pool = self.small if size <= K_SMALL_SIZE else self.large
        alloc_size = allocation_size(size)
        block = self._get_free_block(pool, size)
        if block is None:
            if self.allowed is not None and self.config.garbage_collection_threshold > 0:
                self._garbage_collect()
            block = (self._alloc_block(pool, size, alloc_size)
                     or (self._release_available_cached_blocks(pool, size)
                         and self._alloc_block(pool, size, alloc_size))
                     or (self._release_cached_blocks()
                         and self._alloc_block(pool, size, alloc_size, retry=True)))
        if not block:
            self._oom(size, event_index)
            block = self._alloc_block(pool, size, alloc_size, unlimited=True)
        assert block
        block = self._alloc_found_block(block, pool, size, self._should_split(block, size))
        self._observe()
        return block

    def free(self, block: _Block) -> None:
        """``free`` → ``free_block``: the block returns to its pool, merged with free neighbours."""
        block.allocated = False
        self.allocated -= block.size
        pool = self.small if block.small else self.large
        for other in (block.prev, block.next):
            self._try_merge(block, other, pool)
        pool.insert(block)

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache()`` → ``release_cached_blocks``."""
        self._release_cached_blocks()

    def reset_peak(self) -> None:
        """``torch.cuda.reset_peak_memory_stats()``: peaks restart from the current values."""
        s = self.stats
        s.max_allocated = s.max_reserved = -1
        s.phases = {}
        self._observe()

    def set_phase(self, name: str) -> None:
        self.phase = name
        self.stats.phases[name] = max(self.stats.phases.get(name, 0), self.reserved)

    # --- malloc's steps ----------------------------------------------------------------------------
    def _get_free_block(self, pool: _Pool, size: int) -> _Block | None:
        if self.allowed is not None and self.config.garbage_collection_threshold > 0:
            pool.gc_calls += 1
        i = bisect_left(pool.keys, (size, -1))
        if i == len(pool.keys):
            return None
        b = pool.blocks[pool.keys[i][1]]
        if b.seg is not None:
            # best fit counts the unmapped space after an expandable block as part of its size
            def expandable_size(x: _Block) -> int:
                return x.size + (x.next.size if x.next is not None and not x.next.mapped else 0)

            while b.seg is not None and i + 1 < len(pool.keys):
                nxt = pool.blocks[pool.keys[i + 1][1]]
                if expandable_size(nxt) >= expandable_size(b):
                    break
                i, b = i + 1, nxt
        if size < self._max_split and b.size >= self._max_split:
            return None  # do not return an oversized block for a request below max_split_size
        if size >= self._max_split and b.size >= size + self.config.max_non_split_rounding:
            return None  # an oversized block serves requests only within max_non_split_rounding of it
        pool.remove(b)
        return b

    def _should_split(self, block: _Block, size: int) -> bool:
        remaining = block.size - size
        if block.small or self.config.expandable_segments:
            return remaining >= K_MIN_BLOCK_SIZE
        return size < self._max_split and remaining > K_SMALL_SIZE

    def _alloc_found_block(self, block: _Block, pool: _Pool, size: int, split: bool) -> _Block:
        if split:
            remaining = block
            block = _Block(remaining.addr, size, remaining.small, remaining.seg)
            block.prev, block.next = remaining.prev, remaining
            if block.prev is not None:
                block.prev.next = block
            remaining.prev = block
            remaining.addr += size
            remaining.size -= size
            pool.insert(remaining)
        block.allocated = True
        self.allocated += block.size
        return block

    def _fits(self, nbytes: int) -> bool:
        if self.allowed is not None and self.reserved + nbytes > self.allowed:
            return False
        return self.capacity is None or self.reserved + nbytes <= self.capacity

    def _alloc_block(self, pool: _Pool, size: int, alloc_size: int, retry: bool = False,
                     unlimited: bool = False) -> _Block | None:
        """``alloc_block``: a new cudaMalloc segment, or pages mapped into an expandable segment."""
        if retry:
            self.stats.alloc_retries += 1
        if self.config.expandable_segments:
            return self._try_allocate_expandable_block(pool, size, unlimited)
        if not unlimited and not self._fits(alloc_size):
            return None
        block = _Block(self._new_address(alloc_size), alloc_size, pool.small)
        self.reserved += alloc_size
        self.stats.cuda_malloc_calls += 1
        return block

    def _new_address(self, nbytes: int) -> int:
        addr = self._next_addr
        self._next_addr += -(-nbytes // K_ROUND_LARGE) * K_ROUND_LARGE
        return addr

    def _oom(self, size: int, event_index: int) -> None:
        s = self.stats
        s.failed_requests += 1
        s.largest_failed_request = max(s.largest_failed_request, size)
        if s.first_oom is None:
            s.first_oom = OomInfo(size, event_index, self.phase, self.allocated, self.reserved)

    def _observe(self) -> None:
        s = self.stats
        if self.allocated > s.max_allocated:
            s.max_allocated, s.reserved_at_peak, s.peak_phase = self.allocated, self.reserved, self.phase
            s.largest_free_block_at_peak = max(self.small.largest(), self.large.largest())
        if self.reserved > s.max_reserved:
            s.max_reserved, s.reserved_peak_phase = self.reserved, self.phase
        if self.reserved > s.phases.get(self.phase, 0):
            s.phases[self.phase] = self.reserved

    # --- merging and releasing -------------------------------------------------------------------
    @staticmethod
    def _try_merge(dst: _Block, src: _Block | None, pool: _Pool) -> int:
        """``try_merge_blocks``: absorb a free neighbour ``src`` (same mapped state) into ``dst``."""
        if src is None or src.allocated or src.mapped != dst.mapped:
            return 0
        if src.mapped:
            pool.remove(src)
        else:
            del pool.unmapped[src.addr]
        if dst.prev is src:
            dst.addr, dst.prev = src.addr, src.prev
            if dst.prev is not None:
                dst.prev.next = dst
        else:
            dst.next = src.next
            if dst.next is not None:
                dst.next.prev = dst
        dst.size += src.size
        return src.size

    def _release_block(self, block: _Block, pool: _Pool) -> None:
        """``release_block``: cudaFree a cached whole segment."""
        pool.remove(block)
        self.reserved -= block.size
        self.stats.cuda_free_calls += 1

    def _release_available_cached_blocks(self, pool: _Pool, size: int) -> bool:
        if self.config.max_split_size is None or self.config.expandable_segments:
            return False
        key = max(size, self._max_split)
        i = bisect_left(pool.keys, (key, -1))
        if i < len(pool.keys):
            self._release_block(pool.blocks[pool.keys[i][1]], pool)
            return True
        released = 0
        while released < key and pool.keys and pool.keys[-1][0] >= self._max_split:
            b = pool.blocks[pool.keys[-1][1]]
            released += b.size
            self._release_block(b, pool)
        return released >= key

    def _release_cached_blocks(self) -> bool:
        for pool in (self.large, self.small):
            to_unmap = []
            for _, addr in list(pool.keys):
                b = pool.blocks[addr]
                if b.seg is not None:
                    to_unmap.append(b)
                elif not b.is_split():
                    self._release_block(b, pool)
            for b in to_unmap:
                self._unmap_block(b, pool)
                if not b.is_split() and not b.mapped:
                    del pool.unmapped[b.addr]  # release_expandable_segment
        return True

    def _garbage_collect(self) -> None:
        """``garbage_collect_cached_blocks``: free old unsplit large blocks down to the threshold."""
        assert self.allowed is not None
        threshold = int(self.config.garbage_collection_threshold * self.allowed)
        if self.reserved <= threshold:
            return
        target, reclaimed = self.reserved - threshold, 0
        pool = self.large

        def freeable() -> list[_Block]:
            return [pool.blocks[a] for _, a in pool.keys if not pool.blocks[a].is_split()]

        candidates = freeable()
        total_age = sum(pool.gc_calls - b.gc_base for b in candidates)
        count = len(candidates)
        freed = True
        while reclaimed < target and freed and count > 0:
            average = total_age / count
            freed = False
            for b in freeable():
                age = pool.gc_calls - b.gc_base
                if age >= average:
                    freed = True
                    reclaimed += b.size
                    total_age -= age
                    count -= 1
                    self._release_block(b, pool)

    # --- expandable segments ---------------------------------------------------------------------
    def _try_allocate_expandable_block(self, pool: _Pool, size: int, unlimited: bool) -> _Block | None:
        candidate = self._find_expandable_block(pool, size)
        if not candidate.mapped and not self._map_block(candidate, min(candidate.size, size), pool, unlimited):
            return None
        while candidate.size < size:
            nxt = candidate.next
            assert nxt is not None
            if not self._map_block(nxt, min(size - candidate.size, nxt.size), pool, unlimited):
                return None
            candidate = nxt
        pool.remove(candidate)
        return candidate

    def _find_expandable_block(self, pool: _Pool, size: int) -> _Block:
        def has_space(b: _Block | None) -> bool:
            total = 0
            while total < size and b is not None and not b.allocated:
                total += b.size
                b = b.next
            return total >= size

        for addr in sorted(pool.unmapped):
            c = pool.unmapped[addr]
            if c.prev is not None and not c.prev.allocated:
                c = c.prev
            if has_space(c):
                return c
        page = K_SMALL_BUFFER if pool.small else K_LARGE_BUFFER
        space = UNBOUNDED_ADDRESS_SPACE if self.capacity is None else self.capacity + self.capacity // 8
        space = -(-space // page) * page
        seg = _Segment(self._new_address(space), page, space)
        block = _Block(seg.base, space, pool.small, seg, mapped=False)
        pool.unmapped[block.addr] = block
        return block

    def _map_block(self, block: _Block, size: int, pool: _Pool, unlimited: bool) -> bool:
        """``map_block``: back the first ``size`` bytes of an unmapped block with whole pages."""
        seg = block.seg
        assert seg is not None and (block.addr - seg.base) % seg.page == 0
        mapped = -(-size // seg.page) * seg.page
        if not unlimited and not self._fits(mapped):
            return False
        del pool.unmapped[block.addr]
        block.mapped = True
        if mapped < block.size:
            rest = _Block(block.addr + mapped, block.size - mapped, block.small, seg, mapped=False)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            pool.unmapped[rest.addr] = rest
            block.size = mapped
        self._try_merge(block, block.prev, pool)
        self._try_merge(block, block.next, pool)
        pool.insert(block)
        self.reserved += mapped
        self.stats.cuda_malloc_calls += 1
        return True

    def _unmap_block(self, block: _Block, pool: _Pool) -> None:
        """``unmap_block``: return the whole pages inside a free block; the partial pages stay as free blocks."""
        seg = block.seg
        assert seg is not None
        begin = seg.base + -(-(block.addr - seg.base) // seg.page) * seg.page
        end = seg.base + (block.addr + block.size - seg.base) // seg.page * seg.page
        if begin >= end:
            return
        pool.remove(block)
        if begin > block.addr:
            before = _Block(block.addr, begin - block.addr, block.small, seg)
            before.prev, before.next = block.prev, block
            if block.prev is not None:
                block.prev.next = before
            block.prev = before
            pool.insert(before)
        if block.addr + block.size > end:
            after = _Block(end, block.addr + block.size - end, block.small, seg)
            after.prev, after.next = block, block.next
            if block.next is not None:
                block.next.prev = after
            block.next = after
            pool.insert(after)
        block.addr, block.size, block.mapped = begin, end - begin, False
        self._try_merge(block, block.prev, pool)
        self._try_merge(block, block.next, pool)
        pool.unmapped[block.addr] = block
        self.reserved -= end - begin
        self.stats.cuda_free_calls += 1


def replay(events: Iterable[tuple[int, int]], config: AllocatorConfig | None = None, capacity: int | None = None,
           marks: Mapping[int, str] | None = None, reset_peak_at: int | None = None,
           memory_fraction: float | None = None) -> AllocatorStats:
    """Replay ``(id, nbytes)`` allocations and ``(id, FREE)`` frees in order through the allocator.

    ``marks`` names the phase that starts at an event index (e.g. ``{0: "setup", 1200: "forward"}``);
    ``reset_peak_at`` is the index where ``torch.cuda.reset_peak_memory_stats()`` runs. Zero-byte
    requests allocate nothing (torch returns a null pointer for them). Returns the final statistics.
    """
    alloc = CachingAllocator(config, capacity, memory_fraction)
    live: dict[int, _Block] = {}
    marks = marks or {}
    for i, (ident, nbytes) in enumerate(events):
        if i in marks:
            alloc.set_phase(marks[i])
        if i == reset_peak_at:
            alloc.reset_peak()
        if nbytes == FREE:
            block = live.pop(ident, None)
            if block is not None:
                alloc.free(block)
        elif nbytes > 0:
            if ident in live:
                raise ValueError(f"event {i}: id {ident} is allocated twice without a free")
            live[ident] = alloc.malloc(nbytes, i)
    alloc.stats.reserved_end = alloc.reserved
    return alloc.stats
