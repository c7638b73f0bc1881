"""Which kind of config a parsed file is, and a short description of why (printed by the CLI)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.importers.accelerate import ACCELERATE_MARKERS
from app.importers.axolotl import AXOLOTL_KNOWN, AXOLOTL_MARKERS
from app.importers.bnb import BNB_KEYS
from app.importers.cli_args import CliArgs
from app.importers.common import PLAN_KEYS, ConfigImportError, Format
from app.importers.deepspeed import DEEPSPEED_MARKERS
from app.importers.hf_training import HF_TRAINING_FIELDS, LEGACY_FIELDS, is_sft_config
from app.importers.litgpt import LITGPT_MARKERS
from app.importers.llama_factory import LF_MARKERS
from app.importers.ms_swift import SWIFT_MARKERS
from app.importers.torchtune import TORCHTUNE_MARKERS
from app.importers.trl import TRL_MARKERS
from app.importers.tune_run import TuneRun
from app.importers.unsloth import UnslothScript

# Keys only HF TrainingArguments / TRL SFTConfig have (axolotl spells its own: `optimizer`, `micro_batch_size`,
# `sequence_len`, …). A file with more of these than of axolotl-only keys is read as HF, never as axolotl.
HF_ONLY = (HF_TRAINING_FIELDS | set(LEGACY_FIELDS)) - AXOLOTL_KNOWN
AXOLOTL_ONLY = AXOLOTL_KNOWN - HF_TRAINING_FIELDS
NAMES: dict[str, str] = {
    "plan": "PlanRequest body", "peft": "PEFT adapter_config.json", "bnb": "transformers BitsAndBytesConfig",
    "axolotl": "axolotl config", "hf_training": "HF TrainingArguments", "model_config": "model config.json",
    "llama_factory": "LLaMA-Factory config", "ms_swift": "ms-swift arguments", "trl": "TRL recipe",
    "litgpt": "litgpt finetune config", "torchtune": "torchtune recipe config", "accelerate": "accelerate config",
    "unsloth": "Unsloth script", "deepspeed": "DeepSpeed config",
}


# The keys named first when a description lists why a file was read as HF (the most telling ones).
_TELLING = ("max_length", "packing", "dataset_text_field", "per_device_train_batch_size", "optim",
            "lr_scheduler_type")


def _shown(keys: set[str], limit: int = 3) -> str:
    first = ([k for k in _TELLING if k in keys] + sorted(keys - set(_TELLING)))[:limit]
    return ", ".join(first) + (", …" if len(keys) > limit else "")


def detect(data: Any, source: str = "input") -> tuple[Format, str]:
    """``(format, description)``: e.g. ``("hf_training", "TRL SFTConfig (max_length, packing, …)")``; the keys in
    brackets are the ones that decided. ConfigImportError when no format fits."""
    if isinstance(data, UnslothScript):
        calls = ", ".join(["from_pretrained", *(["get_peft_model"] if "get_peft_model" in data else []),
                           *([data.args_class] if data.args_class else [])])
        return "unsloth", f"{NAMES['unsloth']} ({calls})"
    if isinstance(data, TuneRun):
        return "torchtune", f"torchtune `tune run {data.recipe}` command (--config {data.config})"
    if not isinstance(data, Mapping) or not data:
        kind = "an empty mapping" if isinstance(data, Mapping) else type(data).__name__
        raise ConfigImportError(source, None, f"expected a JSON/YAML mapping, got {kind}")
    if isinstance(data, CliArgs):
        fmt: Format = "ms_swift" if data.fmt == "ms_swift" else "trl"
        return fmt, f"{NAMES[fmt]} (command {data.command!r})"
    keys = {str(k) for k in data}
    model = data.get("model")
    if isinstance(model, Mapping) and "_component_" in model:  # torchtune instantiates components by dotted path
        return "torchtune", f"{NAMES['torchtune']} (model._component_ {model['_component_']!r})"
    if keys <= PLAN_KEYS:
        return "plan", f"{NAMES['plan']} ({_shown(keys)})"
    if "peft_type" in keys:
        return "peft", f"{NAMES['peft']} (peft_type {data['peft_type']!r})"
    if "zero_optimization" in keys or len(keys & DEEPSPEED_MARKERS) >= 2:
        return "deepspeed", f"{NAMES['deepspeed']} ({_shown(keys & DEEPSPEED_MARKERS)})"
    launch = keys & ACCELERATE_MARKERS
    if "distributed_type" in keys or len(launch) >= 2:  # `accelerate config` writes these; no trainer spells them
        return "accelerate", f"{NAMES['accelerate']} ({_shown(launch)})"
    # the trainers' own recipes: each has keys no other format spells (the most of them wins)
    marked: list[tuple[int, Format, set[str]]] = [
        (len(keys & LF_MARKERS), "llama_factory", keys & LF_MARKERS),
        (len(keys & SWIFT_MARKERS), "ms_swift", keys & SWIFT_MARKERS),
        (len(keys & TRL_MARKERS), "trl", keys & TRL_MARKERS),
        (len(keys & LITGPT_MARKERS), "litgpt", keys & LITGPT_MARKERS),
        (len(keys & TORCHTUNE_MARKERS), "torchtune", keys & TORCHTUNE_MARKERS),
    ]
    count, fmt, why = max(marked, key=lambda m: m[0])
    if count > len(keys & AXOLOTL_ONLY):
        return fmt, f"{NAMES[fmt]} ({_shown(why)})"
    if "model_name_or_path" in keys and keys & HF_TRAINING_FIELDS:  # ModelConfig's model beside SFTConfig keys
        return "trl", f"{NAMES['trl']} (model_name_or_path, {_shown(keys & HF_TRAINING_FIELDS)})"
    hf, axolotl = keys & HF_ONLY, keys & AXOLOTL_ONLY
    # a model's config.json shares a few names (use_cache, pad_token, …) but always has model_type, which neither
    # TrainingArguments nor SFTConfig has
    if hf and len(hf) >= len(axolotl) and "model_type" not in keys:
        name = "TRL SFTConfig" if is_sft_config(data) else NAMES["hf_training"]
        return "hf_training", f"{name} ({_shown(hf)})"
    if keys & AXOLOTL_MARKERS:
        return "axolotl", f"{NAMES['axolotl']} ({_shown(keys & AXOLOTL_MARKERS)})"
    if keys <= BNB_KEYS or "quant_method" in keys or any(k.startswith(("bnb_4bit_", "llm_int8_")) for k in keys):
        return "bnb", NAMES["bnb"]
    if "r" in keys and keys & {"lora_alpha", "target_modules"}:
        return "peft", f"{NAMES['peft']} (r, {_shown(keys & {'lora_alpha', 'target_modules'})})"
    if "model_type" in keys:
        return "model_config", f"{NAMES['model_config']} (model_type {data['model_type']!r})"
    raise ConfigImportError(
        source, None,
        "not a PlanRequest body, PEFT adapter_config.json, BitsAndBytesConfig, axolotl YAML, HF TrainingArguments / "
        "TRL SFTConfig, TRL recipe, LLaMA-Factory YAML, ms-swift arguments, litgpt config, torchtune config, "
        "accelerate config, DeepSpeed config or config.json (top-level keys: "
        f"{_shown(keys, 12)})",
    )


def detect_format(data: Any, source: str = "input") -> Format:
    """Which kind of config ``data`` is (see :func:`detect`)."""
    return detect(data, source)[0]
