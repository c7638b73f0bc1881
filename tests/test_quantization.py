"""4-bit and 8-bit storage equals what bitsandbytes allocates, to the byte (CPU kernels)."""

from __future__ import annotations

import copy
from typing import Any

import bitsandbytes as bnb
import bitsandbytes.functional as bnbf
import pytest
import torch

from app.core.adapters import plan_adapters
from app.core.architectures import parse_config
from app.core.inventory import build_inventory
from app.core.precision import dtypes_for
from app.core.quantization import constants_bits_per_param, int8_bytes, nf4_bytes
from app.core.request import PlanRequest
from app.core.static_memory import quantized_modules, static_memory

from .conftest import TINY_CONFIGS
from .reference.storage import load_quantized, peft_wrap, storage_bytes

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("shape", [(4096, 4096), (1024, 4096), (11008, 4096), (4097, 3), (7, 9), (300, 64)])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("blocksize", [64, 128])
def test_4bit_tensor_bytes(shape: tuple[int, int], quant_type: str, double_quant: bool, blocksize: int) -> None:
    w = torch.randn(*shape, dtype=torch.bfloat16)
    p = bnb.nn.Params4bit(w, requires_grad=False, compress_statistics=double_quant, quant_type=quant_type,
                          blocksize=blocksize)._quantize("cpu")
    qs = p.quant_state
    constants = qs.absmax.nbytes + qs.code.nbytes
    if qs.nested:
        constants += qs.offset.nbytes + qs.state2.absmax.nbytes + qs.state2.code.nbytes
    ours = nf4_bytes(w.numel(), blocksize=blocksize, double_quant=double_quant)
    assert (ours.data, ours.constants) == (p.data.nbytes, constants)


@pytest.mark.parametrize("shape", [(4096, 4096), (300, 64), (7, 9)])
def test_int8_tensor_bytes(shape: tuple[int, int]) -> None:
    cb, scb, _outliers = bnbf.int8_vectorwise_quant(torch.randn(*shape, dtype=torch.float16))
    ours = int8_bytes(*shape)
    assert (ours.data, ours.constants) == (cb.nbytes, scb.nbytes)


def test_double_quant_bits_per_param() -> None:
    """QLoRA paper §3: 32/64 = 0.5 bit without, 8/64 + 32/(64·256) ≈ 0.127 bit with double quantization."""
    assert constants_bits_per_param(blocksize=64, double_quant=False) == 0.5
    assert constants_bits_per_param(blocksize=64, double_quant=True) == pytest.approx(0.126953125)


@pytest.mark.parametrize("family", ["llama", "mixtral", "qwen2", "gemma2", "phi3", "gpt2", "qwen3_moe"])
def test_transformers_quantizes_exactly_our_modules(family: str) -> None:
    """Which modules transformers turns into Linear4bit: all Linear/Conv1D but lm_head; never MoE experts."""
    model = load_quantized(copy.deepcopy(TINY_CONFIGS[family]), dtype="bf16", quant={})
    real = sorted(n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit))
    inv = build_inventory(parse_config(copy.deepcopy(TINY_CONFIGS[family])))
    assert real == sorted(quantized_modules(inv))


def _cpu_kernel_friendly(cfg: dict[str, Any]) -> dict[str, Any]:
    """bitsandbytes' CPU 4-bit matmul needs output sizes divisible by its block (64): widen the tiny model."""
    if cfg["model_type"] == "gpt2":
        return {**cfg, "n_embd": 128}
    cfg.update(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    if "head_dim" in cfg:
        cfg["head_dim"] = 32
    if cfg["model_type"] in ("mixtral", "qwen3_moe"):
        cfg["moe_intermediate_size"] = 64
    return cfg


CASES: list[tuple[str, str, str, dict[str, Any], dict[str, Any]]] = [
    ("llama", "qlora", "bf16", {}, {"r": 8, "target_modules": "all-linear"}),
    ("llama", "qlora", "bf16", {"prepare_kbit": False}, {"r": 4, "target_modules": ["q_proj", "v_proj"]}),
    ("llama_bias", "qdora", "bf16", {"bnb_4bit_use_double_quant": False},
     {"r": 8, "target_modules": "all-linear", "modules_to_save": ["lm_head"]}),
    ("mixtral", "qlora", "bf16", {}, {"r": 8, "target_modules": ["q_proj", "v_proj"]}),
    ("gpt2", "qlora", "fp32", {"bnb_4bit_quant_type": "fp4"}, {"r": 8, "target_modules": ["c_attn", "c_fc"]}),
    ("qwen2", "qlora", "bf16", {"load_in_8bit": True}, {"r": 8, "target_modules": ["q_proj", "down_proj"]}),
    ("gemma3_text", "qdora", "bf16", {}, {"r": 16, "target_modules": "all-linear"}),
]


@pytest.mark.parametrize(("family", "method", "precision", "quant", "lora"), CASES)
def test_model_storage_matches_real_qlora_model(
    family: str, method: str, precision: str, quant: dict[str, Any], lora: dict[str, Any]
) -> None:
    """The whole quantized PEFT model as users build it: weights, constants and adapters, to the byte."""
    cfg = _cpu_kernel_friendly(copy.deepcopy(TINY_CONFIGS[family]))
    model = load_quantized(cfg, dtype="bf16" if precision == "bf16" else "fp32", quant=quant)
    model = peft_wrap(model, prepare=quant.get("prepare_kbit", True), method=method, lora=lora)
    # one training-mode forward pass: Linear4bit stores its bias in the compute dtype from then on (steady
    # state). Training mode also keeps bitsandbytes from repacking weights for CPU inference.
    model.train()
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 4), dtype=torch.long))
    real = storage_bytes(model)

    req = PlanRequest(model={"config": cfg}, method=method, lora=lora, quantization=quant,
                      training={"precision": precision})
    inv = build_inventory(parse_config(cfg))
    plan = plan_adapters(inv, req.lora, method=method)
    sm = static_memory(inv, plan, req, dtypes_for(req))
    assert sm.constants.total == real["constants"]
    assert sm.weights.total == real["weights"]
    assert sm.adapters.total == real["trainable"]
