"""Which dtype each tensor has under a precision setting and method (the HF recipe's rules).

- ``bf16``: the model is loaded with ``torch_dtype=bfloat16``: weights, their gradients and torch
  optimizer states are bf16 (HF Trainer ``bf16=True`` autocast is then mostly a no-op).
- ``bf16-mixed`` / ``fp16-mixed``: fp32 weights (master copy) and autocast to bf16/fp16.
- ``fp32``: everything fp32, no autocast.
- PEFT adapters (LoRA A/B, DoRA magnitude) are fp32 under every setting (``autocast_adapter_dtype=True``,
  PEFT ≥ 0.12, ``tuners_utils.cast_adapter_dtype``); ``modules_to_save`` copies keep their module's dtype.
- QLoRA: weights are quantized from the load dtype; ``prepare_model_for_kbit_training`` (peft
  ``utils/other.py``) casts every other fp16/bf16 parameter (embeddings, norms, lm_head, biases, MoE
  experts) to fp32 unless turned off.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from app.core.frameworks import framework, kbit_upcast_groups, stays_in_load_dtype
from app.core.request import PlanRequest
from app.core.units import DTYPE_BYTES


@dataclass(frozen=True)
class Dtypes:
    """Dtype names ("bf16", "fp16", "fp32") of each tensor class in one run."""

    weights: str  # base weights as loaded (non-quantized modules under QLoRA: see ``unquantized``)
    unquantized: str  # QLoRA: parameters bitsandbytes does not quantize; else == weights
    compute: str  # matmul/activation dtype under autocast
    bnb_compute: str = "bf16"  # bitsandbytes Linear4bit compute dtype (QLoRA)
    adapters: str = "fp32"  # LoRA A/B
    magnitude: str = "fp32"  # DoRA's magnitude vector
    kbit_upcast: str = "none"  # k-bit base: which non-quantized parameters are fp32 (app/core/frameworks.py)
    autocast: bool = True  # compute under autocast when ``compute`` is 16-bit (torchtune never autocasts)

    def bytes_of(self, dtype: str) -> int:
        return DTYPE_BYTES[dtype]

    def unquantized_for(self, tensor_name: str) -> str:
        """The dtype of a non-quantized parameter of a k-bit base (axolotl keeps norms/embeddings in the load dtype)."""
        if self.kbit_upcast == "non-norm" and not stays_in_load_dtype(tensor_name):
            return "fp32"
        return self.unquantized


def dtypes_for(req: PlanRequest) -> Dtypes:
    precision = req.training.precision
    weights = "bf16" if precision == "bf16" else "fp32"
    compute = {"bf16": "bf16", "bf16-mixed": "bf16", "fp16-mixed": "fp16", "fp32": "fp32"}[precision]
    fw = framework(req)
    if fw.name == "torchtune":
        # torchtune recipes build the whole model, LoRA/DoRA weights included, under
        # training.set_default_dtype(dtype) and never autocast (recipes/lora_finetune_single_device.py _setup_model)
        return Dtypes(weights=weights, unquantized=weights, compute=weights, bnb_compute=weights, adapters=weights,
                      magnitude=weights, autocast=False)
    if fw.name == "llama-factory" and req.method == "full":
        weights = "fp32"  # LLaMA-Factory _setup_full_tuning: trainable parameters cast to fp32 (not pure_bf16)
    upcast = kbit_upcast_groups(req) if req.quantized else "none"
    unquantized = "fp32" if upcast == "all" else weights
    adapters = fw.qlora_adapter_dtype if req.quantized and fw.qlora_adapter_dtype else "fp32"
    if fw.loss == "litgpt-chunked":
        adapters = weights  # litgpt creates LoRA A/B with the model (Fabric init_module): bf16 under bf16-true
    bnb_compute = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}[req.quantization.bnb_4bit_compute_dtype]
    return Dtypes(weights=weights, unquantized=unquantized, compute=compute, bnb_compute=bnb_compute,
                  adapters=adapters, kbit_upcast=upcast)


def fsdp_mixed_precision(req: PlanRequest) -> bool:
    """Whether the step computes on 16-bit copies of fp32 FSDP shards: ``bf16-mixed`` / ``fp16-mixed`` under FSDP on
    several GPUs with an accelerate-based trainer. accelerate's ``FullyShardedDataParallelPlugin.set_mixed_precision``
    (called by ``AcceleratorState`` for ``mixed_precision`` bf16/fp16) sets ``MixedPrecision(param_dtype=dtype,
    reduce_dtype=dtype, buffer_dtype=dtype)``: every all-gathered parameter, adapters included, is 16-bit, and
    gradients are reduce-scattered in 16 bits before the fp32 shard's gradient. torchtune and litgpt choose their
    own FSDP policies. Not for a 4-bit base: FSDP flattens its packed weights in ``bnb_4bit_quant_storage`` with the
    other parameters, and a 16-bit ``param_dtype`` cast would rewrite them (FSDP-QLoRA recipes load in bf16)."""
    hw = req.hardware
    return (hw.sharding == "fsdp" and hw.num_gpus > 1 and req.training.precision in ("bf16-mixed", "fp16-mixed")
            and not req.quantized and framework(req).name not in ("torchtune", "litgpt", "lit-gpt"))


def fsdp_param_dtype(req: PlanRequest) -> bool:
    """Whether accelerate's FSDP plugin all-gathers parameters in a 16-bit ``param_dtype``: 16-bit training
    (``bf16`` too: the HF Trainer's ``bf16=True`` sets accelerate's ``mixed_precision``, whose
    ``MixedPrecision(param_dtype=…)`` covers every flat parameter, fp32 LoRA adapters and fp32 norms included) under
    FSDP on several GPUs, with an accelerate-based trainer."""
    hw = req.hardware
    return (hw.sharding == "fsdp" and hw.num_gpus > 1 and req.training.precision != "fp32"
            and framework(req).name not in ("torchtune", "litgpt", "lit-gpt"))


def compute_dtypes(req: PlanRequest, dt: Dtypes) -> Dtypes:
    """The dtypes the forward and backward run with: ``dt``, or under accelerate's FSDP with a 16-bit
    ``param_dtype`` (:func:`fsdp_param_dtype`) the 16-bit copies of every parameter (the activations of the 16-bit
    recipe): fp32 shards (:func:`fsdp_mixed_precision`), fp32 adapters and fp32 non-quantized parameters alike;
    the packed 4-bit weights keep their storage dtype. Checked against FSDP1 run on CPU (bench/fsdp_trace.py)."""
    half = dt.compute
    if fsdp_mixed_precision(req):
        return replace(dt, weights=half, unquantized=half, adapters=half, magnitude=half)
    if fsdp_param_dtype(req):
        return replace(dt, unquantized=half, adapters=half, magnitude=half)
    return dt
