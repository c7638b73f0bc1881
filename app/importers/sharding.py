"""DeepSpeed and FSDP settings (axolotl and HF TrainingArguments spell them alike) → ``hardware.sharding``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.core.deepspeed import DEEPSPEED_BUCKET_DEFAULTS
from app.importers.common import (
    FROM_LAUNCHER,
    UPLOAD_IT,
    ConfigImportError,
    ImportNote,
    NoteKind,
    is_unset,
    local_files,
    non_negative_int,
    positive_int,
)


def deepspeed_sharding(ds: Any, source: str, base_dir: Path | None, hardware: dict[str, Any],
                       notes: list[ImportNote], training: Mapping[str, Any]) -> None:
    """A ``deepspeed`` value (a config dict, or the path of its JSON) → ``hardware.sharding`` from the ZeRO stage
    (``zero_optimization.stage``; from the file name, e.g. ``zero3.json``, when the file is not found). Its
    ``gradient_accumulation_steps`` is checked against the trainer's (``training``, already imported):
    :func:`deepspeed_accumulation`."""
    def note(key: str, kind: NoteKind, message: str) -> None:
        notes.append(ImportNote(source, key, kind, message))

    if is_unset(ds):
        return
    cfg: Any = ds if isinstance(ds, Mapping) else None
    if isinstance(ds, str) and not local_files():
        note("deepspeed", "unsupported", f"{ds!r} not read: {UPLOAD_IT}; upload it after this file")
    elif isinstance(ds, str):
        for path in ([base_dir / ds] if base_dir else []) + [Path(ds)]:
            if path.is_file():
                try:
                    cfg = json.loads(path.read_text())
                except (OSError, ValueError):
                    note("deepspeed", "unsupported", f"cannot read {path} as JSON")
                break
    stage = None
    if isinstance(cfg, Mapping):
        deepspeed_accumulation(cfg, source, training)
        zero = cfg.get("zero_optimization")
        zero = zero if isinstance(zero, Mapping) else {}
        stage = zero.get("stage")
        for part in ("offload_optimizer", "offload_param"):
            spec = zero.get(part)
            device = spec.get("device") if isinstance(spec, Mapping) else None
            if device == "cpu":
                hardware[part] = "cpu"
                note(f"deepspeed.zero_optimization.{part}", "note", f"hardware.{part} 'cpu'")
            elif device not in (None, "none"):
                note(f"deepspeed.zero_optimization.{part}", "unsupported",
                     f"offload to {device} is not modelled (counted on the GPU)")
    elif isinstance(ds, str):
        # zero3.json, zero3_offload (ms-swift's names), ds_z3_config.json, ds_z3_offload_config.json (LLaMA-Factory's)
        match = re.search(r"(?:zero|(?<![a-z0-9])z)[_-]?([0-3])", Path(ds).name.lower())
        stage = int(match.group(1)) if match else None
        if stage is not None:
            note("deepspeed", "note", f"{ds!r} not found; ZeRO stage {stage} read from its name")
        if "offload" in Path(ds).name:
            # the offload configs these frameworks ship: optimizer to CPU, and parameters too at stage 3
            hardware["offload_optimizer"] = "cpu"
            if stage == 3:
                hardware["offload_param"] = "cpu"
            parts = "offload_optimizer and offload_param" if stage == 3 else "offload_optimizer"
            note("deepspeed", "note", f"'offload' in its name: hardware.{parts} 'cpu' assumed (the offload configs "
                 "ms-swift and LLaMA-Factory ship)")
    sharding = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}.get(stage) if isinstance(stage, int) else None
    if sharding is None:
        note("deepspeed", "unsupported", f"cannot tell the ZeRO stage of {ds!r}; sharding not set")
    else:
        hardware["sharding"] = sharding
        launcher = "" if "num_gpus" in hardware else f"; {FROM_LAUNCHER}"
        note("deepspeed", "note", f"sharding {sharding!r}{launcher}")
        if isinstance(cfg, Mapping) and sharding.startswith("zero"):
            deepspeed_buckets(zero, sharding, source, hardware, notes)


def deepspeed_buckets(zero: Mapping[str, Any], sharding: str, source: str, hardware: dict[str, Any],
                      notes: list[ImportNote]) -> None:
    """``zero_optimization.reduce_bucket_size`` (ZeRO) and ``stage3_prefetch_bucket_size`` (ZeRO-3) →
    ``hardware``: "auto" stays "auto" (the HF Trainer fills it from hidden_size); a number is taken as an element
    count (JSON writes them as 5e8); a key the config leaves out runs with DeepSpeed's default, which the HF Trainer
    does not touch (transformers ``trainer_config_finalize`` fills "auto" keys only)."""
    keys = ["reduce_bucket_size"] + (["stage3_prefetch_bucket_size"] if sharding == "zero3" else [])
    for key in keys:
        path = f"deepspeed.zero_optimization.{key}"
        value = zero.get(key)
        if value == "auto":
            continue
        if value is None:
            hardware[key] = DEEPSPEED_BUCKET_DEFAULTS[key]
            notes.append(ImportNote(source, path, "note", f"not set: DeepSpeed's default {hardware[key]:.0e} "
                                    "elements (the HF Trainer fills only 'auto')"))
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        hardware[key] = non_negative_int(value, source, path)


def deepspeed_accumulation(cfg: Mapping[str, Any], source: str, training: Mapping[str, Any]) -> None:
    """A DeepSpeed config's ``gradient_accumulation_steps`` as the HF Trainer treats it (transformers 5.24
    ``integrations/deepspeed.py``, ``HfTrainerDeepSpeedConfig.trainer_config_process`` / ``fill_match``): "auto"
    (or absent) takes the trainer's ``gradient_accumulation_steps``; an integer must equal it, or the Trainer stops
    with "Please correct the following DeepSpeed config values that mismatch TrainingArguments values". Every trainer
    imported here (HF Trainer, TRL, axolotl, LLaMA-Factory, ms-swift) hands DeepSpeed to the HF Trainer, so a
    mismatch, or a value that is neither "auto" nor a positive integer, is refused naming the key."""
    key = "deepspeed.gradient_accumulation_steps"
    value = cfg.get("gradient_accumulation_steps")
    if value is None or value == "auto":
        return
    steps = positive_int(value, source, key)
    trainer = training.get("gradient_accumulation_steps", 1)
    if steps != trainer:
        raise ConfigImportError(source, key, f"{steps} differs from the trainer's gradient_accumulation_steps "
                                f"{trainer}; the HF Trainer refuses the mismatch: set it to 'auto' or {trainer}")


def fsdp_config_keys(fsdp_config: Any, source: str, training: dict[str, Any], notes: list[ImportNote],
                     hardware: dict[str, Any]) -> None:
    """The keys of an ``fsdp_config`` mapping (axolotl's and HF TrainingArguments' share names, with or without
    the ``fsdp_`` prefix): activation checkpointing turns gradient checkpointing on; parameter offload puts the
    parameters and the optimizer step in host RAM (``hardware.offload_param`` / ``offload_optimizer`` 'cpu')."""
    def note(key: str, kind: NoteKind, message: str) -> None:
        notes.append(ImportNote(source, key, kind, message))

    if not isinstance(fsdp_config, Mapping):
        return
    for key, value in fsdp_config.items():
        path = f"fsdp_config.{key}"
        bare = str(key).removeprefix("fsdp_")
        if bare == "activation_checkpointing":
            if value:
                training["gradient_checkpointing"] = True
        elif bare in ("offload_params", "cpu_offload"):
            if value:
                hardware["offload_optimizer"] = hardware["offload_param"] = "cpu"
                note(path, "note", "FSDP CPU offload: hardware.offload_param and offload_optimizer 'cpu'")
        else:
            note(path, "ignored", "does not affect the modelled memory")

