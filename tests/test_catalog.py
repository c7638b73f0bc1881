"""Every catalog model: parameter count equals the real transformers model built on the meta device, and every
config.json has its public source recorded (app/core/data/model_sources.json)."""

from __future__ import annotations

import pytest

from app.core.adapters import plan_adapters
from app.core.architectures import SUPPORTED_MODEL_TYPES, parse_config
from app.core.catalog import gpus, model_configs, model_sources
from app.core.generic import model_inventory
from app.core.inventory import build_inventory
from app.core.request import LoraSpec, PlanRequest
from app.models.generic import ensure_generic

from .reference.hf import architecture_model, meta_model
from .reference.peft_ref import peft_counts

pytestmark = pytest.mark.slow


# Catalog models whose architecture the hand-written rules (app/core/architectures.py) do not cover: the generic
# path (app/models/generic.py) builds their inventory from transformers on the meta device.
GENERIC = sorted(k for k, c in model_configs().items() if c.get("model_type") not in SUPPORTED_MODEL_TYPES)
RULES = sorted(k for k in model_configs() if k not in GENERIC)


def test_catalog_is_large_covers_every_family_and_names_its_sources() -> None:
    configs = model_configs()
    assert len(configs) >= 80
    families = {c["model_type"] for c in configs.values()}
    assert families >= set(SUPPORTED_MODEL_TYPES)
    sources = model_sources()
    assert sorted(sources) == sorted(k for k in sources if k in configs)  # no source for a missing model
    for src in sources.values():
        assert set(src) <= {"repo", "path", "commit", "note"} and len(src["commit"]) == 40, src


@pytest.mark.parametrize("model_id", RULES)
def test_total_params_equal_transformers(model_id: str) -> None:
    cfg = model_configs()[model_id]
    assert model_inventory(model_id)[1].total_params == meta_model(cfg).num_parameters()


@pytest.mark.parametrize("model_id", GENERIC)
def test_generic_path_models_equal_transformers(model_id: str) -> None:
    """transformers 5.24 builds the model the config names (its ``architectures`` class) without remote code, and
    the generic path's inventory has exactly its parameter count."""
    cfg = model_configs()[model_id]
    ensure_generic(PlanRequest(model=model_id))
    assert model_inventory(model_id)[1].total_params == architecture_model(cfg).num_parameters()


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
