"""PEFT ``adapter_config.json`` (``LoraConfig.save_pretrained``) → ``method`` (lora/dora), ``lora`` and ``model``.

Field names and defaults: PEFT 0.21 ``src/peft/tuners/lora/config.py`` (``LoraConfig``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.importers.common import ConfigImportError, ImportNote, is_unset, resolve_model

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
            if not is_unset(value):
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
