"""The training switches people turn on (issue 13): which combinations exist, and their memory effect.

Each effect follows the tensors the real code keeps and is checked against the trace engine, which runs
the switch in the real step (``app/trace/switches.py``; tests/test_switches.py, bench/trace_grid.py). See
docs/switches.md.
"""

from __future__ import annotations

from dataclasses import replace

from app.core.activations import GEMMA_NORMS, QK_NORM, ActivationModel, _ctx
from app.core.architectures import ArchSpec
from app.core.inventory import Inventory, Module
from app.core.precision import Dtypes
from app.core.request import PlanRequest
from app.core.units import DTYPE_BYTES

LIGER_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2",
                     "gemma3_text", "phi3")
"""Model types with an ``apply_liger_kernel_to_<model>`` in Liger-Kernel 0.8.5
(``liger_kernel/transformers/monkey_patch.py``); HF Trainer applies nothing to other models."""


def padding_free(req: PlanRequest) -> bool:
    """TRL ``SFTTrainer``: ``padding_free or (packing and packing_strategy in {"bfd", "bfd_split"})``; the
    default ``packing_strategy`` is ``"bfd"``, so ``packing`` flattens the batch too (trl/trainer/sft_trainer.py)."""
    return req.training.padding_free or req.training.packing


def liger_applies(req: PlanRequest, arch: ArchSpec) -> bool:
    return req.training.use_liger_kernel and arch.model_type in LIGER_MODEL_TYPES


def flce_chunk_size(tokens: int, hidden: int, vocab: int) -> int:
    """Tokens per chunk of Liger's fused linear cross-entropy (``ops/fused_linear_cross_entropy.py``):
    ``inc_factor = ceil(V / H)``, ``chunk = next_power_of_2(ceil(BT / inc_factor))``, at most BT."""
    inc = -(-vocab // hidden)
    per = -(-tokens // inc)
    return min(1 << (per - 1).bit_length(), tokens)


def _liger_layer_saving(arch: ArchSpec, req: PlanRequest, dt: Dtypes, layer: int) -> int:
    """Bytes one decoder layer saves less under Liger's RMSNorm and SwiGLU/GeGLU kernels.

    - RMSNorm (``ops/rms_norm.py``) saves its input (``a`` bytes, the residual stream; ``lo`` for Qwen3's q/k
      norms) and an fp32 rstd per row, where transformers' norm saves an fp32 copy of the input and the rstd
      (and, when its weight trains, the normalised input).
    - The gated MLP (``ops/swiglu.py``, ``ops/geglu.py``) saves the gate and up outputs and recomputes the
      activation: one ``lo·T·I`` tensor less than transformers' act/mul. MoE expert layers are not patched.
    """
    x = _ctx(req, dt, arch)
    t, h, a, lo = x.t, arch.hidden_size, x.a, x.lo
    norms = 4 if arch.model_type in ("gemma2", "gemma3_text") else 2
    normed = (4 if arch.model_type in GEMMA_NORMS else a) * t * h if x.full else 0
    saving = norms * ((4 - a) * t * h + normed)
    if arch.model_type in QK_NORM:
        qk = arch.q_dim + arch.kv_dim
        saving += (4 - lo) * t * qk + ((4 if arch.model_type in GEMMA_NORMS else lo) * t * qk if x.full else 0)
    if layer not in arch.sparse_layers:
        saving += lo * t * arch.intermediate_size
    return saving


def liger_activations(act: ActivationModel, inv: Inventory, plan_targets: list[Module], req: PlanRequest,
                      dt: Dtypes) -> ActivationModel:
    """The activation terms with Liger's kernels (``use_liger_kernel``); unchanged for other model types.

    Fused linear cross-entropy (``ops/fused_linear_cross_entropy.py``) never materialises the logits: the
    final norm's output ``x`` (``a·T·h``) goes through lm_head + cross-entropy in chunks of
    :func:`flce_chunk_size` tokens; the forward allocates ``grad_input`` (``a·T·h``, saved for backward; and
    ``grad_weight`` when lm_head trains), an fp32 loss per token, a bool mask, and per chunk the logits
    (``c·chunk·V``, overwritten by their gradient) and ``grad_logits @ W`` (``c·chunk·h``); lm_head's fp32
    weight is cast by autocast per chunk (not cached: it does not require grad). Backward returns the saved
    gradients. The final norm saves its input (``a·T·h``) and rstd instead of an fp32 copy.
    """
    arch = inv.arch
    if not liger_applies(req, arch):
        return act
    x = _ctx(req, dt, arch)
    t, h, v, a, c = x.t, arch.hidden_size, arch.vocab_size, x.a, x.c
    savings = [_liger_layer_saving(arch, req, dt, i) for i in range(arch.num_hidden_layers)]
    chunk = flce_chunk_size(t, h, v)
    head_dtype = dt.unquantized if req.quantized else dt.weights
    weight_cast = c * v * h if x.autocast and head_dtype == "fp32" else 0
    grad_weight = v * h * DTYPE_BYTES[head_dtype] if x.full else 0
    rotary = 2 * a * t * arch.head_dim
    saved_head = rotary + a * t * h + 4 * t + a * t * h + grad_weight  # norm input + rstd, grad_input
    loss = a * t * h + 4 * t + t + c * chunk * (v + h) + weight_cast  # FLCE input, loss, mask, chunk, cast
    # In a layer's (re)computed forward, an adapted down projection casts its input to the fp32 adapter dtype
    # (PEFT ``_cast_input_dtype``) while the activation's output is alive: beyond the saved tensors that is
    # (lo + 4)·T·I where one activation gradient (a·T·I) is counted. Dominant once the logits are gone.
    inter = arch.intermediate_size
    adapted_down = any(m.leaf in ("down_proj", "c_proj", "fc2") and m.layer is not None for m in plan_targets)
    recompute = (x.lo + 4 - a) * t * inter if adapted_down and x.autocast and dt.adapters == "fp32" else 0
    if req.training.gradient_checkpointing:
        saved_layers = act.saved_layers
        backward_layer = act.backward_layer - max(savings, default=0) + max(recompute, 0)
    else:
        saved_layers = act.saved_layers - sum(savings)
        backward_layer = act.backward_layer
    return replace(act, saved_layers=saved_layers, saved_head=saved_head, head_weight_cast=0, loss_forward=loss,
                   loss_backward=0, backward_layer=backward_layer)
