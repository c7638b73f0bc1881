"""The sizes one training step's activation terms are written in (bytes per element, tokens, switches), without torch.

:func:`step_shape` reads them off a request: ``t`` tokens per micro-batch (b·s), ``c`` bytes of the autocast compute
dtype (4 without autocast), ``a`` bytes of the residual stream (fp32 when the weights are fp32, or for QLoRA after
``prepare_model_for_kbit_training``), ``lo`` bytes of a projection's output (``c``; for a bitsandbytes 4-bit layer
the dtype of its input, ``a``), ``la`` bytes of LoRA A/B. :mod:`app.core.activations` and
:mod:`app.core.adapter_activations` price tensors in them.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.core.architectures import PEFT_DEFAULT_TARGET_MODULES, ArchSpec
from app.core.inventory import Module
from app.core.patterns import compile_target_regex
from app.core.precision import Dtypes
from app.core.request import PlanRequest
from app.core.units import DTYPE_BYTES


@dataclass(frozen=True)
class StepShape:
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


def step_shape(req: PlanRequest, dt: Dtypes, arch: ArchSpec) -> StepShape:
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
        if adapts_output_projection(req, arch):
            a = lo
    return StepShape(t=tr.micro_batch_size * tr.seq_len, b=tr.micro_batch_size, s=tr.seq_len, c=c, a=a, a_first=a_first,
                lo=lo,
                la=DTYPE_BYTES[dt.adapters],
                autocast=autocast, quantized=req.quantized, full=req.method == "full",
                dropout=req.uses_adapter and req.lora.lora_dropout > 0, dora=req.uses_dora, r=req.lora.r,
                checkpointed=tr.gradient_checkpointing, top_k=arch.num_experts_per_tok, experts=arch.num_experts)


OUTPUT_PROJECTIONS = ("o_proj", "down_proj", "out_proj", "dense", "c_proj", "wo", "w2", "fc2", "dense_4h_to_h")
"""Leaf names of the linears whose output is added to the residual stream (attention output, MLP down)."""


def adapts_output_projection(req: PlanRequest, arch: ArchSpec) -> bool:
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


def rows_seen(x: StepShape, m: Module) -> int:
    """Rows a linear sees: all tokens, or for one expert of a transformers 4.x MoE block (an nn.Linear per
    expert, run on the tokens routed to it) the average share T·top_k/E."""
    return -(-x.t * x.top_k // x.experts) if x.experts and ".experts." in m.name else x.t
