"""Activation bytes of the LoRA / DoRA branches PEFT adds to a linear (saved tensors and transients), without torch.

PEFT 0.21.2 ``tuners/lora/layer.py`` (``Linear.forward``), ``tuners/lora/bnb.py`` (``Linear4bit.forward``) and
``tuners/lora/dora.py`` (``DoraLinearLayer``); each term was found in the trace engine's live-storage listings
(bench/trace_grid.py, bench/framework_grid.py). Sizes are those of :class:`app.core.step_shape.StepShape`.
"""

from __future__ import annotations

from app.core.inventory import CONV1D, LINEAR, Inventory, Module
from app.core.precision import Dtypes
from app.core.step_shape import StepShape, rows_seen
from app.core.units import DTYPE_BYTES


def adapter_copies_input(x: StepShape) -> bool:
    """Whether each adapter saves a new copy of its input: autocast's cast of an input not in the compute dtype, or
    (non-quantized layers, which cast ``x`` to lora_A's dtype: PEFT ``_cast_input_dtype``) of PEFT's copy in an
    adapter dtype that is not the compute dtype. Under FSDP's 16-bit ``param_dtype`` the adapters compute in it:
    no copy."""
    return x.autocast and (x.a != x.c or (not x.quantized and x.la != x.c))


def adapter_saved(x: StepShape, targets: list[Module], shared_bytes: int) -> int:
    """LoRA/DoRA tensors saved per layer: input copies, A·x, cached weight casts, dropout masks, DoRA results.

    ``shared_bytes``: the bytes of the distinct inputs the adapted linears read (q/k/v share one;
    :func:`shared_inputs`), saved once when lora_A keeps its input without copying it.
    """
    total = 0
    lora_c = x.c if x.autocast else x.la
    copies_per_linear = adapter_copies_input(x)
    for m in targets:
        k, n, t = m.in_features, m.out_features, rows_seen(x, m)
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
        total += shared_bytes  # lora_A saves its input itself, shared by adapters reading the same tensor
    return total


INPUT_GROUPS = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "qkv_proj": "qkv", "c_attn": "qkv",
                 "gate_proj": "mlp_in", "up_proj": "mlp_in", "gate_up_proj": "mlp_in", "c_fc": "mlp_in"}


def shared_inputs(targets: list[Module], bytes_per_feature: int) -> int:
    """Bytes of the distinct inputs adapted linears read when lora_A saves its input without copying it.

    q/k/v read one tensor, gate/up another; o_proj reads the attention output, which attention already keeps.
    """
    groups = {INPUT_GROUPS.get(m.leaf, m.leaf): m.in_features for m in targets}
    return sum(bytes_per_feature * k for g, k in groups.items() if g != "o_proj")



def dora_transient(x: StepShape, dt: Dtypes, m: Module, *, grad_enabled: bool) -> int:
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


def by_layer(targets: list[Module]) -> dict[int | None, list[Module]]:
    """The targets grouped by decoder layer, each group in registration order."""
    groups: dict[int | None, list[Module]] = {}
    for m in targets:
        groups.setdefault(m.layer, []).append(m)
    return groups


def with_later_in_layer(targets: list[Module]) -> list[tuple[Module, list[Module]]]:
    """Each target with the targets registered after it in its layer (one pass per layer, not per target)."""
    return [(m, group[j + 1:]) for group in by_layer(targets).values() for j, m in enumerate(group)]


def dora_extra(inv: Inventory, x: StepShape, dt: Dtypes, targets: list[Module], *, grad_enabled: bool) -> int:
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
    last_linear = last_linears(inv)
    la = DTYPE_BYTES[dt.adapters]
    mlp_acts = (4 if arch.model_type == "gpt2" else 3) * x.lo * x.t * arch.intermediate_size
    best = 0
    for m, rest in with_later_in_layer(targets):
        k, n, t = m.in_features, m.out_features, rows_seen(x, m)
        present = t * n * x.lo + (la * t * k if x.a != la or not x.quantized else 0)
        if x.dropout:
            present += la * t * k + t * k
        later = adapter_saved(x, [m, *rest], 0)
        if m.name == last_linear.get(m.layer):
            if x.dropout or adapter_copies_input(x):
                present += x.lo * t * k
        elif m.layer not in arch.sparse_layers:
            later += mlp_acts
        best = max(best, dora_transient(x, dt, m, grad_enabled=grad_enabled) + present - later)
        # The combination ``(mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling``: the fp32
        # magnitude promotes each product to fp32 (T×N); three are alive at once (the second product, its scaled
        # copy and the first), after m's own tensors are saved (base_result is one of them).
        combine = 3 * max(DTYPE_BYTES[dt.magnitude], x.lo) * t * n
        best = max(best, combine + present - t * n * x.lo - (later - adapter_saved(x, [m], 0)))
    return best


def dora_backward_extra(inv: Inventory, x: StepShape, dt: Dtypes, targets: list[Module]) -> int:
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
    for layer, group in by_layer(targets).items():
        mlp_in = [m for m in group if INPUT_GROUPS.get(m.leaf) == "mlp_in"]
        if layer is None or layer in arch.sparse_layers or not mlp_in:
            continue
        n = max(m.out_features for m in mlp_in)
        t = x.t
        converted = x.lo != mb  # the output was cast back to the base dtype: its gradient is cast up, and the
        chain = (4 if converted else 3) * mb * t * n  # base result's gradient cast back down
        base_grad = x.lo * t * n if converted else 0
        freed = 2 * x.lo * t * arch.intermediate_size
        down = [m for m in group if m.leaf == "down_proj"]
        freed += adapter_saved(x, down, 0)
        best = max(best, chain + base_grad - freed)
    return best


def last_linears(inv: Inventory) -> dict[int, str]:
    """Each decoder layer's last linear in registration order (the MLP's down projection)."""
    last: dict[int, str] = {}
    for mod in inv.modules:
        if mod.layer is not None and mod.kind in (LINEAR, CONV1D):
            last[mod.layer] = mod.name
    return last


def lora_cast_extra(inv: Inventory, x: StepShape, targets: list[Module]) -> int:
    """Bytes alive while the layer's last adapted linear (the MLP down projection, K = I) runs its LoRA branch,
    beyond what the finished layer saves: PEFT ``lora.Linear.forward`` (0.21.2 ``tuners/lora/layer.py``) casts
    its input to lora_A's dtype (``_cast_input_dtype``): under autocast with fp32 adapters and a 16-bit input, an
    fp32 copy (la·T·K, and with dropout the fp32 dropout output) lives until the forward returns, beside the base
    layer's result (lo·T·N) and the input itself, which nothing saves (the MLP product). Found in the trace of TRL
    steps, whose fused LM head leaves a layer's recompute as the peak; 0 for DoRA (:func:`dora_extra`) and for
    bitsandbytes layers, which skip the cast under autocast (``tuners/lora/bnb.py`` ``requires_conversion``)."""
    if not x.autocast or x.dora or x.quantized or x.la == x.lo:
        return 0
    last = last_linears(inv)
    best = 0
    for m in targets:
        if m.name == last.get(m.layer):
            k, n, t = m.in_features, m.out_features, rows_seen(x, m)
            best = max(best, (x.la * (1 + x.dropout) + x.lo) * t * k + x.lo * t * n)
    return best
