"""A plan as TRL's own recipe (``trl sft --config recipe.yaml``): ``ModelConfig`` and ``SFTConfig`` keys in one flat
YAML, TRL 1.16.0 — the inverse of :func:`app.importers.trl.from_trl`.

- Precision: ``dtype`` (ModelConfig: how ``sft.py`` loads the model) and SFTConfig's ``bf16``/``fp16`` (autocast):
  'bf16' → bfloat16 + bf16, 'bf16-mixed' → float32 + bf16, 'fp16-mixed' → float32 + fp16, 'fp32' → float32.
- Adapters: ``use_peft`` with ``lora_r``/``lora_alpha``/``lora_dropout``/``lora_target_modules``/…, ``use_dora``;
  4-bit: ``load_in_4bit``, ``bnb_4bit_quant_type``, ``use_bnb_nested_quant``, ``bnb_4bit_quant_storage``; the
  compute dtype is the load ``dtype`` (``trl/trainer/utils.py get_quantization_config``).
- Step: ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``max_length``, ``gradient_checkpointing``
  (+ ``gradient_checkpointing_kwargs.use_reentrant``), ``optim``, ``packing``, ``padding_free``,
  ``use_liger_kernel``, ``activation_offloading``, ``torch_compile``.
- Sharding: ``fsdp: full_shard auto_wrap`` (+ ``offload``), or ``deepspeed`` as an inline config (its ZeRO stage,
  offload devices and bucket sizes; the rest "auto"); the GPU count is the launcher's (``--num_processes``).
"""

from __future__ import annotations

from typing import Any

from app.core.request import PlanRequest
from app.exporters.base import Export, model_name, set_given

LOAD_DTYPE = {"bf16": "bfloat16", "bf16-mixed": "float32", "fp16-mixed": "float32", "fp32": "float32"}
"""``ModelConfig.dtype`` per precision: only 'bf16' loads 16-bit weights; the mixed precisions keep fp32 masters."""


def deepspeed_inline(req: PlanRequest) -> dict[str, Any]:
    """The DeepSpeed config of a ZeRO plan: its stage, offload devices and bucket sizes; the batch keys and the
    precision section "auto" (the HF Trainer fills them from its own arguments: transformers
    ``integrations/deepspeed.py trainer_config_finalize``)."""
    hw = req.hardware
    zero: dict[str, Any] = {"stage": int(hw.sharding[-1])}
    for part in ("offload_optimizer", "offload_param"):
        if getattr(hw, part) == "cpu":
            zero[part] = {"device": "cpu", "pin_memory": True}
    # "auto": transformers fills it from the model (hidden², 0.9·hidden²); a key left out is DeepSpeed's default
    zero["reduce_bucket_size"] = hw.reduce_bucket_size
    if hw.sharding == "zero3":
        zero["stage3_prefetch_bucket_size"] = hw.stage3_prefetch_bucket_size
    return {"zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}


def sharding_keys(req: PlanRequest) -> dict[str, Any]:
    """HF ``TrainingArguments``' ``fsdp`` / ``deepspeed`` for the plan's sharding (DDP needs no key)."""
    hw = req.hardware
    if hw.sharding == "fsdp":
        return {"fsdp": "full_shard auto_wrap" + (" offload" if hw.offload_param == "cpu" else "")}
    if hw.sharding.startswith("zero"):
        return {"deepspeed": deepspeed_inline(req)}
    return {}


def trl_recipe(req: PlanRequest) -> Export:
    """The plan as a ``trl sft`` recipe (module docstring); settings TRL's recipe has no key for are listed."""
    tr, lo, q = req.training, req.lora, req.quantization
    unexpressed: list[str] = []
    dtype = LOAD_DTYPE[tr.precision]
    data: dict[str, Any] = {"model_name_or_path": model_name(req), "dtype": dtype}
    if tr.attn_implementation:
        data["attn_implementation"] = tr.attn_implementation
    if req.uses_adapter:
        data |= {"use_peft": True, "lora_r": lo.r, "lora_alpha": lo.lora_alpha, "lora_dropout": lo.lora_dropout}
        set_given(data, [("lora_target_modules", lo.target_modules), ("lora_target_parameters", lo.target_parameters),
                         ("lora_modules_to_save", lo.modules_to_save), ("use_rslora", lo.use_rslora),
                         ("use_dora", req.uses_dora)])
        if lo.bias != "none":
            unexpressed.append(f"lora.bias {lo.bias!r} (ModelConfig builds LoraConfig with bias 'none')")
        if lo.layers_to_transform:
            unexpressed.append("lora.layers_to_transform (ModelConfig has no key for it)")
    if req.quantized:
        if q.load_in_8bit:
            data["load_in_8bit"] = True
        else:
            data |= {"load_in_4bit": True, "bnb_4bit_quant_type": q.bnb_4bit_quant_type,
                     "use_bnb_nested_quant": q.bnb_4bit_use_double_quant}
            if q.bnb_4bit_quant_storage != "uint8":
                data["bnb_4bit_quant_storage"] = q.bnb_4bit_quant_storage
            if q.bnb_4bit_compute_dtype != dtype:
                unexpressed.append(f"bnb_4bit_compute_dtype {q.bnb_4bit_compute_dtype} (TRL computes in the load "
                                   f"dtype, {dtype})")
    data |= {"per_device_train_batch_size": tr.micro_batch_size,
             "gradient_accumulation_steps": tr.gradient_accumulation_steps, "max_length": tr.seq_len,
             "gradient_checkpointing": tr.gradient_checkpointing}
    if tr.gradient_checkpointing and tr.gradient_checkpointing_kwargs.use_reentrant is not None:
        data["gradient_checkpointing_kwargs"] = {"use_reentrant": tr.gradient_checkpointing_kwargs.use_reentrant}
    data["optim"] = tr.optim
    data["bf16"] = tr.precision in ("bf16", "bf16-mixed")
    if tr.precision == "fp16-mixed":
        data["fp16"] = True
    for key in ("packing", "padding_free", "use_liger_kernel", "activation_offloading", "torch_compile"):
        if getattr(tr, key):
            data[key] = True
    data |= sharding_keys(req)
    unexpressed += version_notes(req)
    n = req.hardware.num_gpus
    run = "trl sft --config recipe.yaml" + (f" --num_processes {n}" if n > 1 else "")
    return Export(f"TRL recipe: {run}", "recipe.yaml", data, unexpressed)


def version_notes(req: PlanRequest) -> list[str]:
    """The library releases a plan models other than the current ones: a matter of installing them, not of config."""
    out = []
    if req.transformers_version != "5.24":
        out.append(f"transformers {req.transformers_version} (install that release)")
    if req.torch_version != "2.13":
        out.append(f"torch {req.torch_version} (install that release)")
    if req.hardware.pytorch_cuda_alloc_conf:
        out.append(f"PYTORCH_CUDA_ALLOC_CONF={req.hardware.pytorch_cuda_alloc_conf} (set it in the environment)")
    return out
