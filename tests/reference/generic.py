"""The model a fine-tuner loads for a config.json, as transformers and PEFT build it (meta device)."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, BitsAndBytesConfig
from transformers.integrations.bitsandbytes import replace_with_bnb_linear
from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer

from .hf import architecture_class, auto_class

_META_KEYS = {"architectures", "transformers_version", "auto_map", "model_type", "_name_or_path",
              "quantization_config", "torch_dtype", "dtype"}


def fine_tuner_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """``<architectures[0]>._from_config(config)`` on the meta device, in bf16; when transformers 5.24 has no
    class of that name (LightOnOCR's ``LightOnOCRForConditionalGeneration``), the Auto class a fine-tuner
    falls back to (:func:`tests.reference.hf.auto_class`)."""
    cfg = copy.deepcopy(cfg)  # transformers standardises nested dicts (rope parameters) in place
    config = AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k not in _META_KEYS})
    config.use_cache = False
    cls = architecture_class(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            if cls is None:
                return auto_class(cfg).from_config(config, dtype=torch.bfloat16)
            return cls._from_config(config, dtype=torch.bfloat16)


def quantized_copy(model: torch.nn.Module) -> torch.nn.Module:
    """What ``from_pretrained(quantization_config=BitsAndBytesConfig(load_in_4bit=True))`` does to the module
    tree before loading weights (``Bnb4BitHfQuantizer._process_model_before_weight_loading``)."""
    work = copy.deepcopy(model)
    skip = Bnb4BitHfQuantizer.get_modules_to_not_convert(work, None, work._keep_in_fp32_modules)
    replace_with_bnb_linear(work, modules_to_not_convert=skip,
                            quantization_config=BitsAndBytesConfig(load_in_4bit=True))
    return work


def peft_counts(model: torch.nn.Module, **lora: Any) -> tuple[int, int] | str:
    """PEFT's ``get_nb_trainable_parameters()`` on a copy, or PEFT's refusal message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(**lora))
    except (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError) as exc:
        return str(exc)
    return peft_model.get_nb_trainable_parameters()


def qlora_all_params(quantized: torch.nn.Module, adapter_params: int) -> int:
    """PEFT's all-parameter count of a loaded 4-bit model plus adapters. A loaded ``Params4bit`` holds
    ceil(n/2) packed uint8 elements and PEFT counts it as numel·2 (peft_model.py:
    get_nb_trainable_parameters), i.e. 2·ceil(n/2); every other parameter counts its numel. (On the meta
    device the weights are not packed yet, so the figure is derived here rather than read from PEFT.)"""
    import bitsandbytes as bnb

    total = 0
    seen: set[int] = set()
    for module in quantized.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # a tied weight is one parameter
                continue
            seen.add(id(p))
            n = p.numel()
            total += 2 * math.ceil(n / 2) if isinstance(module, bnb.nn.Linear4bit) and name == "weight" else n
    return total + adapter_params
