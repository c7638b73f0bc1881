"""Every catalog model: parameter count equals the real transformers model built on the meta device; for the
generic-path models, LoRA r16 all-linear total/trainable equal transformers + PEFT too. (Sources of the
config.json files: tests/test_catalog_sources.py.)"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from app.core import estimate
from app.core.adapters import plan_adapters
from app.core.architectures import SUPPORTED_MODEL_TYPES, parse_config
from app.core.catalog import gpus, model_configs
from app.core.generic import model_inventory
from app.core.inventory import build_inventory
from app.core.request import LoraSpec, PlanRequest
from app.models.generic import ensure_generic

from .reference.generic import peft_counts as generic_peft_counts
from .reference.hf import architecture_model, meta_model
from .reference.peft_ref import peft_counts

pytestmark = pytest.mark.slow


# Catalog models whose architecture the hand-written rules (app/core/architectures.py) do not cover: the generic
# path (app/models/generic.py) builds their inventory from transformers on the meta device.
GENERIC = sorted(k for k, c in model_configs().items() if c.get("model_type") not in SUPPORTED_MODEL_TYPES)
RULES = sorted(k for k in model_configs() if k not in GENERIC)
# Generic models whose config.json is not one of tests/data/configs (those are checked for LoRA, DoRA and QLoRA by
# tests/test_generic_models.py, which also checks that the catalog copies are those files): today Llama-4-Scout
# (the catalog's attn_temperature_tuning is the bool transformers 5.24 wants) and gpt-oss-120b (the catalog keeps
# a quantization_config).
_TEST_CONFIGS = [json.loads(p.read_text()) for p in (Path(__file__).parent / "data" / "configs").glob("*.json")]
GENERIC_CATALOG_ONLY = [k for k in GENERIC if model_configs()[k] not in _TEST_CONFIGS]


def test_catalog_is_large_and_covers_every_family() -> None:
    configs = model_configs()
    assert len(configs) >= 100
    families = {c["model_type"] for c in configs.values()}
    assert families >= set(SUPPORTED_MODEL_TYPES)
    assert len(families - set(SUPPORTED_MODEL_TYPES)) >= 25  # architectures only the generic path covers


@pytest.mark.parametrize("model_id", RULES)
def test_total_params_equal_transformers(model_id: str) -> None:
    cfg = model_configs()[model_id]
    assert model_inventory(model_id)[1].total_params == meta_model(cfg).num_parameters()


@pytest.mark.parametrize("model_id", GENERIC_CATALOG_ONLY)
def test_generic_catalog_models_lora_equal_peft(model_id: str) -> None:
    """transformers 5.24 builds the model the config names (its ``architectures`` class) without remote code, and
    for LoRA r16 on ``all-linear`` the estimate for the catalog id has its parameter count and the trainable
    count PEFT 0.21.2 reports, on the meta device."""
    req = PlanRequest.model_validate({"model": model_id, "method": "lora",
                                      "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}})
    ensure_generic(req)
    base = architecture_model(copy.deepcopy(model_configs()[model_id]))  # transformers edits nested dicts
    ref = generic_peft_counts(base, r=16, lora_alpha=32, target_modules="all-linear")
    assert not isinstance(ref, str), ref  # PEFT wraps every one of these catalog models
    p = estimate(req).parameters
    assert (p.total, p.trainable, p.all_params) == (base.num_parameters(), *ref)


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
