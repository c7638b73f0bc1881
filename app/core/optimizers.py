"""Optimizer state bytes, as each optimizer allocates them (per trainable tensor).

Sources:
- torch ``optim/adamw.py`` (2.13): ``exp_avg``/``exp_avg_sq`` = ``zeros_like(p)`` (parameter dtype);
  ``step`` is a CPU scalar except for ``fused=True`` (a float32 device scalar per parameter). The foreach
  step (``_multi_tensor_adamw``), which CUDA tensors get when neither foreach nor fused is set, allocates
  ``exp_avg_sq_sqrt = _foreach_sqrt(exp_avg_sqs)``: one full copy of a group's second moments.
- bitsandbytes 0.50.2 ``optim/optimizer.py``: ``Optimizer2State``/``Optimizer1State.init_state``: states
  of tensors with fewer than ``min_8bit_size`` (4,096) elements, and all states of 32-bit optimizers,
  are float32; 8-bit states are uint8 with float32 ``absmax`` per 256-element block, plus the shared
  256-entry float32 quantization maps. Paged optimizers put states of tensors with ≥1e5 elements in
  CUDA unified memory (``F.get_paged``), outside torch's allocator.
- transformers ``optimization.py: Adafactor``: factored float32 row/column second moments for
  tensors with ≥2 dims, a full float32 one for 1-D tensors (``beta1=None``: no first moment), and a
  0-dim float32 ``RMS`` per tensor.
- HF ``Trainer.create_optimizer``: bitsandbytes 8-bit optimizers keep ``nn.Embedding`` weights in
  32-bit state (``GlobalOptimManager.register_module_override``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import prod

from app.core.units import ceil_div

BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCKSIZE = 256
BNB_PAGED_MIN_NUMEL = 100_000
BNB_QMAP_BYTES = 256 * 4

TORCH_ADAM = ("adamw_torch", "adamw_torch_fused")
BNB_8BIT = ("adamw_bnb_8bit", "paged_adamw_8bit", "lion_8bit")
PAGED = ("paged_adamw_8bit", "paged_adamw_32bit")


@dataclass(frozen=True)
class StateBytes:
    """Optimizer state of one tensor: ``device`` bytes in torch's allocator, ``paged`` in unified memory."""

    device: int
    paged: int = 0


def _bnb_state(numel: int, n_states: int, eight_bit: bool, paged: bool) -> StateBytes:
    if not eight_bit or numel < BNB_MIN_8BIT_SIZE:
        per_state, absmax = 4 * numel, 0
    else:
        per_state, absmax = numel, 4 * ceil_div(numel, BNB_BLOCKSIZE)
    if paged and numel >= BNB_PAGED_MIN_NUMEL:
        return StateBytes(device=n_states * absmax, paged=n_states * per_state)
    return StateBytes(device=n_states * (per_state + absmax))


@lru_cache(maxsize=8192)
def state_bytes(
    optim: str, shape: tuple[int, ...], itemsize: int, *, momentum: float = 0.0, force_32bit: bool = False
) -> StateBytes:
    """State bytes ``optim`` keeps for one trainable tensor of ``shape`` whose dtype has ``itemsize`` bytes."""
    numel = prod(shape)
    if optim == "adamw_torch":
        return StateBytes(2 * numel * itemsize)
    if optim == "adamw_torch_fused":
        return StateBytes(2 * numel * itemsize + 4)
    if optim in ("adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
        eight_bit = optim != "paged_adamw_32bit" and not force_32bit
        return _bnb_state(numel, 2, eight_bit, optim in PAGED)
    if optim in ("lion_32bit", "lion_8bit"):
        return _bnb_state(numel, 1, optim == "lion_8bit" and not force_32bit, False)
    if optim == "adafactor":
        rms = 4  # state["RMS"] is a 0-dim float32 tensor
        if len(shape) >= 2:
            rows = prod(shape[:-1])
            cols = prod(shape[:-2]) * shape[-1]
            return StateBytes(4 * (rows + cols) + rms)
        return StateBytes(4 * numel + rms)
    if optim == "sgd":
        return StateBytes(numel * itemsize if momentum > 0 else 0)
    raise ValueError(f"unknown optim {optim!r}")


def fixed_state_bytes(optim: str) -> int:
    """Per-optimizer bytes shared by all tensors: bitsandbytes' 8-bit quantization maps."""
    if optim in ("adamw_bnb_8bit", "paged_adamw_8bit"):
        return 2 * BNB_QMAP_BYTES
    if optim == "lion_8bit":
        return BNB_QMAP_BYTES
    return 0


FOREACH_ADAMW_INTERMEDIATES = {"2.13": 1, "2.0": 2}
"""Full-size intermediates of torch's foreach AdamW step (``_multi_tensor_adamw``), per dtype group: torch ≤ 2.0 made
``exp_avg_sq_sqrt = _foreach_sqrt(exp_avg_sqs)`` and then ``denom = _foreach_add(exp_avg_sq_sqrt, eps)`` (both alive
at ``_foreach_addcdiv_``); pytorch/pytorch#104898 (July 2023, torch 2.1) adds eps in place, leaving one."""


def step_transient_bytes(optim: str, groups: list[list[tuple[tuple[int, ...], int]]],
                         torch_version: str = "2.13") -> int:
    """Extra bytes alive during ``optimizer.step()`` beyond the resident states.

    ``groups`` are the optimizer's parameter groups, each a list of (shape, itemsize). For
    ``adamw_torch`` (foreach) the temporary is one second-moment copy of the largest group
    (tensors of one dtype are batched together), two under torch ≤ 2.0 (:data:`FOREACH_ADAMW_INTERMEDIATES`).
    Adafactor works one tensor at a time with a float32 gradient copy, a float32 update and, for 16-bit tensors, a
    float32 parameter copy.
    """
    if optim == "adamw_torch":
        best = 0
        for group in groups:
            by_dtype: dict[int, int] = {}
            for shape, itemsize in group:
                by_dtype[itemsize] = by_dtype.get(itemsize, 0) + prod(shape) * itemsize
            best = max(best, *by_dtype.values(), 0)
        return best * FOREACH_ADAMW_INTERMEDIATES[torch_version]
    if optim == "adafactor":
        return max((prod(s) * (12 if size < 4 else 8) for g in groups for s, size in g), default=0)
    return 0
