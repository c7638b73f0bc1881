"""Activation memory of one training step (bytes), by phase.

Rules are from ``shared/docs/memory-internals.md`` (§3 LoRA, §4 DoRA, §5 checkpointing, loss,
attention) for transformers 5.24, PEFT 0.21.2, bitsandbytes 0.50.2, torch 2.13. Notation: ``T`` tokens
per micro-batch (b·s), ``h`` hidden size, ``V`` vocabulary, ``c`` compute-dtype bytes, ``a`` residual
stream bytes (fp32 when weights are fp32 or after ``prepare_model_for_kbit_training``).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.adapters import AdapterPlan
from app.core.architectures import ArchSpec
from app.core.inventory import EMBEDDING, Inventory
from app.core.precision import Dtypes
from app.core.request import PlanRequest
from app.core.units import DTYPE_BYTES


@dataclass(frozen=True)
class ActivationModel:
    """Bytes of each activation term; phases combine them (see :func:`app.core.estimate.estimate`)."""

    saved_per_layer: int  # saved for backward by one decoder layer without checkpointing
    layers: int
    checkpoint_inputs: int  # checkpointing: the layer inputs kept for all layers
    saved_total: int  # everything saved for backward at the end of forward (layers + head)
    loss_forward: int  # logits and loss buffers at the loss (beyond saved_total)
    loss_backward: int  # gradient buffers at the start of backward
    layer_transient: int  # largest per-layer temporary (dequantized weight, DoRA norm, recompute)


def _adapted_inputs(inv: Inventory, plan: AdapterPlan) -> tuple[int, int, int, int]:
    """(Σ in_features, Σ out_features, count, Σ N·K) over adapted linears of one average decoder layer."""
    layers = max(inv.arch.num_hidden_layers, 1)
    ins = sum(m.in_features for m in plan.targets if m.kind != EMBEDDING)
    outs = sum(m.out_features for m in plan.targets if m.kind != EMBEDDING)
    nk = max((m.in_features * m.out_features for m in plan.targets if m.kind != EMBEDDING), default=0)
    return ins // layers, outs // layers, len(plan.targets) // layers, nk


def activation_model(inv: Inventory, plan: AdapterPlan, req: PlanRequest, dt: Dtypes) -> ActivationModel:
    arch: ArchSpec = inv.arch
    tr = req.training
    b, s = tr.micro_batch_size, tr.seq_len
    t = b * s
    h, v = arch.hidden_size, arch.vocab_size
    c = DTYPE_BYTES[dt.compute]
    a = DTYPE_BYTES[dt.unquantized if req.quantized else dt.weights]
    inter = (
        arch.num_experts_per_tok * arch.moe_intermediate_size if arch.sparse_layers else arch.intermediate_size
    )
    # One decoder layer: two norms (fp32 input copy + rsqrt + normalised output), q/k/v and attention
    # output saved by the attention kernel (+ fp32 logsumexp), two residual sums, gated MLP (gate, act,
    # up, product).
    per_layer = 2 * (4 * t * h + 4 * t + c * t * h) + 2 * a * t * h
    per_layer += c * t * (arch.q_dim + 2 * arch.kv_dim) + c * t * arch.q_dim + 4 * t * arch.num_attention_heads
    per_layer += 4 * c * t * inter
    if tr.attn_implementation == "eager":
        per_layer += 6 * b * arch.num_attention_heads * s * s
    ins, outs, _count, largest_nk = _adapted_inputs(inv, plan)
    adapter_c = c if dt.compute != "fp32" else 4
    if req.uses_adapter:
        r = req.lora.r
        per_layer += adapter_c * t * ins + adapter_c * t * r * max(_count, 0)
        if req.lora.lora_dropout > 0:
            per_layer += t * ins * (1 + adapter_c)
        if req.uses_dora:
            per_layer += t * outs * (c + adapter_c)
            if req.lora.lora_dropout > 0:
                per_layer += largest_nk * c
    layers = arch.num_hidden_layers
    head = 4 * t * h + c * t * h
    if tr.gradient_checkpointing:
        checkpoint_inputs = layers * a * t * h
        saved_total = checkpoint_inputs + head
        recompute = per_layer
    else:
        checkpoint_inputs = 0
        saved_total = layers * per_layer + head
        recompute = 0
    transient = recompute
    if req.quantized:
        out_f, in_f = _largest_linear(inv)
        transient = max(transient, out_f * in_f * DTYPE_BYTES[dt.bnb_compute])
    if req.uses_dora:
        out_f, in_f = _largest_linear(inv)
        transient = max(transient, 4 * in_f * in_f + 3 * 4 * out_f * in_f)
    return ActivationModel(
        saved_per_layer=per_layer,
        layers=layers,
        checkpoint_inputs=checkpoint_inputs,
        saved_total=saved_total,
        loss_forward=(c + 8) * t * v,
        loss_backward=(c + 12) * t * v,
        layer_transient=transient,
    )


def _largest_linear(inv: Inventory) -> tuple[int, int]:
    best = (0, 0)
    for m in inv.modules:
        bigger = m.in_features * m.out_features > best[0] * best[1]
        if m.kind in ("linear", "conv1d") and m.name != "lm_head" and bigger:
            best = (m.out_features, m.in_features)
    return best
