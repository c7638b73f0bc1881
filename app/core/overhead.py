"""Memory beside the step's tensors: CUDA context, NCCL buffers and cuBLAS workspaces (bytes).

Model (constants to be fitted from calibrations, see the calibration issue):
- CUDA context + kernel images: ``CUDA_CONTEXT_BYTES`` per GPU (torch 2.x with lazy module loading:
  typically 300–600 MiB; visible to ``nvidia-smi``/``mem_get_info`` only).
- cuBLAS workspaces are allocated through the caching allocator (``CublasHandlePool.cpp``), so they are
  part of ``peak``: 32 MiB per handle on sm90 (Hopper), 4 MiB·2 + 16 KiB·8 elsewhere; one handle for the
  forward thread and one for autograd's backward thread.
- Allocator reserve (``max_memory_reserved − max_memory_allocated``): not here; fitted rules on simulated
  traces of the caching allocator (:mod:`app.core.reserved`, :mod:`app.core.allocator`).
- Multi-GPU: NCCL communicator buffers (``NCCL_BUFFSIZE`` 4 MiB per channel and peer, plus its
  internal allocations) live outside the allocator: ``NCCL_BYTES`` per GPU when ``num_gpus > 1``.

The constants are starting values checked against ``shared/data/published_peak_memory.csv``
(``bench/published_check.py``: the 70B multi-GPU nvidia-smi rows came out 20–25% above our total
without NCCL);
the calibration issue fits them per GPU from measurements.
"""

from __future__ import annotations

from app.core.units import KiB, MiB

CUDA_CONTEXT_BYTES = 512 * MiB
NCCL_BYTES = 1024 * MiB


def cublas_workspace_bytes(arch: str) -> int:
    """Two cuBLAS workspaces (forward and backward threads) in torch's allocator."""
    per_handle = 32 * MiB if arch in ("hopper", "blackwell") else 4096 * KiB * 2 + 16 * KiB * 8
    return 2 * per_handle


def outside_allocator_bytes(num_gpus: int = 1) -> int:
    """Device memory outside torch's caching allocator: the CUDA context, plus NCCL when ``num_gpus > 1``."""
    return CUDA_CONTEXT_BYTES + (NCCL_BYTES if num_gpus > 1 else 0)
