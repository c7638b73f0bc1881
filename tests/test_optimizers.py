"""Optimizer state bytes equal what the real optimizers allocate after a step (CPU)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import bitsandbytes as bnb
import pytest
import torch
from transformers.optimization import Adafactor

from app.core.optimizers import fixed_state_bytes, state_bytes

SHAPES = [(4095,), (4096,), (64, 64), (1000, 300), (512, 256), (8, 2048), (3, 40, 50)]

# HF TrainingArguments.optim → the optimizer Trainer.create_optimizer builds (transformers 5.24).
OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]] = {
    "adamw_torch": lambda ps: torch.optim.AdamW(ps, lr=1e-3),
    "adamw_torch_fused": lambda ps: torch.optim.AdamW(ps, lr=1e-3, fused=True),
    "adamw_bnb_8bit": lambda ps: bnb.optim.AdamW(ps, lr=1e-3, optim_bits=8),
    "paged_adamw_8bit": lambda ps: bnb.optim.AdamW(ps, lr=1e-3, optim_bits=8, is_paged=True),
    "paged_adamw_32bit": lambda ps: bnb.optim.AdamW(ps, lr=1e-3, optim_bits=32, is_paged=True),
    "adafactor": lambda ps: Adafactor(ps, lr=1e-3, scale_parameter=False, relative_step=False),
    "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-3),
    "lion_32bit": lambda ps: bnb.optim.Lion(ps, lr=1e-4, optim_bits=32),
    "lion_8bit": lambda ps: bnb.optim.Lion(ps, lr=1e-4, optim_bits=8),
}


def _real_state_bytes(optim: str, dtype: torch.dtype, momentum: float = 0.0) -> int:
    params = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in SHAPES]
    opt = (torch.optim.SGD(params, lr=1e-3, momentum=momentum) if momentum else OPTIMIZERS[optim](params))
    for p in params:
        p.grad = torch.randn_like(p)
    with warnings.catch_warnings():
        # bitsandbytes: "Paged optimizers are not supported on CPU" (paging needs CUDA unified memory)
        warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")
        opt.step()
    seen: dict[int, int] = {}
    for p in params:
        for key, value in opt.state[p].items():
            # Non-fused, non-capturable AdamW keeps `step` as a host tensor (torch.tensor(0.0)) even for CUDA
            # parameters (torch/optim/adamw.py), so it is not device memory.
            if optim == "adamw_torch" and key == "step":
                continue
            if torch.is_tensor(value):
                seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
    return sum(seen.values())


@pytest.mark.parametrize("optim", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_bytes_match_real_optimizer(optim: str, dtype: torch.dtype) -> None:
    itemsize = torch.empty((), dtype=dtype).element_size()
    per = [state_bytes(optim, s, itemsize) for s in SHAPES]
    total = sum(b.device + b.paged for b in per) + fixed_state_bytes(optim)
    assert total == _real_state_bytes(optim, dtype)


def test_sgd_momentum_keeps_a_buffer() -> None:
    per = [state_bytes("sgd", s, 2, momentum=0.9) for s in SHAPES]
    assert sum(b.device for b in per) == _real_state_bytes("sgd", torch.bfloat16, momentum=0.9)


def test_paged_split() -> None:
    """On CUDA, states of tensors with ≥1e5 elements go to unified memory (bitsandbytes get_state_buffer)."""
    small, big = state_bytes("paged_adamw_8bit", (300, 300), 2), state_bytes("paged_adamw_8bit", (1000, 300), 2)
    assert small.paged == 0 and small.device == 2 * (90_000 + 4 * 352)
    assert big.paged == 2 * 300_000 and big.device == 2 * 4 * 1172
