"""HF ``TrainingArguments`` and TRL ``SFTConfig`` (JSON or YAML) → ``training`` and ``hardware``.

Reads what ``TrainingArguments.to_json_string()`` / ``to_dict()`` write (``training_args.json`` beside a checkpoint
holds the same keys) and TRL's ``SFTConfig``, which extends it. Field names and defaults: transformers 5.24
``src/transformers/training_args.py`` and TRL 1.16 ``trl/trainer/sft_config.py`` / ``base_config.py`` /
``sft_trainer.py``; the field lists below are those dataclasses' fields (tests/test_importers_hf.py checks them
against the installed libraries).

What the files say, and what they leave to the model loading code:

- ``per_device_train_batch_size`` → ``micro_batch_size``; ``gradient_accumulation_steps`` → the same (a DeepSpeed
  config's must be "auto" or equal: :func:`app.importers.sharding.deepspeed_accumulation`); ``max_length``
  (SFTConfig; ``max_seq_length`` before TRL 0.20) → ``seq_len``; ``activation_checkpointing``
  (``gradient_checkpointing``, its alias in transformers 5) → ``gradient_checkpointing``; ``optim`` → ``optim``;
  ``deepspeed`` / ``fsdp`` → ``sharding``.
- Precision: the dtype the model is loaded in is not a TrainingArguments field. SFTConfig: TRL loads a model given
  by name with ``model_init_kwargs["dtype"]``, float32 when absent (SFTTrainer's docstring), and ``bf16`` (default on
  unless ``fp16``) adds autocast: float32 + bf16 → ``bf16-mixed``, a bfloat16 load → ``bf16``. Plain
  TrainingArguments: the caller loads the model; transformers 5's ``from_pretrained`` keeps the checkpoint's dtype
  (bfloat16 for the catalog's models), so ``bf16`` (fp16: ``fp16-mixed``, float32 master weights) is assumed and
  said so.
- Absent keys of a partial file take the dataclass defaults (an ``assumed`` note each): batch size 8, gradient
  accumulation 1, activation checkpointing off (TrainingArguments) or on (SFTConfig), ``optim`` adamw_torch_fused,
  ``max_length`` 1024.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.importers.bnb import compute_dtype, from_bnb
from app.importers.common import (
    FROM_LAUNCHER,
    ImportNote,
    NoteKind,
    is_unset,
    positive_int,
    use_reentrant,
    varlen_attention,
)
from app.importers.optim import map_optimizer
from app.importers.sharding import deepspeed_sharding, fsdp_config_keys

# dataclasses.fields(transformers.TrainingArguments), transformers 5.24.0
TRAINING_ARGUMENTS_FIELDS = frozenset({
    "output_dir", "per_device_train_batch_size", "num_train_epochs", "max_steps", "learning_rate",
    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim", "optim_args", "weight_decay", "adam_beta1",
    "adam_beta2", "adam_epsilon", "optim_target_modules", "gradient_accumulation_steps",
    "average_tokens_across_devices", "max_grad_norm", "label_smoothing_factor", "bf16", "fp16", "bf16_full_eval",
    "fp16_full_eval", "tf32", "activation_checkpointing", "activation_checkpointing_kwargs",
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "torch_compile", "torch_compile_backend",
    "torch_compile_mode", "use_liger_kernel", "liger_kernel_config", "use_cache", "neftune_noise_alpha",
    "torch_empty_cache_steps", "auto_find_batch_size", "logging_strategy", "logging_steps", "logging_first_step",
    "log_on_each_node", "logging_nan_inf_filter", "include_num_input_tokens_seen", "log_level", "log_level_replica",
    "disable_tqdm", "report_to", "run_name", "project", "trackio_space_id", "trackio_bucket_id",
    "trackio_static_space_id", "eval_strategy", "eval_steps", "eval_delay", "per_device_eval_batch_size",
    "prediction_loss_only", "eval_on_start", "eval_do_concat_batches", "eval_use_gather_object",
    "eval_accumulation_steps", "include_for_metrics", "batch_eval_metrics", "save_only_model", "save_strategy",
    "save_steps", "save_on_each_node", "save_total_limit", "enable_jit_checkpoint", "push_to_hub", "hub_token",
    "hub_private_repo", "hub_model_id", "hub_strategy", "hub_always_push", "hub_revision", "load_best_model_at_end",
    "metric_for_best_model", "greater_is_better", "ignore_data_skip", "restore_callback_states_from_checkpoint",
    "full_determinism", "seed", "data_seed", "use_cpu", "accelerator_config", "parallelism_config",
    "dataloader_drop_last", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "dataloader_in_order",
    "remove_unused_columns", "label_names", "train_sampling_strategy", "length_column_name",
    "ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "ddp_static_graph", "ddp_backend",
    "ddp_timeout", "fsdp", "fsdp_config", "deepspeed", "debug", "skip_memory_metrics", "do_train", "do_eval",
    "do_predict", "resume_from_checkpoint", "local_rank",
})
# dataclasses.fields(trl.SFTConfig) beyond TrainingArguments', TRL 1.16.0
SFT_CONFIG_FIELDS = frozenset({
    "model_init_kwargs", "trust_remote_code", "router_aux_loss_coef", "chat_template_path", "dataset_text_field",
    "dataset_kwargs", "dataset_num_proc", "eos_token", "max_length", "truncation_mode", "shuffle_dataset",
    "packing", "packing_strategy", "padding_free", "pad_to_multiple_of", "eval_packing", "completion_only_loss",
    "assistant_only_loss", "loss_type", "activation_offloading", "pad_token",
})
# Names older releases wrote into training_args.json (transformers 4.x, TRL < 0.20), still read.
LEGACY_FIELDS: dict[str, str] = {
    "max_seq_length": "max_length",
    "evaluation_strategy": "eval_strategy",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
}
LEGACY_IGNORED = frozenset({
    "logging_dir", "overwrite_output_dir", "per_gpu_eval_batch_size", "no_cuda", "use_mps_device",
    "half_precision_backend", "fp16_backend", "fp16_opt_level", "push_to_hub_model_id", "push_to_hub_organization",
    "push_to_hub_token", "mp_parameters", "tpu_num_cores", "tpu_metrics_debug", "jit_mode_eval", "use_ipex",
    "ray_scope", "dispatch_batches", "split_batches", "include_tokens_per_second", "include_inputs_for_metrics",
    "eval_do_concat_batches", "hub_private_repo", "use_legacy_prediction_loop", "dataset_batch_size",
    "num_of_sequences", "chars_per_token", "model_init_kwargs", "past_index", "xpu_backend", "ddp_backend",
    "torchdynamo", "optim_target_modules", "fsdp_min_num_params", "fsdp_transformer_layer_cls_to_wrap",
    "save_safetensors", "dataloader_pin_memory", "group_by_length", "length_column_name", "adafactor",
})
# Keys whose value the planner maps (or reports) itself; every other known key does not change per-GPU memory.
_HANDLED = frozenset({
    "per_device_train_batch_size", "per_gpu_train_batch_size", "gradient_accumulation_steps", "max_length",
    "max_seq_length", "bf16", "fp16", "activation_checkpointing", "gradient_checkpointing", "optim", "deepspeed",
    "fsdp", "fsdp_config", "use_liger_kernel", "liger_kernel_config", "torch_compile", "activation_offloading",
    "packing", "padding_free",
    "gradient_checkpointing_kwargs", "activation_checkpointing_kwargs",
    "model_init_kwargs", "parallelism_config", "loss_type", "auto_find_batch_size",
})
HF_TRAINING_FIELDS = TRAINING_ARGUMENTS_FIELDS | SFT_CONFIG_FIELDS

# The defaults of absent keys: TrainingArguments / SFTConfig dataclass defaults (transformers 5.24, TRL 1.16).
TA_DEFAULTS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "activation_checkpointing": False,
               "optim": "adamw_torch_fused"}
SFT_DEFAULTS = {**TA_DEFAULTS, "activation_checkpointing": True, "max_length": 1024}


def is_sft_config(data: Mapping[str, Any]) -> bool:
    """True when ``data`` has a key only TRL's SFTConfig has (``max_length``, ``packing``, …)."""
    return bool(set(data) & (SFT_CONFIG_FIELDS | {"max_seq_length"}))


def _precision(data: Mapping[str, Any], sft: bool, source: str, notes: list[ImportNote]) -> str:
    """The planner's precision from bf16/fp16 and, for SFTConfig, ``model_init_kwargs['dtype']``."""
    fp16 = bool(data.get("fp16"))
    bf16 = data.get("bf16")
    bf16 = (not fp16) if (bf16 is None and sft) else bool(bf16)  # TRL: bf16 defaults to `not fp16`
    autocast = "bf16" if bf16 else "fp16" if fp16 else None
    kwargs = data.get("model_init_kwargs")
    raw = (kwargs.get("dtype") or kwargs.get("torch_dtype")) if isinstance(kwargs, Mapping) else None
    if sft:
        load = compute_dtype(raw) if raw not in (None, "auto") else None
        if raw == "auto":
            load = "bfloat16"
            notes.append(ImportNote(source, "model_init_kwargs.dtype", "note", "'auto': the checkpoint's dtype, "
                                    "assumed bfloat16 (the catalog models' checkpoints)"))
        elif raw is None:
            load = "float32"
        elif load is None:
            notes.append(ImportNote(source, "model_init_kwargs.dtype", "unsupported",
                                    f"{raw!r} is not bfloat16, float16 or float32; assumed float32"))
            load = "float32"
        if load == "float32":
            precision = {"bf16": "bf16-mixed", "fp16": "fp16-mixed", None: "fp32"}[autocast]
        else:
            precision = "bf16"  # a 16-bit load: 16-bit weights, gradients and optimizer states (fp16: same bytes)
        if raw is None:
            notes.append(ImportNote(
                source, "model_init_kwargs", "assumed",
                "TRL loads a model given by name in float32 when model_init_kwargs has no dtype; with "
                f"{'bf16' if bf16 else 'fp16' if fp16 else 'neither bf16 nor fp16'} autocast; a model you load "
                "yourself in bfloat16 is --precision bf16", field="training.precision", value=precision))
        return precision
    precision = "fp16-mixed" if autocast == "fp16" else "bf16"
    why = ("fp16 autocast needs float32 trainable weights (the GradScaler refuses fp16 gradients): float32 master "
           "weights assumed" if autocast == "fp16" else
           "TrainingArguments does not say the model's dtype; transformers 5 from_pretrained keeps the "
           "checkpoint's (bfloat16 for the catalog models)")
    notes.append(ImportNote(source, "bf16" if autocast != "fp16" else "fp16", "assumed", why,
                            field="training.precision", value=precision))
    return precision


def fsdp_sharding(data: Mapping[str, Any], source: str, training: dict[str, Any], hardware: dict[str, Any],
          notes: list[ImportNote]) -> None:
    """``fsdp`` ("full_shard auto_wrap", a list, or true) → sharding; its ``fsdp_config`` only when FSDP is on."""
    value = data.get("fsdp")
    options = value.split() if isinstance(value, str) else [str(v) for v in value] if isinstance(value, list) else []
    if value is True:
        options = ["full_shard"]
    if not options:
        if not is_unset(data.get("fsdp_config")):
            notes.append(ImportNote(source, "fsdp_config", "ignored", "fsdp is off"))
        return
    if "sharding" in hardware:
        notes.append(ImportNote(source, "fsdp", "unsupported", "deepspeed and fsdp are both set; keeping the "
                                "deepspeed sharding"))
        return
    if "shard_grad_op" in options:
        hardware["sharding"] = "zero2"
        notes.append(ImportNote(source, "fsdp", "note", "shard_grad_op shards gradients and optimizer states like "
                                f"ZeRO-2: sharding 'zero2'; {FROM_LAUNCHER}"))
    elif "no_shard" in options:
        hardware["sharding"] = "ddp"
        notes.append(ImportNote(source, "fsdp", "note", "no_shard replicates like DDP: sharding 'ddp'"))
    else:
        hardware["sharding"] = "fsdp"
        notes.append(ImportNote(source, "fsdp", "note", f"sharding 'fsdp' (full shard); {FROM_LAUNCHER}"))
    if "offload" in options:
        hardware["offload_optimizer"] = hardware["offload_param"] = "cpu"
        notes.append(ImportNote(source, "fsdp", "note", "offload: FSDP CPUOffload(offload_params=True) holds the "
                                "parameters, gradients and optimizer step in host RAM: hardware.offload_param and "
                                "offload_optimizer 'cpu'"))
    fsdp_config_keys(data.get("fsdp_config"), source, training, notes, hardware)


def from_hf_training(data: Mapping[str, Any], source: str = "training_args.json",
                     base_dir: Path | None = None, sft: bool | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    """HF ``TrainingArguments`` or TRL ``SFTConfig`` (as a dict) → body with ``training`` (and ``hardware``,
    ``quantization``/``method`` from ``model_init_kwargs.quantization_config``). It sets no ``model`` and, for LoRA,
    no ``lora`` block: those come from the adapter_config.json / --model given beside it. An SFTConfig (``sft``;
    None: told by its keys) sets ``training.framework`` 'trl'."""
    sft = is_sft_config(data) if sft is None else sft
    defaults = SFT_DEFAULTS if sft else TA_DEFAULTS
    what = "TRL SFTConfig" if sft else "TrainingArguments"
    notes: list[ImportNote] = []
    training: dict[str, Any] = {"framework": "trl"} if sft else {}
    hardware: dict[str, Any] = {}
    body: dict[str, Any] = {}

    def note(key: str, kind: NoteKind, message: str) -> None:
        notes.append(ImportNote(source, key, kind, message))

    def given(*keys: str) -> tuple[str, Any] | None:
        for key in keys:
            if data.get(key) is not None:
                return key, data[key]
        return None

    def take(field: str, keys: tuple[str, ...], default_key: str) -> Any:
        found = given(*keys)
        if found is not None:
            if found[0] in LEGACY_FIELDS:
                note(found[0], "note", f"the older name of {LEGACY_FIELDS[found[0]]}")
            training[field] = found[1]
        elif default_key in defaults:
            training[field] = defaults[default_key]
            notes.append(ImportNote(source, default_key, "assumed", f"{what}'s default; {default_key} is not set",
                                    field=f"training.{field}", value=defaults[default_key]))
        return training.get(field)

    take("micro_batch_size", ("per_device_train_batch_size", "per_gpu_train_batch_size"), "per_device_train_batch_size")
    steps = take("gradient_accumulation_steps", ("gradient_accumulation_steps",), "gradient_accumulation_steps")
    training["gradient_accumulation_steps"] = positive_int(steps, source, "gradient_accumulation_steps")
    gc = take("gradient_checkpointing", ("activation_checkpointing", "gradient_checkpointing"),
              "activation_checkpointing")
    if gc is not None:
        training["gradient_checkpointing"] = bool(gc)
    found = given("activation_checkpointing_kwargs", "gradient_checkpointing_kwargs")
    reentrant = use_reentrant(found[1], source, found[0]) if found else None
    if reentrant is not None:
        training["gradient_checkpointing_kwargs"] = {"use_reentrant": reentrant}
    # switches with a request field of their own (TrainingArguments' and SFTConfig's names)
    for key in ("use_liger_kernel", "torch_compile", *(("activation_offloading", "packing", "padding_free")
                                                       if sft else ())):
        if data.get(key):
            training[key] = True
    if sft:
        take("seq_len", ("max_length", "max_seq_length"), "max_length")
        if "seq_len" in training:
            if data.get("padding_free"):
                note("padding_free", "note", "training.padding_free: one flattened row of the batch's real tokens (at "
                     "most micro_batch_size · max_length, the worst case modelled)")
            elif data.get("packing"):
                note("packing", "note", "training.packing: every row holds max_length tokens")
            else:
                note("packing", "note", "not packed: rows are padded to the longest in the batch, at most max_length; "
                     "modelled at max_length, the worst case")
    found = given("optim")
    if found is None:
        training["optim"] = defaults["optim"]
        notes.append(ImportNote(source, "optim", "assumed", f"{what}'s default; optim is not set",
                                field="training.optim", value=defaults["optim"]))
    else:
        optim, optim_notes = map_optimizer(found[1], source, "optim")
        notes += optim_notes
        if optim is not None:
            training["optim"] = optim
    training["precision"] = _precision(data, sft, source, notes)

    deepspeed_sharding(data.get("deepspeed"), source, base_dir, hardware, notes, training)
    fsdp_sharding(data, source, training, hardware, notes)

    kwargs = data.get("model_init_kwargs")
    if isinstance(kwargs, Mapping):
        for key, value in kwargs.items():
            path = f"model_init_kwargs.{key}"
            if key in ("dtype", "torch_dtype"):
                continue
            if key == "quantization_config" and isinstance(value, Mapping):
                q_body, q_notes = from_bnb(value, source)
                body.update(q_body)
                notes += [ImportNote(n.source, f"{path}.{n.key}", n.kind, n.message) for n in q_notes]
            elif key == "attn_implementation":
                if value in ("flash_attention_2", "sdpa", "eager"):
                    training["attn_implementation"] = value
                else:
                    note(path, "unsupported", f"{value!r} is not modelled (flash_attention_2, sdpa, eager)")
            elif key in ("device_map", "revision", "trust_remote_code", "low_cpu_mem_usage", "use_cache"):
                note(path, "ignored", "does not affect memory")
            else:
                note(path, "unknown", "not a from_pretrained argument the importer knows; ignored")

    for key, value in data.items():
        if key in _HANDLED or key in LEGACY_FIELDS:
            if key == "auto_find_batch_size" and value:
                note(key, "unsupported", "the Trainer halves the batch after an OOM; the estimate is for the batch "
                     "size given")
            elif key == "parallelism_config" and not is_unset(value):
                note(key, "unsupported", "context/tensor parallelism is not modelled; set hardware.num_gpus and "
                     "hardware.sharding (--num-gpus, --sharding)")
            continue
        if key in HF_TRAINING_FIELDS or key in LEGACY_IGNORED:
            note(key, "ignored", "does not affect memory")
        else:
            note(key, "unknown", "not a transformers 5.24 TrainingArguments or TRL 1.16 SFTConfig field; ignored")

    varlen_attention(training, notes, source)
    for name, section in (("training", training), ("hardware", hardware)):
        if section:
            body[name] = section
    return body, notes
