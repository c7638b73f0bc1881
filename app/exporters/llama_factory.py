"""A plan as a LLaMA-Factory training YAML (``llamafactory-cli train config.yaml``, v0.9.5) — the inverse of
:func:`app.importers.llama_factory.from_llama_factory`.

- Method: ``finetuning_type`` lora / full; ``quantization_bit`` 4 or 8 (``quantization_method: bnb``,
  ``quantization_type``, ``double_quantization``) for QLoRA; ``use_dora``, ``use_rslora``; ``lora_rank``,
  ``lora_alpha``, ``lora_dropout``, ``lora_target`` ('all' for every linear layer, else comma-separated names),
  ``additional_target`` (modules_to_save). LLaMA-Factory never calls ``prepare_model_for_kbit_training`` and
  computes 4-bit layers in bf16.
- Precision: LoRA loads the base in bf16 (``bf16: true``; the adapters are fp32); full fine-tuning is
  ``pure_bf16`` ('bf16'), ``bf16`` ('bf16-mixed': fp32 trainable parameters + autocast), ``fp16`` ('fp16-mixed') or
  neither ('fp32').
- Step: ``cutoff_len``, ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``packing``,
  ``disable_gradient_checkpointing`` / ``use_reentrant_gc``, ``use_unsloth_gc`` (activation offloading),
  ``enable_liger_kernel``, ``flash_attn`` (fa2 / sdpa / disabled), ``optim``; ``deepspeed`` inline or HF
  ``fsdp``, as the TRL export.
"""

from __future__ import annotations

from typing import Any

from app.core.request import PlanRequest
from app.exporters.base import Export, model_name, set_given, unsupported_switches
from app.exporters.trl import sharding_keys, version_notes

FLASH_ATTN = {"flash_attention_2": "fa2", "sdpa": "sdpa", "eager": "disabled"}
FULL_PRECISION = {"bf16": {"pure_bf16": True}, "bf16-mixed": {"bf16": True}, "fp16-mixed": {"fp16": True},
                  "fp32": {}}
"""Full fine-tuning: LLaMA-Factory casts trainable parameters to fp32 unless ``pure_bf16`` (``model/adapter.py``)."""


def llama_factory_config(req: PlanRequest) -> Export:
    """The plan as a LLaMA-Factory YAML (module docstring); settings it has no key for are listed."""
    tr, lo, q = req.training, req.lora, req.quantization
    unexpressed: list[str] = []
    data: dict[str, Any] = {"model_name_or_path": model_name(req), "stage": "sft", "do_train": True,
                            "finetuning_type": "full" if req.method == "full" else "lora"}
    if req.method == "full":
        data |= FULL_PRECISION[tr.precision]
    else:
        data["bf16"] = True
        if tr.precision != "bf16":
            unexpressed.append(f"precision {tr.precision!r} (LLaMA-Factory loads a LoRA base in 16-bit): written "
                               "as bf16")
        if req.quantized:
            data |= {"quantization_bit": 8 if q.load_in_8bit else 4, "quantization_method": "bnb"}
            if not q.load_in_8bit:
                data |= {"quantization_type": q.bnb_4bit_quant_type,
                         "double_quantization": q.bnb_4bit_use_double_quant}
                if q.bnb_4bit_compute_dtype != "bfloat16" or q.bnb_4bit_quant_storage != "uint8":
                    unexpressed.append("bnb_4bit_compute_dtype / bnb_4bit_quant_storage (LLaMA-Factory sets them "
                                       "itself)")
        data |= {"lora_rank": lo.r, "lora_alpha": lo.lora_alpha, "lora_dropout": lo.lora_dropout}
        targets = lo.target_modules
        if targets == "all-linear":
            data["lora_target"] = "all"
        elif isinstance(targets, list):
            data["lora_target"] = ",".join(targets)
        else:
            unexpressed.append(f"lora.target_modules {targets!r} (lora_target is 'all' or module names)")
        set_given(data, [("additional_target", ",".join(lo.modules_to_save or [])), ("use_dora", req.uses_dora),
                         ("use_rslora", lo.use_rslora)])
        for name in ("target_parameters", "layers_to_transform"):
            if getattr(lo, name):
                unexpressed.append(f"lora.{name} (no LLaMA-Factory argument)")
        if lo.bias != "none":
            unexpressed.append(f"lora.bias {lo.bias!r} (LLaMA-Factory's LoraConfig has bias 'none')")
    data |= {"cutoff_len": tr.seq_len, "per_device_train_batch_size": tr.micro_batch_size,
             "gradient_accumulation_steps": tr.gradient_accumulation_steps}
    if tr.packing:
        data["packing"] = True
    if not tr.gradient_checkpointing:
        data["disable_gradient_checkpointing"] = True
    elif tr.gradient_checkpointing_kwargs.use_reentrant is not None:
        data["use_reentrant_gc"] = tr.gradient_checkpointing_kwargs.use_reentrant
    set_given(data, [("use_unsloth_gc", tr.activation_offloading), ("enable_liger_kernel", tr.use_liger_kernel)])
    if tr.attn_implementation:
        data["flash_attn"] = FLASH_ATTN[tr.attn_implementation]
    data["optim"] = tr.optim
    unexpressed += unsupported_switches(req, ("padding_free", "torch_compile"), "a LLaMA-Factory")
    data |= sharding_keys(req)
    unexpressed += version_notes(req)
    n = req.hardware.num_gpus
    run = ("FORCE_TORCHRUN=1 NPROC_PER_NODE=" + str(n) + " " if n > 1 else "") + "llamafactory-cli train config.yaml"
    return Export(f"LLaMA-Factory config: {run}", "config.yaml", data, unexpressed)
