"""Trainable parameters equal PeftModel.get_nb_trainable_parameters() for the same LoraConfig."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from app.core.adapters import plan_adapters
from app.core.architectures import parse_config
from app.core.errors import PlanError
from app.core.inventory import build_inventory
from app.core.request import LoraSpec

from .conftest import TINY_CONFIGS
from .reference.peft_ref import peft_counts

pytestmark = pytest.mark.slow

CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("llama", "lora", {}),
    ("llama", "lora", {"r": 16, "target_modules": "all-linear"}),
    ("llama", "dora", {"r": 4, "target_modules": "all-linear"}),
    ("llama", "lora", {"target_modules": ["q_proj", "embed_tokens"], "modules_to_save": ["lm_head"]}),
    ("llama", "dora", {"target_modules": ["embed_tokens", "down_proj"]}),
    ("llama", "lora", {"target_modules": r".*layers\.(0|2)\.mlp\.(up|down)_proj"}),
    ("llama", "lora", {"target_modules": ["k_proj", "o_proj"], "layers_to_transform": [1]}),
    ("llama", "full", {}),
    ("llama_bias", "lora", {"target_modules": ["q_proj", "up_proj"], "bias": "all"}),
    ("llama_bias", "lora", {"target_modules": ["q_proj", "up_proj"], "bias": "lora_only"}),
    ("llama_bias", "lora", {"target_modules": "all-linear", "modules_to_save": ["embed_tokens"]}),
    ("llama_bias", "lora", {"target_modules": ["v_proj"], "modules_to_save": ["lm_head"]}),
    ("mistral", "dora", {"r": 32, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}),
    ("mixtral", "lora", {"target_modules": "all-linear"}),
    ("mixtral", "lora", {"target_modules": ["q_proj"], "target_parameters": ["experts.gate_up_proj",
                                                                           "experts.down_proj"]}),
    ("mixtral", "lora", {"target_modules": [], "target_parameters": ["mlp.gate.weight"]}),
    ("mixtral", "lora", {"target_modules": ["q_proj", "w1", "w3", "w2", "gate"]}),
    ("mixtral", "lora", {"target_modules": r".*\.0\..*q_proj"}),
    ("mixtral", "lora", {"target_modules": ["q_proj"], "modules_to_save": ["gate"]}),
    ("qwen3_moe", "lora", {"target_modules": ["gate_proj", "up_proj", "down_proj"]}),
    ("qwen3_moe", "lora", {"target_modules": r".*layers\.3\.mlp\.down_proj"}),
    ("qwen2", "lora", {"bias": "all"}),
    ("qwen2", "dora", {"target_modules": "all-linear", "bias": "lora_only"}),
    ("qwen3", "lora", {"target_modules": "all-linear", "modules_to_save": ["lm_head"]}),
    ("qwen3_moe", "lora", {"target_modules": "all-linear"}),
    ("qwen3_moe", "lora", {"target_modules": "all-linear", "target_parameters": ["experts.down_proj"]}),
    ("qwen3_moe", "full", {}),
    ("gemma", "lora", {}),
    ("gemma2", "dora", {"target_modules": "all-linear"}),
    ("gemma3_text", "lora", {"r": 64, "target_modules": "all-linear"}),
    ("phi3", "lora", {"target_modules": ["qkv_proj", "gate_up_proj"]}),
    ("phi3", "dora", {"target_modules": "all-linear"}),
    ("gpt2", "lora", {}),
    ("gpt2", "lora", {"target_modules": "all-linear", "bias": "all"}),
    ("gpt2", "dora", {"target_modules": ["c_attn", "c_fc", "wte"]}),
    ("gpt2", "full", {}),
]


@pytest.mark.parametrize(("family", "method", "lora"), CASES)
def test_trainable_matches_peft(family: str, method: str, lora: dict[str, Any]) -> None:
    cfg = copy.deepcopy(TINY_CONFIGS[family])
    expected_trainable, expected_all = peft_counts(cfg, method, lora)
    inv = build_inventory(parse_config(cfg))
    plan = plan_adapters(inv, LoraSpec(**lora), method=method)
    assert plan.trainable_params == expected_trainable
    assert inv.total_params + plan.added_params == expected_all


def test_seed_example_one_matrix() -> None:
    """The article's worked example: a 4096×4096 matrix with r=8 trains 65,536 of 16,777,216 (0.39%)."""
    cfg = dict(model_type="llama", vocab_size=8, hidden_size=4096, intermediate_size=8, num_hidden_layers=1,
               num_attention_heads=32, num_key_value_heads=32)
    inv = build_inventory(parse_config(cfg))
    plan = plan_adapters(inv, LoraSpec(r=8, target_modules=["q_proj"]), method="lora")
    assert plan.trainable_params == 8 * 4096 + 4096 * 8 == 65_536
    assert round(100 * 65_536 / (4096 * 4096), 2) == 0.39


@pytest.mark.parametrize(
    ("family", "method", "lora", "field", "needle"),
    [
        ("llama", "lora", {"target_modules": ["q_proj", "qq_proj"]}, "target_modules", "down_proj"),
        ("llama", "lora", {"target_modules": ["input_layernorm"]}, "target_modules", "norm module"),
        ("phi3", "lora", {}, "target_modules", "no default"),
        ("qwen3_moe", "lora", {}, "target_modules", "no default"),
        ("mixtral", "lora", {}, "target_modules", "no default"),
        ("mixtral", "lora", {"target_modules": ["q_proj", "w1"]}, "target_modules", "w3"),
        ("qwen3_moe", "dora", {"target_modules": r".*layers\.3\.mlp\.down_proj"}, "target_parameters", "DoRA"),
        ("mixtral", "dora", {"target_modules": ["q_proj"], "target_parameters": ["experts.down_proj"]},
         "target_parameters", "DoRA"),
        ("mixtral", "lora", {"target_parameters": ["experts.down_proj"], "lora_dropout": 0.05},
         "lora_dropout", "lora_dropout"),
        ("llama", "lora", {"modules_to_save": ["score"]}, "modules_to_save", "lm_head"),
    ],
)
def test_refused_combinations(family: str, method: str, lora: dict[str, Any], field: str, needle: str) -> None:
    inv = build_inventory(parse_config(copy.deepcopy(TINY_CONFIGS[family])))
    with pytest.raises(PlanError) as err:
        plan_adapters(inv, LoraSpec(**lora), method=method)
    assert err.value.loc == ("lora", field)
    assert needle in err.value.message


def test_invalid_regex_is_refused_by_the_request_model() -> None:
    """A target_modules regex is compiled (RE2) when the request is validated, before any planning."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="regular expression"):
        LoraSpec(target_modules="(unclosed")


def test_peft_refuses_the_same_combinations() -> None:
    """The refusals above are PEFT's own: DoRA on a targeted parameter, and no default for phi3."""
    cfg = copy.deepcopy(TINY_CONFIGS["mixtral"])
    with pytest.raises(ValueError, match="use_dora"):
        peft_counts(cfg, "dora", {"target_modules": ["q_proj"], "target_parameters": ["experts.down_proj"]})
    with pytest.raises(ValueError, match="target_modules"):
        peft_counts(copy.deepcopy(TINY_CONFIGS["phi3"]), "lora", {})
