"""Build the real transformers / PEFT objects the tests compare against (meta device, no weights)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()

_IGNORED_KEYS = {"architectures", "transformers_version", "auto_map", "model_type"}


def hf_config(cfg: dict[str, Any]):
    return AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k not in _IGNORED_KEYS})


def architecture_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """The class a fine-tuner loads (the config's ``architectures[0]``, e.g. ``...ForConditionalGeneration`` for a
    vision-language model; when transformers has no class of that name, what ``AutoModelForImageTextToText``
    (configs with a ``vision_config``) or ``AutoModelForCausalLM`` builds), on the meta device."""
    config = hf_config(cfg)
    cls = architecture_class(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            if cls is None:
                return auto_class(cfg).from_config(config)
            return cls._from_config(config)


def architecture_class(cfg: dict[str, Any]) -> type | None:
    """transformers' class named by the config's ``architectures[0]``, or None when transformers has none."""
    import transformers

    names = cfg.get("architectures") or []
    return getattr(transformers, names[0], None) if names else None


def auto_class(cfg: dict[str, Any]) -> type:
    """The Auto class a fine-tuner falls back to: ``AutoModelForImageTextToText`` for a config with a
    ``vision_config``, else ``AutoModelForCausalLM``."""
    import transformers

    return transformers.AutoModelForImageTextToText if "vision_config" in cfg else AutoModelForCausalLM


def meta_model(cfg: dict[str, Any], dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_config`` on the meta device: real module tree, no memory."""
    config = hf_config(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
