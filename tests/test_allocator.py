"""The allocator simulator against hand-worked sequences of torch's documented caching-allocator behaviour.

Every expected number is worked out by hand in a comment from the rules in
``c10/cuda/CUDACachingAllocator.cpp`` (its header comment, ``round_size``, ``get_allocation_size``,
``get_free_block``, ``should_split``, ``release_available_cached_blocks``, ``release_cached_blocks``,
``garbage_collect_cached_blocks``, Note [Expandable Segments]) and the PyTorch notes on
``PYTORCH_CUDA_ALLOC_CONF`` (docs/source/notes/cuda.rst).
"""

from __future__ import annotations

import random

import pytest

from app.core.alloc_conf import AllocConfError, parse_alloc_conf
from app.core.alloc_sizes import round_size
from app.core.alloc_snapshot import SnapshotError, load_snapshot
from app.core.allocator import FREE, CachingAllocator, replay
from app.core.units import GiB, KiB, MiB

DEFAULT = parse_alloc_conf(None)
EXPANDABLE = parse_alloc_conf("expandable_segments:True")


def test_round_size() -> None:
    # every block is at least 512 B and a multiple of 512 B (kMinBlockSize)
    assert round_size(1, DEFAULT) == 512
    assert round_size(513, DEFAULT) == 1024
    assert round_size(MiB, DEFAULT) == MiB
    # the notes' example: with 4 divisions, 1200 MB lies between 1024 and 2048 MB whose quarters are
    # 1024, 1280, 1536, 1792: it is rounded up to 1280 MB
    assert round_size(1200 * MiB, parse_alloc_conf("roundup_power2_divisions:4")) == 1280 * MiB
    # per-interval divisions: sizes in [256 MiB, 512 MiB) use 1 division (plain 512 B rounding) and
    # sizes ≥ 512 MiB use 2 (halves): 300 MiB + 1 B → 300 MiB + 512 B; 600 MiB → 768 MiB (512 + 256)
    conf = parse_alloc_conf("roundup_power2_divisions:[256:1,512:2]")
    assert round_size(300 * MiB + 1, conf) == 300 * MiB + 512
    assert round_size(600 * MiB, conf) == 768 * MiB


def test_small_requests_share_a_2_mib_segment() -> None:
    # ≤ 1 MiB requests come from the small pool's 2 MiB segments (kSmallBuffer), split to 512 B:
    # 3 × 600 KiB = 1800 KiB fit in one segment: one cudaMalloc, 2 MiB reserved
    s = replay([(i, 600 * KiB) for i in range(3)])
    assert (s.max_reserved, s.cuda_malloc_calls, s.max_allocated) == (2 * MiB, 1, 1800 * KiB)
    # 3 × 700 KiB: two fit (1400 KiB), the 648 KiB left cannot take the third: a second 2 MiB segment
    s = replay([(i, 700 * KiB) for i in range(3)])
    assert (s.max_reserved, s.cuda_malloc_calls) == (4 * MiB, 2)


def test_medium_requests_carve_a_20_mib_segment() -> None:
    # 1–10 MiB requests allocate a 20 MiB segment (kLargeBuffer) and split it (remaining 15 MiB > 1 MiB);
    # a second 5 MiB request is served from the 15 MiB remainder: still one cudaMalloc of 20 MiB
    s = replay([(1, 5 * MiB), (2, 5 * MiB)])
    assert (s.max_reserved, s.cuda_malloc_calls, s.max_allocated) == (20 * MiB, 1, 10 * MiB)


def test_large_requests_round_to_2_mib() -> None:
    # ≥ 10 MiB: the segment is the request rounded up to 2 MiB (kRoundLarge): 12 MiB → 12 MiB,
    # 13 MiB → 14 MiB; 12 MiB + 1 B → 512 B block rounding, then a 14 MiB segment
    assert replay([(1, 12 * MiB)]).max_reserved == 12 * MiB
    assert replay([(1, 13 * MiB)]).max_reserved == 14 * MiB
    s = replay([(1, 12 * MiB + 1)])
    assert (s.max_reserved, s.max_allocated) == (14 * MiB, 12 * MiB + 512)


def test_large_pool_keeps_a_remainder_of_at_most_1_mib() -> None:
    # a freed 12 MiB block serves an 11.5 MiB request; the 0.5 MiB left is not > kSmallSize, so the block
    # is not split and the whole 12 MiB counts as allocated (allocated_bytes adds block->size)
    s = replay([(1, 12 * MiB), (1, FREE), (2, 11 * MiB + 512 * KiB)])
    assert (s.max_reserved, s.cuda_malloc_calls, s.max_allocated) == (12 * MiB, 1, 12 * MiB)


def test_freed_neighbours_merge() -> None:
    # A and B split one 20 MiB segment (A | B | 10 MiB free); freeing both merges the segment back into
    # one 20 MiB block, which an 18 MiB request can use (split: 2 MiB left > 1 MiB): no second cudaMalloc
    s = replay([(1, 5 * MiB), (2, 5 * MiB), (1, FREE), (2, FREE), (3, 18 * MiB)])
    assert (s.max_reserved, s.cuda_malloc_calls) == (20 * MiB, 1)
    # with B still live, A's 5 MiB and the 10 MiB tail are not adjacent: 18 MiB needs a new 18 MiB segment
    s = replay([(1, 5 * MiB), (2, 5 * MiB), (1, FREE), (3, 18 * MiB)])
    assert (s.max_reserved, s.cuda_malloc_calls) == (38 * MiB, 2)


def test_max_split_size() -> None:
    events = [(1, 40 * MiB), (1, FREE), (2, 30 * MiB)]
    # default: the cached 40 MiB block serves 30 MiB (split, 10 MiB left): 40 MiB reserved
    assert replay(events).max_reserved == 40 * MiB
    # max_split_size_mb:32: a request below 32 MiB never takes a block ≥ 32 MiB: new 30 MiB segment
    conf = parse_alloc_conf("max_split_size_mb:32")
    s = replay(events, conf)
    assert (s.max_reserved, s.cuda_malloc_calls) == (70 * MiB, 2)
    # a request ≥ max_split_size takes an oversize block within 20 MiB (max_non_split_rounding) of its
    # size, unsplit: 35 MiB from the cached 40 MiB block, allocated counts all 40 MiB
    s = replay([(1, 40 * MiB), (1, FREE), (2, 35 * MiB)], conf)
    assert (s.max_reserved, s.max_allocated) == (40 * MiB, 40 * MiB)
    # …but not beyond it: 64 MiB cached, 40 MiB + 20 MiB ≤ 64 MiB → a new 40 MiB segment
    s = replay([(1, 64 * MiB), (1, FREE), (2, 40 * MiB)], conf)
    assert s.max_reserved == 104 * MiB


def test_release_and_retry_on_a_full_device() -> None:
    cap = 64 * MiB
    # default: cached 40 MiB cannot serve 50 MiB; cudaMalloc(50 MiB) fails (40 + 50 > 64); no
    # max_split_size, so release_cached_blocks frees the unsplit 40 MiB segment and the retry succeeds
    s = replay([(1, 40 * MiB), (1, FREE), (2, 50 * MiB)], capacity=cap)
    assert (s.max_reserved, s.reserved_end, s.cuda_free_calls, s.alloc_retries) == (50 * MiB, 50 * MiB, 1, 1)
    assert s.failed_requests == 0
    # max_split_size_mb:32: release_available_cached_blocks frees the smallest oversize block ≥ 32 MiB
    # (the 40 MiB one) before the retry path: 30 MiB then fits, no retry counted
    s = replay([(1, 40 * MiB), (1, FREE), (2, 30 * MiB)], parse_alloc_conf("max_split_size_mb:32"), capacity=cap)
    assert (s.max_reserved, s.reserved_end, s.cuda_free_calls, s.alloc_retries) == (40 * MiB, 30 * MiB, 1, 0)


def test_out_of_memory_reports_the_failing_requests() -> None:
    # 40 MiB live + 30 MiB > 64 MiB and nothing is cached: an OOM on the second request (event 1); the
    # replay goes on past it, so the 34 MiB request (event 3) fails too and is the largest failure
    s = replay([(1, 40 * MiB), (2, 30 * MiB), (2, FREE), (3, 34 * MiB)], capacity=64 * MiB)
    assert s.first_oom is not None
    assert (s.first_oom.request_bytes, s.first_oom.event_index, s.first_oom.reserved_bytes) == (30 * MiB, 1, 40 * MiB)
    assert (s.failed_requests, s.largest_failed_request) == (2, 34 * MiB)


def test_expandable_segments_grow_instead_of_new_segments() -> None:
    # 30 MiB, freed, then 32 MiB: by default the 30 MiB segment cannot serve 32 MiB: 30 + 32 = 62 MiB
    events = [(1, 30 * MiB), (1, FREE), (2, 32 * MiB)]
    assert replay(events).max_reserved == 62 * MiB
    # expandable: 30 MiB maps two 20 MiB pages (40 MiB) of one segment; freed, the 40 MiB block serves 32 MiB
    s = replay(events, EXPANDABLE)
    assert (s.max_reserved, s.cuda_malloc_calls) == (40 * MiB, 1)
    # two live 30 MiB blocks: the first maps 40 MiB (10 MiB free after it); the second starts in those
    # 10 MiB and maps one more page right after: 60 MiB in one segment, two page maps, no remainder
    s = replay([(1, 30 * MiB), (2, 30 * MiB)], EXPANDABLE)
    assert (s.max_reserved, s.cuda_malloc_calls, s.max_allocated) == (60 * MiB, 2, 60 * MiB)


def test_expandable_segments_unmap_free_pages_on_a_full_device() -> None:
    # capacity 60 MiB, large-pool pages of 20 MiB. A = 30 MiB maps [0, 40): A = [0, 30), free [30, 40).
    # B = 5 MiB takes the best fit [30, 40), split: B = [30, 35), free [35, 40). Free A: [0, 30) free.
    # C = 45 MiB: no free block ≥ 45 MiB; the lowest candidate with room is [35, 40) + the unmapped rest
    # ([0, 30) is cut off by B): 40 MiB more pages → 80 MiB > 60: fails. release_cached_blocks unmaps the
    # whole pages inside free blocks: [0, 20) (reserved 20 MiB); [35, 40) holds no whole page. The retry
    # maps [40, 80): 20 + 40 = 60 MiB fits; C = [35, 80) exactly
    s = replay([(1, 30 * MiB), (2, 5 * MiB), (1, FREE), (3, 45 * MiB)], EXPANDABLE, capacity=60 * MiB)
    assert s.failed_requests == 0
    assert (s.max_reserved, s.reserved_end, s.cuda_free_calls, s.alloc_retries) == (60 * MiB, 60 * MiB, 1, 1)
    assert s.max_allocated == 5 * MiB + 45 * MiB


def test_garbage_collection_threshold() -> None:
    # GC runs only with a memory fraction set (set_per_process_memory_fraction): capacity 200 MiB,
    # fraction 1 → 200 MiB allowed, threshold 0.25 → GC above 50 MiB reserved.
    # 40 MiB (freed, cached after large-pool search #1), 50 MiB (search #2, miss: 40 ≤ 50 reserved → no GC,
    # new segment: 90 MiB), freed; 60 MiB (search #3, miss): 90 > 50, target 40 MiB; ages: the 40 MiB block
    # 3 − 1 = 2, the 50 MiB block 3 − 2 = 1, average 1.5: the 40 MiB block goes (reclaimed 40 ≥ 40);
    # then 60 MiB fits: 50 + 60 = 110 MiB; without GC 40 + 50 + 60 = 150 MiB
    events = [(1, 40 * MiB), (1, FREE), (2, 50 * MiB), (2, FREE), (3, 60 * MiB)]
    gc = replay(events, parse_alloc_conf("garbage_collection_threshold:0.25"), capacity=200 * MiB, memory_fraction=1.0)
    assert (gc.max_reserved, gc.cuda_free_calls) == (110 * MiB, 1)
    # the threshold alone does nothing without a memory fraction (the allocator's set_fraction guard)
    plain = replay(events, parse_alloc_conf("garbage_collection_threshold:0.25"), capacity=200 * MiB)
    assert plain.max_reserved == 150 * MiB


def test_phases_and_reset_peak() -> None:
    # setup: 12 MiB; forward (event 1): 30 MiB more; after reset_peak_at event 3 the peaks restart from
    # the 42 MiB reserved and 12 MiB allocated then (cached segments stay reserved), and 20 MiB more is
    # served from the cached 30 MiB segment (split, 10 MiB left): allocated peaks at 32 MiB in backward
    # with 42 MiB reserved, the largest free block the 10 MiB tail; the reserved peak restarts at the reset,
    # in the phase that starts there
    events = [(1, 12 * MiB), (2, 30 * MiB), (2, FREE), (3, 20 * MiB)]
    s = replay(events, marks={0: "setup", 1: "forward", 3: "backward"}, reset_peak_at=3)
    assert (s.max_reserved, s.max_allocated, s.peak_phase) == (42 * MiB, 32 * MiB, "backward")
    assert (s.reserved_at_peak, s.largest_free_block_at_peak, s.reserved_peak_phase) == (42 * MiB, 10 * MiB, "backward")
    assert round(s.fragmentation_at_peak, 6) == round(1 - 32 / 42, 6)


@pytest.mark.parametrize(("text", "message"), [
    ("max_split_size_mb:10", "too small, must be >= 20"),
    ("garbage_collection_threshold:1.5", "(0.0, 1.0)"),
    ("expandable_segments:yes", "True/False"),
    ("expandable_segment:True", "Unrecognized CachingAllocator option: 'expandable_segment'"),
    ("backend:cudaMallocAsync", "not modelled"),
    ("roundup_power2_divisions:3", "power of 2"),
    ("max_split_size_mb", "expected 'max_split_size_mb:<value>'"),
])
def test_bad_alloc_conf_is_refused(text: str, message: str) -> None:
    with pytest.raises(AllocConfError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_alloc_conf(text)


def test_alloc_conf_parses_as_torch() -> None:
    conf = parse_alloc_conf(" expandable_segments:True, max_split_size_mb:128,garbage_collection_threshold:0.6,"
                            "backend:native,release_lock_on_cudamalloc:False")
    assert (conf.expandable_segments, conf.max_split_size, conf.garbage_collection_threshold) == (True, 128 * MiB, 0.6)


def _hand_built_snapshot() -> dict:
    """A ``_snapshot()`` dict built by hand in torch's documented format (not recorded on a GPU): the
    trace a default-config allocator writes for: a = 5 MiB, b = 700 KiB, c = 12 MiB + 100 B, free a,
    d = 14 MiB, free b, free c, e = 3 MiB.
    Segment actions by the documented rules: a → segment_alloc 20 MiB (split, 15 MiB tail); b → segment_alloc
    2 MiB (small pool); c → 12 MiB + 512 B rounds to a 14 MiB segment (segment_alloc 14 MiB; split, as the
    2 MiB − 512 B left is > 1 MiB); free a merges with the 15 MiB tail: a free 20 MiB block; d = 14 MiB:
    best fit among the free large blocks {2 MiB − 512 B, 20 MiB} is the 20 MiB block (split, 6 MiB tail):
    no cudaMalloc; free c merges c's segment back to 14 MiB; e = 3 MiB: best fit among {6 MiB, 14 MiB} is
    the 6 MiB tail at a + 14 MiB. Reserved: 20, 22, 36 MiB: max_memory_reserved = 36 MiB."""
    base_a, base_b, base_c = 0x7F0000000000, 0x7F0002000000, 0x7F0004000000

    def entry(action: str, addr: int, size: int) -> dict:
        return {"action": action, "addr": addr, "size": size, "stream": 0, "frames": []}

    trace = [
        entry("segment_alloc", base_a, 20 * MiB), entry("alloc", base_a, 5 * MiB),
        entry("segment_alloc", base_b, 2 * MiB), entry("alloc", base_b, 700 * KiB),
        entry("segment_alloc", base_c, 14 * MiB), entry("alloc", base_c, 12 * MiB + 100),
        entry("free_requested", base_a, 5 * MiB), entry("free_completed", base_a, 5 * MiB),
        entry("alloc", base_a, 14 * MiB),
        entry("free_requested", base_b, 700 * KiB), entry("free_completed", base_b, 700 * KiB),
        entry("free_requested", base_c, 12 * MiB + 100), entry("free_completed", base_c, 12 * MiB + 100),
        entry("alloc", base_a + 14 * MiB, 3 * MiB),
    ]
    segments = [
        {"device": 0, "address": base_a, "total_size": 20 * MiB, "stream": 0, "segment_type": "large",
         "allocated_size": 17 * MiB, "active_size": 17 * MiB, "blocks": []},
        {"device": 0, "address": base_b, "total_size": 2 * MiB, "stream": 0, "segment_type": "small",
         "allocated_size": 0, "active_size": 0, "blocks": []},
        {"device": 0, "address": base_c, "total_size": 14 * MiB, "stream": 0, "segment_type": "large",
         "allocated_size": 0, "active_size": 0, "blocks": []},
    ]
    return {"segments": segments, "device_traces": [trace]}


def test_replay_of_a_snapshot_reproduces_its_reserved_bytes() -> None:
    rec = load_snapshot(_hand_built_snapshot())
    assert (rec.max_reserved, rec.reserved_end, rec.segments_total_size) == (36 * MiB, 36 * MiB, 36 * MiB)
    s = replay(rec.events)
    assert s.max_reserved == rec.max_reserved
    assert s.reserved_end == rec.segments_total_size
    assert s.cuda_malloc_calls == rec.segment_actions == 3
    # allocated at the end: d (14 MiB) + e (3 MiB), as the segments' allocated_size says
    assert s.max_allocated == 5 * MiB + 700 * KiB + 12 * MiB + 512 + 14 * MiB - 5 * MiB


def test_snapshot_that_does_not_start_empty_is_refused() -> None:
    snap = _hand_built_snapshot()
    snap["device_traces"][0] = snap["device_traces"][0][6:]  # starts at "free a": a was allocated before
    with pytest.raises(SnapshotError, match="did not start from an empty allocator"):
        load_snapshot(snap)
    with pytest.raises(SnapshotError, match="no device_traces"):
        load_snapshot({"segments": []})


def _check_invariants(alloc: CachingAllocator, live: dict[int, object]) -> None:
    """Segments are tiled by their blocks without gaps; free neighbours in the same mapped state are merged;
    the pools hold exactly the free mapped blocks; reserved = mapped bytes; allocated = live block bytes."""
    blocks = [*live.values()]
    for pool in (alloc.small, alloc.large):
        assert sorted(pool.keys) == pool.keys and len(pool.keys) == len(pool.blocks)
        blocks += [*pool.blocks.values(), *pool.unmapped.values()]
    heads = {id(b): b for b in blocks if b.prev is None}
    seen, mapped = 0, 0
    for head in heads.values():
        b = head
        while b is not None:
            seen += 1
            if b.next is not None:
                assert b.addr + b.size == b.next.addr and b.next.prev is b
                assert b.allocated or b.next.allocated or b.mapped != b.next.mapped, "unmerged free neighbours"
            pool = alloc.small if b.small else alloc.large
            if not b.allocated:
                assert (pool.blocks.get(b.addr) is b) == b.mapped and (pool.unmapped.get(b.addr) is b) != b.mapped
            mapped += b.size if b.mapped else 0
            b = b.next
    assert seen == len(blocks)
    assert mapped == alloc.reserved
    assert alloc.allocated == sum(b.size for b in live.values())


@pytest.mark.parametrize("conf", ["", "expandable_segments:True", "max_split_size_mb:64",
                                  "garbage_collection_threshold:0.5"])
def test_random_sequences_keep_the_allocator_consistent(conf: str) -> None:
    """Random requests from 1 B to 96 MiB on a 1 GiB device (so releases, retries and OOMs happen)."""
    rng = random.Random(7)
    alloc = CachingAllocator(parse_alloc_conf(conf), capacity=GiB, memory_fraction=0.9 if "garbage" in conf else None)
    live: dict[int, object] = {}
    for i in range(2000):
        if live and rng.random() < 0.45:
            alloc.free(live.pop(rng.choice(list(live))))
        else:
            size = rng.choice([rng.randint(1, 4096), rng.randint(1, MiB), rng.randint(MiB, 12 * MiB),
                               rng.randint(12 * MiB, 96 * MiB)])
            live[i] = alloc.malloc(size, i)
        _check_invariants(alloc, live)
    assert alloc.stats.cuda_free_calls > 0  # the device filled up: cached memory was released
