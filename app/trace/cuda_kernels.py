"""Stand-ins for CUDA kernels whose CPU versions allocate differently.

- Attention: CPU SDPA/eager kernels materialise the s×s score matrix that GPU kernels never keep. The
  stand-in allocates and saves what FlashAttention-2 does (``flash_attn/flash_api.cpp``: ``mha_fwd`` /
  ``mha_bwd``): the output and an fp32 ``softmax_lse`` (b, heads, s) saved for backward; in backward
  the gradients, an fp32 ``dq_accum`` (b, s rounded to 128, heads, head_dim rounded to 32), an fp32
  ``softmax_d`` (b, heads, s rounded to 128), and expanded dK/dV (b, s, heads, head_dim) under GQA.
  ``sdpa`` on CUDA picks the flash backend for fp16/bf16 and the memory-efficient one for fp32 (its
  logsumexp is (b, heads, s rounded up to 32)); eager attention runs unchanged.
- Dropout: CUDA uses ``native_dropout`` with a bool mask (1 B/element); CPU's composite dropout keeps a
  mask in the input dtype. The stand-in calls ``torch.native_dropout``, as CUDA does.
- bitsandbytes ``gemm_4bit``: for more than 1,536 rows (or K not a multiple of the blocksize) the CUDA
  backend dequantises the weight to the input dtype (N·K) plus, with double quantization, an fp32
  absmax (4·ceil(N·K/blocksize)) before ``F.linear`` (``backends/cuda/ops.py: _dequant_linear_fallback``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

FLASH = "planner_fa2_attention"  # no "flash" in the name: transformers would import flash_attn
SDPA = "planner_scaled_dot_product"  # nor "sdpa": transformers would check the model's sdpa support
GEMM_4BIT_FUSED_MAX_ROWS = 1536


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lse_round: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        # q, k: (b, heads, s, d); v: (b, kv_heads, s, dv) (dv < d for multi-head latent attention). Output in
        # flash layout (b, s, heads, dv). ``bias``: the memory-efficient kernel's attn_bias (an additive mask),
        # which its backward reads, so it is saved (derivatives.yaml _scaled_dot_product_efficient_attention)
        b, h, s, _d = q.shape
        out = torch.empty((b, s, h, v.shape[-1]), dtype=q.dtype, device=q.device)
        lse = torch.empty((b, h, _round_up(s, lse_round)), dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse, *([] if bias is None else [bias]))
        ctx.lse_round = lse_round
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        q, k, v, _out, _lse, *_bias = ctx.saved_tensors
        b, h, s, d = q.shape
        dq = torch.empty_like(q)
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        scratch = [
            torch.empty((b, _round_up(s, 128), h, _round_up(d, 32)), dtype=torch.float32, device=q.device),
            torch.empty((b, h, _round_up(s, 128)), dtype=torch.float32, device=q.device),
        ]
        if k.shape[1] != h:
            scratch += [torch.empty((b, s, h, d), dtype=q.dtype, device=q.device) for _ in range(2)]
        del scratch
        return dq, dk, dv, None, None


def _flash_attention_2(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' flash_attention_2 path: fp32 inputs (fp32 norms under QLoRA) are cast to the autocast
    dtype first (``integrations/flash_attention.py: get_target_dtype``); GQA is native."""
    if query.dtype == torch.float32:
        target = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.bfloat16
        query, key, value = query.to(target), key.to(target), value.to(target)
    return _FlashAttention.apply(query, key, value, 1), None


def _sdpa_on_cuda(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``F.scaled_dot_product_attention`` on CUDA without a mask: the flash backend for fp16/bf16; for fp32
    the memory-efficient backend (logsumexp rounded up to 32 rows; K/V expanded to all heads)."""
    if query.dtype in (torch.float16, torch.bfloat16):
        return _FlashAttention.apply(query, key, value, 1), None
    if key.shape[1] != query.shape[1]:
        n_rep = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    return _FlashAttention.apply(query, key, value, 32), None


def register_attention() -> None:
    """Register the stand-ins with transformers' AttentionInterface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(FLASH, _flash_attention_2)
    AttentionInterface.register(SDPA, _sdpa_on_cuda)


def attention_name(attn_implementation: str) -> str:
    """The registered stand-in for an attention implementation resolved by ``attention_for``."""
    return {"eager": "eager", "sdpa": SDPA, "flash_attention_2": FLASH}[attn_implementation]


@contextmanager
def cuda_dropout() -> Iterator[None]:
    """``nn.Dropout`` with CUDA's bool mask (``torch.native_dropout``) while the trace runs."""
    original = torch.nn.Dropout.forward

    def forward(self: torch.nn.Dropout, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return torch.native_dropout(x, self.p, True)[0]

    torch.nn.Dropout.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Dropout.forward = original  # type: ignore[method-assign]


def gemm_4bit_transient(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Scratch bytes of bitsandbytes' CUDA ``gemm_4bit`` for this call (0 when the fused kernel runs)."""
    a, shape_b, blocksize = args[0], args[2], args[4]
    rows = a.numel() // a.shape[-1]
    n, k = int(shape_b[0]), int(shape_b[1])
    if rows <= GEMM_4BIT_FUSED_MAX_ROWS and k % blocksize == 0:
        return 0
    extra = n * k * a.element_size()
    if kwargs.get("absmax_8bit") is not None:
        extra += 4 * math.ceil(n * k / blocksize)
    return extra


def transient_rules() -> dict[Any, Any]:
    import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)

    return {torch.ops.bitsandbytes.gemm_4bit.default: gemm_4bit_transient}



@contextmanager
def fake_swap_tensors() -> Iterator[None]:
    """Let ``nn.Module.to()`` convert FakeTensor parameters (PEFT moves adapters with ``.to(dtype)``).

    ``Module._apply`` always swaps FakeTensor parameters, and ``torch.utils.swap_tensors`` refuses while
    the fake mode holds weak references to them; assigning ``.data`` gives the same module state.
    """
    import torch.utils

    original = torch.utils.swap_tensors

    def swap(t1: torch.Tensor, t2: torch.Tensor) -> None:
        try:
            original(t1, t2)
        except RuntimeError:
            with torch.no_grad():
                t1.data = t2.data

    torch.utils.swap_tensors = swap
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


@contextmanager
def bnb_dequantize_patch() -> Iterator[None]:
    """PEFT's ``dequantize_module_weight`` recognises 4-bit weights by class name (``Params4bit``); the
    trace's packed weights are plain Parameters with a ``quant_state``, so dequantize those the same way."""
    import bitsandbytes as bnb
    import peft.tuners.lora.dora as dora
    import peft.tuners.lora.layer as layer
    import peft.tuners.lora.variants as variants

    original = dora.dequantize_module_weight

    def dequantize(module: torch.nn.Module) -> torch.Tensor:
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None) or getattr(module, "quant_state", None)
        if state is not None and weight is not None and weight.dtype == torch.uint8:
            return bnb.functional.dequantize_4bit(weight.data, state)
        return original(module)

    targets = (dora, layer, variants)
    for mod in targets:
        mod.dequantize_module_weight = dequantize  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for mod in targets:
            mod.dequantize_module_weight = original  # type: ignore[attr-defined]


@contextmanager
def grouped_mm_for_any_dtype() -> Iterator[None]:
    """transformers' MoE experts call ``grouped_mm`` (bf16-only kernel) whenever it exists; for other dtypes
    route them to transformers' own ``grouped_mm_fallback`` op, which allocates the same output."""
    import transformers.integrations.moe as moe

    original = moe._can_use_grouped_mm

    def can_use(input: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor) -> bool:
        return weight.dtype == torch.bfloat16 and original(input, weight, offs)

    moe._can_use_grouped_mm = can_use
    try:
        yield
    finally:
        moe._can_use_grouped_mm = original


@contextmanager
def cuda_autocast_query() -> Iterator[None]:
    """``torch.is_autocast_enabled()`` without a device asks about CUDA autocast: on the GPU the step runs under, it
    is the autocast the trace applies on CPU. PEFT's bitsandbytes LoRA layers read it (``tuners/lora/bnb.py``
    ``requires_conversion = not torch.is_autocast_enabled()``) to decide whether to copy their input to the
    adapter dtype, so the no-argument form answers for the CPU autocast while the trace runs."""
    original = torch.is_autocast_enabled

    def is_autocast_enabled(*args: Any, **kwargs: Any) -> bool:
        if not args and not kwargs:
            return original("cpu")
        return original(*args, **kwargs)

    torch.is_autocast_enabled = is_autocast_enabled  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.is_autocast_enabled = original  # type: ignore[assignment]
