"""ms-swift ``swift sft`` arguments (a YAML/JSON file, or the command line itself) → a full PlanRequest body,
framework 'ms-swift'.

Keys, defaults and what they do: ms-swift v4.5.2 (modelscope/ms-swift @ tag v4.5.2):

- ``swift/arguments/base_args/base_args.py``: ``tuner_type`` 'lora' (3.x called it ``train_type``), ``packing``;
  ``max_length`` None → the model's ``max_model_len``.
- ``swift/arguments/tuner_args.py``: ``lora_rank`` 8, ``lora_alpha`` 32, ``lora_dropout`` 0.05,
  ``target_modules`` ['all-linear'], ``target_regex``, ``modules_to_save``, ``use_dora``, ``use_rslora``,
  ``lora_dtype`` None (adapters in float32).
- ``swift/arguments/base_args/quant_args.py``: ``quant_method`` bnb/hqq/eetq/quanto/fp8, ``quant_bits``,
  ``bnb_4bit_*`` (nf4, double quantization on). ms-swift never calls PEFT's ``prepare_model_for_kbit_training``
  (no call anywhere under ``swift/``): the non-quantized weights keep ``torch_dtype`` → ``prepare_kbit`` false.
- ``swift/arguments/base_args/model_args.py``: ``torch_dtype`` (None → the checkpoint's), and
  ``_init_mixed_precision``: bfloat16 → bf16 autocast, float16/float32 → fp16 autocast; ``attn_impl``.
- ``swift/pipelines/train/tuner.py``: full fine-tuning trains the loaded weights in ``torch_dtype`` (bf16 weights,
  gradients and optimizer states); adapters' fp16 trainable parameters are cast to float32.
- ``swift/trainers/arguments.py`` (``TrainArgumentsMixin``): ``per_device_train_batch_size`` 1,
  ``gradient_accumulation_steps`` None → ``max(1, ceil(16 / per_device_train_batch_size / world_size))``
  (``__post_init__``; world_size: the launched processes), ``gradient_checkpointing`` true, ``use_liger_kernel``;
  ``swift/arguments/template_args.py``: ``padding_free``.
- ``swift/arguments/sft_args.py``: ``deepspeed`` zero0/zero1/zero2/zero3/zero2_offload/zero3_offload (the
  configs in ``swift/config/``: offload puts the optimizer, at stage 3 also the parameters, on the CPU) or a path.
- The launcher's ``NPROC_PER_NODE`` (processes per node) is the GPU count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.importers.bnb import compute_dtype
from app.importers.cli_args import CliArgs
from app.importers.common import (
    ConfigImportError,
    Draft,
    ImportNote,
    bool_key,
    is_unset,
    use_reentrant,
)
from app.importers.framework_fields import (
    SEQ2SEQ_FIELDS,
    SWIFT_BASE_FIELDS,
    SWIFT_SFT_FIELDS,
    SWIFT_TRAIN_FIELDS,
    SWIFT_TUNER_FIELDS,
)
from app.importers.hf_training import TA_DEFAULTS, TRAINING_ARGUMENTS_FIELDS, fsdp_sharding
from app.importers.optim import map_optimizer
from app.importers.sharding import deepspeed_sharding

SWIFT_KNOWN = (SWIFT_BASE_FIELDS | SWIFT_TUNER_FIELDS | SWIFT_SFT_FIELDS | SWIFT_TRAIN_FIELDS
               | TRAINING_ARGUMENTS_FIELDS | SEQ2SEQ_FIELDS | {"train_type"})
# Keys only ms-swift spells: detect.py reads a file with any of them as ms-swift.
# (Not quant_method nor torch_dtype: a BitsAndBytesConfig and a config.json have them too.)
SWIFT_MARKERS = frozenset({"tuner_type", "train_type", "quant_bits", "attn_impl", "target_regex", "lora_dtype",
                           "model_author", "split_dataset_ratio", "tuner_backend", "freeze_vit", "lorap_lr_ratio",
                           "loss_scale"})
SWIFT_DEEPSPEED = {"zero0": (0, False), "zero1": (1, False), "zero2": (2, False), "zero3": (3, False),
                   "zero2_offload": (2, True), "zero3_offload": (3, True)}
SWIFT_REDUCE_BUCKET_SIZE = 200_000_000  # swift/config/zero0/1/2(_offload).json "reduce_bucket_size": 2e8
ATTN_IMPL = {"sdpa": "sdpa", "eager": "eager", "flash_attn": "flash_attention_2",
             "flash_attention_2": "flash_attention_2", "flash_attention_3": "flash_attention_2"}
TUNER_TYPES = ("lora", "full", "longlora", "adalora", "llamapro", "adapter", "vera", "boft", "fourierft", "reft",
               "bone", "lora_ga")
_HANDLED = frozenset({
    "model", "tuner_type", "train_type", "lora_rank", "lora_alpha", "lora_dropout", "target_modules", "target_regex",
    "target_parameters", "modules_to_save", "use_dora", "use_rslora", "lora_bias", "lora_dtype", "quant_method",
    "quant_bits", "bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
    "bnb_4bit_quant_storage", "torch_dtype", "bf16", "fp16", "max_length", "per_device_train_batch_size",
    "gradient_accumulation_steps", "gradient_checkpointing", "gradient_checkpointing_kwargs", "use_liger_kernel",
    "packing", "padding_free", "attn_impl", "optim", "deepspeed", "fsdp", "fsdp_config",
})
SWIFT_UNSUPPORTED: dict[str, str] = {
    "sequence_parallel_size": "sequence parallelism is not modelled (the whole sequence is counted)",
    "use_galore": "GaLore's projected optimizer states are not modelled",
    "optimizer": "ms-swift's optimizer plugins are not modelled; set optim",
    "freeze_parameters_ratio": "freezing part of the model is not modelled (every parameter trained)",
    "freeze_parameters": "freezing part of the model is not modelled (every parameter trained)",
    "trainable_parameters": "training a chosen subset of parameters is not modelled",
    "torch_compile": "torch.compile's memory effects are not modelled",
    "new_special_tokens": "tokens added to the vocabulary are not modelled",
    "deepspeed_autotp_size": "DeepSpeed AutoTP tensor parallelism is not modelled",
}


def _dtype_name(value: Any, source: str, key: str) -> str:
    dtype = compute_dtype(value)
    if dtype is None:
        raise ConfigImportError(source, key, f"{value!r} is not bfloat16, float16 or float32")
    return dtype


def _as_list(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _max_position(model: Any) -> int | None:
    """The model's ``max_position_embeddings`` (ms-swift's ``max_model_len``), when the config is at hand."""
    config: Any = model.get("config") if isinstance(model, Mapping) else None
    if isinstance(model, str):
        from app.core.catalog import model_configs  # lazy: keeps the importer light until it is needed

        config = model_configs().get(model)
    value = config.get("max_position_embeddings") if isinstance(config, Mapping) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def from_ms_swift(data: Mapping[str, Any], source: str = "ms-swift arguments",
                  base_dir: Path | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    """ms-swift ``swift sft`` arguments (a dict, or :class:`CliArgs` parsed from the command) → a full body with
    ``training.framework`` 'ms-swift'. Absent memory-relevant keys take ms-swift's defaults, each noted; a value
    ms-swift refuses raises :class:`ConfigImportError` naming the key."""
    draft = Draft(source, training={"framework": "ms-swift"})
    body, notes, lora, quant = draft.body, draft.notes, draft.lora, draft.quant
    training, hardware = draft.training, draft.hardware
    note, assumed = draft.note, draft.assumed
    draft.model(data.get("model"), "model", base_dir)
    env = data.env if isinstance(data, CliArgs) else {}
    if env.get("NPROC_PER_NODE", "").isdigit() and int(env["NPROC_PER_NODE"]) > 1:
        hardware["num_gpus"] = int(env["NPROC_PER_NODE"])
        note("NPROC_PER_NODE", "note", f"{hardware['num_gpus']} processes per node: hardware.num_gpus")

    # method
    type_key = "tuner_type" if "tuner_type" in data else "train_type"
    tuner = data.get(type_key, "lora")
    if type_key == "train_type":
        note("train_type", "note", "ms-swift 3.x's name of tuner_type")
    if tuner not in TUNER_TYPES:
        raise ConfigImportError(source, type_key, f"{tuner!r} is not one of {', '.join(TUNER_TYPES)}")
    if tuner not in ("lora", "full"):
        raise ConfigImportError(source, type_key, f"{tuner!r} is not modelled; the planner models lora and full")
    if type_key not in data:
        note("tuner_type", "assumed", "ms-swift's default tuner_type 'lora'")
    qmethod, bits = data.get("quant_method"), data.get("quant_bits")
    if qmethod is not None and qmethod not in ("bnb", "hqq", "eetq", "quanto", "fp8"):
        raise ConfigImportError(source, "quant_method", f"{qmethod!r} is not one of bnb, hqq, eetq, quanto, fp8")
    if qmethod is not None and qmethod != "fp8" and bits not in (1, 2, 3, 4, 8, "float8"):
        raise ConfigImportError(source, "quant_bits", f"{bits!r}: set 1, 2, 3, 4 or 8 with quant_method {qmethod}")
    use_dora = bool(bool_key(data, "use_dora", source))
    if tuner == "full":
        body["method"] = "full"
        if qmethod is not None:
            raise ConfigImportError(source, "quant_method", "quantized base weights need an adapter (tuner_type lora)")
    elif qmethod is not None:
        body["method"] = "qdora" if use_dora else "qlora"
        if draft.bitsandbytes(data, qmethod, bits, method_key="quant_method", type_key="bnb_4bit_quant_type",
                              double_key="bnb_4bit_use_double_quant") == 4:
            for key in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage"):
                if data.get(key) is not None:
                    quant[key] = ("uint8" if str(data[key]).lower() == "uint8" and key.endswith("storage")
                                  else _dtype_name(data[key], source, key))
        note("quant_method", "note", "ms-swift does not call prepare_model_for_kbit_training: the non-quantized "
             "weights keep torch_dtype (quantization.prepare_kbit false)")
    else:
        body["method"] = "dora" if use_dora else "lora"

    if body["method"] != "full":
        for key, field, default in (("lora_rank", "r", 8), ("lora_alpha", "lora_alpha", 32),
                                    ("lora_dropout", "lora_dropout", 0.05)):
            if data.get(key) is not None:
                lora[field] = data[key]
            elif key != "lora_dropout":
                assumed(key, f"lora.{field}", default, f"ms-swift's default {key}")
            else:
                lora[field] = default
        if data.get("target_regex"):
            lora["target_modules"] = data["target_regex"]
        else:
            names = _as_list(data.get("target_modules", ["all-linear"]))
            if "target_modules" not in data:
                note("target_modules", "assumed", "ms-swift's default ['all-linear']")
            if "all-linear" in names:
                lora["target_modules"] = "all-linear"
                if len(names) > 1:
                    note("target_modules", "unsupported", f"{[n for n in names if n != 'all-linear']} beside "
                         "all-linear are not modelled (all-embedding / all-norm targets)")
            else:
                lora["target_modules"] = names
        if not is_unset(data.get("target_parameters")):
            lora["target_parameters"] = _as_list(data["target_parameters"])
        if not is_unset(data.get("modules_to_save")):
            lora["modules_to_save"] = _as_list(data["modules_to_save"])
        if data.get("use_rslora") is not None:
            lora["use_rslora"] = bool(bool_key(data, "use_rslora", source))
        if data.get("lora_bias") not in (None, "none"):
            if data["lora_bias"] not in ("all", "lora_only"):
                raise ConfigImportError(source, "lora_bias", f"{data['lora_bias']!r} is not none, all or lora_only")
            lora["bias"] = data["lora_bias"]
        if data.get("lora_dtype") not in (None, "fp32", "float32"):
            note("lora_dtype", "unsupported", f"{data['lora_dtype']!r} adapters are not modelled (float32 counted)")

    # precision: torch_dtype is the load dtype; bf16 → bf16 autocast, float16/float32 → fp16 autocast
    dtype = _dtype_name(data["torch_dtype"], source, "torch_dtype") if data.get("torch_dtype") else None
    if dtype is None:
        dtype = "bfloat16"
        notes.append(ImportNote(source, "torch_dtype", "assumed", "not set: ms-swift loads the checkpoint's dtype "
                                "(bfloat16 for the catalog models)", field="training.precision", value="bf16"))
    if dtype == "float32":
        bf16 = bool_key(data, "bf16", source)
        training["precision"] = "bf16-mixed" if bf16 else "fp16-mixed"
        note("torch_dtype", "note", f"float32 weights with {'bf16' if bf16 else 'fp16'} autocast "
             f"(_init_mixed_precision): precision {training['precision']!r}")
    elif dtype == "float16" and body["method"] == "full":
        training["precision"] = "fp16-mixed"
        note("torch_dtype", "note", "full fine-tuning in float16 needs float32 trainable weights for the GradScaler: "
             "precision 'fp16-mixed'")
    else:
        training["precision"] = "bf16"  # 16-bit weights; adapters float32

    # shape of the step
    if data.get("max_length") is not None:
        training["seq_len"] = data["max_length"]
    else:
        longest = _max_position(body.get("model"))
        if longest is not None:
            assumed("max_length", "training.seq_len", longest, "not set: ms-swift truncates at the model's "
                    "max_model_len (max_position_embeddings); set max_length to your data's longest sample")
        else:
            note("max_length", "unsupported", "not set: ms-swift truncates at the model's max_model_len, unknown "
                 "here; set --seq-len")
    if data.get("per_device_train_batch_size") is not None:
        training["micro_batch_size"] = data["per_device_train_batch_size"]
    else:
        assumed("per_device_train_batch_size", "training.micro_batch_size", 1, "ms-swift's default (1)")
    batch, world = training["micro_batch_size"], hardware.get("num_gpus", 1)
    batch = batch if isinstance(batch, int) and not isinstance(batch, bool) and batch > 0 else 1
    draft.accumulation(data, max(1, math.ceil(16 / batch / world)), "not set: ms-swift's TrainArgumentsMixin sets "
                       f"max(1, ceil(16 / per_device_train_batch_size / world_size)), world_size {world}"
                       + ("" if "num_gpus" in hardware else " (no NPROC_PER_NODE: one process assumed)"))
    gc = bool_key(data, "gradient_checkpointing", source)
    if gc is None:
        assumed("gradient_checkpointing", "training.gradient_checkpointing", True, "ms-swift's default (true)")
    else:
        training["gradient_checkpointing"] = gc
    reentrant = use_reentrant(data.get("gradient_checkpointing_kwargs"), source, "gradient_checkpointing_kwargs")
    if reentrant is not None:
        training["gradient_checkpointing_kwargs"] = {"use_reentrant": reentrant}
    for key in ("use_liger_kernel", "packing", "padding_free"):
        if bool_key(data, key, source):
            training[key] = True
    attn = data.get("attn_impl")
    if attn is not None:
        if attn not in ATTN_IMPL:
            raise ConfigImportError(source, "attn_impl", f"{attn!r} is not one of {', '.join(ATTN_IMPL)}")
        training["attn_implementation"] = ATTN_IMPL[attn]
    if data.get("optim") is not None:
        optim, optim_notes = map_optimizer(data["optim"], source, "optim")
        notes += optim_notes
        if optim is not None:
            training["optim"] = optim
    else:
        assumed("optim", "training.optim", TA_DEFAULTS["optim"], "TrainingArguments' default")

    ds = data.get("deepspeed")
    if isinstance(ds, str) and ds in SWIFT_DEEPSPEED:
        stage, offload = SWIFT_DEEPSPEED[ds]
        # swift/config/zero{1,2}*.json: reduce_bucket_size 2e8; zero3*.json: "auto" (and the prefetch bucket)
        buckets: dict[str, Any] = ({"reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto"}
                                   if stage == 3 else {"reduce_bucket_size": SWIFT_REDUCE_BUCKET_SIZE})
        zero: dict[str, Any] = {"stage": stage, **buckets}
        if offload:
            zero["offload_optimizer"] = {"device": "cpu"}
            if stage == 3:
                zero["offload_param"] = {"device": "cpu"}
        deepspeed_sharding({"zero_optimization": zero}, source, base_dir, hardware, notes, training)
        note("deepspeed", "note", f"{ds!r}: ms-swift's swift/config/{ds}.json")
    else:
        if isinstance(ds, str) and ds.lstrip().startswith("{"):
            try:
                ds = json.loads(ds)
            except ValueError:
                raise ConfigImportError(source, "deepspeed", "not a ZeRO name, a path or JSON") from None
        deepspeed_sharding(ds, source, base_dir, hardware, notes, training)
    fsdp = data.get("fsdp")
    if isinstance(fsdp, str) and fsdp in ("fsdp", "fsdp2", "fsdp2_offload", "fsdp_offload"):
        fsdp = "full_shard auto_wrap" + (" offload" if "offload" in fsdp else "")
    fsdp_sharding({**data, "fsdp": fsdp}, source, training, hardware, notes)

    draft.leftovers(data, _HANDLED, SWIFT_UNSUPPORTED, SWIFT_KNOWN, "not an ms-swift v4.5.2 sft argument; ignored",
                    unset=lambda k, v: k == "sequence_parallel_size" and v == 1)

    return draft.finish()
