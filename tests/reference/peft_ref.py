"""PEFT on a meta-device model: the reference for trainable-parameter counts."""

from __future__ import annotations

import warnings
from typing import Any

from peft import LoraConfig, get_peft_model

from .hf import meta_model


def peft_counts(cfg: dict[str, Any], method: str, lora: dict[str, Any]) -> tuple[int, int]:
    """``PeftModel.get_nb_trainable_parameters()`` for a LoRA/DoRA or full fine-tuning run."""
    model = meta_model(cfg)
    if method == "full":
        n = model.num_parameters()
        return n, n
    kwargs = {k: v for k, v in lora.items() if v is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = get_peft_model(model, LoraConfig(use_dora=method == "dora", **kwargs))
    return peft_model.get_nb_trainable_parameters()
