"""The analytic peak agrees with the trace engine within 2% on the grid of bench/trace_grid.py.

The traced peaks are cached in tests/data/trace_grid.json (minutes to produce); set
PEFT_PLANNER_REGEN_TRACE=1 to re-run the traces in this test instead of reading the cache.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from bench.trace_grid import CACHE, analytic_tensor_peak, bodies, regenerate

TOLERANCE = 0.02


def _rows() -> list[dict[str, Any]]:
    if os.environ.get("PEFT_PLANNER_REGEN_TRACE") == "1" or not CACHE.exists():
        return regenerate()
    return json.loads(CACHE.read_text())


ROWS = _rows()


def test_grid_covers_the_space() -> None:
    """≥40 cases; every family × method, checkpointing on/off, several batches, lengths, dropouts, optimizers."""
    assert [r["request"] for r in ROWS] == bodies(), "cache is stale: run bench/trace_grid.py --regen"
    reqs = [r["request"] for r in ROWS]
    assert len(reqs) >= 40
    assert {r["method"] for r in reqs} == {"full", "lora", "qlora", "dora", "qdora"}
    assert {r["training"].get("gradient_checkpointing", True) for r in reqs} == {True, False}
    assert len({r["training"].get("micro_batch_size") for r in reqs}) >= 5
    assert len({r["training"].get("seq_len") for r in reqs}) >= 5
    assert {0, 0.05, 0.1} <= {r["lora"].get("lora_dropout", 0) for r in reqs}
    assert len({r["training"].get("optim", "adamw_torch") for r in reqs}) >= 6


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r['request']['model']}-{r['request']['method']}")
def test_analytic_peak_within_2_percent_of_trace(row: dict[str, Any]) -> None:
    analytic = analytic_tensor_peak(row["request"])
    assert analytic == pytest.approx(row["trace_peak_bytes"], rel=TOLERANCE)
