"""Benchmark (not a test): what a Hub id costs, against the stand-in Hub of the tests on 127.0.0.1.

Serves Llama-3.1-8B's catalog config.json as ``bench/llama-3.1-8b`` (tests/hub_standin.py), points
``HF_ENDPOINT`` at it with a fresh ``HF_HOME``, and times ``resolve_request`` with ``time.perf_counter``:

- the first request of the process (imports huggingface_hub, one metadata HEAD, hf_hub_download's HEAD + GET);
- the next ``--repeat`` requests (the in-process LRU: no network);
- ``--repeat`` requests with the LRU cleared each time (huggingface_hub's disk cache: two HEADs, no GET);
- the estimate of the resolved request, for scale.

Prints the median of each (milliseconds) and the requests the stand-in saw.

    .venv/bin/python bench/hub_latency.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

from tests.hub_standin import config_repo, running_hub  # noqa: E402

REPO = "bench/llama-3.1-8b"


def _ms(fn: Callable[[], object], repeat: int, before: Callable[[], object] = lambda: None) -> float:
    samples = []
    for _ in range(repeat):
        before()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    config = json.loads((ROOT / "app/core/data/models/meta-llama--Llama-3.1-8B.json").read_text())
    with running_hub({REPO: config_repo(config, "bench")}) as hub, tempfile.TemporaryDirectory() as home:
        # before the first import of huggingface_hub, which reads them once
        os.environ.update(HF_ENDPOINT=hub.url, HF_HOME=home, HF_HUB_DISABLE_TELEMETRY="1")
        os.environ.pop("HF_HUB_OFFLINE", None)
        from app.core import PlanRequest, estimate
        from app.models import hub as hub_module
        from app.models.resolve import resolve_request

        req = PlanRequest(model=REPO, method="qlora")
        first = _ms(lambda: resolve_request(req), 1)
        lru = _ms(lambda: resolve_request(req), args.repeat)
        disk = _ms(lambda: resolve_request(req), args.repeat, before=hub_module._CACHE.clear)
        resolved, _ = resolve_request(req)
        est = _ms(lambda: estimate(resolved), args.repeat)
        print(f"resolve_request('{REPO}'), median ms: first {first:.1f}; in-process LRU {lru:.3f}; "
              f"disk cache (LRU cleared) {disk:.1f}; estimate of the resolved request {est:.1f}")
        seen = [m for m, p in hub.requests if "/resolve/" in p]
        print(f"requests the stand-in saw: {len(seen)} ({seen.count('HEAD')} HEAD, {seen.count('GET')} GET) for "
              f"{1 + 2 * args.repeat} resolves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
