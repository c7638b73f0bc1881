"""A plan as the ms-swift launch command (``swift sft --… \\``, ms-swift v4.5.2) — the inverse of
:func:`app.importers.ms_swift.from_ms_swift` through :func:`app.importers.cli_args.parse_command`.

- Method: ``tuner_type`` lora / full, ``use_dora``; QLoRA: ``quant_method bnb`` + ``quant_bits`` 4 or 8 and the
  ``bnb_4bit_*`` arguments; ``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``target_modules`` (or
  ``target_regex``), ``target_parameters``, ``modules_to_save``, ``use_rslora``, ``lora_bias``.
- Precision: ``torch_dtype`` is the load dtype and ms-swift always autocasts (``_init_mixed_precision``): 'bf16' →
  bfloat16; 'bf16-mixed' → float32 + ``bf16``; 'fp16-mixed' → float32 (fp16 autocast); 'fp32' has no setting.
- Step: ``max_length``, ``per_device_train_batch_size``, ``gradient_accumulation_steps`` (always written: ms-swift
  derives it from 16 / batch / world size otherwise), ``gradient_checkpointing`` (+ kwargs as JSON),
  ``use_liger_kernel``, ``packing``, ``padding_free``, ``attn_impl``, ``optim``.
- Sharding: ``deepspeed`` zero1/zero2/zero3 (+ ``_offload``) when the plan's buckets are those of ms-swift's own
  configs (``swift/config/*.json``), else the config inline as JSON; ``fsdp`` / ``fsdp_offload``; the GPU count is
  ``NPROC_PER_NODE``.
"""

from __future__ import annotations

from typing import Any

from app.core.request import PlanRequest
from app.exporters.base import Export, model_name, set_given, unsupported_switches
from app.exporters.trl import deepspeed_inline, version_notes
from app.importers.ms_swift import SWIFT_REDUCE_BUCKET_SIZE

ATTN_IMPL = {"flash_attention_2": "flash_attn", "sdpa": "sdpa", "eager": "eager"}
TORCH_DTYPE = {"bf16": ("bfloat16", None), "bf16-mixed": ("float32", True), "fp16-mixed": ("float32", None)}


def ms_swift_command(req: PlanRequest) -> Export:
    """The plan as a ``swift sft`` command (module docstring); settings it has no argument for are listed."""
    tr, lo, q, hw = req.training, req.lora, req.quantization, req.hardware
    unexpressed: list[str] = []
    args: dict[str, Any] = {"model": model_name(req), "tuner_type": "full" if req.method == "full" else "lora"}
    dtype, bf16 = TORCH_DTYPE.get(tr.precision, ("float32", True))
    if tr.precision == "fp32":
        unexpressed.append("precision 'fp32' (ms-swift always trains with autocast): written as bf16-mixed")
    args["torch_dtype"] = dtype
    if bf16:
        args["bf16"] = True
    if req.uses_adapter:
        if req.quantized:
            args |= {"quant_method": "bnb", "quant_bits": 8 if q.load_in_8bit else 4}
            if not q.load_in_8bit:
                args |= {"bnb_4bit_quant_type": q.bnb_4bit_quant_type,
                         "bnb_4bit_use_double_quant": q.bnb_4bit_use_double_quant,
                         "bnb_4bit_compute_dtype": q.bnb_4bit_compute_dtype}
                if q.bnb_4bit_quant_storage != "uint8":
                    args["bnb_4bit_quant_storage"] = q.bnb_4bit_quant_storage
        args |= {"lora_rank": lo.r, "lora_alpha": lo.lora_alpha, "lora_dropout": lo.lora_dropout}
        targets = lo.target_modules
        if isinstance(targets, str) and targets != "all-linear":
            args["target_regex"] = targets
        elif targets is not None:
            args["target_modules"] = [targets] if isinstance(targets, str) else targets
        else:
            unexpressed.append("lora.target_modules None (ms-swift's default is all-linear, not PEFT's)")
        set_given(args, [("target_parameters", lo.target_parameters), ("modules_to_save", lo.modules_to_save),
                         ("use_dora", req.uses_dora), ("use_rslora", lo.use_rslora)])
        if lo.bias != "none":
            args["lora_bias"] = lo.bias
        if lo.layers_to_transform:
            unexpressed.append("lora.layers_to_transform (no ms-swift argument)")
    args |= {"max_length": tr.seq_len, "per_device_train_batch_size": tr.micro_batch_size,
             "gradient_accumulation_steps": tr.gradient_accumulation_steps,
             "gradient_checkpointing": tr.gradient_checkpointing}
    if tr.gradient_checkpointing and tr.gradient_checkpointing_kwargs.use_reentrant is not None:
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": tr.gradient_checkpointing_kwargs.use_reentrant}
    set_given(args, [("use_liger_kernel", tr.use_liger_kernel), ("packing", tr.packing),
                     ("padding_free", tr.padding_free)])
    if tr.attn_implementation:
        args["attn_impl"] = ATTN_IMPL[tr.attn_implementation]
    args["optim"] = tr.optim
    unexpressed += unsupported_switches(req, ("torch_compile", "activation_offloading"), "an ms-swift")
    if hw.sharding.startswith("zero"):
        args["deepspeed"] = _swift_deepspeed(req)
    elif hw.sharding == "fsdp":
        args["fsdp"] = "fsdp_offload" if hw.offload_param == "cpu" else "fsdp"
    unexpressed += version_notes(req)
    env = {"NPROC_PER_NODE": str(hw.num_gpus)} if hw.num_gpus > 1 else {}
    return Export("ms-swift command: swift sft", "train.sh", args, unexpressed, command="swift sft", env=env)


def _swift_deepspeed(req: PlanRequest) -> str | dict[str, Any]:
    """ms-swift's own config name when its buckets and offload match the plan (zero1/2: reduce bucket 2e8;
    zero3: "auto"; ``_offload``: the optimizer, at stage 3 also the parameters), else the config inline."""
    hw = req.hardware
    stage = int(hw.sharding[-1])
    offload = hw.offload_optimizer == "cpu"
    own_buckets = (hw.reduce_bucket_size == "auto" and hw.stage3_prefetch_bucket_size == "auto" if stage == 3
                   else hw.reduce_bucket_size == SWIFT_REDUCE_BUCKET_SIZE)
    own_offload = (hw.offload_param == ("cpu" if offload and stage == 3 else "none")) and (not offload or stage >= 2)
    if own_buckets and own_offload:
        return f"zero{stage}" + ("_offload" if offload else "")
    return deepspeed_inline(req)
