"""The training switches of issue 13 in the traced step (docs/switches.md).

- ``use_liger_kernel``: Liger-Kernel 0.8.5's kernels are Triton (CUDA only), so the step runs torch ops that
  allocate and save what the kernels do (``liger_kernel/ops/*.py``), patched in where Liger's
  ``_apply_liger_kernel_to_instance`` patches them (``liger_kernel/transformers/monkey_patch.py``):

  * fused linear cross-entropy (``ops/fused_linear_cross_entropy.py: fused_linear_cross_entropy_forward``):
    the logits are never materialised; lm_head + cross-entropy run over chunks of
    ``next_power_of_2(ceil(BT / ceil(V / H)))`` tokens, the gradients of the input (and of lm_head's weight
    when it trains) are computed in the forward and saved; backward returns them.
  * RMSNorm (``ops/rms_norm.py``): saves its input and an fp32 rstd per row, output in the input dtype.
  * SwiGLU / GeGLU MLP (``ops/swiglu.py``, ``ops/geglu.py``): saves the gate and up outputs; backward writes
    their gradients in place. MoE experts are not patched (transformers 5 fuses them; Liger does not).
  * RoPE (``ops/rope.py``) is left as transformers runs it (both save only cos/sin).
- ``activation_offloading`` (TRL ``models/activation_offloading.py``, ``OffloadActivations`` with TRL's
  defaults: ``min_offload_size=1024`` bytes, ``use_streams=True``, ``max_fwd_stash_size=5``, lm_head excluded by
  a ``NoOpManager``): TRL's class needs a CUDA/XPU accelerator, so the same rules run here as
  ``saved_tensors_hooks``: a saved tensor of ≥1024 bytes that is not a parameter is copied to host memory (not
  counted), the GPU copy stays referenced until 5 newer tensors were offloaded; in backward a GPU copy is
  brought back per use.
- ``padding_free`` / ``packing`` (TRL ``DataCollatorForLanguageModeling(padding_free=True)``): the batch is one
  row of ``micro_batch_size · seq_len`` tokens with ``position_ids`` restarting per document.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from app.core.switches import flce_chunk_size

IGNORE_INDEX = -100
OFFLOAD_MIN_BYTES = 1024  # TRL get_act_offloading_ctx_manager(min_offload_size=1024)
OFFLOAD_FWD_STASH = 5  # TRL get_act_offloading_ctx_manager(max_fwd_stash_size=5)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                softcap: float | None) -> torch.Tensor:
        bt, h = x.shape
        chunk = flce_chunk_size(bt, h, weight.shape[0])
        grad_input = torch.zeros_like(x)
        grad_weight = torch.zeros_like(weight) if weight.requires_grad else None
        loss_1d = torch.zeros(bt, dtype=torch.float32, device=x.device)
        _target_mask = target != IGNORE_INDEX  # alive through the loop (Liger reads its count with .item())
        # _can_use_mm_out: the operands already have the dtype autocast would give them, so one logits buffer
        # is reused and the input gradient is written in place (out=); otherwise autocast matmuls
        autocast = torch.is_autocast_enabled(x.device.type)
        mm_out = x.dtype == weight.dtype and (not autocast or x.dtype == torch.get_autocast_dtype(x.device.type))
        storage = torch.empty((chunk, weight.shape[0]), dtype=x.dtype, device=x.device) if mm_out else None
        for start in range(0, bt, chunk):
            x_chunk = x[start:start + chunk]
            if storage is not None:
                logits = storage[: x_chunk.shape[0]]
                torch.mm(x_chunk, weight.t(), out=logits)
            else:
                logits = x_chunk @ weight.t()  # under autocast: the compute dtype
            if softcap is not None:
                logits.div_(softcap).tanh_().mul_(softcap)
            # the cross-entropy kernel writes the loss into loss_1d and d(loss)/d(logits) into logits, in place
            if storage is not None:
                torch.mm(logits, weight, out=grad_input[start:start + chunk])
            else:
                grad_input[start:start + chunk] = logits @ weight
            if grad_weight is not None:
                with torch.autocast(x.device.type, enabled=False):
                    grad_weight.addmm_(logits.t().to(grad_weight.dtype), x_chunk.to(grad_weight.dtype))
            del logits
        ctx.save_for_backward(grad_input, grad_weight)
        return loss_1d.sum() / bt

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        grad_input, grad_weight = ctx.saved_tensors
        return grad_input, grad_weight, None, None


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        y = torch.empty_like(rows)
        rstd = torch.empty(rows.shape[0], dtype=torch.float32, device=x.device)
        ctx.save_for_backward(rows, weight, rstd)
        return y.view(x.shape)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        rows, weight, _rstd = ctx.saved_tensors
        dx = torch.empty_like(rows)
        dw = None
        if weight.requires_grad:  # per-program fp32 partial sums, reduced to the weight's dtype
            dw = torch.zeros((1, rows.shape[-1]), dtype=torch.float32, device=rows.device).sum(0).to(weight.dtype)
        return dx.view(dy.shape), dw


class _GatedActMul(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(a, b)
        return torch.empty_like(a)

    @staticmethod
    def backward(ctx: Any, dc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = ctx.saved_tensors
        return a, b  # the kernel writes da, db into a's and b's buffers


def _rms_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return _RMSNorm.apply(x, self.weight)


def _mlp_forward(self: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(self, "gate_up_proj"):  # Phi-3: LigerPhi3SwiGLUMLP splits the fused projection
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
    else:
        gate, up = self.gate_proj(x), self.up_proj(x)
    return self.down_proj(_GatedActMul.apply(gate, up))


def apply_liger(model: torch.nn.Module) -> None:
    """Patch RMSNorm and dense gated-MLP instances as ``_apply_liger_kernel_to_instance`` does."""
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("RMSNorm"):
            module.forward = _rms_forward.__get__(module)
        elif name.endswith("MLP") and (hasattr(module, "gate_up_proj") or hasattr(module, "gate_proj")) \
                and hasattr(module, "down_proj") and not hasattr(module, "experts"):
            module.forward = _mlp_forward.__get__(module)


def liger_loss(base: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
               on_loss: Callable[[], None], **inputs: Any) -> torch.Tensor:
    """Liger's ``lce_forward``: the decoder's hidden states straight into fused linear cross-entropy with
    the shifted labels (``LigerForCausalLMLoss``); no logits are returned."""
    hidden = base.model(input_ids=input_ids, **inputs).last_hidden_state
    on_loss()
    head = base.get_output_embeddings()
    shift = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].contiguous()
    softcap = getattr(base.config, "final_logit_softcapping", None)
    return _FusedLinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, shift.view(-1), softcap)


@contextmanager
def offload_activations(model: torch.nn.Module, host: Callable[[], Any]) -> Iterator[None]:
    """TRL's ``OffloadActivations`` rules as saved-tensor hooks; ``host()`` is a context in which new storages
    are host memory (not counted). lm_head's saved tensors stay on the GPU (TRL's ``NoOpManager``)."""
    params = {id(p.untyped_storage()) for p in model.parameters()}
    # TRL compares storage pointers; fake tensors all have pointer 0 and fake mode can wrap a parameter's
    # storage in a fresh object, so a view of a parameter (``weight.t()``) is recognised by its base
    param_ids = {id(p) for p in model.parameters()}
    stash: dict[int, torch.Tensor] = {}
    seen: dict[Any, int] = {}
    state = {"id": 0, "off": False}

    def pack(t: torch.Tensor) -> Any:
        state["id"] += 1
        tid = state["id"]
        st = t.untyped_storage()
        key = (id(st), t.storage_offset(), t.dtype)  # TRL's _get_unique_tensor_key: (data_ptr + offset, dtype)
        if (state["off"] or isinstance(t, torch.nn.Parameter) or t.element_size() * t.numel() < OFFLOAD_MIN_BYTES
                or id(st) in params or id(t._base) in param_ids or seen.get(key) in stash):
            return t  # kept on the GPU (small, a parameter, or a storage still in the forward stash)
        seen[key] = tid
        if not t.is_contiguous() or t.storage_offset():
            t = t.contiguous() if not t.storage_offset() else t.clone(memory_format=torch.contiguous_format)
        for old in [k for k in stash if k <= tid - OFFLOAD_FWD_STASH]:
            del stash[old]
        with host():
            cpu = torch.empty_like(t)
            cpu.copy_(t)
        stash[tid] = t
        return (tid, cpu)

    def unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        tid, cpu = packed
        if tid in stash:
            return stash[tid]
        back = torch.empty_like(cpu)
        back.copy_(cpu)
        return back

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    handles = []
    if head is not None:
        handles.append(head.register_forward_pre_hook(lambda *_: state.update(off=True)))
        handles.append(head.register_forward_hook(lambda *_: state.update(off=False), always_call=True))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        stash.clear()
        for h in handles:
            h.remove()


def padding_free_inputs(batch: int, seq_len: int, vocab: int) -> dict[str, torch.Tensor]:
    """One flattened row of ``batch · seq_len`` tokens; each former row is a document (position ids restart)."""
    input_ids = torch.randint(0, vocab, (1, batch * seq_len))
    position_ids = torch.arange(seq_len).repeat(batch).unsqueeze(0)
    return {"input_ids": input_ids, "position_ids": position_ids}
