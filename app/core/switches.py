"""The training switches people turn on (issue 13): which combinations exist, and their memory effect.

Each effect follows the tensors the real code keeps and is checked against the trace engine, which runs
the switch in the real step (``app/trace/switches.py``; tests/test_switches.py, bench/trace_grid.py). See
docs/switches.md.
"""

from __future__ import annotations

from dataclasses import replace

from app.core.activations import (
    GEMMA_NORMS,
    QK_NORM,
    ActivationModel,
    down_input_grad_sum,
    eager_scores_grad,
)
from app.core.architectures import ArchSpec, attention_for
from app.core.errors import PlanError
from app.core.inventory import Inventory, Module
from app.core.precision import Dtypes
from app.core.request import PlanRequest
from app.core.static_memory import StaticMemory
from app.core.step_shape import step_shape
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
    """``use_liger_kernel`` on a model type Liger has kernels for."""
    return req.training.use_liger_kernel and arch.model_type in LIGER_MODEL_TYPES


def flce_chunk_size(tokens: int, hidden: int, vocab: int) -> int:
    """Tokens per chunk of Liger's fused linear cross-entropy (``ops/fused_linear_cross_entropy.py``):
    ``inc_factor = ceil(V / H)``, ``chunk = next_power_of_2(ceil(BT / inc_factor))``, at most BT."""
    inc = -(-vocab // hidden)
    per = -(-tokens // inc)
    return min(1 << (per - 1).bit_length(), tokens)


def flce_bytes(tokens: int, hidden: int, vocab: int, input_bytes: int, compute_bytes: int, *, mm_out: bool) -> int:
    """Peak bytes Liger's fused linear cross-entropy forward allocates for a frozen lm_head
    (``ops/fused_linear_cross_entropy.py: fused_linear_cross_entropy_forward``): ``grad_input`` (the input's
    shape and dtype), the fp32 per-token loss, the bool ``target_mask``, and for one chunk the logits
    (``compute_bytes``, overwritten by their gradient); without ``_can_use_mm_out`` (input, weight and
    autocast dtypes differ) also ``grad_logits @ W`` (chunk × hidden) before it is copied into ``grad_input``."""
    chunk = flce_chunk_size(tokens, hidden, vocab)
    temp = 0 if mm_out else compute_bytes * chunk * hidden
    return input_bytes * tokens * hidden + 4 * tokens + tokens + compute_bytes * chunk * vocab + temp


def _liger_layer_saving(arch: ArchSpec, req: PlanRequest, dt: Dtypes, layer: int) -> int:
    """Bytes one decoder layer saves less under Liger's RMSNorm and SwiGLU/GeGLU kernels.

    - RMSNorm (``ops/rms_norm.py``) saves its input (``a`` bytes, the residual stream; ``lo`` for Qwen3's q/k
      norms) and an fp32 rstd per row, where transformers' norm saves an fp32 copy of the input and the rstd
      (and, when its weight trains, the normalised input).
    - The gated MLP (``ops/swiglu.py``, ``ops/geglu.py``) saves the gate and up outputs and recomputes the
      activation: one ``lo·T·I`` tensor less than transformers' act/mul. MoE expert layers are not patched.
    """
    x = step_shape(req, dt, arch)
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


def liger_activations(act: ActivationModel, inv: Inventory, req: PlanRequest, dt: Dtypes,
                      targets: list[Module]) -> ActivationModel:
    """The activation terms with Liger's kernels (``use_liger_kernel``); unchanged for other model types.

    Fused linear cross-entropy (``ops/fused_linear_cross_entropy.py``) never materialises the logits: the
    final norm's output ``x`` (``a·T·h``) goes through lm_head + cross-entropy in chunks of
    :func:`flce_chunk_size` tokens; the forward allocates ``grad_input`` (``a·T·h``, saved for backward; and
    ``grad_weight`` when lm_head trains), an fp32 loss per token, a bool mask, and per chunk the logits
    (``c·chunk·V``, overwritten by their gradient) and ``grad_logits @ W`` (``c·chunk·h``); lm_head's fp32
    weight is cast by autocast per chunk (not cached: it does not require grad). Backward returns the saved
    gradients. The final norm saves its input (``a·T·h``) and rstd instead of an fp32 copy; its backward frees
    them before any layer's backward and writes the input's gradient into ``grad_input`` (``ops/rms_norm.py``,
    ``in_place=True``), which is then the last layer's incoming gradient.

    With gradient checkpointing a layer's backward peaks either while the recompute runs the down projection,
    or (adapted ``down_proj``, ``targets``) at the sum of down_proj's two input gradients
    (:func:`app.core.activations.down_input_grad_sum`), where the SwiGLU kernel's saved gate and up outputs are
    still alive. The recomputed input norm saves a view of the layer's checkpointed input (``rms_norm.py``:
    ``X.view(-1, dim)`` in ``save_for_backward``), which ``saved_layers`` already counts.
    """
    arch = inv.arch
    if not liger_applies(req, arch):
        return act
    x = step_shape(req, dt, arch)
    t, h, v, a, c = x.t, arch.hidden_size, arch.vocab_size, x.a, x.c
    savings = [_liger_layer_saving(arch, req, dt, i) for i in range(arch.num_hidden_layers)]
    head_dtype = dt.unquantized if req.quantized else dt.weights
    weight_cast = c * v * h if x.autocast and head_dtype == "fp32" else 0
    grad_weight = v * h * DTYPE_BYTES[head_dtype] if x.full else 0
    rotary = 2 * a * t * arch.head_dim
    saved_head = rotary + a * t * h + 4 * t + a * t * h + grad_weight  # norm input + rstd, grad_input
    residual = dt.unquantized if req.quantized else dt.weights
    mm_out = residual == head_dtype and (not x.autocast or residual == dt.compute)
    # the FLCE input (a·T·h) and its buffers but grad_input (in saved_head), and the weight cast
    loss = flce_bytes(t, h, v, a, c, mm_out=mm_out) + weight_cast
    # In a layer's (re)computed forward the gated MLP's output (lo·T·I) is alive while the down projection
    # runs. With the logits gone this sets the peak; with checkpointing one activation gradient (a·T·I) is
    # already counted in backward_layer. An adapted down projection's fp32 copy of it (PEFT
    # ``_cast_input_dtype``) is activation_model's LoRA cast transient.
    dense = any(i not in arch.sparse_layers for i in range(arch.num_hidden_layers))
    inter = arch.intermediate_size if dense else 0
    mlp_transient = x.lo * t * inter
    if req.training.gradient_checkpointing:
        saved_layers = act.saved_layers
        recompute = max(mlp_transient - a * t * inter, 0)
        # - a·T·h: the recomputed input norm saves a view of the checkpointed layer input (in saved_layers)
        backward_layer = act.backward_layer - max(savings, default=0) - a * t * h + recompute
        # backward_layer counts one activation gradient (a·T·max(h, I)) and eager attention's score gradient, neither
        # alive at down_proj's input-gradient sum: what that moment holds beyond them is a backward transient
        down_sum = max(down_input_grad_sum(x, arch, targets, i) for i in range(arch.num_hidden_layers))
        beyond = down_sum - a * t * max(h, arch.intermediate_size) - eager_scores_grad(x, arch, req)
        backward_transient = max(act.backward_transient, beyond - recompute)
        forward_transient = act.forward_transient
    else:
        saved_layers = act.saved_layers - sum(savings)
        backward_layer = act.backward_layer
        backward_transient = act.backward_transient
        forward_transient = max(act.forward_transient, mlp_transient)
    final_norm = a * t * h + 4 * t  # its saved input and rstd, freed by its backward
    return replace(act, saved_layers=saved_layers, saved_head=saved_head, head_weight_cast=final_norm,
                   loss_forward=loss, loss_backward=0, backward_layer=backward_layer,
                   backward_transient=backward_transient, forward_transient=forward_transient, head_backward=None)


def check_switches(req: PlanRequest, arch: ArchSpec) -> None:
    """422 for switch combinations the libraries do not run (the field named in ``loc``)."""
    hw, tr = req.hardware, req.training
    if hw.offload_optimizer == "cpu" and hw.sharding not in ("zero1", "zero2", "zero3", "fsdp"):
        raise PlanError(("hardware", "offload_optimizer"),
                        "optimizer offload needs DeepSpeed ZeRO (sharding zero1, zero2 or zero3: "
                        "zero_optimization.offload_optimizer) or FSDP (sharding fsdp: cpu_offload)")
    if hw.offload_param == "cpu" and hw.sharding not in ("zero3", "fsdp"):
        raise PlanError(("hardware", "offload_param"),
                        "parameter offload needs DeepSpeed ZeRO-3 (sharding zero3: zero_optimization.offload_param) "
                        "or FSDP (sharding fsdp: cpu_offload)")
    if hw.sharding == "fsdp" and hw.offload_param != hw.offload_optimizer:
        raise PlanError(("hardware", "offload_param"),
                        "FSDP's CPUOffload(offload_params=True) moves parameters, gradients and the optimizer step to "
                        "the CPU together: set offload_param and offload_optimizer both to 'cpu' (or both to 'none')")
    if (padding_free(req) and tr.framework != "torchtune"
            and attention_for(arch.model_type, tr.attn_implementation) != "flash_attention_2"):
        field = "padding_free" if tr.padding_free else "packing"
        raise PlanError(("training", field),
                        "padding-free batches (TRL padding_free, or packing with its default 'bfd' strategy) are "
                        "modelled with attn_implementation 'flash_attention_2' (variable-length FlashAttention, "
                        "what the trainers document for them); with sdpa or eager transformers builds a "
                        "block-diagonal mask over the whole flattened row, which the planner does not model")


def offload_static(static: dict[str, int], sm: StaticMemory, req: PlanRequest,
                   trainable_params: int) -> tuple[dict[str, int], int]:
    """Per-GPU static bytes with DeepSpeed ZeRO-Offload / ZeRO-Infinity or FSDP CPU offload, and the host RAM
    those states take (bytes, all GPUs of the run together: per node when they share one host).

    - DeepSpeed ``offload_optimizer`` (``runtime/zero/stage_1_and_2.py`` ``cpu_offload``, ``stage3.py``
      ``offload_optimizer``): the fp32 master partition, its fp32 gradient and the optimizer states live in
      host memory and ``DeepSpeedCPUAdam`` steps there; reduced gradients are copied into the host fp32
      partition bucket by bucket (stage 2/3: no GPU gradient buffer; stage 1 keeps its bf16 gradients). The
      GPU keeps the bf16 parameters and the reduce bucket. Host: 4 + 4 bytes per trainable parameter plus
      the fp32 optimizer state (DeepSpeed's ``estimate_zero2_model_states_mem_needs`` multiplies its host
      figure by a 1.5 buffer factor; the exact states are given here).
    - DeepSpeed ``offload_param`` (ZeRO-Infinity, stage 3): the bf16 parameter partitions live in host memory;
      a GPU holds only the gathered modules (the live/prefetch set of :func:`app.core.sharding.gathered_bytes`).
    - FSDP ``cpu_offload`` (torch ``CPUOffload(offload_params=True)``): parameters, gradients and optimizer
      states of every shard live in host memory, the optimizer steps there; the GPU holds the gathered units
      and one layer's unsharded gradients before their reduce-scatter. bitsandbytes' quantization constants
      are not parameters and stay on the GPU.
    """
    hw = req.hardware
    out = dict(static)
    host = 0
    if hw.sharding == "fsdp" and hw.offload_param == "cpu":
        host = sm.weights.total + sm.adapters.total + sm.gradients.total + sm.optimizer.total
        for key in ("weights", "adapters", "gradients", "optimizer", "paged_optimizer", "step_transient"):
            out[key] = 0
        return out, host
    if hw.offload_optimizer == "cpu" and hw.sharding.startswith("zero"):
        host += 8 * trainable_params + sm.optimizer_fp32_master_bytes
        out["optimizer"] = out["step_transient"] = out["paged_optimizer"] = 0
        if hw.sharding != "zero1":
            out["gradients"] = 0
    if hw.offload_param == "cpu" and hw.sharding == "zero3":
        host += sm.weights.total - sm.trainable_base_bytes + 2 * trainable_params
        out["weights"] = 0
    return out, host


def activation_offload(act: ActivationModel, req: PlanRequest, arch: ArchSpec,
                       dt: Dtypes) -> tuple[ActivationModel, int]:
    """TRL ``activation_offloading`` (``trl/models/activation_offloading.py``, ``OffloadActivations`` with
    ``use_streams=True``): every saved tensor of ≥1024 bytes that is not a parameter is copied to host memory
    in the forward and brought back for its backward node; lm_head's are not (``NoOpManager``). A storage
    saved again while its first copy is still in the forward stash (the last ``max_fwd_stash_size = 5``
    saves) keeps a GPU reference instead: transformers' RMSNorm saves its fp32 input copy and its rstd twice
    in a row (pow and mul), so those stay on the GPU. The stash is freed when the forward ends.

    - With checkpointing the saved tensors are the layer inputs: all leave the GPU, and at the backward peak
      the input of the layer being recomputed is back.
    - Without it each layer keeps its norms' fp32 inputs and rstd; the layer being back-propagated is
      brought back.

    Returns the activation terms on the GPU and the host bytes of the offloaded layer activations.
    """
    if not req.training.activation_offloading:
        return act, 0
    x = step_shape(req, dt, arch)
    t, h = x.t, arch.hidden_size
    layers = max(arch.num_hidden_layers, 1)
    if req.training.gradient_checkpointing:
        kept = x.a * t * h  # the recomputed layer's input, brought back
        offloaded = max(act.saved_layers - kept, 0)
        return replace(act, saved_layers=kept), offloaded
    kept = 0
    if arch.model_type != "gpt2":  # RMSNorm models (GPT-2's LayerNorm saves each tensor once)
        norms = 4 if arch.model_type in ("gemma2", "gemma3_text") else 2
        kept = norms * (4 * t * h + 4 * t)
        if arch.model_type in QK_NORM:
            kept += 4 * t * (arch.q_dim + arch.kv_dim) + 4 * t * (arch.num_attention_heads + arch.num_key_value_heads)
    offloaded = max(act.saved_layers - layers * kept, 0)
    return replace(act, saved_layers=act.saved_layers - offloaded,
                   backward_layer=act.backward_layer + offloaded // layers), offloaded


def switch_assumptions(req: PlanRequest, arch: ArchSpec) -> list[str]:
    """What the estimate assumes for each switch that is on (the ``assumptions`` of the result)."""
    tr, hw = req.training, req.hardware
    out = []
    if tr.use_liger_kernel:
        out.append(
            "use_liger_kernel: Liger-Kernel 0.8.5's fused linear cross-entropy (no logits: lm_head + loss in chunks "
            "of next_power_of_2(ceil(tokens / ceil(vocab / hidden))) tokens), RMSNorm and SwiGLU/GeGLU kernels; "
            "its Triton kernels do not run on CPU, so the trace engine checks them with torch ops that allocate "
            "and save what the kernels do; RoPE as transformers runs it; MoE experts unpatched."
            if liger_applies(req, arch) else
            f"use_liger_kernel: Liger-Kernel has no kernels for {arch.model_type}; HF Trainer applies none.")
    if tr.activation_offloading:
        out.append("activation_offloading (TRL): saved activations of ≥1 KiB are copied to host RAM in the forward "
                   "and brought back per layer in backward; RMSNorm's twice-saved fp32 input stays on the GPU "
                   "(TRL's deduplication); memory.host_ram counts the offloaded bytes.")
    if tr.gradient_checkpointing and tr.gradient_checkpointing_kwargs.use_reentrant:
        out.append("use_reentrant=True: reentrant checkpointing recomputes each layer in backward as the "
                   "non-reentrant default does; the traced peaks are equal (transformers enables input grads "
                   "either way).")
    if padding_free(req):
        out.append("packing / padding_free (TRL): each batch is one row of micro_batch_size·seq_len tokens with "
                   "per-document positions; variable-length FlashAttention keeps attention per document, so "
                   "memory equals micro_batch_size full rows of seq_len (the planner's rows carry no padding).")
    if tr.torch_compile:
        out.append("torch_compile: not modelled (the estimate is that of the eager step): Inductor's fused "
                   "kernels and its own activation recomputation change which intermediates are kept, and the "
                   "trace engine cannot compile on fake tensors here.")
    if "cpu" in (hw.offload_optimizer, hw.offload_param):
        out.append("CPU offload: memory.host_ram is what the offloaded states take in host RAM for all GPUs "
                   "together (per node when they share one host), without pinned staging buffers; DeepSpeed's "
                   "own estimator adds a 1.5× buffer factor.")
    return out
