"""Every catalog model: parameter count equals the real transformers model built on the meta device."""

from __future__ import annotations

import pytest

from app.core.adapters import plan_adapters
from app.core.architectures import parse_config
from app.core.catalog import gpus, model_configs
from app.core.generic import model_inventory
from app.core.inventory import build_inventory
from app.core.request import LoraSpec

from .reference.hf import meta_model
from .reference.peft_ref import peft_counts

pytestmark = pytest.mark.slow


def test_catalog_is_large_and_covers_every_family() -> None:
    configs = model_configs()
    assert len(configs) >= 30
    families = {c["model_type"] for c in configs.values()}
    assert families == {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2",
                        "gemma3_text", "phi3", "gpt2"}


@pytest.mark.parametrize("model_id", sorted(model_configs()))
def test_total_params_equal_transformers(model_id: str) -> None:
    cfg = model_configs()[model_id]
    assert model_inventory(model_id)[1].total_params == meta_model(cfg).num_parameters()


@pytest.mark.parametrize(
    ("model_id", "method", "lora"),
    [
        ("meta-llama/Llama-3.1-8B", "lora", {"r": 16, "target_modules": "all-linear"}),
        ("meta-llama/Llama-3.1-8B", "dora", {"r": 8, "target_modules": ["q_proj", "v_proj"]}),
        ("mistralai/Mixtral-8x7B-v0.1", "lora", {"r": 8, "target_modules": "all-linear"}),
        ("Qwen/Qwen3-30B-A3B", "lora", {"r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}),
        ("microsoft/Phi-3-mini-4k-instruct", "dora", {"r": 16, "target_modules": "all-linear"}),
        ("google/gemma-2-9b", "lora", {"r": 32, "target_modules": "all-linear", "modules_to_save": ["lm_head"]}),
        ("openai-community/gpt2", "lora", {}),
    ],
)
def test_real_scale_trainable_equal_peft(model_id: str, method: str, lora: dict[str, object]) -> None:
    cfg = model_configs()[model_id]
    trainable, all_params = peft_counts(cfg, method, lora)
    inv = build_inventory(parse_config(cfg))
    plan = plan_adapters(inv, LoraSpec(**lora), method=method)
    assert (plan.trainable_params, inv.total_params + plan.added_params) == (trainable, all_params)


def test_gpu_catalog() -> None:
    table = gpus()
    assert len(table) >= 20
    assert table["nvidia-h100-sxm-80gb"].vram_bytes == 85_520_809_984  # torch total_memory of an H100 80GB HBM3
    assert all(g.vram_bytes > 0 and g.bf16_tflops > 0 for g in table.values())
