"""torchtune's model, loss and step, for the analytic estimate (pure Python; ``training.framework='torchtune'``).

Read at torchtune v0.4.0 (2024-12, the release of the published "Optimization flags" table; the 2024 recipes of the
other published rows share these modules) with torchao 0.10.0's ``NF4Tensor`` (same storage layout since 0.1):

- ``dtype: bf16``: recipes build the model under ``training.set_default_dtype(self._dtype)``
  (``recipes/lora_finetune_single_device.py _setup_model``): base weights *and* LoRA A/B are bf16, there is no
  autocast, so gradients and ``torch.optim.AdamW`` states are bf16 (:mod:`app.core.precision`).
- Layers (``torchtune/modules/transformer.py TransformerSelfAttentionLayer``, ``attention.py``, ``feed_forward.py``,
  ``rms_norm.py``, ``position_embeddings.py``): RMSNorm upcasts to fp32 (``x.float()`` and the rsqrt are saved) like
  transformers' LlamaRMSNorm; RoPE computes in fp32 and returns ``type_as(x)``; under GQA ``k`` and ``v`` are
  expanded to every query head *before* ``scaled_dot_product_attention`` (``k.unsqueeze(2).expand(...).flatten(1,
  2)``: copies), so attention saves q, k, v all ``q_dim`` wide (:func:`gqa_expansion_bytes`); with packed batches
  (``input_pos`` given) RoPE gathers ``cache[input_pos]`` per call (fp32, saved by its products).
- ``LoRALinear.forward`` (``torchtune/modules/peft/lora.py``): ``lora_a(dropout(x))`` in the model dtype (no copy
  of ``x``); QLoRA's ``linear_nf4`` (torchao ``LinearNF4``) saves the NF4 weight and dequantizes it in forward and
  backward (:func:`nf4_dequant_transient`).
- QLoRA builders (``qlora_llama*``, ``_component_builders.py``): every attention and MLP linear is NF4
  (``LoRALinear(quantize_base=True)``, ``FrozenNF4Linear`` for the others); embeddings and the output stay bf16.
- Loss (:func:`loss_path`): ``CEWithChunkedOutputLoss`` (``torchtune/modules/loss/ce_chunked_output_loss.py``) or
  ``torch.nn.CrossEntropyLoss`` over ``self.output(h).float()``; ``compile: True`` compiles it
  (``training/_compile.py compile_loss``).
- ``optimizer_in_bwd`` (``training/memory.py register_optim_in_bwd_hooks``): one optimizer per parameter, stepped
  and zeroed in its ``register_post_accumulate_grad_hook``.
- ``enable_activation_offloading`` (``training/_activation_offload.py OffloadActivations``, which TRL copied): the
  planner's ``activation_offloading`` rules (:func:`app.core.switches.activation_offload`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.core.architectures import ArchSpec
from app.core.errors import PlanError
from app.core.optimizers import step_transient_bytes
from app.core.quantization import QuantBytes
from app.core.request import PlanRequest
from app.core.units import DTYPE_BYTES, ceil_div

TT_LORA_NAMES = {"q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "output_proj"}
"""transformers/PEFT module names → torchtune ``lora_attn_modules`` names."""
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")
"""The MLP projections torchtune's ``apply_lora_to_mlp`` adapts together."""

if TYPE_CHECKING:  # precision imports frameworks, which imports this module
    from app.core.adapters import AdapterPlan
    from app.core.precision import Dtypes

RELEASE = "torchtune 0.4.0 (torchao 0.10.0 NF4Tensor)"
SOURCE = ("torchtune/modules/{transformer,attention,rms_norm,position_embeddings}.py, modules/peft/lora.py, "
          "modules/loss/ce_chunked_output_loss.py, training/_compile.py, training/memory.py; "
          "torchao/dtypes/nf4tensor.py")
DEFAULT_OUTPUT_CHUNKS = 8
"""``CEWithChunkedOutputLoss.__init__(num_output_chunks=8)``: the loss every torchtune config names since 0.3."""
NF4_BLOCK_SIZE = 64
"""torchao ``to_nf4(tensor, block_size=64, scaler_block_size=256)`` (torchtune ``LoRALinear``/``FrozenNF4Linear``)."""
NF4_SCALER_BLOCK_SIZE = 256
NF4_TABLE_ENTRIES = 16
"""torchao ``NF4Tensor.from_tensor``: the 16-value NF4 code table, built in the input dtype, kept per tensor."""
NF4_DEQUANT_BYTES_PER_ELEMENT = 14
"""Peak bytes per element of torchao ``NF4Tensor.get_original_weight`` (the ``_to_copy`` that ``LinearNF4`` calls):
two int64 index tensors of n/2 elements (``(quantized_data >> 4).to(torch.long)``, ``(quantized_data & 0b1111)
.to(torch.long)``: 4n + 4n bytes), their bf16 table lookups (n + n), the two scaled halves (n + n) and the bf16
``torch.stack`` of them (2n), all locals alive until it returns: 14n bytes for a bf16 weight of n elements."""


def nf4_bytes(numel: int, itemsize: int = 2) -> QuantBytes:
    """Storage of one torchao ``NF4Tensor`` built from a weight of ``numel`` elements in a dtype of ``itemsize``
    bytes (``NF4Tensor.from_tensor``, ``double_quantize_scalers``): ``quantized_data`` uint8 numel/2; double-quantized
    block scalers: ``quantized_scalers`` int8, one per 64-element block; ``quantization_factor`` (input dtype) one per
    256 scalers; ``scaler_mean`` a 0-dim tensor (input dtype); the ``nf4`` code table (16 entries, input dtype).
    Differs from bitsandbytes (fp32 nested absmax, a 256-entry fp32 code, an fp32 offset, an fp32 NF4 table)."""
    blocks = ceil_div(numel, NF4_BLOCK_SIZE)
    scaler_blocks = ceil_div(blocks, NF4_SCALER_BLOCK_SIZE)
    # with one scaler block (numel ≤ 16,384) the factor stays a view of the (1, 256) tensor it was sliced from
    factors = itemsize * (NF4_SCALER_BLOCK_SIZE if scaler_blocks == 1 else scaler_blocks)
    constants = blocks + factors + itemsize + itemsize * NF4_TABLE_ENTRIES
    return QuantBytes(data=numel // 2, constants=constants)


NF4_DEQUANT_COMPILED_BYTES_PER_ELEMENT = 2
"""Under ``torch.compile`` Inductor fuses ``get_original_weight``'s shifts, casts, table lookups and scaling into the
kernel that writes the bf16 weight: only that weight (2n bytes) is allocated. Measured with torch.profiler's memory
events on CPU (tests/test_torchtune.py): 14.0 bytes per element eager, 2.2 compiled (the weight and the output)."""


def nf4_dequant_transient(out_features: int, in_features: int, compiled: bool = False) -> int:
    """Bytes alive while ``LinearNF4`` dequantizes an (out, in) NF4 weight (forward and backward):
    :data:`NF4_DEQUANT_BYTES_PER_ELEMENT` per element eager, :data:`NF4_DEQUANT_COMPILED_BYTES_PER_ELEMENT`
    compiled."""
    per = NF4_DEQUANT_COMPILED_BYTES_PER_ELEMENT if compiled else NF4_DEQUANT_BYTES_PER_ELEMENT
    return per * out_features * in_features


def compiled_layer_saving(tokens: int, hidden: int, intermediate: int, act_bytes: int, full: bool) -> int:
    """Bytes a decoder layer saves less when torchtune compiles it (``training.compile_model``: each
    ``TransformerSelfAttentionLayer`` through ``torch.compile``; AOTAutograd's min-cut partitioner recomputes cheap
    pointwise results in backward): the SiLU output (a·T·I; the gate and up outputs stay), both RMSNorms' fp32 input
    copies (2 · 4·T·h; the fp32 rstd stays) and, when the norm scales train, their normalised inputs (2 · a·T·h);
    the second norm's input (the residual stream after attention, a·T·h) is saved instead. Measured with
    ``torch.autograd.graph.saved_tensors_hooks`` on torchtune's layer, eager against compiled (Inductor, CPU):
    LoRA 18,504 → 12,360 bytes per token, full fine-tuning 24,616 → 16,424 (h 512, I 1536), as this gives."""
    saving = act_bytes * tokens * intermediate + 2 * 4 * tokens * hidden - act_bytes * tokens * hidden
    return saving + (2 * act_bytes * tokens * hidden if full else 0)


def output_chunks(req: PlanRequest) -> int:
    """The request's ``num_output_chunks`` (0: plain CrossEntropyLoss), torchtune's default when not given."""
    n = req.training.num_output_chunks
    return DEFAULT_OUTPUT_CHUNKS if n is None else n


def gqa_expansion_bytes(tokens: int, q_dim: int, kv_dim: int, act_bytes: int, kv_heads: int) -> int:
    """Bytes a layer saves beyond transformers' attention because torchtune's ``MultiHeadAttention.forward``
    expands ``k`` and ``v`` to every query head (a copy each, ``q_dim`` wide instead of ``kv_dim``) before
    ``scaled_dot_product_attention``, which saves them; 0 without GQA (the expand is skipped) and with one key/value
    head (MQA, Gemma-2B): ``flatten(1, 2)`` of (b, 1, q_per_kv, s, d) merges a size-1 dim with the expanded one, a
    view (the gemma case of bench/torchtune_grid.py keeps no copy)."""
    return 2 * act_bytes * tokens * (q_dim - kv_dim) if q_dim != kv_dim and kv_heads > 1 else 0


def packed_rope_bytes(tokens: int, head_dim: int) -> int:
    """Packed batches give RoPE ``input_pos``: ``self.cache[input_pos]`` gathers an fp32 (b, s, head_dim/2, 2) table
    per call (q and k), saved by the rotation's products (``position_embeddings.py RotaryPositionalEmbeddings``)."""
    return 2 * 4 * tokens * head_dim


def rope_cache_bytes(arch: ArchSpec, rows: int) -> int:
    """Bytes of torchtune's RoPE cache buffers (fp32, ``rows`` = ``max_seq_len``: the config's
    ``max_position_embeddings``, as the model builders set it). The llama3_1 / llama3_2 component builders build
    their layers in a loop around one ``Llama3ScaledRoPE`` (configs with ``rope_type`` "llama3"): one cache
    (max, head_dim/2, 2). The llama2, llama3, mistral and qwen2 builders hand one layer to ``TransformerDecoder``,
    whose ``_get_clones`` deep-copies it, RoPE module included: one cache per layer; qwen2's
    ``Qwen2RotaryPositionalEmbeddings`` keeps (max, 2·head_dim) (cos and sin of the doubled frequencies). Found in
    the trace of bench/torchtune_grid.py; on Qwen2.5-7B (28 layers, 131,072 positions) 3.5 GiB."""
    if arch.rope_type == "llama3":
        return 4 * rows * arch.head_dim
    per = 8 * rows * arch.head_dim if arch.model_type == "qwen2" else 4 * rows * arch.head_dim
    return arch.num_hidden_layers * per


def first_norm_unsaved_bytes(tokens: int, hidden: int) -> int:
    """Bytes the first layer's attention norm does not save when the embedding is frozen (LoRA, QLoRA): nothing
    before it requires grad (torchtune calls no ``enable_input_require_grads``), so autograd keeps neither its fp32
    input copy (4·T·h) nor its fp32 rstd (4·T) (``rms_norm.py``); the layer's first adapter saves the norm's output.
    Found in the trace of bench/torchtune_grid.py (the GQA LoRA/QLoRA cases without checkpointing hold one fp32 copy
    fewer than norms)."""
    return 4 * tokens * hidden + 4 * tokens


def mlp_forward_locals(tokens: int, hidden: int, intermediate: int, act_bytes: int, adapted: set[str]) -> int:
    """QLoRA without checkpointing: what the last layer's forward holds beside its saved tensors while its MLP
    dequantizes an NF4 weight (the forward's widest moment), less the final norm's saved fp32 input copy and rstd,
    which do not exist yet (the planner counts them among the saved head tensors).

    ``TransformerSelfAttentionLayer.forward`` (``modules/transformer.py``) keeps its input ``x`` (also the caller's),
    ``attn_out`` and ``h = attn_out + x`` as locals (3·a·T·h) while ``self.mlp(self.mlp_norm(h))`` runs;
    ``FeedForward.forward`` holds the norm's output (saved anyway when gate or up carry LoRA) and, while ``w2``
    dequantizes, the SwiGLU product (a·T·I; saved anyway when down_proj carries LoRA). Found in the trace of
    bench/torchtune_grid.py (the QLoRA cases without checkpointing peak in forward)."""
    norm_out = 0 if adapted & {"gate_proj", "up_proj"} else act_bytes * tokens * hidden
    product = 0 if "down_proj" in adapted else act_bytes * tokens * intermediate
    return 3 * act_bytes * tokens * hidden + norm_out + product - (4 * tokens * hidden + 4 * tokens)


def final_norm_saved_bytes(tokens: int, hidden: int) -> int:
    """The final RMSNorm's saved fp32 input copy and rstd (4·T·h + 4·T), freed by its backward before any layer's:
    not alive in a recomputed layer's backward, where the residual stream's gradient (a·T·h) is instead (traced in
    bench/torchtune_grid.py: the checkpointed cases, saved tensors checked with ``saved_tensors_hooks``)."""
    return 4 * tokens * hidden + 4 * tokens


def final_norm_backward_bytes(tokens: int, hidden: int, act_bytes: int) -> int:
    """Bytes the final RMSNorm's backward holds beyond the saved tensors, after the output projection's backward
    has freed its saved input (a·T·h): five fp32 T×h temporaries at once (the gradient through ``x_fp32 * rstd``,
    the product for rstd's gradient, ``mean``'s expanded gradient, ``pow``'s ``x`` and its product; 20·T·h).
    Below the loss's backward wherever V ≫ h; the peak of small-vocabulary models (bench/torchtune_grid.py)."""
    return 20 * tokens * hidden - act_bytes * tokens * hidden


def swiglu_backward_bytes(tokens: int, intermediate: int, act_bytes: int, product_saved: bool) -> int:
    """Bytes a layer's backward holds beyond one activation gradient while the SwiGLU product
    ``activation(w1(x)) * w3(x)`` (``feed_forward.py FeedForward.forward``) back-propagates: ``mul``'s backward
    returns the gradients of both factors (two T×I tensors) while the incoming gradient (T×I, the one activation
    gradient the planner counts) and the saved factors are alive. Found in the trace of torchtune's step
    (bench/torchtune_grid.py), where the chunked loss leaves a layer's backward as the peak.

    ``product_saved``: w2 kept the product for a weight gradient (its LoRA's ``lora_a``, or w2 itself under full
    fine-tuning). w2's backward, which runs before ``mul``'s, releases it: one T×I less than the layer's saved
    bytes at that moment."""
    return (1 if product_saved else 2) * act_bytes * tokens * intermediate


def in_bwd_step_bytes(req: PlanRequest, plan: AdapterPlan, dt: Dtypes, tokens: int, intermediate: int,
                      act_bytes: int) -> int:
    """Under ``optimizer_in_bwd`` the largest moment a decoder layer's parameter step adds to the layer's backward
    (beyond its saved tensors and one activation gradient): the parameter's gradient and its step's temporary
    (``torch.optim.AdamW`` foreach on a one-tensor list: ``_foreach_sqrt`` of its second moment; fused and
    bitsandbytes steps: none). 0 without ``optimizer_in_bwd``.

    The step runs in the parameter's post-accumulate-grad hook, after its backward node has released what it saved.
    The down projection comes first in a layer's backward and holds the widest moment: inside its node the gradient
    and the saved SwiGLU product (T×I) are alive together; in its hook the product is freed and the step's
    temporary allocated, so the moment is the gradient plus ``max(0, temporary − T×I)``. The other layer
    parameters step after more of the layer's saved tensors are freed (the product's factors, the attention's), so
    the same bound covers them. Found in the trace of torchtune's step (bench/torchtune_grid.py, the ``in_bwd``
    cases). The output projection's step comes at the start of backward (within the loss's backward moment, which
    counts its gradient buffer) and the embedding's at the end (:func:`in_bwd_last_step_bytes`)."""
    if not req.training.optimizer_in_bwd:
        return 0
    size = DTYPE_BYTES[dt.weights]
    freed = act_bytes * tokens * intermediate
    best = 0
    for t in plan.trainable:
        if t.group in ("embedding", "lm_head"):
            continue
        step = step_transient_bytes(req.training.optim, [[(t.shape, size)]])
        best = max(best, t.numel * size + max(0, step - freed))
    return best


def in_bwd_last_step_bytes(req: PlanRequest, plan: AdapterPlan, dt: Dtypes, tied: bool) -> int:
    """Under ``optimizer_in_bwd`` the end of backward, after every layer's activations are freed: the input
    embedding is the last parameter whose gradient is ready, so its step runs alone (its gradient, unless tied,
    where the gradient is counted as kept, and its step temporary); this is the step phase's moment. 0 without
    ``optimizer_in_bwd``."""
    if not req.training.optimizer_in_bwd:
        return 0
    size = DTYPE_BYTES[dt.weights]
    best = 0
    for t in plan.trainable:
        if t.group == "embedding":
            grad = 0 if tied else t.numel * size
            best = max(best, grad + step_transient_bytes(req.training.optim, [[(t.shape, size)]]))
    return best


@dataclass(frozen=True)
class TorchtuneLoss:
    """Bytes of torchtune's loss path beyond the final norm (a T-token micro-batch, vocabulary V)."""

    forward: int  # live at the loss's forward peak, beyond the saved activations
    backward: int  # live at the start of backward (before the output projection's backward)
    block: int  # elements of the largest fp32 block of logits built at once


def loss_path(req: PlanRequest, vocab: int, act_bytes: int) -> TorchtuneLoss:
    """torchtune's loss, T = b·s (labels are shifted with an ignore index, ``torch.hstack``; the logits are not
    sliced), logits in the model dtype (``act_bytes``); the recipe ``del logits`` before ``backward``:

    - chunked (``CEWithChunkedOutputLoss``, n chunks): ``TransformerDecoder.chunked_output`` builds n logit chunks in
      the model dtype (``a·T·V`` in all); ``compute_cross_entropy`` runs ``F.cross_entropy(chunk.float(), ...)`` per
      chunk: the fp32 copy (4·T·V/n) is freed, ``log_softmax`` saves its fp32 output (4·T·V/n per chunk, all chunks
      kept until backward). Backward: the saved fp32 outputs, and per chunk the gradient of ``log_softmax`` and of
      its input (2 · 4·T·V/n). Compiled (``compile_loss`` compiles ``compute_cross_entropy``): the upcast and the
      reductions fuse (no fp32 chunk), AOTAutograd's partitioner saves the graph input (the chunk, already alive) and
      two fp32 row statistics (8·T), and the backward kernel writes the chunk's gradient in the model dtype: a·T·V
      saved, a·T·V/n in backward (tests/test_torchtune.py checks what the compiled loss saves).
    - plain (``CrossEntropyLoss``, ``num_output_chunks`` 0): ``self.output(h).float()`` (a·T·V, then 4·T·V);
      ``log_softmax`` saves 4·T·V. Backward: that output, its gradient and the logits' gradient (12·T·V), then the
      cast back. Compiled (the whole loss): the fp32 logits are the saved input, one fp32 gradient (8·T·V).
    """
    tr = req.training
    t = tr.micro_batch_size * tr.seq_len
    n = output_chunks(req)
    a = act_bytes
    tv = t * vocab
    if n:
        per = -(-t // n) * vocab
        if tr.torch_compile:
            return TorchtuneLoss(forward=a * tv + 8 * t, backward=a * tv + a * per, block=per)
        return TorchtuneLoss(forward=a * tv + 4 * tv + 4 * per, backward=4 * tv + 2 * 4 * per, block=per)
    if tr.torch_compile:
        return TorchtuneLoss(forward=max((a + 4) * tv, 4 * tv + 4 * t), backward=8 * tv, block=tv)
    return TorchtuneLoss(forward=max((a + 4) * tv, 8 * tv), backward=12 * tv, block=tv)


def output_backward_bytes(req: PlanRequest, loss: TorchtuneLoss, weight_bytes: int, logits_bytes: int,
                          tied: bool, step_bytes: int = 0) -> int:
    """Full fine-tuning, the start of backward with the output projection's weight gradient (V×h, ``weight_bytes``),
    beyond what the phases count (an untied ``lm_head`` gradient, except under ``optimizer_in_bwd``, which keeps no
    gradient set; ``step_bytes``: the output weight's step temporary there).

    - Plain CrossEntropyLoss: the one contribution comes after the loss's own backward has freed its fp32 buffers,
      beside the logits' gradient in the model dtype (``logits_bytes``); under ``optimizer_in_bwd`` its hook then
      steps it (gradient and step temporary), the logits' gradient freed.
    - Chunked, untied: every chunk's cross-entropy runs backward before any ``output(chunk)`` (recorded earlier in
      forward), so no weight gradient exists at the loss's moment; then the chunks' logit gradients
      (``logits_bytes`` in all, in the model dtype) wait while each ``output(chunk)`` adds a V×h contribution to its
      ``AccumulateGrad`` input buffer out of place (torch ``autograd/input_buffer.cpp accumulate``: the transposed
      weight-gradient products are not reused in place): buffer, contribution and sum alive together, 3·V×h, beside
      the n−2 chunks' gradients still waiting.
    - Chunked, tied: the tied weight's node waits for the embedding's contribution at the end of backward, so its
      buffer stays beside the loss's moment (``TiedLinear``, llama3_2 builders): + 2·V×h.

    The trace of bench/torchtune_grid.py shows each (the ``in_bwd`` cases: untied, vocabulary four times a layer's
    largest linear; tied)."""
    n = output_chunks(req)
    if not n:
        if not req.training.optimizer_in_bwd or tied:
            return loss.backward
        return max(loss.backward, logits_bytes + weight_bytes, weight_bytes + step_bytes)
    if tied:  # a tied weight's sum is no lm_head gradient of the phases
        return loss.backward + 2 * weight_bytes
    counted = 0 if req.training.optimizer_in_bwd else weight_bytes
    return max(loss.backward, 3 * weight_bytes - counted + logits_bytes * max(n - 2, 0) // n)


CUSTOM_SHARDED_GROUPS = {"tok_embeddings": "embedding", "output": "lm_head"}
"""torchtune module names in ``custom_sharded_layers`` → the planner's parameter groups."""


def fsdp_gathered(req: PlanRequest, weight_groups: dict[str, int], layer_bytes: int) -> int:
    """Unsharded bytes alive at once under torchtune's FSDP2 (``training.shard_model``: ``fully_shard`` on each
    decoder layer, on each module named in ``custom_sharded_layers``, then on the whole model, all with
    ``reshard_after_forward=True``). FSDP2 never reshards the root after forward (``_lazy_init``: the root's
    ``post_forward_mesh_info`` is None), so the embeddings and output stay gathered unless they are units of their
    own; those are gathered only while they run (one at a time, instead of a layer and its prefetched successor)."""
    custom = [CUSTOM_SHARDED_GROUPS[m] for m in req.training.custom_sharded_layers or []]
    root = sum(weight_groups.get(g, 0) for g in ("embedding", "lm_head") if g not in custom)
    own = max((weight_groups.get(g, 0) for g in custom), default=0)
    return root + max(2 * layer_bytes, own + layer_bytes)


def assumption(req: PlanRequest) -> str:
    """The ``assumptions`` line for torchtune."""
    n = output_chunks(req)
    loss = (f"CEWithChunkedOutputLoss ({n} chunks of logits in the model dtype, each upcast to fp32 inside the loss)"
            if n else "CrossEntropyLoss over the full fp32 logits (self.output(h).float())")
    text = (f"torchtune recipe: the whole model (LoRA weights included) built in {req.training.precision} without "
            f"autocast, so gradients and AdamW states share that dtype; {loss}; under GQA k and v are expanded to "
            "every query head before attention")
    if req.quantized:
        text += ("; QLoRA: every attention and MLP linear is a torchao NF4Tensor (block 64, int8 scalers "
                 "double-quantized per 256), dequantized to bf16 in forward and backward")
    if req.training.optimizer_in_bwd:
        text += "; optimizer_in_bwd: each parameter is stepped and its gradient freed as soon as it is ready"
    if req.training.torch_compile:
        text += ("; compile: the loss saves its input and the row log-sum-exp, the layers recompute SiLU and the "
                 "norms' fp32 copies, NF4 dequantization is one fused kernel (what Inductor's partitioner and "
                 "fusion do, measured on CPU)")
    return text + (". Estimated analytically from torchtune's source (not traced here); the published torchtune "
                   "rows are compared in bench/published_check.py.")


def check_request(req: PlanRequest) -> None:
    """422 for settings torchtune's recipes do not have (the field in ``loc``), and for its config keys under
    another framework."""
    tr = req.training
    if tr.framework != "torchtune":
        for name in ("optimizer_in_bwd", "num_output_chunks", "custom_sharded_layers"):
            if getattr(tr, name) not in (False, None):
                raise PlanError(("training", name), f"{name} is a torchtune recipe setting: set training.framework "
                                "to 'torchtune', or leave it unset")
        return
    if req.hardware.sharding not in ("none", "fsdp"):
        raise PlanError(("hardware", "sharding"), "torchtune's distributed recipes shard with FSDP2 (fully_shard): "
                        "hardware.sharding 'fsdp', or 'none' on one GPU")
    if tr.custom_sharded_layers and req.hardware.sharding != "fsdp":
        raise PlanError(("training", "custom_sharded_layers"), "custom_sharded_layers names FSDP units: it needs "
                        "hardware.sharding 'fsdp'")
    if tr.precision not in ("bf16", "fp32"):
        raise PlanError(("training", "precision"), "torchtune's recipes take dtype bf16 or fp32 (the whole model in "
                        "that dtype, no autocast; training.precision 'bf16' or 'fp32')")
    if tr.optimizer_in_bwd and req.uses_adapter:
        raise PlanError(("training", "optimizer_in_bwd"), "torchtune's LoRA recipes have no optimizer_in_bwd (it is a "
                        "full fine-tuning setting of full_finetune_single_device / full_finetune_distributed)")
    if tr.optimizer_in_bwd and tr.gradient_accumulation_steps > 1:
        # recipes/full_finetune_*.py __init__: "Gradient accumulation is not supported with optimizer in bwd."
        raise PlanError(("training", "gradient_accumulation_steps"), "torchtune refuses gradient accumulation with "
                        "optimizer_in_bwd (each gradient is freed by its step in backward): set "
                        "gradient_accumulation_steps to 1, or optimizer_in_bwd to false")
    if tr.use_liger_kernel:
        raise PlanError(("training", "use_liger_kernel"), "use_liger_kernel is an HF Trainer switch; torchtune runs "
                        "its own modules (its chunked loss is training.num_output_chunks)")
    if tr.attn_implementation == "eager":
        raise PlanError(("training", "attn_implementation"), "torchtune always calls scaled_dot_product_attention "
                        "(flex_attention for packed batches): leave attn_implementation unset, or 'sdpa' / "
                        "'flash_attention_2'")
    q = req.quantization
    if req.quantized and (q.load_in_8bit or q.bnb_4bit_quant_type != "nf4"):
        field = "load_in_8bit" if q.load_in_8bit else "bnb_4bit_quant_type"
        raise PlanError(("quantization", field), "torchtune's QLoRA quantizes with torchao's NF4Tensor only "
                        "(bnb_4bit_quant_type 'nf4', load_in_8bit false)")
