"""axolotl training YAML → a full PlanRequest body (axolotl's defaults for absent keys, each noted).

Keys and defaults: axolotl's config schema (``src/axolotl/utils/schemas/config.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.importers.bnb import bnb_keys
from app.importers.common import (
    FROM_LAUNCHER,
    ConfigImportError,
    ImportNote,
    NoteKind,
    is_unset,
    positive_int,
    resolve_model,
    use_reentrant,
    varlen_attention,
)
from app.importers.optim import map_optimizer
from app.importers.sharding import deepspeed_sharding, fsdp_config_keys

AXOLOTL_IGNORED = frozenset({
    # data and prompts
    "datasets", "test_datasets", "pretraining_dataset", "dataset_prepared_path", "dataset_processes",
    "dataset_num_proc", "dataset_exact_deduplication", "dataset_keep_in_memory", "dataset_shard_num",
    "dataset_shard_idx", "push_dataset_to_hub", "shuffle_merged_datasets", "shuffle_before_merging_datasets",
    "skip_prepare_dataset", "streaming", "streaming_multipack_buffer_size", "val_set_size", "chat_template",
    "chat_template_jinja", "chat_template_kwargs", "default_system_message", "special_tokens", "eot_tokens",
    "added_tokens_overrides", "fix_untrained_tokens", "train_on_inputs", "train_on_eos", "roles_to_train",
    "group_by_length", "min_sample_len", "max_prompt_len", "excess_length_strategy", "eval_sequence_len",
    "sample_packing_group_size", "sample_packing_bin_size", "sample_packing_sequentially",
    "sample_packing_mp_start_method", "sample_packing_eff_est", "eval_sample_packing", "pad_to_sequence_len",
    "curriculum_sampling", "multipack_real_batches", "batch_flattening", "pretrain_multipack_buffer_size",
    "pretrain_multipack_attn", "pretraining_sample_concatenation", "total_num_tokens", "total_supervised_tokens",
    "is_preprocess", "preprocess_iterable", "dataloader_pin_memory", "dataloader_num_workers",
    "dataloader_prefetch_factor", "dataloader_drop_last", "remove_unused_columns", "image_size",
    "image_resize_algorithm", "max_packed_sequence_len",
    # schedule, optimizer hyper-parameters
    "num_epochs", "max_steps", "learning_rate", "lr_scheduler", "lr_scheduler_kwargs", "lr_quadratic_warmup",
    "cosine_min_lr_ratio", "cosine_constant_lr_ratio", "lr_div_factor", "lr_groups", "warmup_steps",
    "warmup_ratio", "weight_decay", "eval_batch_size",
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
    "flex_attn_compile_kwargs", "fsdp_final_state_dict_type", "deepcompile",
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
    "tiled_mlp": "ALST tiled MLP is not modelled",
    "tiled_mlp_num_shards": "ALST tiled MLP is not modelled",
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
    "dp_shard_size": "set hardware.num_gpus and hardware.sharding (--num-gpus, --sharding) instead",
    "dp_replicate_size": "set hardware.num_gpus and hardware.sharding (--num-gpus, --sharding) instead",
    "pose_split_on_token_ids": "PoSE is not modelled",
    "pose_max_context_len": "PoSE is not modelled",
    "pose_num_chunks": "PoSE is not modelled",
}
# axolotl's Liger plugin switches (src/axolotl/integrations/liger/args.py), one kernel each
LIGER_KEYS = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_layer_norm", "liger_cross_entropy",
              "liger_fused_linear_cross_entropy")
AXOLOTL_MARKERS = frozenset({
    "base_model", "base_model_config", "adapter", "lora_r", "lora_target_linear", "lora_target_modules",
    "sequence_len", "micro_batch_size", "datasets", "num_epochs", "gradient_accumulation_steps", "optimizer",
    "flash_attention", "sdp_attention", "peft_use_dora", "val_set_size", "output_dir",
})
_AXOLOTL_HANDLED = frozenset({
    "base_model", "base_model_config", "adapter", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
    "lora_target_linear", "lora_target_parameters", "lora_modules_to_save", "peft_layers_to_transform",
    "peft_use_dora", "peft_use_rslora", "load_in_4bit", "load_in_8bit", "bnb_config_kwargs",
    "skip_prepare_model_for_kbit_training", "sequence_len", "micro_batch_size", "gradient_accumulation_steps",
    "batch_size", "gradient_checkpointing",
    "optimizer", "flash_attention", "sdp_attention", "eager_attention", "attn_implementation", "bf16", "fp16",
    "bfloat16", "float16", "float32", "deepspeed", "fsdp", "fsdp_config", "fsdp_version", "sample_packing",
    "activation_offloading", "torch_compile", "gradient_checkpointing_kwargs", *LIGER_KEYS,
})
AXOLOTL_KNOWN = AXOLOTL_IGNORED | frozenset(AXOLOTL_UNSUPPORTED) | _AXOLOTL_HANDLED
_PARALLEL_SIZES = frozenset({"sequence_parallel_degree", "context_parallel_size", "tensor_parallel_size",
                             "dp_shard_size", "dp_replicate_size"})  # 1 = no parallelism
_DTYPE_OF_PRECISION = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def from_axolotl(data: Mapping[str, Any], source: str = "axolotl config",
                 base_dir: Path | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    """An axolotl YAML (as a dict) → a full body. Absent memory-relevant keys take axolotl's defaults (noted):
    sequence_len 512, micro_batch_size 1, gradient_accumulation_steps 1, gradient_checkpointing false, optimizer
    adamw_torch_fused, bf16 auto (assumed supported), nf4 + double quantization for 4-bit."""
    notes: list[ImportNote] = []
    lora: dict[str, Any] = {}
    quant: dict[str, Any] = {}
    training: dict[str, Any] = {"framework": "axolotl"}
    hardware: dict[str, Any] = {}
    body: dict[str, Any] = {}

    def note(key: str, kind: NoteKind, message: str) -> None:
        notes.append(ImportNote(source, key, kind, message))

    def default(key: str, field: str, value: Any) -> None:
        """An absent axolotl key: ``training.<field>`` takes axolotl's default (an 'assumed' note)."""
        if key not in data or data[key] is None:
            training[field] = value
            notes.append(ImportNote(source, key, "assumed", f"axolotl's default; {key} is not set",
                                    field=f"training.{field}", value=value))

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
            notes.append(ImportNote(source, "bf16", "assumed", "axolotl's default bf16: auto, assuming a bf16-capable "
                                    "GPU; bf16 is not set", field="training.precision", value="bf16"))
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
            if key in _AXOLOTL_HANDLED and key.startswith(("lora_", "peft_", "bnb_")) and not is_unset(data[key]):
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
            k_quant, k_flags, k_notes = bnb_keys(kwargs, source, "bnb_config_kwargs.")
            notes += k_notes
            for flag in k_flags:
                note(f"bnb_config_kwargs.{flag}", "ignored", f"use the top-level {flag} instead")
            if quantized and not in8:
                quant.update(k_quant)
            elif kwargs:
                note("bnb_config_kwargs", "ignored", "no 4-bit quantization in this run")
        elif not is_unset(kwargs):
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
            if not is_unset(targets):
                note("lora_target_modules", "note", "lora_target_linear: true targets every linear layer already")
        elif not is_unset(targets):
            lora["target_modules"] = targets
        params = data.get("lora_target_parameters")
        if not is_unset(params):
            lora["target_parameters"] = [params] if isinstance(params, str) else params
        for key, field in (("lora_modules_to_save", "modules_to_save"),
                           ("peft_layers_to_transform", "layers_to_transform")):
            if not is_unset(data.get(key)):
                lora[field] = data[key]

    # training shape
    if data.get("sequence_len") is not None:
        training["seq_len"] = data["sequence_len"]
    default("sequence_len", "seq_len", 512)
    if data.get("micro_batch_size") is not None:
        training["micro_batch_size"] = data["micro_batch_size"]
    default("micro_batch_size", "micro_batch_size", 1)
    _accumulation(data, source, training, notes)
    if "gradient_accumulation_steps" not in training:
        default("gradient_accumulation_steps", "gradient_accumulation_steps", 1)
    gc = data.get("gradient_checkpointing")
    if gc is None:
        default("gradient_checkpointing", "gradient_checkpointing", False)
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
        default("optimizer", "optim", "adamw_torch_fused")

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

    # switches with a request field of their own
    if data.get("sample_packing"):
        training["packing"] = True
        note("sample_packing", "note", "multipack: every row holds sequence_len tokens (training.packing)")
    for key in ("activation_offloading", "torch_compile"):
        if data.get(key) is True:
            training[key] = True
        elif not is_unset(data.get(key)):
            note(key, "unsupported", f"{data[key]!r} is not modelled; only true is (training.{key})")
    liger = [k for k in LIGER_KEYS if data.get(k)]
    if "liger_fused_linear_cross_entropy" in liger:
        training["use_liger_kernel"] = True
        note("liger_fused_linear_cross_entropy", "note", f"{', '.join(liger)}: modelled as training.use_liger_kernel "
             "(all of Liger's kernels for the model, as transformers' use_liger_kernel applies them)")
    elif liger:
        note(liger[0], "unsupported", f"{', '.join(liger)} without liger_fused_linear_cross_entropy is not modelled "
             "(training.use_liger_kernel applies every kernel)")
    reentrant = use_reentrant(data.get("gradient_checkpointing_kwargs"), source, "gradient_checkpointing_kwargs")
    if reentrant is not None:
        training["gradient_checkpointing_kwargs"] = {"use_reentrant": reentrant}

    # sharding
    _axolotl_sharding(data, source, base_dir, training, hardware, notes)

    # every other key
    for key, value in data.items():
        if key in _AXOLOTL_HANDLED:
            continue
        if key in AXOLOTL_UNSUPPORTED:
            if is_unset(value) or (key in _PARALLEL_SIZES and value == 1):
                note(key, "ignored", "not set")
            else:
                note(key, "unsupported", f"{AXOLOTL_UNSUPPORTED[key]} (value {value!r})")
        elif key in AXOLOTL_IGNORED:
            note(key, "ignored", "does not affect memory")
        elif key.startswith(("liger_", "unsloth_")):
            if not is_unset(value):
                note(key, "unsupported", f"kernel patches are not modelled (value {value!r})")
            else:
                note(key, "ignored", "not set")
        else:
            note(key, "unknown", "not an axolotl option the importer knows; ignored")

    varlen_attention(training, notes, source)
    for name, section in (("lora", lora), ("quantization", quant), ("training", training), ("hardware", hardware)):
        if section:
            body[name] = section
    return body, notes



def _accumulation(data: Mapping[str, Any], source: str, training: dict[str, Any], notes: list[ImportNote]) -> None:
    """``gradient_accumulation_steps``, or when only ``batch_size`` is set, ``batch_size // micro_batch_size`` as
    axolotl's ``normalize_config`` derives it (``src/axolotl/utils/config/__init__.py``); both set is refused, as
    axolotl's ``check_gas_bsz`` validator refuses it. Neither set: the caller assumes axolotl's default 1
    (``src/axolotl/utils/schemas/training.py``)."""
    steps, batch = data.get("gradient_accumulation_steps"), data.get("batch_size")
    if steps and batch:
        raise ConfigImportError(source, "batch_size", "set only one of gradient_accumulation_steps or batch_size "
                                "(axolotl refuses both)")
    if steps is not None:
        training["gradient_accumulation_steps"] = positive_int(steps, source, "gradient_accumulation_steps")
    elif batch is not None:
        micro = positive_int(training["micro_batch_size"], source, "micro_batch_size")
        derived = positive_int(batch, source, "batch_size") // micro
        if derived < 1:
            raise ConfigImportError(source, "batch_size", f"{batch} is smaller than micro_batch_size {micro}: "
                                    "batch_size // micro_batch_size is 0 gradient accumulation steps")
        training["gradient_accumulation_steps"] = derived
        notes.append(ImportNote(source, "batch_size", "note", f"gradient_accumulation_steps = batch_size // "
                                f"micro_batch_size = {batch} // {micro} = {derived} (axolotl's normalize_config)"))


def _axolotl_sharding(data: Mapping[str, Any], source: str, base_dir: Path | None, training: dict[str, Any],
                      hardware: dict[str, Any], notes: list[ImportNote]) -> None:
    def note(key: str, kind: NoteKind, message: str) -> None:
        notes.append(ImportNote(source, key, kind, message))

    deepspeed_sharding(data.get("deepspeed"), source, base_dir, hardware, notes, training)
    fsdp = data.get("fsdp")
    fsdp_config = data.get("fsdp_config")
    if not is_unset(fsdp) or data.get("fsdp_version") or not is_unset(fsdp_config):
        if "sharding" in hardware:
            note("fsdp", "unsupported", "deepspeed and fsdp are both set; keeping the deepspeed sharding")
        else:
            hardware["sharding"] = "fsdp"
            note("fsdp", "note", f"sharding 'fsdp' (full shard); {FROM_LAUNCHER}")
    fsdp_config_keys(fsdp_config, source, training, notes, hardware)
    if data.get("fsdp_version") is not None:
        note("fsdp_version", "ignored", "FSDP1 and FSDP2 are modelled alike")
