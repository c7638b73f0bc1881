"""Activation memory of one training step (bytes), by phase, without torch.

Each term is a tensor the real step keeps (found in the trace engine's live-storage listings of
transformers 5.24 / PEFT 0.21.2 / bitsandbytes 0.50.2 steps and in ``shared/docs/memory-internals.md``).
Notation: ``T`` tokens per micro-batch (b·s), ``h`` hidden size, ``I`` MLP width, ``V`` vocabulary,
``c`` bytes of the autocast compute dtype (4 without autocast), ``a`` bytes of the residual stream
(fp32 when the weights are fp32, or for QLoRA after ``prepare_model_for_kbit_training``), ``lo`` bytes of
a projection's output (``c``; for a bitsandbytes 4-bit layer the dtype of its input, ``a``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from app.core import torchtune
from app.core.adapters import AdapterPlan
from app.core.architectures import PEFT_DEFAULT_TARGET_MODULES, ArchSpec, attention_for
from app.core.catalog import gpu
from app.core.frameworks import (
    UNSLOTH_FAST_TYPES,
    UNSLOTH_GPU_BUFFERS,
    framework,
    trl_loss_path,
    unsloth_fast_lora,
    unsloth_layer_saved,
    unsloth_loss_path,
)
from app.core.inventory import CONV1D, EMBEDDING, LINEAR, Inventory, Module, Tensor
from app.core.litgpt import Shape as LitShape
from app.core.litgpt import Targets as LitTargets
from app.core.litgpt import head_terms as litgpt_head_terms
from app.core.litgpt import is_litgpt, old_norm
from app.core.litgpt import layer_saved as litgpt_layer_saved
from app.core.litgpt import previous_step_inputs as litgpt_previous_inputs
from app.core.optimizers import step_transient_bytes
from app.core.overhead import outside_allocator_bytes
from app.core.patterns import compile_target_regex
from app.core.precision import Dtypes
from app.core.request import PlanRequest
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


@dataclass(frozen=True)
class _Ctx:
    t: int
    b: int
    s: int
    c: int  # autocast compute bytes (4 when no autocast)
    a: int  # residual stream bytes
    a_first: int  # bytes of the first decoder layer's input (the embedding output; ``a`` unless QDoRA promotes)
    lo: int  # projection output bytes
    la: int  # LoRA A/B bytes (fp32; bf16 under TRL with a k-bit base)
    autocast: bool
    quantized: bool
    full: bool
    dropout: bool
    dora: bool
    r: int
    checkpointed: bool
    top_k: int  # MoE experts per token (0 for dense models)
    experts: int  # MoE experts per block


def _ctx(req: PlanRequest, dt: Dtypes, arch: ArchSpec) -> _Ctx:
    tr = req.training
    autocast = dt.autocast and dt.compute != "fp32"
    c = DTYPE_BYTES[dt.compute]
    a = DTYPE_BYTES[dt.unquantized if req.quantized else dt.weights]
    if req.method == "full" or not req.quantized:
        a = DTYPE_BYTES[dt.weights]
    lo = a if req.quantized else (c if autocast else DTYPE_BYTES[dt.weights])
    a_first = a
    if req.quantized and req.uses_dora and autocast and DTYPE_BYTES[dt.magnitude] > lo:
        # PEFT 0.21.2 tuners/lora/bnb.py Linear4bit.forward converts the adapter's result back to the base
        # result's dtype only when autocast is off (``requires_conversion``); DoRA's combination with the fp32
        # magnitude (tuners/lora/dora.py DoraLinearLayer.forward) is fp32, so under autocast every QDoRA
        # projection returns fp32, and once an adapted output projection (o_proj, down_proj) adds into it,
        # so does the residual stream.
        lo = DTYPE_BYTES[dt.magnitude]
        if _adapts_output_projection(req, arch):
            a = lo
    return _Ctx(t=tr.micro_batch_size * tr.seq_len, b=tr.micro_batch_size, s=tr.seq_len, c=c, a=a, a_first=a_first,
                lo=lo,
                la=DTYPE_BYTES[dt.adapters],
                autocast=autocast, quantized=req.quantized, full=req.method == "full",
                dropout=req.uses_adapter and req.lora.lora_dropout > 0, dora=req.uses_dora, r=req.lora.r,
                checkpointed=tr.gradient_checkpointing, top_k=arch.num_experts_per_tok, experts=arch.num_experts)


OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "out_proj", "dense", "c_proj", "wo", "w2", "fc2", "dense_4h_to_h")
"""Leaf names of the linears whose output is added to the residual stream (attention output, MLP down)."""


def _adapts_output_projection(req: PlanRequest, arch: ArchSpec) -> bool:
    """Whether ``lora.target_modules`` adapts an output projection: 'all-linear' does; a list by leaf name; a
    regex as PEFT matches it (``re.fullmatch`` on the module name) on the Llama names of the attention and MLP
    output projections; unset: PEFT's default targets for the model type."""
    targets = req.lora.target_modules
    if targets is None:
        targets = PEFT_DEFAULT_TARGET_MODULES.get(arch.model_type) or []
    if targets == "all-linear":
        return True
    if isinstance(targets, str):
        regex = compile_target_regex(targets)
        names = ("model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj")
        return any(regex.fullmatch(name) for name in names)
    return any(name.split(".")[-1] in OUTPUT_PROJECTIONS for name in targets)


def _tokens(x: _Ctx, m: Module) -> int:
    """Rows a linear sees: all tokens, or for one expert of a transformers 4.x MoE block (an nn.Linear per
    expert, run on the tokens routed to it) the average share T·top_k/E."""
    return -(-x.t * x.top_k // x.experts) if x.experts and ".experts." in m.name else x.t


def _adapter_copies_input(x: _Ctx) -> bool:
    """Whether each adapter saves a new copy of its input: autocast's cast of an input not in the compute dtype, or
    (non-quantized layers, which cast ``x`` to lora_A's dtype: PEFT ``_cast_input_dtype``) of PEFT's copy in an
    adapter dtype that is not the compute dtype. Under FSDP's 16-bit ``param_dtype`` the adapters compute in it:
    no copy."""
    return x.autocast and (x.a != x.c or (not x.quantized and x.la != x.c))


def _adapter_saved(x: _Ctx, targets: list[Module], shared_inputs: int) -> int:
    """LoRA/DoRA tensors saved per layer: input copies, A·x, cached weight casts, dropout masks, DoRA results.

    ``shared_inputs`` is the number of distinct inputs the adapted linears read (q/k/v share one).
    """
    total = 0
    lora_c = x.c if x.autocast else x.la
    copies_per_linear = _adapter_copies_input(x)
    for m in targets:
        k, n, t = m.in_features, m.out_features, _tokens(x, m)
        if copies_per_linear:
            total += lora_c * t * k  # autocast's cast of x for lora_A (a new tensor per adapter)
        elif x.dropout:
            total += lora_c * t * k  # the dropout output lora_A saves
        if x.dropout:
            total += t * k  # CUDA native_dropout keeps a bool mask
        total += lora_c * t * x.r  # lora_A output, saved by lora_B
        if x.autocast and x.la != x.c:
            total += x.c * x.r * (k + n)  # autocast's cached bf16 copies of lora_A / lora_B weights
        if x.dora:
            # DoRA keeps base_result and lora_result; with dropout > 0 it recomputes base_result as
            # F.linear(dropout(x), W) (autocast dtype) and saves W (under autocast its cast)
            total += t * n * ((lora_c if x.dropout else x.lo) + lora_c)
            if x.dropout:
                total += n * k * lora_c
    if not copies_per_linear and not x.dropout:
        total += shared_inputs  # lora_A saves its input itself, shared by adapters reading the same tensor
    return total


_INPUT_GROUPS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "qkv_proj": "qkv", "c_attn": "qkv",
                 "gate_proj": "mlp_in", "up_proj": "mlp_in", "gate_up_proj": "mlp_in", "c_fc": "mlp_in"}


def _shared_inputs(targets: list[Module], bytes_per_feature: int) -> int:
    """Bytes of the distinct inputs adapted linears read when lora_A saves its input without copying it.

    q/k/v read one tensor, gate/up another; o_proj reads the attention output, which attention already keeps.
    """
    groups = {_INPUT_GROUPS.get(m.leaf, m.leaf): m.in_features for m in targets}
    return sum(bytes_per_feature * k for g, k in groups.items() if g != "o_proj")


def _param_wrapper_saved(arch: ArchSpec, targets: list[Tensor], x: _Ctx, layer: int) -> int:
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


def _layer_saved(inv: Inventory, plan_targets: list[Module], param_targets: list[Tensor], x: _Ctx,
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
    total += _adapter_saved(x, layer_targets, _shared_inputs(layer_targets, a * t))
    total += _param_wrapper_saved(arch, param_targets, x, layer)
    if tt and req.training.torch_compile:
        total -= torchtune.compiled_layer_saving(t, h, arch.intermediate_size, a, x.full)
    return total


def _gpt2_layer_saved(inv: Inventory, plan_targets: list[Module], x: _Ctx, layer: int) -> int:
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
    total += _adapter_saved(x, layer_targets, _shared_inputs(layer_targets, a * t))
    return total


def _dora_transient(x: _Ctx, dt: Dtypes, m: Module, *, grad_enabled: bool) -> int:
    """Peak bytes of the temporaries DoRA builds in one adapted linear's forward (K in, N out features).

    PEFT 0.21.2 ``tuners/lora/dora.py`` ``DoraLinearLayer.forward``, with ``x`` already cast to the adapter
    dtype by ``lora.Linear.forward`` (``_cast_input_dtype``):

    1. ``get_lora_weight``: ``x_eye = torch.eye(K)`` in lora_A's dtype, autocast's K×K cast of it for
       ``lora_A``, then ``lora_B``'s K×N output (autocast dtype), all alive together;
    2. ``get_weight_norm``: ``lora_weight.to(x.dtype)`` (N×K in the adapter dtype), the base weight cast to
       ``x.dtype`` (a copy unless it is already that dtype; a bitsandbytes weight is dequantized first),
       ``scaling * lora_weight`` and ``weight + ...``. With autograd on (a forward without checkpointing,
       or the checkpointed recompute) the K×K cast is still alive: lora_A's backward saved it, and the
       graph lives as long as ``lora_weight``.

    Both stages checked against the trace engine (bench/trace_grid.py DoRA cases).
    """
    k, n = m.in_features, m.out_features
    la = DTYPE_BYTES[dt.adapters]
    cast = x.c * k * k if x.autocast else 0
    out = x.c if x.autocast else la
    weight_casts = x.c * x.r * (k + n) if x.autocast else 0  # autocast's cached lora_A/lora_B casts
    stage1 = la * k * k + cast + out * k * (n + x.r) + weight_casts
    weight_copy = x.quantized or DTYPE_BYTES[dt.weights] != la
    # lora_weight's graph: lora_A saved its input (the eye's autocast cast, or the eye itself) and output
    graph = (cast or la * k * k) + out * k * x.r if grad_enabled else 0
    stage2 = graph + weight_casts + la * k * n * (3 + weight_copy)
    return max(stage1, stage2)


def _by_layer(targets: list[Module]) -> dict[int | None, list[Module]]:
    """The targets grouped by decoder layer, each group in registration order."""
    groups: dict[int | None, list[Module]] = {}
    for m in targets:
        groups.setdefault(m.layer, []).append(m)
    return groups


def _with_later_in_layer(targets: list[Module]) -> list[tuple[Module, list[Module]]]:
    """Each target with the targets registered after it in its layer (one pass per layer, not per target)."""
    return [(m, group[j + 1:]) for group in _by_layer(targets).values() for j, m in enumerate(group)]


def _dora_extra(inv: Inventory, x: _Ctx, dt: Dtypes, targets: list[Module], *, grad_enabled: bool) -> int:
    """The largest DoRA transient of a layer beyond the layer's saved bytes (which count the finished layer).

    While module ``m`` (K in, N out) builds its weight norm, ``lora.Linear.forward`` has already made
    ``m``'s input in the adapter dtype (a copy unless the input has that dtype), the dropout output and
    mask, and the base layer's result (N wide); its input is alive (for the layer's last linear not a
    tensor the layer keeps when the adapter saves its own copy). What ``m`` saves later (autocast's cast of
    the input, lora_A's output, DoRA's lora_result, the weight saved under dropout) and what the adapted
    linears after it save (registration order: attention, then the MLP's gate/up and down; the execution
    order except Phi-3, which registers o_proj before qkv_proj) do not exist yet, nor (before the layer's
    last linear) the dense MLP's activation outputs (``3·lo·T·I``; GPT-2 ``4·lo·T·I``). Attention internals
    are left in, so for attention projections this is an upper bound; in a decoder the widest K (the MLP
    down projection) is the last.
    """
    arch = inv.arch
    last_linear = _last_linears(inv)
    la = DTYPE_BYTES[dt.adapters]
    mlp_acts = (4 if arch.model_type == "gpt2" else 3) * x.lo * x.t * arch.intermediate_size
    best = 0
    for m, rest in _with_later_in_layer(targets):
        k, n, t = m.in_features, m.out_features, _tokens(x, m)
        present = t * n * x.lo + (la * t * k if x.a != la or not x.quantized else 0)
        if x.dropout:
            present += la * t * k + t * k
        later = _adapter_saved(x, [m, *rest], 0)
        if m.name == last_linear.get(m.layer):
            if x.dropout or _adapter_copies_input(x):
                present += x.lo * t * k
        elif m.layer not in arch.sparse_layers:
            later += mlp_acts
        best = max(best, _dora_transient(x, dt, m, grad_enabled=grad_enabled) + present - later)
        # The combination ``(mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling``: the fp32
        # magnitude promotes each product to fp32 (T×N); three are alive at once (the second product, its scaled
        # copy and the first), after m's own tensors are saved (base_result is one of them).
        combine = 3 * max(DTYPE_BYTES[dt.magnitude], x.lo) * t * n
        best = max(best, combine + present - t * n * x.lo - (later - _adapter_saved(x, [m], 0)))
    return best


def _dora_backward_extra(inv: Inventory, x: _Ctx, dt: Dtypes, targets: list[Module]) -> int:
    """Bytes the backward of a gated MLP's DoRA input projection (gate_proj / up_proj, N = I out features) holds
    beyond the layer's saved bytes and the one activation gradient ``backward_layer`` counts.

    DoRA's output ``result.to(bf16)`` of ``result + (s - 1)·base + s·lora·scaling`` (PEFT 0.21.2
    ``tuners/lora/layer.py`` ``Linear.forward``, ``tuners/lora/dora.py`` ``DoraLinearLayer.forward``; ``s`` the
    fp32 magnitude scale) back-propagates through a chain of magnitude-dtype T×N tensors alive together: the
    gradient's cast (when the output was 16-bit), the ``scaling`` product, the lora_result gradient and the
    product reduced into the magnitude's gradient; the base result's gradient is cast back to its dtype beside
    them. Up_proj runs first (autograd runs the later-created node first); by then the product's backward
    freed the activation and up outputs (two of the MLP's three saved T×I tensors) and down_proj's saved
    tensors are gone. Found in the trace (bench/framework_grid.py TRL DoRA 8k case)."""
    arch = inv.arch
    if arch.model_type == "gpt2":
        return 0
    mb = DTYPE_BYTES[dt.magnitude]
    best = 0
    for layer, group in _by_layer(targets).items():
        mlp_in = [m for m in group if _INPUT_GROUPS.get(m.leaf) == "mlp_in"]
        if layer is None or layer in arch.sparse_layers or not mlp_in:
            continue
        n = max(m.out_features for m in mlp_in)
        t = x.t
        converted = x.lo != mb  # the output was cast back to the base dtype: its gradient is cast up, and the
        chain = (4 if converted else 3) * mb * t * n  # base result's gradient cast back down
        base_grad = x.lo * t * n if converted else 0
        freed = 2 * x.lo * t * arch.intermediate_size
        down = [m for m in group if m.leaf == "down_proj"]
        freed += _adapter_saved(x, down, 0)
        best = max(best, chain + base_grad - freed)
    return best


def _last_linears(inv: Inventory) -> dict[int, str]:
    """Each decoder layer's last linear in registration order (the MLP's down projection)."""
    last: dict[int, str] = {}
    for mod in inv.modules:
        if mod.layer is not None and mod.kind in (LINEAR, CONV1D):
            last[mod.layer] = mod.name
    return last


def _lora_cast_extra(inv: Inventory, x: _Ctx, targets: list[Module]) -> int:
    """Bytes alive while the layer's last adapted linear (the MLP down projection, K = I) runs its LoRA branch,
    beyond what the finished layer saves: PEFT ``lora.Linear.forward`` (0.21.2 ``tuners/lora/layer.py``) casts
    its input to lora_A's dtype (``_cast_input_dtype``): under autocast with fp32 adapters and a 16-bit input, an
    fp32 copy (la·T·K, and with dropout the fp32 dropout output) lives until the forward returns, beside the base
    layer's result (lo·T·N) and the input itself, which nothing saves (the MLP product). Found in the trace of TRL
    steps, whose fused LM head leaves a layer's recompute as the peak; 0 for DoRA (:func:`_dora_extra`) and for
    bitsandbytes layers, which skip the cast under autocast (``tuners/lora/bnb.py`` ``requires_conversion``)."""
    if not x.autocast or x.dora or x.quantized or x.la == x.lo:
        return 0
    last = _last_linears(inv)
    best = 0
    for m in targets:
        if m.name == last.get(m.layer):
            k, n, t = m.in_features, m.out_features, _tokens(x, m)
            best = max(best, (x.la * (1 + x.dropout) + x.lo) * t * k + x.lo * t * n)
    return best


def eager_scores_grad(x: _Ctx, arch: ArchSpec, req: PlanRequest) -> int:
    """Bytes of the gradient of eager attention's b×heads×s×s probabilities, alive in its backward (0 otherwise)."""
    eager = arch.model_type != "gpt2" and attention_for(arch.model_type, req.training.attn_implementation) == "eager"
    return max(x.lo, x.a) * x.b * arch.num_attention_heads * x.s * x.s if eager else 0


def down_input_grad_sum(x: _Ctx, arch: ArchSpec, targets: list[Module], layer: int) -> int:
    """Bytes alive in a layer's backward at the sum of its adapted down projection's two input gradients, beyond
    the layer's other saved tensors (0 when ``down_proj`` is not adapted or the layer is an MoE block).

    ``lora.Linear4bit.forward`` / ``lora.Linear.forward`` (PEFT 0.21.2 ``tuners/lora/bnb.py``,
    ``tuners/lora/layer.py``) feed the MLP product ``x`` (``lo`` bytes) to both the base layer and ``lora_A``, so
    autograd sums two T×I gradients of ``x`` into a third: the base layer's (for bitsandbytes 0.50.2
    ``Linear4bit.forward``, MatMul4Bit's 16-bit gradient cast back through ``x.to(compute_dtype)`` to ``x``'s
    dtype) and the adapter's (back through autocast's cast of ``x`` for ``lora_A``). By then down_proj's own
    saved tensors (:func:`_adapter_saved`; bitsandbytes' MatMul4Bit saves no input for a frozen weight) are freed.
    """
    down = [m for m in targets if m.layer == layer and m.leaf == "down_proj"]
    if not down or layer in arch.sparse_layers:
        return 0
    return 3 * x.lo * x.t * arch.intermediate_size - _adapter_saved(x, down, _shared_inputs(down, x.a * x.t))


def _largest_linear(inv: Inventory) -> tuple[int, int]:
    best = (0, 0)
    for m in inv.modules:
        if m.kind in (LINEAR, CONV1D) and m.name != "lm_head" and m.in_features * m.out_features > best[0] * best[1]:
            best = (m.out_features, m.in_features)
    return best


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
                 full=req.method == "full")
    tg = LitTargets.from_names({m.leaf for m in plan.targets} if req.uses_adapter else set())
    old = old_norm(req)
    per_layer = [litgpt_layer_saved(arch, x, tg, old=old, layer=i) for i in range(arch.num_hidden_layers)]
    if dt.weights == "fp32" and dt.compute != "fp32" and not req.quantized:
        casts = {}
        for m in inv.modules:
            if m.layer is not None and m.kind == LINEAR:
                casts[m.layer] = casts.get(m.layer, 0) + a * m.in_features * m.out_features
        per_layer = [p + casts.get(i, 0) for i, p in enumerate(per_layer)]
    head_quantized = req.quantized
    head = litgpt_head_terms(arch, x, tg, old=old, head_quantized=head_quantized)
    t, h = x.t, arch.hidden_size
    out_f, in_f = _largest_linear(inv)
    dequant = out_f * in_f * a if req.quantized else 0
    previous = litgpt_previous_inputs(arch, x) if req.quantized else 0  # alive until the new loss exists
    return ActivationModel(
        saved_layers=sum(per_layer),
        saved_head=head.saved,
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


def autocast_cast_cache(inv: Inventory, plan: AdapterPlan, x: _Ctx, dt: Dtypes) -> int:
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
    x = _ctx(req, dt, arch)
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
    cast = 0 if unsloth else _lora_cast_extra(inv, x, targets)
    transient = max(transient, cast)
    if x.checkpointed:
        # the recompute runs with only the incoming gradient (h wide) alive, where backward_layer counts the
        # widest activation gradient
        backward_transient = max(backward_transient, cast - x.a * t * (max(h, arch.intermediate_size) - h))
    if req.uses_dora:
        transient = max(transient, _dora_extra(inv, x, dt, targets, grad_enabled=not x.checkpointed))
        if x.checkpointed:
            # the recompute of a layer runs with autograd on; only the incoming gradient (h wide) is alive
            # then, where backward_layer counts the widest activation gradient
            recompute = _dora_extra(inv, x, dt, targets, grad_enabled=True)
            recompute -= x.a * t * (max(h, arch.intermediate_size) - h)
            backward_transient = max(backward_transient, recompute)
        backward_transient = max(backward_transient, _dora_backward_extra(inv, x, dt, targets))
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
