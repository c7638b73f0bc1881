"""Turn configs people already have into a PlanRequest body (POST /api/v1/estimate's JSON).

Formats, detected by content (JSON or YAML, whatever the file is called):

- ``plan``: a PlanRequest body, whole or in part (e.g. only ``training``); passed through unchanged, so
  the planner's own validation refuses unknown fields and names them.
- ``peft``: a PEFT ``adapter_config.json`` as ``LoraConfig.save_pretrained`` writes it (or the adapter
  directory holding it).
- ``bnb``: a transformers ``BitsAndBytesConfig`` (``to_dict()``, or ``to_json_string()``, which keeps
  only the keys that differ from transformers' defaults).
- ``axolotl``: an axolotl training YAML.
- ``model_config``: a model's ``config.json`` (becomes ``{"model": {"config": …}}``; a bitsandbytes
  ``quantization_config`` inside it is imported as ``bnb``).

Nothing is dropped silently. Each key of an imported file is mapped into the body, accepted without a
word (PEFT keys known to change neither parameters nor memory: ``task_type``, ``inference_mode``,
``init_lora_weights``, …), or reported as an :class:`ImportNote` with its path in the file:

- ``unknown``: not a key of the detected format (a typo, or a newer version's option);
- ``unsupported``: a known key whose value changes parameters or memory in a way the planner does
  not model (``llm_int8_skip_modules``, PEFT ``rank_pattern``, axolotl ``liger_*`` kernels, …);
  the estimate is made without it;
- ``ignored``: a known key that does not affect per-GPU training memory (axolotl ``datasets``,
  ``num_epochs``, ``learning_rate``, …);
- ``note``: a value the importer assumed or translated (axolotl's defaults for absent keys, an
  optimizer alias, a hub id whose case was normalized).

Pure Python: imports neither torch nor FastAPI (PyYAML for YAML; ``app.core.catalog`` to resolve model ids).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

NoteKind = Literal["unknown", "unsupported", "ignored", "note"]
Format = Literal["plan", "peft", "bnb", "axolotl", "model_config"]

PLAN_KEYS = frozenset({"model", "method", "lora", "quantization", "training", "hardware"})
SECTIONS = ("lora", "quantization", "training", "hardware")


@dataclass(frozen=True)
class ImportNote:
    """One key of an imported file that did not map one-to-one onto the request."""

    source: str  # the file (as given), or the format name for in-memory data
    key: str  # path inside the file: 'llm_int8_skip_modules', 'fsdp_config.offload_params', 'datasets'
    kind: NoteKind
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.kind}: {self.message}"


class ConfigImportError(ValueError):
    """A file that cannot be imported at all (unreadable, unrecognized, or a PEFT type that is not LoRA)."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")
        self.source, self.key, self.message = source, key, message


@dataclass
class Imported:
    """One imported file: the detected format, the body it maps to, and its notes."""

    source: str
    format: Format
    body: dict[str, Any]
    notes: list[ImportNote]


def _empty(value: Any) -> bool:
    """None, False, 0, '' and empty containers: the 'not set' values of an optional config key."""
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict, set)) and not value)


def _section(body: dict[str, Any], name: str) -> dict[str, Any]:
    return body.setdefault(name, {})


# ------------------------------------------------------------------------------------------ model ids


def _catalog_ids() -> dict[str, dict[str, Any]]:
    from app.core.catalog import model_configs  # lazy: keeps `peft-planner --help` light

    return model_configs()


def resolve_model(value: Any, source: str, key: str, base_dir: Path | None = None) -> tuple[Any, list[ImportNote]]:
    """A catalog id (case-insensitive, 'https://huggingface.co/' prefix allowed), or a local directory /
    file holding a ``config.json`` (→ ``{"config": …}``). ``(None, [note])`` when it is neither."""
    notes: list[ImportNote] = []
    if not isinstance(value, str) or not value.strip():
        return None, [ImportNote(source, key, "unsupported", f"expected a hub id or a path, got {value!r}")]
    text = value.strip()
    ids = _catalog_ids()
    if text in ids:
        return text, notes
    bare = re.sub(r"^(https?://)?(huggingface\.co|hf\.co)/", "", text).strip("/")
    by_lower = {k.lower(): k for k in ids}
    if bare.lower() in by_lower:
        found = by_lower[bare.lower()]
        notes.append(ImportNote(source, key, "note", f"{text!r} read as the catalog model {found!r}"))
        return found, notes
    candidates = [Path(text).expanduser()]
    if base_dir is not None and not Path(text).is_absolute():
        candidates.insert(0, base_dir / text)
    for path in candidates:
        config = path / "config.json" if path.is_dir() else path
        if config.is_file() and config.suffix == ".json":
            try:
                data = json.loads(config.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigImportError(source, key, f"cannot read {config}: {exc}") from None
            notes.append(ImportNote(source, key, "note", f"model config read from {config}"))
            return {"config": data}, notes
    notes.append(ImportNote(
        source, key, "unsupported",
        f"{text!r} is not a catalog model ({len(ids)} ids, GET /api/v1/models) nor a local directory with a "
        "config.json; pass --model ID or the model's config.json as another FILE",
    ))
    return None, notes


# ----------------------------------------------------------------------------------------------- PEFT

PEFT_MAPPED = frozenset({
    "r", "lora_alpha", "lora_dropout", "target_modules", "bias", "modules_to_save", "use_rslora",
    "layers_to_transform", "target_parameters", "use_dora", "base_model_name_or_path", "peft_type",
})
# Known LoraConfig keys that change neither parameters nor memory: accepted without a note.
PEFT_IRRELEVANT = frozenset({
    "task_type", "inference_mode", "fan_in_fan_out", "init_lora_weights", "revision", "auto_mapping",
    "peft_version", "megatron_core", "alpha_pattern", "layers_pattern", "loftq_config", "eva_config",
    "corda_config", "lora_ga_config", "qalora_group_size", "alora_invocation_tokens",
})
# Known LoraConfig keys that change parameters or memory when set: silent at their default, else reported.
PEFT_UNSUPPORTED: dict[str, str] = {
    "exclude_modules": "excluding modules is not modelled: every module target_modules matches is counted",
    "rank_pattern": "per-module ranks are not modelled: every adapted module is counted with r",
    "megatron_config": "Megatron tensor-parallel LoRA layers are not modelled",
    "trainable_token_indices": "trainable token rows of the embedding are not modelled",
    "layer_replication": "replicated layers are not modelled (they add layers and adapters)",
    "lora_bias": "a trainable bias on lora_B is not modelled",
    "use_qalora": "QA-LoRA is not modelled",
    "use_bdlora": "BD-LoRA is not modelled",
    "velora_config": "VeLoRA is not modelled",
    "monteclora_config": "MonteCLoRA is not modelled",
    "arrow_config": "Arrow routing is not modelled",
    "kasa_config": "KaSA is not modelled",
    "ensure_weight_tying": "modules_to_save copies are counted as PEFT's default (ensure_weight_tying=False)",
}


def from_peft(data: Mapping[str, Any], source: str = "adapter_config.json",
              base_dir: Path | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    """A PEFT ``adapter_config.json`` (LoRA/DoRA) → body with ``method`` (lora/dora), ``lora`` and maybe ``model``."""
    peft_type = data.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise ConfigImportError(source, "peft_type",
                                f"{peft_type!r} is not supported; the planner models LoRA and DoRA (peft_type 'LORA')")
    notes: list[ImportNote] = []
    lora: dict[str, Any] = {}
    body: dict[str, Any] = {"method": "dora" if data.get("use_dora") else "lora", "lora": lora}
    for key, value in data.items():
        if key in ("r", "lora_alpha", "lora_dropout", "bias", "use_rslora"):
            if value is not None:
                lora[key] = value
        elif key in ("modules_to_save", "layers_to_transform", "target_parameters"):
            lora[key] = None if value is None else _as_list(value)
        elif key == "target_modules":
            lora[key] = value if value is None or isinstance(value, str) else _as_list(value)
        elif key == "base_model_name_or_path":
            if value:
                model, model_notes = resolve_model(value, source, key, base_dir)
                notes += model_notes
                if model is not None:
                    body["model"] = model
        elif key in PEFT_MAPPED or key in PEFT_IRRELEVANT:
            continue
        elif key in PEFT_UNSUPPORTED:
            if not _empty(value):
                notes.append(ImportNote(source, key, "unsupported", f"{PEFT_UNSUPPORTED[key]} (value {value!r})"))
        else:
            notes.append(ImportNote(source, key, "unknown", "not a PEFT 0.21 LoraConfig field; ignored"))
    return body, notes


def _as_list(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# ------------------------------------------------------------------------------------- bitsandbytes

_DTYPES = {
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "float32": "float32", "fp32": "float32", "float": "float32",
}
BNB_IRRELEVANT = frozenset({"_load_in_4bit", "_load_in_8bit", "llm_int8_threshold"})
BNB_KEYS = frozenset({
    "quant_method", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
    "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage", "llm_int8_skip_modules",
    "llm_int8_enable_fp32_cpu_offload", "llm_int8_has_fp16_weight",
}) | BNB_IRRELEVANT
# transformers.BitsAndBytesConfig's defaults, for keys a diff-only to_json_string() leaves out.
TRANSFORMERS_BNB_DEFAULTS = {"bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False,
                             "bnb_4bit_compute_dtype": "float32"}


def compute_dtype(value: Any) -> str | None:
    """'bfloat16', 'torch.bfloat16', 'bf16', torch.bfloat16 → 'bfloat16' (None when not a known dtype)."""
    text = str(value).strip().lower()
    return _DTYPES.get(text.removeprefix("torch."))


def _bnb_keys(data: Mapping[str, Any], source: str, prefix: str = "") -> tuple[dict[str, Any], dict[str, bool],
                                                                               list[ImportNote]]:
    """Map bitsandbytes keys: (quantization fields, {'load_in_4bit'/'load_in_8bit': bool} given, notes)."""
    quant: dict[str, Any] = {}
    flags: dict[str, bool] = {}
    notes: list[ImportNote] = []
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key == "quant_method":
            if value not in (None, "bitsandbytes"):
                raise ConfigImportError(source, path, f"{value!r} is not supported; the planner models "
                                        "bitsandbytes quantization only")
        elif key in ("load_in_4bit", "load_in_8bit"):
            if value is not None:
                flags[key] = bool(value)
        elif key in ("bnb_4bit_quant_type", "bnb_4bit_use_double_quant"):
            if value is not None:
                quant[key] = value
        elif key == "bnb_4bit_compute_dtype":
            if value is not None:
                dtype = compute_dtype(value)
                if dtype is None:
                    notes.append(ImportNote(source, path, "unsupported",
                                            f"{value!r} is not one of bfloat16, float16, float32; ignored"))
                else:
                    quant[key] = dtype
        elif key == "bnb_4bit_quant_storage":
            if value is not None:
                is_uint8 = str(value).strip().lower().removeprefix("torch.") == "uint8"
                storage = "uint8" if is_uint8 else compute_dtype(value)
                if storage is None:
                    notes.append(ImportNote(source, path, "unsupported",
                                            f"{value!r} is not one of uint8, bfloat16, float16, float32; ignored"))
                else:
                    quant[key] = storage
        elif key == "llm_int8_skip_modules":
            if not _empty(value):
                notes.append(ImportNote(
                    source, path, "unsupported",
                    f"modules kept unquantized ({value!r}) are not modelled: the planner quantizes every linear "
                    "layer except lm_head (transformers' default); those modules will weigh more than estimated",
                ))
        elif key == "llm_int8_enable_fp32_cpu_offload":
            if value:
                notes.append(ImportNote(source, path, "unsupported",
                                        "CPU offload of modules is not modelled: everything is counted on the GPU"))
        elif key == "llm_int8_has_fp16_weight":
            if value:
                notes.append(ImportNote(source, path, "unsupported",
                                        "int8 layers keeping fp16 weights are not modelled (weights counted as int8)"))
        elif key in BNB_IRRELEVANT:
            continue
        else:
            notes.append(ImportNote(source, path, "unknown", "not a transformers BitsAndBytesConfig field; ignored"))
    return quant, flags, notes


def from_bnb(data: Mapping[str, Any], source: str = "bitsandbytes config") -> tuple[dict[str, Any], list[ImportNote]]:
    """A transformers ``BitsAndBytesConfig`` dict → body with ``method: qlora`` and ``quantization``.

    Keys a diff-only ``to_json_string()`` omits take transformers' defaults (fp4, no double quant, float32
    compute), as ``BitsAndBytesConfig(**data)`` would. 8-bit: ``quantization.load_in_8bit``; the 4-bit
    fields do not apply and are not copied.
    """
    quant, flags, notes = _bnb_keys(data, source)
    in4 = flags.get("load_in_4bit", bool(data.get("_load_in_4bit")))
    in8 = flags.get("load_in_8bit", bool(data.get("_load_in_8bit")))
    if in4 and in8:
        raise ConfigImportError(source, "load_in_4bit", "load_in_4bit and load_in_8bit are both true; pick one")
    if not (in4 or in8):
        notes.append(ImportNote(source, "load_in_4bit", "unsupported",
                                "neither load_in_4bit nor load_in_8bit is true: no quantization; method not set"))
        return {}, notes
    if in8:
        return {"method": "qlora", "quantization": {"load_in_8bit": True}}, notes
    for key, default in TRANSFORMERS_BNB_DEFAULTS.items():
        if key not in quant and key not in data:
            quant[key] = default
            notes.append(ImportNote(source, key, "note", f"absent: transformers' default {default!r}"))
    quant["load_in_8bit"] = False
    return {"method": "qlora", "quantization": quant}, notes


# -------------------------------------------------------------------------------------------- axolotl

# HF TrainingArguments.optim / axolotl `optimizer` → PlanRequest training.optim
OPTIM_EXACT = frozenset({"adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit",
                         "paged_adamw_32bit", "adafactor", "sgd", "lion_8bit", "lion_32bit"})
OPTIM_ALIASES: dict[str, tuple[str, str]] = {
    "adamw_8bit": ("adamw_bnb_8bit", "transformers' alias of adamw_bnb_8bit"),
    "adamw_hf": ("adamw_torch", "transformers' AdamW (removed in v5) keeps the same two states"),
    "adamw_torch_xla": ("adamw_torch", "same states as adamw_torch"),
    "adamw_torch_npu_fused": ("adamw_torch_fused", "same states as adamw_torch_fused"),
    "adamw_apex_fused": ("adamw_torch_fused", "same states as adamw_torch_fused"),
}
# Known optimizers (transformers 5 OptimizerNames, axolotl's own) the planner does not model.
OPTIM_KNOWN_UNMODELLED = frozenset({
    "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "adagrad", "ademamix_8bit",
    "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop",
    "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit",
    "galore_adafactor", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise",
    "lomo", "adalomo", "grokadamw", "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd",
    "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw", "optimi_adamw", "ao_adamw_4bit", "ao_adamw_8bit",
    "ao_adamw_fp8", "adopt_adamw", "came_pytorch", "muon", "dion",
})


def map_optimizer(name: Any, source: str, key: str) -> tuple[str | None, list[ImportNote]]:
    """An HF/axolotl optimizer name → training.optim, or (None, [note]) when the planner has no equivalent."""
    text = str(name).strip().lower()
    if text in OPTIM_EXACT:
        return text, []
    if text in OPTIM_ALIASES:
        optim, why = OPTIM_ALIASES[text]
        return optim, [ImportNote(source, key, "note", f"{name!r} modelled as {optim!r} ({why})")]
    modelled = ", ".join(sorted(OPTIM_EXACT))
    kind: NoteKind = "unsupported" if text in OPTIM_KNOWN_UNMODELLED else "unknown"
    what = "is not modelled" if kind == "unsupported" else "is not a known optimizer"
    return None, [ImportNote(source, key, kind, f"{name!r} {what}; training.optim left at the planner's default "
                             f"adamw_torch (modelled: {modelled})")]


# Known axolotl keys that do not change per-GPU training memory.
AXOLOTL_IGNORED = frozenset({
    # data and prompts
    "datasets", "test_datasets", "pretraining_dataset", "dataset_prepared_path", "dataset_processes",
    "dataset_num_proc", "dataset_exact_deduplication", "dataset_keep_in_memory", "dataset_shard_num",
    "dataset_shard_idx", "push_dataset_to_hub", "shuffle_merged_datasets", "shuffle_before_merging_datasets",
    "skip_prepare_dataset", "streaming", "streaming_multipack_buffer_size", "val_set_size", "chat_template",
    "chat_template_jinja", "chat_template_kwargs", "default_system_message", "special_tokens", "eot_tokens",
    "added_tokens_overrides", "fix_untrained_tokens", "train_on_inputs", "train_on_eos", "roles_to_train",
    "group_by_length", "min_sample_len", "max_prompt_len", "excess_length_strategy", "eval_sequence_len",
    "sample_packing", "sample_packing_group_size", "sample_packing_bin_size", "sample_packing_sequentially",
    "sample_packing_mp_start_method", "sample_packing_eff_est", "eval_sample_packing", "pad_to_sequence_len",
    "curriculum_sampling", "multipack_real_batches", "batch_flattening", "pretrain_multipack_buffer_size",
    "pretrain_multipack_attn", "pretraining_sample_concatenation", "total_num_tokens", "total_supervised_tokens",
    "is_preprocess", "preprocess_iterable", "dataloader_pin_memory", "dataloader_num_workers",
    "dataloader_prefetch_factor", "dataloader_drop_last", "remove_unused_columns", "image_size",
    "image_resize_algorithm", "max_packed_sequence_len",
    # schedule, optimizer hyper-parameters
    "num_epochs", "max_steps", "learning_rate", "lr_scheduler", "lr_scheduler_kwargs", "lr_quadratic_warmup",
    "cosine_min_lr_ratio", "cosine_constant_lr_ratio", "lr_div_factor", "lr_groups", "warmup_steps",
    "warmup_ratio", "weight_decay", "gradient_accumulation_steps", "batch_size", "eval_batch_size",
    "auto_find_batch_size", "max_grad_norm", "adam_beta1", "adam_beta2", "adam_beta3", "adam_epsilon",
    "adam_epsilon2", "optim_args", "optim_target_modules", "torchdistx_path", "embedding_lr",
    "embedding_lr_scale", "loraplus_lr_ratio", "loraplus_lr_embedding", "dion_lr", "dion_momentum",
    "dion_rank_fraction", "dion_rank_multiple_of", "neftune_noise_alpha", "noisy_embedding_alpha", "seed",
    "relora", "relora_steps", "relora_warmup_steps", "relora_anneal_steps", "relora_prune_ratio",
    "relora_cpu_offload", "jagged_restart_steps", "jagged_restart_warmup_steps", "jagged_restart_anneal_steps",
    # evaluation, saving, logging
    "output_dir", "eval_steps", "evals_per_epoch", "eval_strategy", "evaluation_strategy", "save_steps",
    "saves_per_epoch", "save_strategy", "save_total_limit", "save_first_step", "save_only_model",
    "save_safetensors", "load_best_model_at_end", "metric_for_best_model", "greater_is_better",
    "early_stopping_patience", "logging_steps", "logging_dir", "eval_table_size", "eval_max_new_tokens",
    "do_causal_lm_eval", "eval_causal_lm_metrics", "do_bench_eval", "bench_dataset", "bench_split",
    "loss_watchdog_threshold", "loss_watchdog_patience", "gc_steps", "profiler_steps", "profiler_steps_start",
    "include_tokens_per_second", "include_tkps", "use_tensorboard", "use_wandb", "wandb_project",
    "wandb_entity", "wandb_watch", "wandb_name", "wandb_run_id", "wandb_mode", "wandb_log_model", "use_mlflow",
    "mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name", "hf_mlflow_log_artifacts", "use_comet",
    "comet_api_key", "comet_workspace", "comet_project_name", "comet_experiment_key", "comet_mode",
    "comet_online", "comet_experiment_config", "use_otel_metrics", "otel_metrics_host", "otel_metrics_port",
    "hub_model_id", "hub_strategy", "hf_use_auth_token", "resume_from_checkpoint",
    "auto_resume_from_checkpoints", "gradio_title", "gradio_share", "gradio_server_name", "gradio_server_port",
    "gradio_max_new_tokens", "gradio_temperature", "debug", "strict",
    # model / tokenizer loading details
    "model_type", "type_of_model", "tokenizer_type", "tokenizer_config", "tokenizer_use_fast",
    "tokenizer_legacy", "tokenizer_use_mistral_common", "tokenizer_save_jinja_files", "processor_type",
    "trust_remote_code", "revision_of_model", "base_model_ignore_patterns", "cls_model_config",
    "is_llama_derived_model", "is_mistral_derived_model", "is_qwen_derived_model", "is_falcon_derived_model",
    "rope_scaling", "low_cpu_mem_usage", "max_memory", "gpu_memory_limit", "device", "device_map",
    "experimental_skip_move_to_device", "lora_model_dir", "lora_fan_in_fan_out", "lora_on_cpu", "merge_lora",
    "peft", "peft_init_lora_weights", "peft_layers_pattern", "qlora_sharded_model_loading", "plugins",
    "embeddings_skip_upcast", "mean_resizing_embeddings", "shrink_embeddings",
    # launcher / distributed bookkeeping, compute-only switches
    "local_rank", "world_size", "ddp", "ddp_timeout", "ddp_bucket_cap_mb", "ddp_broadcast_buffers",
    "ddp_find_unused_parameters", "accelerator_config", "use_ray", "ray_run_name", "ray_num_workers",
    "resources_per_worker", "axolotl_config_path", "tf32", "torch_compile_backend", "torch_compile_mode",
    "gradient_checkpointing_kwargs", "flex_attn_compile_kwargs", "fsdp_final_state_dict_type", "deepcompile",
    "heads_k_stride", "ring_attn_func", "rl_beta", "dpo_beta", "orpo_alpha", "rpo_alpha", "simpo_gamma",
    "cpo_alpha", "kto_desirable_weight", "kto_undesirable_weight",
})
# Known axolotl keys that change memory in ways the planner does not model: silent when unset/false.
AXOLOTL_UNSUPPORTED: dict[str, str] = {
    "xformers_attention": "xformers attention is not modelled; attn_implementation left at the model's default",
    "s2_attention": "shifted-sparse attention is not modelled",
    "flex_attention": "flex attention is not modelled; attn_implementation left at the model's default",
    "flash_attn_cross_entropy": "flash-attention's fused cross entropy is not modelled (logits counted in full)",
    "flash_attn_rms_norm": "flash-attention's RMSNorm kernel is not modelled",
    "flash_attn_fuse_qkv": "fused QKV projections are not modelled",
    "flash_attn_fuse_mlp": "fused MLP is not modelled",
    "flash_optimum": "BetterTransformer is not modelled",
    "unsloth_cross_entropy_loss": "unsloth kernels are not modelled",
    "unsloth_lora_mlp": "unsloth kernels are not modelled",
    "unsloth_lora_qkv": "unsloth kernels are not modelled",
    "unsloth_lora_o": "unsloth kernels are not modelled",
    "unsloth_rms_norm": "unsloth kernels are not modelled",
    "unsloth_rope": "unsloth kernels are not modelled",
    "lora_mlp_kernel": "axolotl's LoRA autograd/Triton kernels are not modelled",
    "lora_qkv_kernel": "axolotl's LoRA autograd/Triton kernels are not modelled",
    "lora_o_kernel": "axolotl's LoRA autograd/Triton kernels are not modelled",
    "chunked_cross_entropy": "chunked cross entropy is not modelled (logits counted in full)",
    "chunked_cross_entropy_num_chunks": "chunked cross entropy is not modelled",
    "cut_cross_entropy": "Cut Cross-Entropy is not modelled (logits counted in full)",
    "liger_rope": "Liger kernels are not modelled",
    "liger_rms_norm": "Liger kernels are not modelled",
    "liger_glu_activation": "Liger kernels are not modelled",
    "liger_layer_norm": "Liger kernels are not modelled",
    "liger_cross_entropy": "Liger kernels are not modelled",
    "liger_fused_linear_cross_entropy": "Liger's fused linear cross entropy is not modelled (logits counted in full)",
    "tiled_mlp": "ALST tiled MLP is not modelled",
    "tiled_mlp_num_shards": "ALST tiled MLP is not modelled",
    "activation_offloading": "activation offloading to CPU is not modelled (activations counted on the GPU)",
    "torch_compile": "torch.compile's memory effects are not modelled",
    "fp8": "FP8 training is not modelled",
    "fp8_enable_fsdp_float8_all_gather": "FP8 training is not modelled",
    "gptq": "GPTQ-quantized base models are not modelled",
    "model_quantization_config": "this quantization is not modelled (bitsandbytes only)",
    "model_quantization_config_kwargs": "this quantization is not modelled (bitsandbytes only)",
    "use_kernels": "custom (hub) kernels are not modelled",
    "llama4_linearized_experts": "linearized Llama 4 experts are not modelled",
    "unfrozen_parameters": "training a chosen subset of parameters is not modelled",
    "lisa_n_layers": "LISA layer sampling is not modelled",
    "lisa_step_interval": "LISA layer sampling is not modelled",
    "lisa_layers_attribute": "LISA layer sampling is not modelled",
    "tokens": "tokens added to the tokenizer resize the embedding and lm_head; not modelled",
    "resize_token_embeddings_to_32x": "resized embeddings are not modelled",
    "overrides_of_model_config": "config overrides are not applied; pass the edited config.json as a FILE",
    "overrides_of_model_kwargs": "from_pretrained overrides are not modelled",
    "peft_layer_replication": "replicated layers are not modelled",
    "peft_trainable_token_indices": "trainable token rows of the embedding are not modelled",
    "rl": "RL trainers (DPO, KTO, ORPO, GRPO, …) are not modelled: paired sequences and reference models add memory",
    "reward_model": "reward-model training is not modelled",
    "process_reward_model": "reward-model training is not modelled",
    "use_pose": "PoSE is not modelled",
    "sequence_parallel_degree": "sequence/context parallelism is not modelled (the whole sequence is counted)",
    "context_parallel_size": "sequence/context parallelism is not modelled (the whole sequence is counted)",
    "tensor_parallel_size": "tensor parallelism is not modelled",
    "dp_shard_size": "set --num-gpus and --sharding instead",
    "dp_replicate_size": "set --num-gpus and --sharding instead",
    "pose_split_on_token_ids": "PoSE is not modelled",
    "pose_max_context_len": "PoSE is not modelled",
    "pose_num_chunks": "PoSE is not modelled",
}
AXOLOTL_MARKERS = frozenset({
    "base_model", "base_model_config", "adapter", "lora_r", "lora_target_linear", "lora_target_modules",
    "sequence_len", "micro_batch_size", "datasets", "num_epochs", "gradient_accumulation_steps", "optimizer",
    "flash_attention", "sdp_attention", "peft_use_dora", "val_set_size", "output_dir",
})
_AXOLOTL_HANDLED = frozenset({
    "base_model", "base_model_config", "adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
    "lora_target_linear", "lora_target_parameters", "lora_modules_to_save", "peft_layers_to_transform",
    "peft_use_dora", "peft_use_rslora", "load_in_4bit", "load_in_8bit", "bnb_config_kwargs",
    "skip_prepare_model_for_kbit_training", "sequence_len", "micro_batch_size", "gradient_checkpointing",
    "optimizer", "flash_attention", "sdp_attention", "eager_attention", "attn_implementation", "bf16", "fp16",
    "bfloat16", "float16", "float32", "deepspeed", "fsdp", "fsdp_config", "fsdp_version",
})
_PARALLEL_SIZES = frozenset({"sequence_parallel_degree", "context_parallel_size", "tensor_parallel_size",
                             "dp_shard_size", "dp_replicate_size"})  # 1 = no parallelism
_DTYPE_OF_PRECISION = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def from_axolotl(data: Mapping[str, Any], source: str = "axolotl config",
                 base_dir: Path | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    """An axolotl YAML (as a dict) → a full body. Absent memory-relevant keys take axolotl's defaults (noted):
    sequence_len 512, micro_batch_size 1, gradient_checkpointing false, optimizer adamw_torch_fused,
    bf16 auto (assumed supported), nf4 + double quantization for 4-bit."""
    notes: list[ImportNote] = []
    lora: dict[str, Any] = {}
    quant: dict[str, Any] = {}
    training: dict[str, Any] = {}
    hardware: dict[str, Any] = {}
    body: dict[str, Any] = {}

    def note(key: str, kind: NoteKind, message: str) -> None:
        notes.append(ImportNote(source, key, kind, message))

    def default(key: str, section: dict[str, Any], field: str, value: Any, why: str = "axolotl's default") -> None:
        if key not in data or data[key] is None:
            section[field] = value
            note(key, "note", f"absent: {why} {value!r} ({field})")

    # model
    model_key = "base_model_config" if data.get("base_model_config") else "base_model"
    if data.get(model_key):
        model, model_notes = resolve_model(data[model_key], source, model_key, base_dir)
        notes += model_notes
        if model is not None:
            body["model"] = model
    if model_key == "base_model_config" and data.get("base_model"):
        note("base_model", "ignored", "the model's config comes from base_model_config")

    # precision: axolotl loads the model in bf16 (bf16/bfloat16), fp16 (fp16/float16/load_in_8bit) or fp32
    in4, in8 = bool(data.get("load_in_4bit")), bool(data.get("load_in_8bit"))
    f16 = bool(data.get("fp16") or data.get("float16"))
    bf16 = data.get("bf16")
    if data.get("float32") and not data.get("bfloat16") and bf16 in (None, "auto", False):
        bf16 = False
        note("float32", "note", "float32: true: the model is loaded in float32 (precision 'fp32')")
    if bf16 is None or bf16 == "auto":
        if bf16 is None and not f16:
            note("bf16", "note", "absent: axolotl's default 'auto', assumed to find a bf16-capable GPU")
        bf16 = not f16
    if bf16 or data.get("bfloat16"):
        load = "bf16"
    elif f16 or in8:
        load = "fp16"
        why = "fp16" if data.get("fp16") else "float16" if data.get("float16") else "load_in_8bit"
        note(why, "note", "axolotl loads the model in float16: modelled as precision 'bf16' (16-bit weights, "
             "gradients and optimizer states, the same bytes; the planner has no pure-fp16 setting); "
             "--precision fp16-mixed models fp32 master weights with fp16 autocast instead")
    else:
        load = "fp32"
        if not data.get("float32"):
            note("bf16", "note", "bf16 and fp16 are off: axolotl loads the model in float32 (precision 'fp32')")
    training["precision"] = "fp32" if load == "fp32" else "bf16"
    compute = _DTYPE_OF_PRECISION[load]

    # method and quantization
    adapter = data.get("adapter")
    adapter = adapter.strip().lower() if isinstance(adapter, str) else adapter
    if in4 and in8:
        raise ConfigImportError(source, "load_in_4bit", "load_in_4bit and load_in_8bit are both true; pick one")
    dora = bool(data.get("peft_use_dora"))
    if adapter in (None, ""):
        body["method"] = "full"
        for key in ("load_in_4bit", "load_in_8bit"):
            if data.get(key):
                note(key, "unsupported", "no adapter: full fine-tuning of a quantized model is not modelled; "
                     "the estimate loads the model unquantized")
        for key in data:
            if key in _AXOLOTL_HANDLED and key.startswith(("lora_", "peft_", "bnb_")) and not _empty(data[key]):
                note(key, "ignored", "no adapter: axolotl runs full fine-tuning and does not use it")
    elif adapter in ("lora", "qlora"):
        quantized = adapter == "qlora" or in4 or in8
        body["method"] = ("qdora" if dora else "qlora") if quantized else ("dora" if dora else "lora")
        if adapter == "lora" and in4:
            note("load_in_4bit", "note", "adapter lora on a 4-bit model is QLoRA: method qlora")
        if in8:
            quant["load_in_8bit"] = True
            if adapter == "lora":
                note("load_in_8bit", "note", "adapter lora on an 8-bit model: method qlora with load_in_8bit")
        elif quantized:
            quant.update({"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                          "bnb_4bit_compute_dtype": compute, "load_in_8bit": False})
        kwargs = data.get("bnb_config_kwargs")
        if isinstance(kwargs, Mapping):
            k_quant, k_flags, k_notes = _bnb_keys(kwargs, source, "bnb_config_kwargs.")
            notes += k_notes
            for flag in k_flags:
                note(f"bnb_config_kwargs.{flag}", "ignored", f"use the top-level {flag} instead")
            if quantized and not in8:
                quant.update(k_quant)
            elif kwargs:
                note("bnb_config_kwargs", "ignored", "no 4-bit quantization in this run")
        elif not _empty(kwargs):
            note("bnb_config_kwargs", "unsupported", f"expected a mapping, got {kwargs!r}")
        if quantized and data.get("skip_prepare_model_for_kbit_training"):
            quant["prepare_kbit"] = False
    else:
        raise ConfigImportError(source, "adapter", f"{adapter!r} is not supported; use lora or qlora (or none for "
                                "full fine-tuning)")

    if adapter:
        for key, field in (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout")):
            if data.get(key) is not None:
                lora[field] = data[key]
        if data.get("peft_use_rslora") is not None:
            lora["use_rslora"] = bool(data["peft_use_rslora"])
        targets = data.get("lora_target_modules")
        if data.get("lora_target_linear"):
            lora["target_modules"] = "all-linear"
            if not _empty(targets):
                note("lora_target_modules", "note", "lora_target_linear: true targets every linear layer already")
        elif not _empty(targets):
            lora["target_modules"] = targets
        params = data.get("lora_target_parameters")
        if not _empty(params):
            lora["target_parameters"] = [params] if isinstance(params, str) else params
        for key, field in (("lora_modules_to_save", "modules_to_save"),
                           ("peft_layers_to_transform", "layers_to_transform")):
            if not _empty(data.get(key)):
                lora[field] = data[key]

    # training shape
    if data.get("sequence_len") is not None:
        training["seq_len"] = data["sequence_len"]
    default("sequence_len", training, "seq_len", 512)
    if data.get("micro_batch_size") is not None:
        training["micro_batch_size"] = data["micro_batch_size"]
    default("micro_batch_size", training, "micro_batch_size", 1)
    gc = data.get("gradient_checkpointing")
    if gc is None:
        default("gradient_checkpointing", training, "gradient_checkpointing", False)
    elif isinstance(gc, str):
        training["gradient_checkpointing"] = True
        note("gradient_checkpointing", "unsupported", f"{gc!r}: checkpoint offloading is not modelled; counted as "
             "plain gradient checkpointing (activations on the GPU)")
    else:
        training["gradient_checkpointing"] = bool(gc)
    if data.get("optimizer") is not None:
        optim, optim_notes = map_optimizer(data["optimizer"], source, "optimizer")
        notes += optim_notes
        if optim is not None:
            training["optim"] = optim
    else:
        default("optimizer", training, "optim", "adamw_torch_fused")

    # attention
    attn = None
    if data.get("flash_attention"):
        attn = "flash_attention_2"
    elif data.get("sdp_attention"):
        attn = "sdpa"
    elif data.get("eager_attention"):
        attn = "eager"
    impl = data.get("attn_implementation")
    if impl:
        if impl in ("flash_attention_2", "sdpa", "eager"):
            attn = attn or impl
        else:
            note("attn_implementation", "unsupported", f"{impl!r} is not modelled (flash_attention_2, sdpa, eager)")
    if attn:
        training["attn_implementation"] = attn

    # sharding
    _axolotl_sharding(data, source, base_dir, training, hardware, notes)

    # every other key
    for key, value in data.items():
        if key in _AXOLOTL_HANDLED:
            continue
        if key in AXOLOTL_UNSUPPORTED:
            if _empty(value) or (key in _PARALLEL_SIZES and value == 1):
                note(key, "ignored", "not set")
            else:
                note(key, "unsupported", f"{AXOLOTL_UNSUPPORTED[key]} (value {value!r})")
        elif key in AXOLOTL_IGNORED:
            note(key, "ignored", "does not affect memory")
        elif key.startswith(("liger_", "unsloth_")):
            if not _empty(value):
                note(key, "unsupported", f"kernel patches are not modelled (value {value!r})")
            else:
                note(key, "ignored", "not set")
        else:
            note(key, "unknown", "not an axolotl option the importer knows; ignored")

    for name, section in (("lora", lora), ("quantization", quant), ("training", training), ("hardware", hardware)):
        if section:
            body[name] = section
    return body, notes


def _axolotl_sharding(data: Mapping[str, Any], source: str, base_dir: Path | None, training: dict[str, Any],
                      hardware: dict[str, Any], notes: list[ImportNote]) -> None:
    def note(key: str, kind: NoteKind, message: str) -> None:
        notes.append(ImportNote(source, key, kind, message))

    ds = data.get("deepspeed")
    if not _empty(ds):
        cfg: Any = ds if isinstance(ds, Mapping) else None
        if isinstance(ds, str):
            for path in ([base_dir / ds] if base_dir else []) + [Path(ds)]:
                if path.is_file():
                    try:
                        cfg = json.loads(path.read_text())
                    except (OSError, ValueError):
                        note("deepspeed", "unsupported", f"cannot read {path} as JSON")
                    break
        stage = None
        if isinstance(cfg, Mapping):
            zero = cfg.get("zero_optimization")
            zero = zero if isinstance(zero, Mapping) else {}
            stage = zero.get("stage")
            for part in ("offload_optimizer", "offload_param"):
                spec = zero.get(part)
                device = spec.get("device") if isinstance(spec, Mapping) else None
                if device not in (None, "none"):
                    note(f"deepspeed.zero_optimization.{part}", "unsupported",
                         f"offload to {device} is not modelled (counted on the GPU)")
        elif isinstance(ds, str):
            match = re.search(r"zero[_-]?([0-3])", Path(ds).name)
            stage = int(match.group(1)) if match else None
            if stage is not None:
                note("deepspeed", "note", f"{ds!r} not found; ZeRO stage {stage} read from its name")
            if "offload" in Path(ds).name:
                note("deepspeed", "unsupported", "offload to CPU is not modelled (counted on the GPU)")
        sharding = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}.get(stage) if isinstance(stage, int) else None
        if sharding is None:
            note("deepspeed", "unsupported", f"cannot tell the ZeRO stage of {ds!r}; sharding not set")
        else:
            hardware["sharding"] = sharding
            note("deepspeed", "note", f"sharding {sharding!r}; the GPU count comes from the launcher: "
                 "set --num-gpus")
    fsdp = data.get("fsdp")
    fsdp_config = data.get("fsdp_config")
    if not _empty(fsdp) or data.get("fsdp_version") or not _empty(fsdp_config):
        if "sharding" in hardware:
            note("fsdp", "unsupported", "deepspeed and fsdp are both set; keeping the deepspeed sharding")
        else:
            hardware["sharding"] = "fsdp"
            note("fsdp", "note", "sharding 'fsdp' (full shard); the GPU count comes from the launcher: set --num-gpus")
    if isinstance(fsdp_config, Mapping):
        for key, value in fsdp_config.items():
            path = f"fsdp_config.{key}"
            bare = key.removeprefix("fsdp_")
            if bare == "activation_checkpointing":
                if value:
                    training["gradient_checkpointing"] = True
            elif bare in ("offload_params", "cpu_offload"):
                if value:
                    note(path, "unsupported", "parameter offload to CPU is not modelled (counted on the GPU)")
            else:
                note(path, "ignored", "does not affect the modelled memory")
    if data.get("fsdp_version") is not None:
        note("fsdp_version", "ignored", "FSDP1 and FSDP2 are modelled alike")


# ------------------------------------------------------------------------------------- model config


def from_model_config(data: Mapping[str, Any], source: str = "config.json") -> tuple[dict[str, Any],
                                                                                      list[ImportNote]]:
    """A model's ``config.json`` → ``{"model": {"config": …}}``; a bitsandbytes ``quantization_config`` in it
    (a pre-quantized checkpoint) is imported too."""
    body: dict[str, Any] = {"model": {"config": dict(data)}}
    notes: list[ImportNote] = []
    qc = data.get("quantization_config")
    if isinstance(qc, Mapping):
        if qc.get("quant_method", "bitsandbytes") == "bitsandbytes":
            q_body, q_notes = from_bnb(qc, source)
            body.update(q_body)
            notes += [ImportNote(n.source, f"quantization_config.{n.key}", n.kind, n.message) for n in q_notes]
        else:
            notes.append(ImportNote(source, "quantization_config", "unsupported",
                                    f"{qc.get('quant_method')!r} quantization is not modelled (bitsandbytes only)"))
    return body, notes


# ---------------------------------------------------------------------------------------- detection


def detect_format(data: Any, source: str = "input") -> Format:
    """Which kind of config ``data`` is (see the module docstring); ConfigImportError when none fits."""
    if not isinstance(data, Mapping) or not data:
        kind = "an empty mapping" if isinstance(data, Mapping) else type(data).__name__
        raise ConfigImportError(source, None, f"expected a JSON/YAML mapping, got {kind}")
    keys = set(data)
    if keys <= PLAN_KEYS:
        return "plan"
    if "peft_type" in keys:
        return "peft"
    if keys & AXOLOTL_MARKERS:
        return "axolotl"
    if keys <= BNB_KEYS or "quant_method" in keys or any(k.startswith(("bnb_4bit_", "llm_int8_")) for k in keys):
        return "bnb"
    if "r" in keys and keys & {"lora_alpha", "target_modules"}:
        return "peft"
    if "model_type" in keys:
        return "model_config"
    shown = ", ".join(sorted(map(str, keys))[:12])
    raise ConfigImportError(
        source, None,
        f"not a PlanRequest body, PEFT adapter_config.json, BitsAndBytesConfig, axolotl YAML or config.json "
        f"(top-level keys: {shown})",
    )


def import_data(data: Any, source: str = "input", fmt: Format | None = None,
                base_dir: Path | None = None) -> Imported:
    """Import already-parsed data (``fmt`` forces the format instead of detecting it)."""
    fmt = fmt or detect_format(data, source)
    if fmt == "plan":
        if not isinstance(data, Mapping):
            raise ConfigImportError(source, None, "a PlanRequest body must be a mapping")
        body, notes = copy.deepcopy(dict(data)), []
    elif fmt == "peft":
        body, notes = from_peft(data, source, base_dir)
    elif fmt == "bnb":
        body, notes = from_bnb(data, source)
    elif fmt == "axolotl":
        body, notes = from_axolotl(data, source, base_dir)
    elif fmt == "model_config":
        body, notes = from_model_config(data, source)
    else:  # pragma: no cover - Literal exhausted
        raise ConfigImportError(source, None, f"unknown format {fmt!r}")
    return Imported(source, fmt, body, notes)


def parse_text(text: str, source: str) -> Any:
    """JSON when the text is JSON, else YAML (safe_load)."""
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            if source.endswith(".json"):
                raise ConfigImportError(source, None, f"invalid JSON: {exc.msg} at line {exc.lineno}") from None
    import yaml  # lazy: only files need it

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigImportError(source, None, f"invalid YAML/JSON: {problem}{where}") from None


def import_file(path: str | Path, fmt: Format | None = None) -> Imported:
    """Read and import one file. A directory means its ``adapter_config.json`` (a saved PEFT adapter) or
    else its ``config.json`` (a model); ``-`` reads standard input."""
    source = str(path)
    if source == "-":
        return import_data(parse_text(sys.stdin.read(), "<stdin>"), "<stdin>", fmt, Path.cwd())
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("adapter_config.json", "config.json"):
            if (p / name).is_file():
                p = p / name
                source = str(p)
                break
        else:
            raise ConfigImportError(source, None, "a directory without adapter_config.json or config.json")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigImportError(source, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigImportError(source, None, f"cannot read: {exc}") from None
    return import_data(parse_text(text, source), source, fmt, p.parent)


def load_plan_file(path: str | Path) -> tuple[dict[str, Any], list[ImportNote]]:
    """One file (format auto-detected) → (PlanRequest body, notes)."""
    imported = import_file(path)
    return imported.body, imported.notes


# -------------------------------------------------------------------------------------------- merging


def combine_methods(first: str, second: str) -> tuple[str, bool]:
    """Two methods' union: DoRA from either side, quantization from either side (lora + qlora = qlora,
    dora + qlora = qdora). ``full`` against an adapter method cannot combine: the second wins, flagged True."""
    if first == second:
        return first, False
    if "full" in (first, second):
        return second, True
    dora = first in ("dora", "qdora") or second in ("dora", "qdora")
    quantized = first in ("qlora", "qdora") or second in ("qlora", "qdora")
    return {(False, False): "lora", (True, False): "dora", (False, True): "qlora", (True, True): "qdora"}[
        (dora, quantized)], False


def merge(bodies: Sequence[Mapping[str, Any]], sources: Sequence[str] | None = None) -> tuple[dict[str, Any],
                                                                                              list[ImportNote]]:
    """Merge bodies in order (e.g. adapter_config.json + a BitsAndBytesConfig + a plan with hardware).

    Sections (lora, quantization, training, hardware) merge field by field, later files winning; ``method``
    combines (see :func:`combine_methods`), so LoRA + bitsandbytes is qlora and DoRA + bitsandbytes qdora.
    A field two files set differently is reported as a note naming both files.
    """
    names = list(sources) if sources is not None else [f"#{i + 1}" for i in range(len(bodies))]
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    notes: list[ImportNote] = []
    for body, source in zip(bodies, names, strict=True):
        for key, value in body.items():
            if key == "method" and "method" in out:
                method, clash = combine_methods(out["method"], value)
                if clash:
                    notes.append(ImportNote(source, "method", "note", f"{value!r} replaces {out['method']!r} "
                                            f"from {origin['method']}"))
                out["method"] = method
                origin["method"] = source
            elif key in SECTIONS and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                for field, v in value.items():
                    path = f"{key}.{field}"
                    if field in out[key] and out[key][field] != v:
                        notes.append(ImportNote(source, path, "note", f"{v!r} replaces {out[key][field]!r} "
                                                f"from {origin.get(path, '?')}"))
                    out[key][field] = v
                    origin[path] = source
            else:
                if key in out and out[key] != value:
                    shown = "a config.json" if isinstance(value, Mapping) else repr(value)
                    notes.append(ImportNote(source, key, "note", f"{shown} replaces the value from {origin[key]}"))
                out[key] = dict(value) if key in SECTIONS and isinstance(value, Mapping) else value
                origin[key] = source
                if key in SECTIONS and isinstance(value, Mapping):
                    for field in value:
                        origin[f"{key}.{field}"] = source
    return out, notes


def load_plan_files(paths: Iterable[str | Path]) -> tuple[dict[str, Any], list[ImportNote]]:
    """Several files, each imported (format auto-detected) and then merged in order → (body, notes)."""
    imported = [import_file(p) for p in paths]
    body, merge_notes = merge([i.body for i in imported], [i.source for i in imported])
    return body, [n for i in imported for n in i.notes] + merge_notes


__all__ = [
    "ConfigImportError",
    "ImportNote",
    "Imported",
    "combine_methods",
    "compute_dtype",
    "detect_format",
    "from_axolotl",
    "from_bnb",
    "from_model_config",
    "from_peft",
    "import_data",
    "import_file",
    "load_plan_file",
    "load_plan_files",
    "map_optimizer",
    "merge",
    "parse_text",
    "resolve_model",
]
