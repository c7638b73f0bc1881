"""The argument names of LLaMA-Factory and ms-swift, read from their argument dataclasses at a pinned release.

Each set lists the dataclass fields of one file (every class in it, inherited fields included through the
class that declares them); :mod:`.llama_factory` and :mod:`.ms_swift` map the memory-relevant ones and report
the rest as ignored, so an unknown key (a typo, a newer release's option) is told apart from a known one.

- LLaMA-Factory v0.9.5 (hiyouga/LLaMA-Factory, tag v0.9.5): ``src/llamafactory/hparams/model_args.py``,
  ``data_args.py``, ``finetuning_args.py``, ``training_args.py`` (its own fields; it extends transformers'
  ``Seq2SeqTrainingArguments``), ``generating_args.py``.
- ms-swift v4.5.2 (modelscope/ms-swift, tag v4.5.2): ``swift/arguments/base_args/*.py`` and
  ``swift/ray_utils/arguments.py`` (``BaseArguments`` and its bases), ``swift/arguments/tuner_args.py``,
  ``swift/arguments/sft_args.py``, ``swift/trainers/arguments.py`` (``TrainArgumentsMixin``, mixed into
  transformers' ``Seq2SeqTrainingArguments``).
"""

from __future__ import annotations

# transformers Seq2SeqTrainingArguments' fields beyond TrainingArguments' (transformers 5.24 training_args_seq2seq.py)
SEQ2SEQ_FIELDS = frozenset({"sortish_sampler", "predict_with_generate", "generation_max_length",
                            "generation_num_beams", "generation_config"})

LF_MODEL_FIELDS = frozenset({
    "model_name_or_path", "adapter_name_or_path", "adapter_folder", "cache_dir", "use_fast_tokenizer",
    "resize_vocab", "split_special_tokens", "add_tokens", "add_special_tokens", "new_special_tokens_config",
    "init_special_tokens", "model_revision", "low_cpu_mem_usage", "rope_scaling", "flash_attn", "shift_attn",
    "mixture_of_depths", "use_unsloth", "use_unsloth_gc", "enable_liger_kernel", "moe_aux_loss_coef",
    "disable_gradient_checkpointing", "use_reentrant_gc", "upcast_layernorm", "upcast_lmhead_output",
    "train_from_scratch", "infer_backend", "offload_folder", "use_kv_cache", "use_v1_kernels", "infer_dtype",
    "hf_hub_token", "ms_hub_token", "om_hub_token", "print_param_status", "trust_remote_code",
    "quantization_method", "quantization_bit", "quantization_type", "double_quantization",
    "quantization_device_map", "image_max_pixels", "image_min_pixels", "image_do_pan_and_scan", "crop_to_patches",
    "video_max_pixels", "video_min_pixels", "video_fps", "video_maxlen", "use_audio_in_video",
    "audio_sampling_rate", "export_dir", "export_size", "export_device", "export_quantization_bit",
    "export_quantization_dataset", "export_quantization_nsamples", "export_quantization_maxlen",
    "export_legacy_format", "export_hub_model_id", "vllm_maxlen", "vllm_gpu_util", "vllm_enforce_eager",
    "vllm_max_lora_rank", "vllm_config", "sglang_maxlen", "sglang_mem_fraction", "sglang_tp_size", "sglang_config",
    "sglang_lora_backend", "use_kt", "kt_weight_path", "kt_expert_checkpoint_path", "kt_use_lora_experts",
    "kt_lora_expert_num", "kt_lora_expert_intermediate_size", "compute_dtype", "device_map", "model_max_length",
    "block_diag_attn"
})
LF_DATA_FIELDS = frozenset({
    "template", "dataset", "eval_dataset", "dataset_dir", "media_dir", "cutoff_len", "train_on_prompt",
    "mask_history", "streaming", "buffer_size", "mix_strategy", "interleave_probs", "overwrite_cache",
    "preprocessing_batch_size", "preprocessing_num_workers", "max_samples", "eval_num_beams",
    "ignore_pad_token_for_loss", "val_size", "eval_on_each_dataset", "packing", "neat_packing", "tool_format",
    "default_system", "enable_thinking", "preserve_thinking", "tokenized_path", "data_shared_file_system"
})
LF_FINETUNING_FIELDS = frozenset({
    "freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules", "additional_target",
    "lora_alpha", "lora_dropout", "lora_rank", "lora_target", "loraplus_lr_ratio", "loraplus_lr_embedding",
    "use_rslora", "use_dora", "pissa_init", "pissa_iter", "pissa_convert", "create_new_adapter", "module_dropout",
    "oft_rank", "oft_block_size", "oft_target", "pref_beta", "pref_ftx", "pref_bco_weight", "pref_loss",
    "dpo_label_smoothing", "kto_chosen_weight", "kto_rejected_weight", "simpo_gamma", "ppo_buffer_size",
    "ppo_epochs", "ppo_score_norm", "ppo_target", "ppo_whiten_rewards", "ref_model", "ref_model_adapters",
    "ref_model_quantization_bit", "reward_model", "reward_model_adapters", "reward_model_quantization_bit",
    "reward_model_type", "ld_alpha", "use_galore", "galore_target", "galore_rank", "galore_update_interval",
    "galore_scale", "galore_proj_type", "galore_layerwise", "use_apollo", "apollo_target", "apollo_rank",
    "apollo_update_interval", "apollo_scale", "apollo_proj", "apollo_proj_type", "apollo_scale_type",
    "apollo_layerwise", "apollo_scale_front", "use_badam", "badam_mode", "badam_start_block", "badam_switch_mode",
    "badam_switch_interval", "badam_update_ratio", "badam_mask_mode", "badam_verbose", "use_swanlab",
    "swanlab_project", "swanlab_workspace", "swanlab_run_name", "swanlab_mode", "swanlab_api_key", "swanlab_logdir",
    "swanlab_lark_webhook_url", "swanlab_lark_secret", "pure_bf16", "stage", "finetuning_type", "use_llama_pro",
    "use_adam_mini", "use_mca", "use_hyper_parallel", "hyper_parallel_args", "use_muon", "use_dft_loss",
    "use_asft_loss", "asft_alpha", "use_eaft_loss", "eaft_alpha", "freeze_vision_tower",
    "freeze_multi_modal_projector", "freeze_language_model", "compute_accuracy", "disable_shuffling",
    "early_stopping_steps", "plot_loss", "include_effective_tokens_per_second"
})
LF_TRAINING_FIELDS = frozenset({
    "ray_num_workers", "ray_init_kwargs", "master_addr", "master_port", "enable_torch_profiler",
    "profiler_output_dir", "profiler_wait_steps", "profiler_warmup_steps", "profiler_active_steps",
    "profiler_repeat", "profiler_record_shapes", "profiler_profile_memory", "profiler_with_stack",
    "profile_modules", "fp8", "fp8_backend", "fp8_enable_fsdp_float8_all_gather", "overwrite_output_dir"
})
LF_GENERATING_FIELDS = frozenset({
    "do_sample", "temperature", "top_p", "top_k", "num_beams", "max_length", "max_new_tokens", "repetition_penalty",
    "length_penalty", "skip_special_tokens"
})
SWIFT_BASE_FIELDS = frozenset({
    "tuner_backend", "tuner_type", "adapters", "external_plugins", "custom_register_path", "seed", "model_kwargs",
    "enable_npu_model_patch", "load_args", "load_data_args", "packing", "packing_length", "packing_num_proc",
    "packing_strategy", "lazy_tokenize", "use_hf", "hub_token", "ddp_timeout", "ddp_backend", "ignore_args_error",
    "use_swift_lora", "dataset", "val_dataset", "cached_dataset", "cached_val_dataset", "split_dataset_ratio",
    "data_seed", "dataset_num_proc", "load_from_cache_file", "dataset_shuffle", "val_dataset_shuffle", "streaming",
    "interleave_prob", "stopping_strategy", "shuffle_buffer_size", "download_mode", "columns", "strict",
    "remove_unused_columns", "disable_auto_column_mapping", "model_name", "model_author", "custom_dataset_info",
    "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "num_beams", "stream", "stop_words",
    "logprobs", "top_logprobs", "structured_outputs_regex", "model", "model_type", "model_revision", "task_type",
    "torch_dtype", "attn_impl", "experts_impl", "new_special_tokens", "num_labels", "problem_type", "rope_scaling",
    "device_map", "max_memory", "max_model_len", "local_repo_path", "init_strategy", "quant_method", "quant_bits",
    "hqq_axis", "bnb_4bit_compute_dtype", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
    "bnb_4bit_quant_storage", "template", "system", "max_length", "truncation_strategy", "max_pixels",
    "agent_template", "norm_bbox", "use_chat_template", "padding_side", "padding_free", "loss_scale",
    "sequence_parallel_size", "is_binary_loss_scale", "template_backend", "response_prefix", "enable_thinking",
    "preserve_thinking", "add_non_thinking_prefix", "disable_ignore_empty_think", "use_ray", "ray_exp_name",
    "device_groups"
})
SWIFT_TUNER_FIELDS = frozenset({
    "freeze_parameters", "freeze_parameters_regex", "freeze_parameters_ratio", "trainable_parameters",
    "trainable_parameters_regex", "freeze_llm", "freeze_vit", "freeze_aligner", "target_modules", "target_regex",
    "target_parameters", "modules_to_save", "lora_rank", "lora_alpha", "lora_dropout", "lora_bias", "lora_dtype",
    "lorap_lr_ratio", "use_rslora", "use_dora", "lora_ga_batch_size", "lora_ga_iters", "lora_ga_max_length",
    "lora_ga_direction", "lora_ga_scale", "lora_ga_stable_gamma", "init_weights", "fourier_n_frequency",
    "fourier_scaling", "boft_block_size", "boft_block_num", "boft_n_butterfly_factor", "boft_dropout", "vera_rank",
    "vera_projection_prng_key", "vera_dropout", "vera_d_initial", "adapter_act", "adapter_length",
    "adalora_target_r", "adalora_init_r", "adalora_tinit", "adalora_tfinal", "adalora_deltaT", "adalora_beta1",
    "adalora_beta2", "adalora_orth_reg_weight", "llamapro_num_new_blocks", "llamapro_num_groups", "reft_layer_key",
    "reft_layers", "reft_rank", "reft_intervention_type", "reft_args"
})
SWIFT_SFT_FIELDS = frozenset({
    "swanlab_token", "swanlab_project", "swanlab_workspace", "swanlab_exp_name", "swanlab_notification_method",
    "swanlab_webhook_url", "swanlab_secret", "swanlab_sender_email", "swanlab_receiver_email",
    "swanlab_smtp_server", "swanlab_smtp_port", "swanlab_email_language", "swanlab_mode", "add_version",
    "create_checkpoint_symlink", "output_dir", "learning_rate", "eval_strategy", "fp16", "bf16", "max_new_tokens",
    "temperature", "load_args", "zero_hpz_partition_size", "deepspeed_autotp_size", "fsdp"
})
SWIFT_TRAIN_FIELDS = frozenset({
    "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "tuner_backend",
    "gradient_checkpointing", "vit_gradient_checkpointing", "gradient_checkpointing_kwargs", "logging_first_step",
    "logging_steps", "router_aux_loss_coef", "enable_dft_loss", "enable_channel_loss", "safe_serialization",
    "max_shard_size", "weight_decay", "adam_beta2", "lr_scheduler_type", "lr_scheduler_kwargs", "report_to",
    "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_prefetch_factor", "use_liger_kernel",
    "check_model", "acc_strategy", "train_dataloader_shuffle", "group_by_length", "max_epochs", "aligner_lr",
    "vit_lr", "use_logits_to_keep", "ds3_gather_for_generation", "resume_only_model", "optimizer", "loss_type",
    "mrl_dims", "eval_metric", "callbacks", "early_stop_interval", "eval_use_evalscope", "eval_dataset",
    "eval_dataset_args", "eval_limit", "eval_generation_config", "extra_eval_args", "tuner_type", "use_galore",
    "galore_target_modules", "galore_rank", "galore_update_proj_gap", "galore_scale", "galore_proj_type",
    "galore_optim_per_parameter", "galore_with_embedding", "galore_quantization", "galore_proj_quant",
    "galore_proj_bits", "galore_proj_group_size", "galore_cos_threshold", "galore_gamma_proj", "galore_queue_size",
    "lisa_activated_layers", "lisa_step_interval", "use_flash_ckpt", "logging_dir", "warmup_ratio"
})
