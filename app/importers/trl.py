"""TRL's own recipe files (``trl sft --config recipe.yaml``, or the ``trl sft --…`` command) → a full PlanRequest
body, framework 'trl'.

``trl sft`` parses one flat namespace into four dataclasses (TRL 1.16.0 ``trl/scripts/sft.py``): ``ScriptArguments``
(``dataset_name``, …: data only), ``SFTConfig`` (read by :func:`app.importers.hf_training.from_hf_training`),
``ModelConfig`` (``trl/trainer/model_config.py``) and ``DatasetMixtureConfig``. What the script does with
``ModelConfig`` (``sft.py`` ``main``; ``trl/trainer/utils.py`` ``get_quantization_config`` / ``get_peft_config``):

- the model is loaded with ``dtype=model_args.dtype`` (default 'float32'; ``SFTConfig.model_init_kwargs`` overrides);
- ``use_peft`` → ``LoraConfig(r=lora_r 16, lora_alpha 32, lora_dropout 0.05, target_modules=lora_target_modules,
  modules_to_save=lora_modules_to_save, use_rslora, use_dora, target_parameters)``; without it, full fine-tuning;
- ``load_in_4bit`` → ``BitsAndBytesConfig(bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_type (nf4),
  bnb_4bit_use_double_quant=use_bnb_nested_quant (false), bnb_4bit_quant_storage)``; ``load_in_8bit`` → 8-bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.importers.bnb import compute_dtype
from app.importers.common import ConfigImportError, ImportNote, NoteKind, bool_key, is_unset, resolve_model
from app.importers.hf_training import HF_TRAINING_FIELDS, from_hf_training

# dataclasses.fields(trl.ModelConfig), TRL 1.16.0, with their defaults (tests/test_importers_frameworks.py checks
# them against the installed library)
MODEL_CONFIG_DEFAULTS: dict[str, Any] = {
    "model_name_or_path": None, "model_revision": "main", "dtype": "float32", "attn_implementation": None,
    "use_peft": False, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_target_modules": None,
    "lora_target_parameters": None, "lora_modules_to_save": None, "lora_task_type": "CAUSAL_LM",
    "use_rslora": False, "use_dora": False, "load_in_8bit": False, "load_in_4bit": False,
    "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": False, "bnb_4bit_quant_storage": None,
}
# dataclasses.fields(trl.ScriptArguments) and trl.scripts.utils.DatasetMixtureConfig, TRL 1.16.0; plus the CLI's
# own keys (``config``: the YAML; ``env``: environment variables the YAML may set)
SCRIPT_FIELDS = frozenset({"dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split",
                           "dataset_streaming", "ignore_bias_buffers", "datasets", "streaming", "test_split_size",
                           "config", "env"})
# Keys only a TRL recipe has (ModelConfig's and the script's): detect.py reads a file with any of them as TRL.
# (Not lora_target_modules / lora_modules_to_save: axolotl spells them too.)
TRL_MARKERS = frozenset({"use_peft", "lora_r", "lora_task_type", "use_bnb_nested_quant", "dataset_name",
                         "dataset_train_split", "lora_target_parameters"})
_ATTN = ("flash_attention_2", "sdpa", "eager")


def from_trl(data: Mapping[str, Any], source: str = "TRL recipe",
             base_dir: Path | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    """A ``trl sft`` recipe (YAML as a dict, or the parsed command) → a full body with ``training.framework``
    'trl'. The SFTConfig keys go through :func:`from_hf_training`; ModelConfig's are mapped here."""
    notes: list[ImportNote] = []

    def note(key: str, kind: NoteKind, message: str) -> None:
        notes.append(ImportNote(source, key, kind, message))

    dtype_raw = data.get("dtype", data.get("torch_dtype", MODEL_CONFIG_DEFAULTS["dtype"]))
    dtype = "auto" if dtype_raw == "auto" else compute_dtype(dtype_raw)
    if dtype is None:
        raise ConfigImportError(source, "dtype", f"{dtype_raw!r} is not auto, bfloat16, float16 or float32")
    if "dtype" not in data and "torch_dtype" not in data:
        note("dtype", "assumed", "ModelConfig's default dtype 'float32' (the model is loaded in float32)")
    attn = data.get("attn_implementation")
    if attn is not None and attn not in _ATTN:
        raise ConfigImportError(source, "attn_implementation", f"{attn!r} is not one of {', '.join(_ATTN)}")
    # sft.py: model_init_kwargs = {dtype, attn_implementation, …}, then updated by SFTConfig.model_init_kwargs
    init_kwargs: dict[str, Any] = {"dtype": dtype, **({"attn_implementation": attn} if attn else {})}
    given_kwargs = data.get("model_init_kwargs")
    if isinstance(given_kwargs, Mapping):
        init_kwargs.update(given_kwargs)
    sft_data = {k: v for k, v in data.items() if k in HF_TRAINING_FIELDS or (k not in MODEL_CONFIG_DEFAULTS
                and k not in SCRIPT_FIELDS and k != "torch_dtype")}
    sft_data["model_init_kwargs"] = init_kwargs
    body, sft_notes = from_hf_training(sft_data, source, base_dir, sft=True)
    notes += sft_notes

    if data.get("model_name_or_path"):
        model, model_notes = resolve_model(data["model_name_or_path"], source, "model_name_or_path", base_dir)
        notes += model_notes
        if model is not None:
            body["model"] = model

    in4, in8 = bool(bool_key(data, "load_in_4bit", source)), bool(bool_key(data, "load_in_8bit", source))
    use_peft, use_dora = bool(bool_key(data, "use_peft", source)), bool(bool_key(data, "use_dora", source))
    if (in4 or in8) and not use_peft:
        raise ConfigImportError(source, "load_in_4bit" if in4 else "load_in_8bit",
                                "a quantized model cannot be fully fine-tuned; set use_peft: true")
    if in4 and in8:
        raise ConfigImportError(source, "load_in_8bit", "load_in_4bit and load_in_8bit are both true")
    if not use_peft:
        body["method"] = "full"
        if "use_peft" not in data:
            note("use_peft", "assumed", "ModelConfig's default use_peft false: full fine-tuning")
    else:
        body["method"] = ("qdora" if use_dora else "qlora") if in4 or in8 else "dora" if use_dora else "lora"
        lora: dict[str, Any] = {}
        for key, field in (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout")):
            lora[field] = data.get(key, MODEL_CONFIG_DEFAULTS[key])
            if key not in data and key != "lora_dropout":
                notes.append(ImportNote(source, key, "assumed", f"ModelConfig's default {key}", field=f"lora.{field}",
                                        value=lora[field]))
        targets = data.get("lora_target_modules")
        if not is_unset(targets):
            lora["target_modules"] = targets if isinstance(targets, str) or len(targets) != 1 else (
                targets[0] if targets[0] == "all-linear" else targets)
        else:
            note("lora_target_modules", "assumed", "not set: PEFT's default targets for the architecture")
        for key, field in (("lora_target_parameters", "target_parameters"),
                           ("lora_modules_to_save", "modules_to_save")):
            if not is_unset(data.get(key)):
                lora[field] = [data[key]] if isinstance(data[key], str) else data[key]
        if data.get("use_rslora") is not None:
            lora["use_rslora"] = bool(bool_key(data, "use_rslora", source))
        body["lora"] = lora
    if in4 or in8:
        quant: dict[str, Any] = {"load_in_8bit": True} if in8 else {
            "bnb_4bit_quant_type": data.get("bnb_4bit_quant_type", "nf4"),
            "bnb_4bit_use_double_quant": bool(bool_key(data, "use_bnb_nested_quant", source)),
        }
        if in4 and quant["bnb_4bit_quant_type"] not in ("nf4", "fp4"):
            raise ConfigImportError(source, "bnb_4bit_quant_type", f"{quant['bnb_4bit_quant_type']!r} is not nf4 "
                                    "or fp4")
        if in4 and dtype in ("bfloat16", "float16", "float32"):
            quant["bnb_4bit_compute_dtype"] = dtype  # get_quantization_config: compute dtype = ModelConfig.dtype
        storage = data.get("bnb_4bit_quant_storage")
        if in4 and storage is not None:
            quant["bnb_4bit_quant_storage"] = "uint8" if str(storage).lower() == "uint8" else compute_dtype(storage)
            if quant["bnb_4bit_quant_storage"] is None:
                raise ConfigImportError(source, "bnb_4bit_quant_storage", f"{storage!r} is not uint8, bfloat16, "
                                        "float16 or float32")
        body["quantization"] = {**body.get("quantization", {}), **quant}
        if "use_bnb_nested_quant" not in data and in4:
            note("use_bnb_nested_quant", "assumed", "ModelConfig's default false: no double quantization")

    for key, value in data.items():
        if key in ("model_name_or_path", "dtype", "torch_dtype", "attn_implementation") or key in HF_TRAINING_FIELDS:
            continue
        if key in MODEL_CONFIG_DEFAULTS:
            if key == "lora_task_type" and value not in ("CAUSAL_LM", None):
                note(key, "unsupported", f"{value!r}: the planner models causal language models")
            elif key == "model_revision":
                note(key, "ignored", "does not affect memory")
        elif key in SCRIPT_FIELDS:
            note(key, "ignored", "data loading; does not affect per-GPU training memory")
    return body, notes
