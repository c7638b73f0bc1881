"""Activation memory of one training step (bytes), by phase, without torch.

Each term is a tensor the real step keeps (found in the trace engine's live-storage listings of
transformers 5.24 / PEFT 0.21.2 / bitsandbytes 0.50.2 steps and in ``shared/docs/memory-internals.md``).
Notation: ``T`` tokens per micro-batch (b·s), ``h`` hidden size, ``I`` MLP width, ``V`` vocabulary; the bytes
per element ``c``, ``a``, ``lo``, ``la`` are :class:`app.core.step_shape.StepShape`'s. The adapters' own terms
(LoRA/DoRA branches) are in :mod:`app.core.adapter_activations`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from app.core import torchtune
from app.core.adapter_activations import (
    adapter_saved,
    dora_backward_extra,
    dora_extra,
    lora_cast_extra,
    shared_inputs,
)
from app.core.adapters import AdapterPlan
from app.core.architectures import ArchSpec, attention_for
from app.core.catalog import gpu, model_config
from app.core.frameworks import (
    UNSLOTH_FAST_TYPES,
    UNSLOTH_GPU_BUFFERS,
    framework,
    trl_loss_path,
    unsloth_fast_lora,
    unsloth_layer_saved,
    unsloth_loss_path,
)
from app.core.inventory import CONV1D, EMBEDDING, LINEAR, NORM, Inventory, Module, Tensor
from app.core.litgpt import LM_HEAD_CHUNK as LITGPT_HEAD_CHUNK
from app.core.litgpt import Block as LitBlock
from app.core.litgpt import Shape as LitShape
from app.core.litgpt import Targets as LitTargets
from app.core.litgpt import block_of as litgpt_block_of
from app.core.litgpt import head_terms as litgpt_head_terms
from app.core.litgpt import is_litgpt, old_norm
from app.core.litgpt import keeps_first_layer_input as litgpt_keeps_first_input
from app.core.litgpt import layer_saved as litgpt_layer_saved
from app.core.litgpt import previous_step_inputs as litgpt_previous_inputs
from app.core.optimizers import step_transient_bytes
from app.core.overhead import outside_allocator_bytes
from app.core.precision import Dtypes
from app.core.request import ModelConfig, PlanRequest
from app.core.step_shape import StepShape, step_shape
from app.core.units import DTYPE_BYTES

GEMMA_NORMS = ("gemma", "gemma2", "gemma3_text")
QK_NORM = ("qwen3", "qwen3_moe", "gemma3_text")
BNB_FUSED_MAX_ROWS = 1536


@dataclass(frozen=True)
class ActivationModel:
    """Bytes of each activation term; :func:`app.core.estimate._phases` combines them into phases."""

    saved_layers: int  # saved for backward by all decoder layers at the end of forward
    saved_head: int  # final norm + lm_head inputs + shared rotary tables, masks
    head_weight_cast: int  # part of saved_head freed by the head's backward (lm_head; Liger's final norm) first
    loss_forward: int  # logits and loss buffers at the loss, beyond the saved tensors
    loss_backward: int  # gradient buffers at the start of backward, beyond the saved tensors
    forward_transient: int  # largest temporary inside one layer's forward
    backward_transient: int  # largest temporary of one layer's backward (bitsandbytes' dequantized weight)
    backward_layer: int  # live bytes of one layer's backward beyond what stays saved (recompute + grads)
    tied_embedding_grad: int  # full fine-tuning of tied embeddings: the embedding's gradient and its sum
    checkpointed: bool
    logits_block: int = 0  # fp32 bytes of the largest block of logits the loss builds (the allocator rule's feature)
    at_step: int = 0  # activations still alive during optimizer.step() (litgpt's loop keeps its logits)
    head_grad_at_loss: bool = True  # lm_head's weight gradient exists while the loss gradients do (not litgpt's)
    # live at lm_head's own backward beside its new weight gradient, once the loss's buffers are freed (the logits'
    # gradient and lm_head's input gradient); None: the weight gradient is counted on top of ``loss_backward``
    head_backward: int | None = None
    # autocast's cached casts of trainable fp32 layer weights that nothing saves (checkpointed layers): alive from
    # their layer's forward until the autocast region exits, after the loss (:func:`autocast_cast_cache`)
    cast_cache: int = 0


def _param_wrapper_saved(arch: ArchSpec, targets: list[Tensor], x: StepShape, layer: int) -> int:
    """PEFT ``ParamWrapper`` (target_parameters) merges W + B·A into a dense weight every forward; the merged
    weight is saved, and the grouped matmul then also keeps its input (the weight now needs a gradient)."""
    prefix = f"model.layers.{layer}."
    total = 0
    pairs = x.t * arch.num_experts_per_tok
    for t in targets:
        if not t.name.startswith(prefix):
            continue
        total += x.c * t.numel
        if t.name.endswith("experts.gate_up_proj"):
            total += x.c * pairs * arch.hidden_size
        elif t.name.endswith("experts.down_proj"):
            total += x.c * pairs * arch.moe_intermediate_size
        else:  # the router's weight: its input is kept
            total += x.c * x.t * arch.hidden_size
    return total


def _layer_saved(inv: Inventory, plan_targets: list[Module], param_targets: list[Tensor], x: StepShape,
                 req: PlanRequest, dt: Dtypes, layer: int) -> int:
    arch = inv.arch
    t, h, a, c, lo = x.t, arch.hidden_size, x.a, x.c, x.lo
    q, kv, nh = arch.q_dim, arch.kv_dim, arch.num_attention_heads
    mt = arch.model_type
    total = 0
    # RMSNorm: fp32 copy of the input + rsqrt; with a trainable weight also the normalised input.
    norms = 4 if mt in ("gemma2", "gemma3_text") else 2
    normed = (4 if mt in GEMMA_NORMS else a) * t * h if x.full else 0
    total += norms * (4 * t * h + 4 * t + normed)
    if mt in QK_NORM:
        total += 4 * t * (q + kv) + 4 * t * (nh + arch.num_key_value_heads)
        if x.full:
            total += (4 if mt in GEMMA_NORMS else lo) * t * (q + kv)
    # Attention: q, k after rotary (promoted to the residual dtype by cos/sin), v as its projection made it
    # (for Phi-3's fused qkv_proj a view that keeps the whole fused output alive), the output, fp32 LSE.
    q_rot = max(lo, a)
    gqa = kv != q
    v_store = q + 2 * kv if mt == "phi3" else kv
    tt = req.training.framework == "torchtune"
    # torchtune calls scaled_dot_product_attention itself (flex_attention when packed): transformers' choice of
    # attention does not apply (check_request refuses 'eager')
    impl = "sdpa" if tt else attention_for(arch.model_type, req.training.attn_implementation)
    if tt:
        total += torchtune.gqa_expansion_bytes(t, q, kv, q_rot, arch.num_key_value_heads)
        if req.training.packing:
            total += torchtune.packed_rope_bytes(t, arch.head_dim)
    if impl == "eager":
        kv_saved = q_rot * t * q + (lo if not gqa else q_rot) * t * (q if gqa else v_store)  # repeat_kv copies
        total += q_rot * t * q + kv_saved + lo * t * q  # q, K and V (expanded under GQA), output copy
        total += (4 + q_rot) * x.b * nh * x.s * x.s  # fp32 softmax probabilities + their cast
        if arch.attn_logit_softcapping:
            total += q_rot * x.b * nh * x.s * x.s  # tanh(scores / cap), saved
    elif q_rot == 4 and impl == "sdpa":  # memory-efficient kernel in fp32; K/V expanded under GQA
        total += 4 * t * (q + (q if gqa else kv) + (q if gqa else v_store) + q)
        total += 4 * x.b * nh * (-(-x.s // 32) * 32)
    elif q_rot == 4:  # flash-attn 2 gets q, k, v cast to the autocast dtype
        total += c * t * (2 * q + 2 * kv) + 4 * t * nh
    else:
        total += q_rot * t * (q + kv) + lo * t * v_store + lo * t * q + 4 * t * nh
    # MLP or experts.
    if layer in arch.sparse_layers:
        k_top, e, inter = arch.num_experts_per_tok, arch.num_experts, arch.moe_intermediate_size
        pairs = t * k_top
        total += c * pairs * (3 * inter + h) + c * t * h
        total += 4 * t * e + 12 * t * k_top + 28 * pairs + 4 * t
    else:
        inter = arch.intermediate_size
        total += 3 * lo * t * inter  # gate output, activation output, up output
    if x.full:
        total += lo * t * (2 * h + (0 if layer in arch.sparse_layers else arch.intermediate_size))
        if dt.weights == "fp32" and x.autocast:
            total += 2 * sum(m.in_features * m.out_features for m in inv.modules
                             if m.layer == layer and m.kind in (LINEAR, CONV1D))
    elif x.autocast and dt.weights == "fp32" and not x.quantized:
        # frozen fp32 weights are re-cast to bf16 at each use, and the cast is saved for the input's grad
        total += 2 * sum(m.in_features * m.out_features for m in inv.modules
                         if m.layer == layer and m.kind in (LINEAR, CONV1D))
    layer_targets = [m for m in plan_targets if m.layer == layer and m.kind != EMBEDDING]
    total += adapter_saved(x, layer_targets, shared_inputs(layer_targets, a * t))
    total += _param_wrapper_saved(arch, param_targets, x, layer)
    if tt and req.training.torch_compile:
        total -= torchtune.compiled_layer_saving(t, h, arch.intermediate_size, a, x.full)
    return total


def _gpt2_layer_saved(inv: Inventory, plan_targets: list[Module], x: StepShape, layer: int) -> int:
    """GPT-2: LayerNorm (input, mean, rstd), fused c_attn output, attention, gelu_new's four saved tensors,
    the dropout masks of the attention and MLP residual branches (resid_pdrop 0.1 by default)."""
    arch = inv.arch
    t, h, lo, a = x.t, arch.hidden_size, x.lo, x.a
    total = 2 * (a * t * h + 2 * a * t)  # ln_1, ln_2: input (the residual stream) + mean + rstd
    total += lo * t * 3 * h + lo * t * h + 4 * t * arch.num_attention_heads  # c_attn output, attention out, LSE
    total += 4 * lo * t * arch.intermediate_size  # c_fc output, gelu_new: pow input, tanh, sum
    total += 2 * t * h  # two residual dropout masks (bool)
    if x.full:
        total += 2 * lo * t * h + lo * t * arch.intermediate_size
    layer_targets = [m for m in plan_targets if m.layer == layer]
    total += adapter_saved(x, layer_targets, shared_inputs(layer_targets, a * t))
    return total


def eager_scores_grad(x: StepShape, arch: ArchSpec, req: PlanRequest) -> int:
    """Bytes of the gradient of eager attention's b×heads×s×s probabilities, alive in its backward (0 otherwise)."""
    eager = arch.model_type != "gpt2" and attention_for(arch.model_type, req.training.attn_implementation) == "eager"
    return max(x.lo, x.a) * x.b * arch.num_attention_heads * x.s * x.s if eager else 0


def down_input_grad_sum(x: StepShape, arch: ArchSpec, targets: list[Module], layer: int) -> int:
    """Bytes alive in a layer's backward at the sum of its adapted down projection's two input gradients, beyond
    the layer's other saved tensors (0 when ``down_proj`` is not adapted or the layer is an MoE block).

    ``lora.Linear4bit.forward`` / ``lora.Linear.forward`` (PEFT 0.21.2 ``tuners/lora/bnb.py``,
    ``tuners/lora/layer.py``) feed the MLP product ``x`` (``lo`` bytes) to both the base layer and ``lora_A``, so
    autograd sums two T×I gradients of ``x`` into a third: the base layer's (for bitsandbytes 0.50.2
    ``Linear4bit.forward``, MatMul4Bit's 16-bit gradient cast back through ``x.to(compute_dtype)`` to ``x``'s
    dtype) and the adapter's (back through autocast's cast of ``x`` for ``lora_A``). By then down_proj's own
    saved tensors (:func:`adapter_saved`; bitsandbytes' MatMul4Bit saves no input for a frozen weight) are freed.
    """
    down = [m for m in targets if m.layer == layer and m.leaf == "down_proj"]
    if not down or layer in arch.sparse_layers:
        return 0
    return 3 * x.lo * x.t * arch.intermediate_size - adapter_saved(x, down, shared_inputs(down, x.a * x.t))


def _largest_linear(inv: Inventory) -> tuple[int, int]:
    best = (0, 0)
    for m in inv.modules:
        if m.kind in (LINEAR, CONV1D) and m.name != "lm_head" and m.in_features * m.out_features > best[0] * best[1]:
            best = (m.out_features, m.in_features)
    return best


def _litgpt_block(inv: Inventory, req: PlanRequest) -> LitBlock:
    """The litgpt block of the request's model, from its config.json and its first layer's modules (how many
    norms; the keys' width from ``k_proj`` or the fused ``query_key_value``: q + 2·kv)."""
    cfg = req.model.config if isinstance(req.model, ModelConfig) else model_config(req.model)
    first = [m for m in inv.modules if m.layer == 0]
    kv = next((m.out_features for m in first if m.leaf == "k_proj"), None)
    fused = next((m.out_features for m in first if m.leaf == "query_key_value"), None)
    if kv is None:
        kv = (fused - inv.arch.q_dim) // 2 if fused is not None else inv.arch.kv_dim
    return litgpt_block_of(inv.arch, cfg, sum(m.kind == NORM for m in first), kv)


def _litgpt_model(inv: Inventory, plan: AdapterPlan, req: PlanRequest, dt: Dtypes) -> ActivationModel:
    """litgpt's own GPT and loop (app/core/litgpt.py): per-layer saved bytes, the chunked loss path. Its one-GPU
    fine-tuning has no activation checkpointing (``finetune/*.py`` set ``activation_checkpointing_policy`` only
    on the multi-GPU FSDPStrategy), so ``training.gradient_checkpointing`` does not apply. Under ``*-mixed``
    precision the frozen fp32 weights are cast to the autocast dtype at each use and the cast is saved (``mm``
    keeps it for the input's gradient). bitsandbytes ≤ 0.42 dequantizes a 4-bit weight in every forward and
    backward call (``MatMul4Bit``): the largest layer's."""
    arch = inv.arch
    tr = req.training
    a = DTYPE_BYTES[dt.compute]
    x = LitShape(b=tr.micro_batch_size, s=tr.seq_len, a=a, r=req.lora.r,
                 dropout=req.uses_adapter and req.lora.lora_dropout > 0, quantized=req.quantized,
                 full=req.method == "full", stream=DTYPE_BYTES[dt.weights])
    tg = LitTargets.of_request(req, {m.leaf for m in plan.targets})
    old = old_norm(req)
    block = _litgpt_block(inv, req)
    per_layer = [litgpt_layer_saved(arch, x, tg, old=old, layer=i, block=block)
                 for i in range(arch.num_hidden_layers)]
    t, h = x.t, arch.hidden_size
    head_casts = 0
    if dt.weights == "fp32" and dt.compute != "fp32" and not req.quantized:
        casts = {}
        for m in inv.modules:
            if m.layer is not None and m.kind == LINEAR and (
                    x.full or m.layer > 0 or litgpt_keeps_first_input(m.leaf, block, tg)):
                casts[m.layer] = casts.get(m.layer, 0) + a * m.in_features * m.out_features
        per_layer = [p + casts.get(i, 0) for i, p in enumerate(per_layer)]
        # lm_head's too: autocast caches the cast of a weight that requires grad (full: one), not of a frozen one,
        # which LoRA's chunked head casts again for every 128-position chunk, each kept by that chunk's mm
        head_casts = (1 if x.full else -(-x.s // LITGPT_HEAD_CHUNK)) * a * arch.vocab_size * h
    head_quantized = req.quantized
    head = litgpt_head_terms(arch, x, tg, old=old, head_quantized=head_quantized, block=block)
    out_f, in_f = _largest_linear(inv)
    dequant = out_f * in_f * a if req.quantized else 0
    previous = litgpt_previous_inputs(arch, x, tg, block) if req.quantized else 0  # alive until the new loss exists
    return ActivationModel(
        saved_layers=sum(per_layer),
        saved_head=head.saved + head_casts,
        head_weight_cast=0,
        loss_forward=head.loss_forward + previous,
        loss_backward=head.loss_backward,
        forward_transient=dequant + previous,
        backward_transient=dequant,
        backward_layer=a * t * max(h, arch.intermediate_size),
        tied_embedding_grad=0,
        checkpointed=False,
        logits_block=4 * head.block,
        at_step=head.at_step,
        head_grad_at_loss=False,
    )


def autocast_cast_cache(inv: Inventory, plan: AdapterPlan, x: StepShape, dt: Dtypes) -> int:
    """Bytes of the compute-dtype copies autocast caches for the decoder layers' trainable fp32 linear weights,
    when gradient checkpointing keeps none of them saved.

    torch ``aten/src/ATen/autocast_mode.cpp`` ``cached_cast``: a cast of an fp32 leaf tensor that requires grad is
    cached for the rest of the autocast region, whether or not autograd saves it; ``torch.autocast.__exit__``
    clears the cache (``clear_autocast_cache``). accelerate's autocast wraps ``model.forward``, inside which
    transformers computes the loss, so the forward's end and the loss hold every layer's copy: full fine-tuning
    of fp32 weights (``bf16-mixed``; LLaMA-Factory's fp32 trainable parameters) and fp32 LoRA A/B. Without
    checkpointing the linears save these copies anyway (counted per layer); lm_head's copy is ``head_cast``."""
    if not (x.autocast and x.checkpointed):
        return 0
    if x.full:
        if dt.weights != "fp32":
            return 0
        return x.c * sum(m.in_features * m.out_features for m in inv.modules
                         if m.layer is not None and m.kind in (LINEAR, CONV1D))
    if x.la != 4:
        return 0
    return x.c * x.r * sum(m.in_features + m.out_features for m in plan.targets
                           if m.layer is not None and m.kind != EMBEDDING)


def activation_model(inv: Inventory, plan: AdapterPlan, req: PlanRequest, dt: Dtypes,
                     resident_bytes: int = 0) -> ActivationModel:
    """``resident_bytes``: static bytes on the GPU (weights, constants, adapters, optimizer states); Unsloth sizes
    its loss chunks from the memory left free."""
    if is_litgpt(req):
        return _litgpt_model(inv, plan, req, dt)
    arch = inv.arch
    x = step_shape(req, dt, arch)
    t, h, v = x.t, arch.hidden_size, arch.vocab_size
    per_layer = [
        _gpt2_layer_saved(inv, plan.targets, x, i) if arch.model_type == "gpt2"
        else _layer_saved(inv, plan.targets, plan.param_targets, replace(x, a=x.a_first) if i == 0 else x, req, dt, i)
        for i in range(arch.num_hidden_layers)
    ]
    if framework(req).name == "unsloth" and unsloth_fast_lora(req) and arch.model_type in UNSLOTH_FAST_TYPES:
        per_layer = [unsloth_layer_saved(h, arch.intermediate_size, arch.q_dim, arch.kv_dim,
                                         arch.num_attention_heads, t, x.a)] * arch.num_hidden_layers
    if req.training.framework == "torchtune" and not x.full and per_layer:
        per_layer[0] -= torchtune.first_norm_unsaved_bytes(t, h)
    largest_layer = max(per_layer, default=0)
    # Shared across layers: rotary cos/sin in the residual dtype (b, s, head_dim), the final norm, and
    # (full fine-tuning) lm_head's input.
    head = 2 * x.a * t * arch.head_dim if arch.model_type != "gpt2" else 0
    head += 4 * t * h + 4 * t
    head_dtype = dt.unquantized if req.quantized else dt.weights
    head_cast = 2 * v * h if x.autocast and head_dtype == "fp32" else 0
    head += head_cast  # lm_head's fp32 weight cast to bf16 by autocast, saved until lm_head's backward
    if x.full:
        head += x.a * t * h + (x.c if x.autocast else x.a) * t * h
    if req.training.gradient_checkpointing and framework(req).name == "unsloth":
        # "unsloth" checkpointing offloads each layer's input to pinned host memory and brings it back through
        # GPU buffers sized to one layer input (unsloth_zoo gradient_checkpointing.py, double-buffered)
        saved_layers = UNSLOTH_GPU_BUFFERS * x.a * t * h
        backward_layer = largest_layer
    elif req.training.gradient_checkpointing:
        # only each layer's input is kept (the first one as the embedding made it)
        saved_layers = (max(arch.num_hidden_layers - 1, 0) * x.a + x.a_first) * t * h
        backward_layer = largest_layer
    else:
        saved_layers = sum(per_layer)
        backward_layer = 0
    logits = x.c if x.autocast else DTYPE_BYTES[dt.weights]
    loss_forward = (logits + 4 + 4) * t * v if logits != 4 else 8 * t * v
    softcap = logits * t * v if arch.final_logit_softcapping else 0  # tanh output, saved until its backward
    loss_forward += softcap
    loss_backward = 12 * t * v + softcap
    logits_block = 4 * t * v
    eager_grad = eager_scores_grad(x, arch, req)
    loss = framework(req).loss
    buffers = 0  # model buffers counted with the saved head tensors that outlive the activations (the step)
    if loss == "logits+argmax":
        loss_forward += 8 * t  # ms-swift _compute_acc: logits.argmax(-1), int64 (b, s)
    elif loss == "trl-chunked":
        # TRL's fused LM head replaces lm_head's forward: no logits, no saved cast of an fp32 lm_head weight,
        # and its input is the saved compact copy of the scored rows (app/core/frameworks.py trl_loss_path)
        head_trainable = x.full or "lm_head" in (req.lora.modules_to_save or [])
        lp = trl_loss_path(req, h, v, x.a, x.c if x.autocast else x.a, DTYPE_BYTES[head_dtype], head_trainable)
        logits_block = 4 * lp.block
        head += lp.saved - head_cast - (x.c if x.autocast else x.a) * t * h * x.full
        head_cast = 0
        loss_forward, loss_backward = lp.forward, lp.backward
    elif loss == "torchtune":
        # torchtune's RoPE keeps fp32 cache buffers (app/core/torchtune.py rope_cache_bytes), no per-step cos/sin
        # tensors; its loss replaces the HF logits terms (loss_path)
        rows = arch.max_position_embeddings or req.training.seq_len
        buffers = torchtune.rope_cache_bytes(arch, rows)  # alive through the step too
        head += buffers - 2 * x.a * t * arch.head_dim
        if x.checkpointed:
            # a recomputed layer's backward: the final norm's saved tensors are gone (its backward ran first), the
            # gradient flowing down the residual stream (a·T·h) is alive beside the layer's own
            head_cast += torchtune.final_norm_saved_bytes(t, h)
            backward_layer += x.a * t * h
        tl = torchtune.loss_path(req, v, logits)
        loss_forward, logits_block = tl.forward, 4 * tl.block
        loss_backward = max(tl.backward, torchtune.final_norm_backward_bytes(t, h, x.a))
        if x.full:
            head_step = (step_transient_bytes(req.training.optim, [[((v, h), DTYPE_BYTES[dt.weights])]])
                         if req.training.optimizer_in_bwd else 0)
            loss_backward = max(loss_backward, torchtune.output_backward_bytes(
                req, tl, v * h * DTYPE_BYTES[dt.weights], x.a * t * v, arch.tie_word_embeddings, head_step))
    elif loss == "unsloth-chunked":
        free = gpu(req.hardware.gpu).vram_bytes - outside_allocator_bytes(req.hardware.num_gpus) - resident_bytes
        lp = unsloth_loss_path(req, h, v, x.a, x.c if x.autocast else x.a, free - saved_layers - head)
        logits_block = 4 * lp.block
        head += lp.saved - head_cast - (x.c if x.autocast else x.a) * t * h * x.full
        head_cast = 0
        loss_forward, loss_backward = lp.forward, lp.backward
    transient = 0
    out_f, in_f = _largest_linear(inv)
    if req.quantized and loss == "torchtune":
        # torchao LinearNF4 dequantizes the NF4 weight in its forward and again in its backward
        transient = dequant_backward = torchtune.nf4_dequant_transient(out_f, in_f, req.training.torch_compile)
        if not x.checkpointed:
            leaves = {m.leaf for m in plan.targets}
            transient += torchtune.mlp_forward_locals(t, h, arch.intermediate_size, x.a, leaves)
    else:
        if req.quantized and t > BNB_FUSED_MAX_ROWS:
            transient = out_f * in_f * DTYPE_BYTES[dt.bnb_compute]  # bitsandbytes dequantize-then-matmul fallback
        dequant_backward = out_f * in_f * DTYPE_BYTES[dt.weights] if req.quantized else 0  # MatMul4Bit.backward
    backward_transient = dequant_backward
    targets = [m for m in plan.targets if m.kind != EMBEDDING]
    # Unsloth's fused LoRA kernels do not copy their input to the adapter dtype
    unsloth = framework(req).name == "unsloth" and unsloth_fast_lora(req) and arch.model_type in UNSLOTH_FAST_TYPES
    cast = 0 if unsloth else lora_cast_extra(inv, x, targets)
    transient = max(transient, cast)
    if x.checkpointed:
        # the recompute runs with only the incoming gradient (h wide) alive, where backward_layer counts the
        # widest activation gradient
        backward_transient = max(backward_transient, cast - x.a * t * (max(h, arch.intermediate_size) - h))
    if req.uses_dora:
        transient = max(transient, dora_extra(inv, x, dt, targets, grad_enabled=not x.checkpointed))
        if x.checkpointed:
            # the recompute of a layer runs with autograd on; only the incoming gradient (h wide) is alive
            # then, where backward_layer counts the widest activation gradient
            recompute = dora_extra(inv, x, dt, targets, grad_enabled=True)
            recompute -= x.a * t * (max(h, arch.intermediate_size) - h)
            backward_transient = max(backward_transient, recompute)
        backward_transient = max(backward_transient, dora_backward_extra(inv, x, dt, targets))
    if loss == "torchtune":
        # moments of a layer's backward besides a linear's NF4 dequantization: the SwiGLU product's backward, and
        # under optimizer_in_bwd one parameter's gradient with its optimizer step
        down_trained = x.full or any(m.leaf == "down_proj" for m in targets)
        backward_transient = max(backward_transient,
                                 torchtune.swiglu_backward_bytes(t, arch.intermediate_size, x.a, down_trained),
                                 torchtune.in_bwd_step_bytes(req, plan, dt, t, arch.intermediate_size, x.a))
    return ActivationModel(
        saved_layers=saved_layers,
        saved_head=head,
        head_weight_cast=head_cast,
        loss_forward=loss_forward,
        loss_backward=loss_backward,
        forward_transient=transient,
        backward_transient=backward_transient,
        # + one activation gradient; eager attention's backward also holds the gradient of its s×s probabilities
        backward_layer=backward_layer + x.a * t * max(h, arch.intermediate_size) + eager_grad,
        tied_embedding_grad=2 * v * h * DTYPE_BYTES[dt.weights] if x.full and arch.tie_word_embeddings else 0,
        checkpointed=req.training.gradient_checkpointing,
        logits_block=logits_block,
        # the model's own loss: cross_entropy's fp32 buffers are freed before lm_head's backward computes its weight
        # gradient from the logits' gradient (in the logits' dtype) and its input
        head_backward=(logits * t * v + x.a * t * h) if loss in ("logits", "logits+argmax") else None,
        at_step=buffers,
        cast_cache=autocast_cast_cache(inv, plan, x, dt),
    )
