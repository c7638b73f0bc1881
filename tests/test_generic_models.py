"""The generic path on real config.json files of architectures outside the hand-written rules: parameters
equal transformers 5.24 + PEFT 0.21.2 on the meta device, for LoRA r16 all-linear, q/v targets, QLoRA and
DoRA, and PEFT's refusals are quoted (tests/data/config_sources.json says where each file comes from)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.core import PlanError, PlanRequest, estimate
from app.core.architectures import SUPPORTED_MODEL_TYPES
from app.core.generic import target_spec
from app.core.request import LoraSpec
from app.models.generic import ensure_config

from .reference.generic import fine_tuner_model, peft_counts, qlora_all_params, quantized_copy

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data"
CONFIGS = {p.stem: p for p in sorted((DATA / "configs").glob("*.json"))}
SOURCES = json.loads((DATA / "config_sources.json").read_text())
# PEFT needs minutes to wrap these (tens of thousands of unfused expert linears); they are checked by
# bench/generic_models.py and test_huge_moe_inventory below instead of four PEFT runs each.
HUGE = {"deepseek-ai--DeepSeek-V3"}
QV = ["q_proj", "v_proj"]


def _req(cfg: dict[str, Any], method: str, target_modules: Any) -> PlanRequest:
    return PlanRequest.model_validate({"model": {"config": cfg}, "method": method,
                                       "lora": {"r": 16, "lora_alpha": 32, "target_modules": target_modules},
                                       "training": {"seq_len": 512}})


def _ours(cfg: dict[str, Any], method: str, target_modules: Any) -> tuple[int, int, int] | str:
    try:
        p = estimate(_req(cfg, method, target_modules)).parameters
    except PlanError as exc:
        return exc.message
    return p.total, p.trainable, p.all_params


def test_sources_cover_every_config_and_enough_architectures() -> None:
    assert set(SOURCES) == set(CONFIGS)
    types = {json.loads(p.read_text())["model_type"] for p in CONFIGS.values()}
    assert not types & set(SUPPORTED_MODEL_TYPES)
    assert len(CONFIGS) >= 30 and len(types) >= 30


@pytest.mark.parametrize("name", sorted(set(CONFIGS) - HUGE))
def test_parameters_equal_transformers_and_peft(name: str) -> None:
    cfg = json.loads(CONFIGS[name].read_text())
    ensure_config(cfg, [target_spec(LoraSpec(target_modules=t), dora=d) for t in ("all-linear", QV)
                        for d in (False, True)])
    base = fine_tuner_model(cfg)
    total = base.num_parameters()

    full = estimate(_req(cfg, "full", "all-linear")).parameters
    assert (full.total, full.trainable, full.all_params) == (total, total, total)

    for method, targets in (("lora", "all-linear"), ("lora", QV), ("dora", "all-linear")):
        ref = peft_counts(base, r=16, lora_alpha=32, target_modules=targets, use_dora=method == "dora")
        ours = _ours(cfg, method, targets)
        if isinstance(ref, str):  # PEFT refuses: the 422 quotes its reason
            assert isinstance(ours, str) and ref in ours, (method, targets, ours)
        else:
            assert ours == (total, *ref), (method, targets)

    quantized = quantized_copy(base)
    ref = peft_counts(quantized, r=16, lora_alpha=32, target_modules="all-linear")
    ours = _ours(cfg, "qlora", "all-linear")
    if isinstance(ref, str):
        assert isinstance(ours, str) and ref in ours
    else:
        trainable, _ = ref
        assert ours == (total, trainable, qlora_all_params(quantized, trainable))
        report = estimate(_req(cfg, "qlora", "all-linear")).quantization
        import bitsandbytes as bnb

        assert report is not None and report.quantized_params == sum(
            m.weight.numel() for m in quantized.modules() if isinstance(m, bnb.nn.Linear4bit))


def test_huge_moe_inventory() -> None:
    """DeepSeek-V3 (671B): totals, and the q/v refusal PEFT gives (it has no q_proj/v_proj)."""
    cfg = json.loads(CONFIGS["deepseek-ai--DeepSeek-V3"].read_text())
    ensure_config(cfg, [target_spec(LoraSpec(target_modules=QV), dora=d) for d in (False, True)])
    base = fine_tuner_model(cfg)
    full = estimate(_req(cfg, "full", QV)).parameters
    assert full.total == base.num_parameters() == 671_026_404_352
    ref = peft_counts(base, r=16, target_modules=QV)
    assert isinstance(ref, str) and ref in _ours(cfg, "lora", QV)
