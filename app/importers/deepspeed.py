"""A DeepSpeed config JSON on its own (the file a trainer config's ``deepspeed:`` names, uploaded or passed beside
it) → ``hardware`` (ZeRO stage, CPU offload, bucket sizes) and the batch keys it fixes.

Keys: DeepSpeed 0.16 ``runtime/config.py`` and ``runtime/zero/config.py``; "auto" is the HF Trainer's placeholder,
filled from TrainingArguments (transformers 5.24 ``integrations/deepspeed.py``, ``trainer_config_process``). Merged
after the trainer config, this file's stage wins over the one read from the file's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.importers.common import ImportNote, NoteKind, positive_int
from app.importers.sharding import deepspeed_sharding

DEEPSPEED_MARKERS = frozenset({"zero_optimization", "train_micro_batch_size_per_gpu", "train_batch_size",
                               "zero_allow_untested_optimizer", "steps_per_print", "wall_clock_breakdown"})
"""Top-level keys only DeepSpeed configs spell; ``zero_optimization`` alone decides."""
_NO_MEMORY = frozenset({"steps_per_print", "wall_clock_breakdown", "gradient_clipping", "scheduler",
                        "prescale_gradients", "zero_allow_untested_optimizer", "tensorboard", "wandb", "csv_monitor",
                        "flops_profiler", "comms_logger", "train_batch_size", "dump_state"})
"""Keys that change no per-GPU training memory the planner models (logging, clipping, the LR schedule;
``train_batch_size`` is micro-batch × accumulation × GPUs)."""
_ADAM = frozenset({"adam", "adamw"})
"""DeepSpeed optimizer types whose state is two fp32 moments, as the planner's AdamW."""


def from_deepspeed(data: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[ImportNote]]:
    """(body, notes) for a DeepSpeed config: ``zero_optimization`` as :func:`deepspeed_sharding` reads it inside a
    trainer config; integer ``train_micro_batch_size_per_gpu`` / ``gradient_accumulation_steps`` fix the training
    fields ("auto" leaves them to the trainer); precision and optimizer follow the trainer's settings."""
    notes: list[ImportNote] = []
    training: dict[str, Any] = {}
    hardware: dict[str, Any] = {}

    def note(key: str, kind: NoteKind, message: str) -> None:
        notes.append(ImportNote(source, key, kind, message))

    for key, field in (("train_micro_batch_size_per_gpu", "micro_batch_size"),
                       ("gradient_accumulation_steps", "gradient_accumulation_steps")):
        value = data.get(key)
        if value is not None and value != "auto":
            training[field] = positive_int(value, source, key)
    deepspeed_sharding(dict(data), source, None, hardware, notes, training)
    for key, value in data.items():
        if key in ("zero_optimization", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
            continue
        if key in _NO_MEMORY:
            note(key, "ignored", "does not affect per-GPU training memory")
        elif key in ("bf16", "fp16"):
            enabled = value.get("enabled") if isinstance(value, Mapping) else value
            if enabled not in (None, False, "auto"):
                note(key, "note", "precision comes from the trainer's settings (training.precision); DeepSpeed "
                     f"{key} must agree with them")
        elif key == "activation_checkpointing":
            note(key, "unsupported", "DeepSpeed's activation checkpointing (partition_activations, "
                 "cpu_checkpointing) is not modelled: training.gradient_checkpointing decides")
        elif key == "optimizer":
            kind = str(value.get("type", "")).lower() if isinstance(value, Mapping) else ""
            if kind in _ADAM:
                note(key, "ignored", f"DeepSpeed {kind}: two fp32 moments per trainable parameter, as training.optim "
                     "adamw_torch")
            else:
                note(key, "unsupported", f"DeepSpeed optimizer {kind or value!r}: its states are estimated as the "
                     "trainer's training.optim")
        else:
            note(key, "unknown", "not a DeepSpeed key the planner reads")
    body: dict[str, Any] = {}
    if training:
        body["training"] = training
    if hardware:
        body["hardware"] = hardware
    return body, notes
