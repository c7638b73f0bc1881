"""Estimates run in several threads at once (the estimate and fit pools): the core's shared caches stay consistent.

The base-weights cache (app/core/static_memory.py) evicts its oldest entry when full; two threads evicting together
used to pop the same key, and the second raised KeyError, a 500 seen under the load test in CI. Here 8 threads build
the static parts of 144 requests whose base-weight keys differ (framework × precision × double quantization ×
method), 6 times over, more than the cache holds, with the interpreter switching threads as often as it can: without
the lock this raised KeyError in 2 of 864 builds on this machine."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.core import PlanError, PlanRequest
from app.core.estimate import _static_parts_uncached
from app.core.static_memory import _WEIGHTS_CACHE_SIZE

FRAMEWORKS = ["hf-trainer", "trl", "axolotl", "llama-factory", "ms-swift", "unsloth"]
PRECISIONS = ["bf16", "bf16-mixed", "fp16-mixed", "fp32"]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_static_parts_from_many_threads(fast_switching: None) -> None:
    requests = [PlanRequest.model_validate({
        "model": "meta-llama/Llama-3.2-1B", "method": method, "training": {"framework": fw, "precision": precision},
        "quantization": {"bnb_4bit_use_double_quant": dq}})
        for fw, precision, dq, method in itertools.product(FRAMEWORKS, PRECISIONS, [True, False],
                                                           ["lora", "qlora", "full"])]
    assert len(requests) > _WEIGHTS_CACHE_SIZE

    def build(req: PlanRequest) -> str:
        try:
            _static_parts_uncached(req)
        except PlanError:  # a combination a framework refuses: refused alike in every thread
            return "refused"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(build, requests * 6))
    alone = [build(r) for r in requests]
    assert outcomes == alone * 6
