"""The sizes torch's CUDA caching allocator rounds a request to and the segment sizes it asks cudaMalloc for.

``c10/cuda/CUDACachingAllocator.cpp`` (torch 2.13): the constants (``kMinBlockSize``, ``kSmallSize``,
``kSmallBuffer``, ``kMinLargeAlloc``, ``kRoundLarge``; ``kLargeBuffer`` is in :mod:`app.core.alloc_conf`),
``round_size``, ``roundup_power2_next_division`` and ``get_allocation_size``. Sizes are integer bytes.
"""

from __future__ import annotations

from app.core.alloc_conf import K_LARGE_BUFFER, AllocatorConfig
from app.core.units import MiB

K_MIN_BLOCK_SIZE = 512  # kMinBlockSize: every size is rounded to at least 512 bytes
K_SMALL_SIZE = 1 * MiB  # kSmallSize: the largest "small" request
K_SMALL_BUFFER = 2 * MiB  # kSmallBuffer: small requests are packed into 2 MiB segments
K_MIN_LARGE_ALLOC = 10 * MiB  # kMinLargeAlloc: requests of 1–10 MiB use a kLargeBuffer segment
K_ROUND_LARGE = 2 * MiB  # kRoundLarge: larger segments are rounded up to 2 MiB


def round_size(size: int, config: AllocatorConfig) -> int:
    """``round_size``: the block size torch hands out for a request of ``size`` bytes."""
    if size < K_MIN_BLOCK_SIZE:
        return K_MIN_BLOCK_SIZE
    divisions = config.divisions_for(size)
    if divisions > 1 and size > K_MIN_BLOCK_SIZE * divisions:
        return _roundup_power2_next_division(size, divisions)
    return -(-size // K_MIN_BLOCK_SIZE) * K_MIN_BLOCK_SIZE


def _roundup_power2_next_division(size: int, divisions: int) -> int:
    """``roundup_power2_next_division``: e.g. 1200 with 4 divisions → 1280 (of 1024, 1280, 1536, 1792)."""
    if size & (size - 1) == 0:
        return size
    floor = 1 << (size.bit_length() - 1)
    step = floor >> (divisions.bit_length() - 1)
    if step == 0:
        return floor << 1
    rounded = size & ~(step - 1)
    return size if rounded == size else rounded + step


def allocation_size(size: int) -> int:
    """``get_allocation_size``: the cudaMalloc size when no cached block fits a rounded request."""
    if size <= K_SMALL_SIZE:
        return K_SMALL_BUFFER
    if size < K_MIN_LARGE_ALLOC:
        return K_LARGE_BUFFER
    return -(-size // K_ROUND_LARGE) * K_ROUND_LARGE
