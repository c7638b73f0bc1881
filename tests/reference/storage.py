"""Load a random tiny model the way users do (from_pretrained + BitsAndBytesConfig, on CPU) and count bytes."""

from __future__ import annotations

import tempfile
import warnings
from typing import Any

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from .hf import hf_config

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def load_quantized(cfg: dict[str, Any], *, dtype: str, quant: dict[str, Any]) -> torch.nn.Module:
    """Save a random model of ``cfg`` and load it back quantized by bitsandbytes on CPU (the real recipe)."""
    config = hf_config(cfg)
    torch_dtype = DTYPES[dtype]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            if quant.get("load_in_8bit"):
                bnb_config = BitsAndBytesConfig(load_in_8bit=True)
            else:
                bnb_config = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type=quant.get("bnb_4bit_quant_type", "nf4"),
                    bnb_4bit_use_double_quant=quant.get("bnb_4bit_use_double_quant", True),
                    bnb_4bit_compute_dtype=torch.bfloat16,
                )
            return AutoModelForCausalLM.from_pretrained(
                tmp, quantization_config=bnb_config, dtype=torch_dtype, device_map="cpu"
            )


def peft_wrap(model: torch.nn.Module, *, prepare: bool, method: str, lora: dict[str, Any]) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if prepare:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, LoraConfig(use_dora=method in ("dora", "qdora"), **lora))


def storage_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of every distinct parameter storage and bitsandbytes quantization state tensor.

    ``weights``: frozen base parameters (packed data for quantized layers); ``constants``: QuantState
    tensors (absmax, nested absmax/code, offset, code) and LLM.int8 row scales; ``trainable``: parameters
    with requires_grad (adapters, modules_to_save copies).
    """
    seen: set[int] = set()
    out = {"weights": 0, "constants": 0, "trainable": 0}

    def add(kind: str, t: torch.Tensor | None) -> None:
        if t is None or not torch.is_tensor(t):
            return
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            return
        seen.add(ptr)
        out[kind] += t.untyped_storage().nbytes()

    for p in model.parameters():
        add("trainable" if p.requires_grad else "weights", p)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            add("constants", qs.absmax)
            add("constants", qs.code)
            if qs.nested:
                add("constants", qs.offset)
                add("constants", qs.state2.absmax)
                add("constants", qs.state2.code)
        add("constants", getattr(p, "SCB", None))
    for module in model.modules():  # Linear8bitLt keeps the row scales in its MatmulLtState after a forward
        add("constants", getattr(getattr(module, "state", None), "SCB", None))
    return out
