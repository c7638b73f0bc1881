"""accelerate's launch config (``accelerate launch --config_file x.yaml``, accelerate 1.15) → ``hardware`` (and the
training keys it carries).

Keys and what they do (accelerate 1.15 ``commands/config/config_args.py`` ``ClusterConfig``,
``utils/dataclasses.py`` ``DeepSpeedPlugin`` / ``FullyShardedDataParallelPlugin``):

- ``num_processes``: the processes of the whole run (all machines) → ``hardware.num_gpus`` (-1: the launcher's).
- ``distributed_type``: ``NO`` → one GPU; ``MULTI_GPU`` → DDP; ``DEEPSPEED`` → the ZeRO stage of
  ``deepspeed_config``; ``FSDP`` → ``fsdp_config``'s sharding strategy. Other backends (TPU, XLA, Megatron-LM,
  CPU) are not modelled.
- ``deepspeed_config``: ``deepspeed_config_file`` (a DeepSpeed JSON, read as the trainers' importers read it), or
  ``zero_stage``, ``offload_optimizer_device``, ``offload_param_device``, ``gradient_accumulation_steps``, from
  which ``DeepSpeedPlugin.__post_init__`` builds a DeepSpeed config without bucket sizes: DeepSpeed's defaults
  (reduce_bucket_size 5e8, stage3_prefetch_bucket_size 5e7) apply (:mod:`app.importers.sharding`).
- ``fsdp_config``: ``fsdp_sharding_strategy`` (FSDP1: ``FULL_SHARD``/1 → fsdp, ``SHARD_GRAD_OP``/2 → zero2,
  ``NO_SHARD``/3 → ddp, the hybrid ones are not modelled) or ``fsdp_reshard_after_forward`` (FSDP2: true → fsdp,
  false → zero2), ``fsdp_offload_params``, ``fsdp_activation_checkpointing`` (:func:`fsdp_config_keys`).
- ``mixed_precision``: the HF Trainer passes its own (``TrainingArguments.bf16``/``fp16``) to ``Accelerator``,
  which overrides the file's; the dtype the script loads the model in decides between ``bf16`` and
  ``bf16-mixed``: not set here, noted.
- ``dynamo_config.dynamo_backend`` other than ``NO`` compiles the model: ``training.torch_compile``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.importers.common import SET_GPU_COUNT, ConfigImportError, Draft, ImportNote, is_unset, positive_int
from app.importers.sharding import deepspeed_sharding, fsdp_config_keys

ACCELERATE_MARKERS = frozenset({
    "distributed_type", "compute_environment", "num_processes", "num_machines", "machine_rank",
    "main_training_function", "rdzv_backend", "same_network", "downcast_bf16", "deepspeed_config", "mixed_precision",
    "use_cpu", "gpu_ids", "main_process_ip", "main_process_port", "enable_cpu_affinity",
})
# accelerate's ClusterConfig keys that say nothing about a GPU's memory
_IGNORED = frozenset({
    "compute_environment", "debug", "machine_rank", "num_machines", "gpu_ids", "main_process_ip", "main_process_port",
    "rdzv_backend", "same_network", "main_training_function", "enable_cpu_affinity", "downcast_bf16", "tpu_name",
    "tpu_zone", "tpu_use_cluster", "tpu_use_sudo", "command_file", "commands", "tpu_vm", "tpu_env",
})
_UNSUPPORTED = {
    "fp8_config": "FP8 training is not modelled",
    "parallelism_config": "tensor/context parallelism is not modelled",
    "megatron_lm_config": "Megatron-LM is not modelled",
    "mpirun_config": "does not change a GPU's memory",
}
# FSDP1 ShardingStrategy (torch fsdp/api.py), by name or by the number accelerate's older configs write
_STRATEGIES = {"FULL_SHARD": "fsdp", "1": "fsdp", "SHARD_GRAD_OP": "zero2", "2": "zero2", "NO_SHARD": "ddp",
               "3": "ddp", "HYBRID_SHARD": None, "4": None, "HYBRID_SHARD_ZERO2": None, "5": None}
_DS_KEYS = ("zero_stage", "offload_optimizer_device", "offload_param_device", "gradient_accumulation_steps",
            "deepspeed_config_file")
_FSDP_STRATEGY_KEYS = ("fsdp_sharding_strategy", "sharding_strategy", "fsdp_reshard_after_forward",
                       "reshard_after_forward", "fsdp_version", "version")


def from_accelerate(data: Mapping[str, Any], source: str = "accelerate config",
                    base_dir: Path | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    """An accelerate config (as a dict) → a body with ``hardware`` (and ``training`` keys the file carries). It
    sets no model or method: those come from the trainer's files given beside it."""
    draft = Draft(source)
    hw = draft.hardware
    kind = str(data.get("distributed_type", "NO")).upper()
    processes = data.get("num_processes")
    if processes is not None and processes != -1:
        hw["num_gpus"] = positive_int(processes, source, "num_processes")
    elif kind != "NO":
        draft.note("num_processes", "note", f"not given: the launcher's count; {SET_GPU_COUNT}")
    if data.get("use_cpu") is True:
        draft.note("use_cpu", "unsupported", "training on the CPU: the planner answers GPU memory")
    if kind == "MULTI_GPU":
        hw["sharding"] = "ddp"
    elif kind == "DEEPSPEED":
        _deepspeed(data.get("deepspeed_config"), draft, base_dir)
    elif kind == "FSDP":
        _fsdp(data.get("fsdp_config"), draft)
    elif kind != "NO":
        draft.note("distributed_type", "unsupported", f"{kind} is not modelled (DeepSpeed, FSDP, DDP and one GPU are)")
    precision = data.get("mixed_precision")
    if not is_unset(precision):
        draft.note("mixed_precision", "note", f"{precision!r}: the HF Trainer's bf16/fp16 arguments override it, and "
                   "the dtype the script loads the model in decides training.precision ('bf16' for a bf16 model, "
                   "'bf16-mixed' for fp32 weights under autocast): not set from this file")
    dynamo = data.get("dynamo_config")
    backend = dynamo.get("dynamo_backend") if isinstance(dynamo, Mapping) else None
    if backend is not None and str(backend).upper() != "NO":
        draft.training["torch_compile"] = True
        draft.note("dynamo_config.dynamo_backend", "note", f"{backend!r}: torch.compile (training.torch_compile)")
    handled = {"distributed_type", "num_processes", "use_cpu", "deepspeed_config", "fsdp_config", "mixed_precision",
               "dynamo_config"}
    draft.leftovers(dict(data), handled, _UNSUPPORTED, _IGNORED, "not an accelerate 1.15 config key; ignored")
    body: dict[str, Any] = {}
    if hw:
        body["hardware"] = hw
    if draft.training:
        body["training"] = draft.training
    return body, draft.notes


def _deepspeed(cfg: Any, draft: Draft, base_dir: Path | None) -> None:
    """``deepspeed_config``: its JSON file when named, else the DeepSpeed config accelerate builds from the keys."""
    cfg = cfg if isinstance(cfg, Mapping) else {}
    path = cfg.get("deepspeed_config_file")
    if not is_unset(path) and str(path) != "none":
        deepspeed_sharding(str(path), draft.source, base_dir, draft.hardware, draft.notes, draft.training)
        return
    zero: dict[str, Any] = {"stage": cfg.get("zero_stage", 2)}  # DeepSpeedPlugin's zero_stage default
    for key, part in (("offload_optimizer_device", "offload_optimizer"), ("offload_param_device", "offload_param")):
        if not is_unset(cfg.get(key)):
            zero[part] = {"device": cfg[key]}
    steps = cfg.get("gradient_accumulation_steps")
    if steps is not None and steps != "auto":
        draft.training["gradient_accumulation_steps"] = positive_int(
            steps, draft.source, "deepspeed_config.gradient_accumulation_steps")
        draft.note("deepspeed_config.gradient_accumulation_steps", "note", "the trainer's must be the same (the HF "
                   "Trainer refuses a DeepSpeed config that differs)")
    deepspeed_sharding({"zero_optimization": zero}, draft.source, base_dir, draft.hardware, draft.notes,
                       draft.training)
    for key in cfg:
        if key not in _DS_KEYS:
            draft.note(f"deepspeed_config.{key}", "ignored", "does not affect per-GPU training memory")


def _fsdp(cfg: Any, draft: Draft) -> None:
    """``fsdp_config``: the sharding strategy, then offload and activation checkpointing."""
    cfg = cfg if isinstance(cfg, Mapping) else {}
    strategy = next((cfg[k] for k in ("fsdp_sharding_strategy", "sharding_strategy") if k in cfg), None)
    reshard = next((cfg[k] for k in ("fsdp_reshard_after_forward", "reshard_after_forward") if k in cfg), None)
    if strategy is None and isinstance(reshard, bool):  # FSDP2: fully_shard(reshard_after_forward=…)
        sharding: str | None = "fsdp" if reshard else "zero2"
    else:
        name = str(strategy if strategy is not None else reshard if reshard is not None else "FULL_SHARD").upper()
        if name not in _STRATEGIES:
            raise ConfigImportError(draft.source, "fsdp_config.fsdp_sharding_strategy",
                                    f"{strategy!r} is not a torch ShardingStrategy ("
                                    "FULL_SHARD, SHARD_GRAD_OP, NO_SHARD, HYBRID_SHARD, HYBRID_SHARD_ZERO2)")
        sharding = _STRATEGIES[name]
    if sharding is None:
        draft.note("fsdp_config.fsdp_sharding_strategy", "unsupported",
                   f"{strategy}: hybrid sharding (shard within a node, replicate across) is not modelled; sharding "
                   "not set")
    else:
        draft.hardware["sharding"] = sharding
        draft.note("fsdp_config", "note", f"sharding {sharding!r}")
    rest = {k: v for k, v in cfg.items() if k not in _FSDP_STRATEGY_KEYS}
    fsdp_config_keys(rest, draft.source, draft.training, draft.notes, draft.hardware)
