"""LLaMA-Factory training YAML (``llamafactory-cli train x.yaml``) → a full PlanRequest body, framework 'llama-factory'.

Keys, defaults and what they do: LLaMA-Factory v0.9.5 (hiyouga/LLaMA-Factory @ tag v0.9.5):

- ``src/llamafactory/hparams/finetuning_args.py``: ``finetuning_type`` lora (default) / full / freeze / oft,
  ``lora_rank`` 8, ``lora_alpha`` None → ``lora_rank * 2`` (``__post_init__``), ``lora_dropout`` 0,
  ``lora_target`` 'all' (every linear layer, ``find_all_linear_modules``), comma-separated names otherwise,
  ``additional_target`` → ``modules_to_save``, ``use_dora``, ``use_rslora``, ``pure_bf16``.
- ``src/llamafactory/hparams/model_args.py``: ``quantization_bit`` (4/8 with bitsandbytes),
  ``quantization_method`` 'bnb', ``quantization_type`` nf4, ``double_quantization`` true;
  ``disable_gradient_checkpointing`` false (so checkpointing is ON by default), ``use_reentrant_gc`` true,
  ``enable_liger_kernel``, ``use_unsloth``, ``use_unsloth_gc``, ``flash_attn`` auto/disabled/sdpa/fa2/fa3.
- ``src/llamafactory/hparams/data_args.py``: ``cutoff_len`` 2048, ``packing`` (None → on for stage 'pt' only,
  ``parser.py``), ``neat_packing``.
- ``src/llamafactory/model/adapter.py`` (``init_adapter``): trainable parameters are cast to float32 unless
  ``pure_bf16`` (or BAdam), or DeepSpeed ZeRO-3 without quantization; PEFT's ``prepare_model_for_kbit_training``
  is never called (``model_utils/checkpointing.py`` upcasts only layer norms, and only with ``upcast_layernorm``),
  so non-quantized weights of a QLoRA model stay 16-bit: ``quantization.prepare_kbit`` false.
- ``src/llamafactory/hparams/parser.py``: the model is loaded in the compute dtype, bfloat16 with ``bf16`` or
  ``pure_bf16``, float16 with ``fp16``, else the checkpoint's (``patcher.py``, ``infer_optim_dtype``).

The transformers ``Seq2SeqTrainingArguments`` keys in the same file (``per_device_train_batch_size`` 8,
``gradient_accumulation_steps`` 1, ``optim``, ``deepspeed``, ``fsdp``…) are read as HF TrainingArguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.importers.common import ConfigImportError, Draft, ImportNote, bool_key, is_unset
from app.importers.framework_fields import (
    LF_DATA_FIELDS,
    LF_FINETUNING_FIELDS,
    LF_GENERATING_FIELDS,
    LF_MODEL_FIELDS,
    LF_TRAINING_FIELDS,
    SEQ2SEQ_FIELDS,
)
from app.importers.hf_training import LEGACY_IGNORED, TA_DEFAULTS, TRAINING_ARGUMENTS_FIELDS, fsdp_sharding
from app.importers.optim import map_optimizer
from app.importers.sharding import deepspeed_sharding

# LLaMA-Factory v0.9.5 also runs on transformers 4.x, whose TrainingArguments had fields 5.x dropped (warmup_ratio, …)
LF_KNOWN = (LF_MODEL_FIELDS | LF_DATA_FIELDS | LF_FINETUNING_FIELDS | LF_TRAINING_FIELDS | LF_GENERATING_FIELDS
            | TRAINING_ARGUMENTS_FIELDS | SEQ2SEQ_FIELDS | LEGACY_IGNORED | {"warmup_ratio"})
# Keys only LLaMA-Factory spells (the others are HF TrainingArguments', TRL's or ms-swift's too): detect.py reads a
# file with any of them as LLaMA-Factory.
LF_MARKERS = frozenset({
    "finetuning_type", "cutoff_len", "lora_target", "quantization_bit", "stage", "dataset_dir",
    "disable_gradient_checkpointing", "enable_liger_kernel", "flash_attn", "use_unsloth", "use_unsloth_gc",
    "neat_packing", "pure_bf16", "additional_target", "double_quantization", "quantization_type", "plot_loss",
    "preprocessing_num_workers", "use_reentrant_gc", "upcast_layernorm", "max_samples",
})
_HANDLED = frozenset({
    "model_name_or_path", "finetuning_type", "lora_rank", "lora_alpha", "lora_dropout", "lora_target",
    "additional_target", "use_dora", "use_rslora", "quantization_bit", "quantization_method", "quantization_type",
    "double_quantization", "cutoff_len", "packing", "neat_packing", "per_device_train_batch_size",
    "gradient_accumulation_steps", "disable_gradient_checkpointing", "gradient_checkpointing", "use_reentrant_gc",
    "use_unsloth", "use_unsloth_gc", "enable_liger_kernel", "use_liger_kernel", "flash_attn", "bf16", "fp16",
    "pure_bf16", "optim", "deepspeed", "fsdp", "fsdp_config", "stage", "do_train",
})
# Known keys whose non-default value changes memory in a way the planner does not model.
LF_UNSUPPORTED: dict[str, str] = {
    "use_galore": "GaLore's projected optimizer states are not modelled",
    "use_apollo": "APOLLO's optimizer states are not modelled",
    "use_badam": "BAdam trains one block at a time; not modelled",
    "use_adam_mini": "Adam-mini's reduced second moments are not modelled",
    "use_muon": "the Muon optimizer is not modelled",
    "use_llama_pro": "LLaMA Pro's expanded blocks are not modelled",
    "mixture_of_depths": "mixture-of-depths is not modelled",
    "shift_attn": "shift short attention (LongLoRA) is not modelled",
    "upcast_layernorm": "layer norms upcast to float32 are not modelled (a few MiB)",
    "upcast_lmhead_output": "float32 lm_head outputs are not modelled (the logits are counted in 16-bit)",
    "resize_vocab": "a resized vocabulary is not modelled",
    "add_tokens": "tokens added to the vocabulary are not modelled",
    "add_special_tokens": "tokens added to the vocabulary are not modelled",
    "rope_scaling": "the RoPE scaling does not change the estimate; cutoff_len is what is modelled",
    "fp8": "FP8 training is not modelled",
    "use_kt": "KTransformers' CPU experts are not modelled",
    "use_mca": "Megatron-Core training is not modelled",
    "use_hyper_parallel": "hyper-parallel training is not modelled",
    "pissa_init": "PiSSA's initialisation is computed in float32 on the GPU at start; not modelled",
    "torch_compile": "torch.compile's memory effects are not modelled",
}
FINETUNING_TYPES = ("lora", "full", "freeze", "oft")
FLASH_ATTN = {"auto": None, "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2",
              "fa3": "flash_attention_2"}
QUANT_METHODS = ("bnb", "gptq", "awq", "aqlm", "quanto", "eetq", "hqq", "mxfp4", "fp8")


def from_llama_factory(data: Mapping[str, Any], source: str = "LLaMA-Factory config",
                       base_dir: Path | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    """A LLaMA-Factory YAML (as a dict) → a full body with ``training.framework`` 'llama-factory' (or 'unsloth'
    with ``use_unsloth``). Absent memory-relevant keys take LLaMA-Factory's defaults, each noted; a value
    LLaMA-Factory itself would refuse raises :class:`ConfigImportError` naming the key."""
    draft = Draft(source, training={"framework": "llama-factory"})
    body, notes, lora = draft.body, draft.notes, draft.lora
    training, hardware = draft.training, draft.hardware
    note, assumed = draft.note, draft.assumed
    draft.model(data.get("model_name_or_path"), "model_name_or_path", base_dir)

    # method
    ftype = data.get("finetuning_type", "lora")
    if ftype not in FINETUNING_TYPES:
        raise ConfigImportError(source, "finetuning_type", f"{ftype!r} is not one of {', '.join(FINETUNING_TYPES)}")
    if ftype == "oft":
        raise ConfigImportError(source, "finetuning_type", "'oft' (orthogonal fine-tuning) is not modelled; "
                                "the planner models lora and full (freeze as full)")
    if "finetuning_type" not in data:
        note("finetuning_type", "assumed", "LLaMA-Factory's default finetuning_type 'lora'")
    bits = data.get("quantization_bit")
    if bits is not None and (isinstance(bits, bool) or bits not in (2, 3, 4, 5, 6, 8)):
        raise ConfigImportError(source, "quantization_bit", f"{bits!r} is not 2, 3, 4, 5, 6 or 8")
    qmethod = data.get("quantization_method", "bnb")
    if qmethod not in QUANT_METHODS:
        raise ConfigImportError(source, "quantization_method", f"{qmethod!r} is not one of {', '.join(QUANT_METHODS)}")
    use_dora = bool(bool_key(data, "use_dora", source))
    if bits is not None and ftype != "lora":
        raise ConfigImportError(source, "quantization_bit", "LLaMA-Factory quantizes only for finetuning_type lora "
                                "(adapter.py: 'Quantized models can only be used for the LoRA tuning')")
    if ftype in ("full", "freeze"):
        body["method"] = "full"
        if ftype == "freeze":
            note("finetuning_type", "unsupported", "freeze tuning trains only the last freeze_trainable_layers "
                 "layers; estimated as full fine-tuning (gradients and optimizer states of every layer: an upper "
                 "bound)")
    elif bits is not None:
        body["method"] = "qdora" if use_dora else "qlora"
        draft.bitsandbytes(data, qmethod, bits, method_key="quantization_method", type_key="quantization_type",
                           double_key="double_quantization")
        note("quantization_bit", "note", "LLaMA-Factory does not call prepare_model_for_kbit_training: the "
             "non-quantized weights stay 16-bit, only the trainable (LoRA) parameters are float32 "
             "(quantization.prepare_kbit false)")
    else:
        body["method"] = "dora" if use_dora else "lora"

    # adapter
    if body["method"] != "full":
        rank = data.get("lora_rank", 8)
        if "lora_rank" not in data:
            assumed("lora_rank", "lora.r", 8, "LLaMA-Factory's default lora_rank")
        else:
            lora["r"] = rank
        if data.get("lora_alpha") is not None:
            lora["lora_alpha"] = data["lora_alpha"]
        elif isinstance(rank, int) and not isinstance(rank, bool):
            lora["lora_alpha"] = rank * 2
            note("lora_alpha", "note", f"not set: LLaMA-Factory uses lora_rank * 2 = {rank * 2}")
        lora["lora_dropout"] = data.get("lora_dropout", 0.0)
        target = data.get("lora_target", "all")
        if not isinstance(target, str):
            raise ConfigImportError(source, "lora_target", f"expected 'all' or comma-separated module names, got "
                                    f"{target!r}")
        names = [t.strip() for t in target.split(",") if t.strip()]
        if names == ["all"]:
            lora["target_modules"] = "all-linear"
            if "lora_target" not in data:
                note("lora_target", "assumed", "LLaMA-Factory's default 'all': every linear layer but the output "
                     "layer (find_all_linear_modules), as PEFT's 'all-linear'")
        else:
            lora["target_modules"] = names
        extra = data.get("additional_target")
        if not is_unset(extra):
            lora["modules_to_save"] = [t.strip() for t in str(extra).split(",") if t.strip()]
        if data.get("use_rslora") is not None:
            lora["use_rslora"] = bool(bool_key(data, "use_rslora", source))

    # precision: the load dtype (parser.py) and the float32 upcast of trainable parameters (adapter.py)
    bf16, fp16, pure = (bool_key(data, k, source) for k in ("bf16", "fp16", "pure_bf16"))
    if pure:
        training["precision"] = "bf16"
    elif body["method"] == "full":
        if bf16 or fp16:
            training["precision"] = "fp16-mixed" if fp16 and not bf16 else "bf16-mixed"
            note("bf16" if bf16 else "fp16", "note", "LLaMA-Factory casts the trainable parameters to float32 "
                 "(adapter.py; under ZeRO-3 DeepSpeed keeps float32 master weights instead) and trains with "
                 f"autocast: precision {training['precision']!r}")
        else:
            assumed("bf16", "training.precision", "fp32", "neither bf16, fp16 nor pure_bf16: the trainable "
                    "parameters are float32 and no autocast")
    else:
        training["precision"] = "bf16"  # 16-bit base weights (fp16: the same bytes), float32 adapters
        if not (bf16 or fp16):
            notes.append(ImportNote(source, "bf16", "assumed", "bf16/fp16 not set: the model is loaded in the "
                                    "checkpoint's dtype (bfloat16 for the catalog models) with float32 adapters",
                                    field="training.precision", value="bf16"))

    # shape of the step
    if data.get("cutoff_len") is not None:
        training["seq_len"] = data["cutoff_len"]
    else:
        assumed("cutoff_len", "training.seq_len", 2048, "LLaMA-Factory's default cutoff_len")
    if data.get("per_device_train_batch_size") is not None:
        training["micro_batch_size"] = data["per_device_train_batch_size"]
    else:
        assumed("per_device_train_batch_size", "training.micro_batch_size", TA_DEFAULTS["per_device_train_batch_size"],
                "TrainingArguments' default")
    draft.accumulation(data, TA_DEFAULTS["gradient_accumulation_steps"], "TrainingArguments' default")
    packing, neat = bool_key(data, "packing", source), bool_key(data, "neat_packing", source)
    stage = data.get("stage", "sft")
    if neat or packing or (packing is None and stage == "pt"):
        training["packing"] = True
        why = ("neat_packing: packed rows with block-diagonal attention (no cross-contamination)" if neat else
               "packing" if packing else "packing not set: LLaMA-Factory packs for stage 'pt'")
        note("neat_packing" if neat else "packing", "note", f"{why}; every row holds cutoff_len tokens")
    if stage not in ("sft", "pt"):
        note("stage", "unsupported", f"stage {stage!r}: reward models, PPO, DPO and KTO add reference/reward models "
             "and paired sequences; estimated as supervised fine-tuning")

    disable_gc = bool_key(data, "disable_gradient_checkpointing", source)
    if disable_gc is None:
        assumed("disable_gradient_checkpointing", "training.gradient_checkpointing", True,
                "LLaMA-Factory enables gradient checkpointing unless disable_gradient_checkpointing is true")
    else:
        training["gradient_checkpointing"] = not disable_gc
    if training["gradient_checkpointing"]:
        reentrant = bool_key(data, "use_reentrant_gc", source)
        training["gradient_checkpointing_kwargs"] = {"use_reentrant": True if reentrant is None else reentrant}
    if bool_key(data, "use_unsloth_gc", source):
        training["activation_offloading"] = True
        note("use_unsloth_gc", "note", "Unsloth's offloaded checkpointing keeps each checkpointed hidden state in "
             "CPU memory: training.activation_offloading")
    if bool_key(data, "enable_liger_kernel", source) or bool_key(data, "use_liger_kernel", source):
        training["use_liger_kernel"] = True
    if bool_key(data, "use_unsloth", source):
        training["framework"] = "unsloth"
        note("use_unsloth", "note", "LLaMA-Factory loads and patches the model with Unsloth: framework 'unsloth'")

    attn = data.get("flash_attn", "auto")
    if attn not in FLASH_ATTN:
        raise ConfigImportError(source, "flash_attn", f"{attn!r} is not one of {', '.join(FLASH_ATTN)}")
    if FLASH_ATTN[attn] is not None:
        training["attn_implementation"] = FLASH_ATTN[attn]
        if attn == "fa3":
            note("flash_attn", "note", "FlashAttention-3 keeps the same activations as FlashAttention-2")

    if data.get("optim") is not None:
        optim, optim_notes = map_optimizer(data["optim"], source, "optim")
        notes += optim_notes
        if optim is not None:
            training["optim"] = optim
    else:
        assumed("optim", "training.optim", TA_DEFAULTS["optim"], "TrainingArguments' default")

    deepspeed_sharding(data.get("deepspeed"), source, base_dir, hardware, notes, training)
    fsdp_sharding(data, source, training, hardware, notes)

    draft.leftovers(data, _HANDLED, LF_UNSUPPORTED, LF_KNOWN, "not a LLaMA-Factory v0.9.5 argument; ignored")

    return draft.finish()
