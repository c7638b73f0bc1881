"""The estimate's reserved memory against the caching-allocator simulation of traced steps.

Reference: tests/data/allocator_grid.json, made by bench/allocator_grid.py --regen: each trace-grid case's
real training step (transformers + PEFT + bitsandbytes on fake tensors, app/trace) recorded as an
allocation stream and replayed through app/core/allocator.py (tested against the allocator's documented
behaviour in tests/test_allocator.py) on an A100 80GB, with torch's defaults and with expandable segments.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from app.core import PlanRequest, estimate
from app.core.units import MiB
from bench.allocator_grid import fits_the_card

# cases that OOM on the A100 80GB they were replayed on (Mixtral QLoRA keeps its fused experts 16-bit) are
# left out: the simulated allocator released its cache to go on, which a real run would not survive
GRID = [row for row in json.loads((Path(__file__).parent / "data" / "allocator_grid.json").read_text())
        if fits_the_card(row)]


def _with_conf(body: dict[str, Any], conf: str | None) -> PlanRequest:
    return PlanRequest.model_validate({**body, "hardware": {"pytorch_cuda_alloc_conf": conf}})


@pytest.mark.parametrize(("conf", "key"), [(None, "max_reserved_bytes"),
                                           ("expandable_segments:True", "expandable_segments_max_reserved_bytes")])
def test_reserved_follows_the_simulated_traces(conf: str | None, key: str) -> None:
    """memory.reserved (analytic peak + the rule's reserve) within a few percent of the simulated
    max_memory_reserved of the traced step: median and worst case over the grid."""
    errors = []
    for row in GRID:
        result = estimate(_with_conf(row["request"], conf))
        errors.append(abs(result.memory.reserved - row[key]) / row[key])
    # median about 1 %; the worst case (about 17–18 %) is google/gemma-2-2b full fine-tuning: gemma2 runs
    # eager attention, whose seq_len² score blocks the rule does not read; the next worst are within 7 %
    assert statistics.median(errors) < 0.03, sorted(errors)
    assert max(errors) < 0.20, sorted(errors)
    assert sorted(errors)[-2] < 0.08, sorted(errors)


def test_rule_reserve_against_the_simulated_reserve() -> None:
    """The reserve itself (reserved − allocated): the rule is closer to the simulation than the flat
    10 % (≥ 128 MiB) it replaced, measured relative to the simulated reserved bytes."""
    rule, flat = [], []
    for row in GRID:
        result = estimate(_with_conf(row["request"], None))
        simulated = row["max_reserved_bytes"] - row["max_allocated_bytes"]
        rule.append(abs(result.allocator.reserve_bytes - simulated) / row["max_reserved_bytes"])
        flat.append(abs(max(int(0.10 * result.memory.peak), 128 * MiB) - simulated) / row["max_reserved_bytes"])
    assert statistics.median(rule) < statistics.median(flat)


def test_rule_names_its_group_and_the_unmodelled_settings() -> None:
    base = {"model": "meta-llama/Llama-3.1-8B", "method": "qlora"}
    default = estimate(PlanRequest.model_validate(base))
    assert default.allocator.rule.startswith("default/checkpointed: max(")
    assert default.memory.reserved == default.memory.peak + default.allocator.reserve_bytes
    off = estimate(PlanRequest.model_validate({**base, "training": {"gradient_checkpointing": False}}))
    assert off.allocator.rule.startswith("default/not_checkpointed")
    split = estimate(_with_conf(base, "max_split_size_mb:128"))
    assert "max_split_size_mb: not in the analytic rule" in split.allocator.rule
    assert split.allocator.reserve_bytes == default.allocator.reserve_bytes
    # the saving is the difference of the two rules, and the card's total moves with the reserve
    expandable = estimate(_with_conf(base, "expandable_segments:True"))
    saves = default.allocator.expandable_segments_saves_bytes
    assert saves == default.allocator.reserve_bytes - expandable.allocator.reserve_bytes
    assert default.memory.total - expandable.memory.total == saves
    assert [f.headroom_bytes - e.headroom_bytes for f, e in zip(default.fits, expandable.fits, strict=True)] == \
        [-saves] * len(default.fits)
