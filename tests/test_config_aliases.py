"""Config-key aliases (transformers' ``attribute_map``) are honoured exactly as the real config classes do."""

from __future__ import annotations

import copy
import json

import pytest
from transformers import AutoConfig

from app.core.architectures import ALIASES_PATH, parse_config
from app.core.errors import PlanError
from app.core.inventory import build_inventory
from app.models.aliases import read_aliases

from .conftest import TINY_CONFIGS
from .reference.hf import meta_model

pytestmark = pytest.mark.slow


def test_alias_data_equals_the_config_classes() -> None:
    assert json.loads(ALIASES_PATH.read_text()) == read_aliases()


@pytest.mark.parametrize(("family", "alias", "key", "value"), [
    ("qwen3_moe", "num_local_experts", None, 6),  # transformers 5 writes Qwen3-MoE's experts under this name
    ("qwen3_moe", "num_experts", None, 6),
    ("mixtral", "num_experts", "num_local_experts", 6),
    ("gpt2", "hidden_size", "n_embd", 96),
    ("gpt2", "num_hidden_layers", "n_layer", 3),
])
def test_alias_alone_sets_the_attribute(family: str, alias: str, key: str | None, value: int) -> None:
    cfg = copy.deepcopy(TINY_CONFIGS[family])
    cfg.pop("num_experts", None)
    if key:
        cfg.pop(key, None)
    cfg[alias] = value
    model = meta_model(cfg)
    inv = build_inventory(parse_config(cfg))
    assert inv.total_params == model.num_parameters()
    assert {t.name: t.shape for t in inv.tensors} == {n: tuple(p.shape) for n, p in
                                                     model.named_parameters(remove_duplicate=False)}


@pytest.mark.parametrize(("family", "alias", "key"), [
    ("qwen3_moe", "num_experts", "num_local_experts"),  # the attribute wins here
    ("mixtral", "num_experts", "num_local_experts"),  # the alias wins here
    ("gpt2", "hidden_size", "n_embd"),
])
def test_both_names_given_as_transformers_resolves_them(family: str, alias: str, key: str) -> None:
    cfg = copy.deepcopy(TINY_CONFIGS[family])
    cfg.pop("num_experts", None)
    cfg.update({alias: 8, key: 4})
    real = AutoConfig.for_model(family, **{k: v for k, v in cfg.items() if k != "model_type"})
    assert build_inventory(parse_config(cfg)).total_params == meta_model(cfg).num_parameters()
    arch = parse_config(cfg)
    assert (arch.num_experts or arch.hidden_size) == getattr(real, key)


def test_bad_alias_value_names_the_key_the_config_used() -> None:
    cfg = copy.deepcopy(TINY_CONFIGS["qwen3_moe"])
    cfg["num_experts"] = "many"
    with pytest.raises(PlanError) as err:
        parse_config(cfg)
    assert err.value.loc == ("model", "config", "num_experts")
