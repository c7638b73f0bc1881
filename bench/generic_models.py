"""Benchmark (not a test): the generic path's latency for the config.json files in tests/data/configs.

For every config (or those named with ``--only``; ``--copy real`` for the real copies of Hub files only, the
``copy`` column says which each row is), with a fresh store (a temporary SQLite file):

- ``first_s``: the first request for that architecture, ``ensure_generic`` + ``estimate`` of a LoRA r=16
  all-linear request: one worker build (the transformers model on the meta device, PEFT's
  ``get_peft_model`` for the LoRA and the DoRA resolution, transformers' bitsandbytes module selection).
  The worker process is spawned once for the whole run, so its start (importing torch, ~5-10 s) is in the
  first row only (reported separately as ``worker_start_s``).
- ``store_ms``: the same request in a process that has not seen the model (memory registry cleared), read
  back from the store: what a request costs after a restart.
- ``later_ms``: median of ``--repeat`` later requests (``ensure_generic`` + ``estimate``) that vary seq_len
  (as the page and ``fit`` do): the static part is cached under the config hash, as a catalog id's is.
- ``new_r_ms``: the same with another ``r`` and method each time (lora, qlora, dora, qdora): the static
  part is recomputed from the stored inventory (no worker).
- a last row gives both figures for the catalog model meta-llama/Llama-3.1-8B, for comparison.

    .venv/bin/python bench/generic_models.py [--only openai--gpt-oss-20b ...] [--copy real] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _request(model: dict | str, method: str, r: int, seq_len: int = 1024):  # -> PlanRequest (imported late)
    from app.core import PlanRequest

    return PlanRequest.model_validate({"model": model if isinstance(model, str) else {"config": model},
                                       "method": method, "training": {"seq_len": seq_len},
                                       "lora": {"r": r, "lora_alpha": 2 * r, "target_modules": "all-linear"}})


def _timed(ensure, estimate, requests: list) -> float:  # the app's functions, imported late
    """Median milliseconds of ensure + estimate over ``requests`` (a cached refusal counts as answered)."""
    from app.core import PlanError

    out = []
    for req in requests:
        t0 = time.perf_counter()
        try:
            ensure(req)
            estimate(req)
        except PlanError:  # e.g. PEFT refuses DoRA on fused experts
            pass
        out.append(time.perf_counter() - t0)
    return 1000 * statistics.median(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="config file stems")
    parser.add_argument("--copy", choices=["real", "reconstructed"], default=None, help="only files of this kind")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    os.environ["PEFT_PLANNER_GENERIC_CACHE_PATH"] = str(Path(tempfile.mkdtemp()) / "generic.sqlite3")
    from app.core import PlanError, estimate
    from app.core import generic as registry
    from app.models.generic import _pool, ensure_generic
    from bench.config_files import config_files

    started = time.perf_counter()
    _pool().submit(int).result()  # spawn the worker once
    print(f"worker_start_s {time.perf_counter() - started:.1f}")
    print(f"{'config':48} {'copy':>5} {'modules':>8} {'first_s':>8} {'store_ms':>9} {'later_ms':>9} {'new_r_ms':>9}")
    for path, kind in config_files(args.only, args.copy):
        kind = kind[:4]  # real | reco(nstructed)
        cfg = json.loads(path.read_text())
        req = _request(cfg, "lora", 16)
        t0 = time.perf_counter()
        try:
            ensure_generic(req)
            estimate(req)
        except PlanError as exc:
            print(f"{path.stem:48} {kind:>5} refused: {exc.message[:80]}")
            continue
        first = time.perf_counter() - t0
        key = registry.config_key(cfg)
        modules = len(registry.registered(key).modules)
        registry._INVENTORIES.clear()
        registry._RESOLUTIONS.clear()
        t0 = time.perf_counter()
        ensure_generic(req)
        estimate(req)
        store = time.perf_counter() - t0
        later = _timed(ensure_generic, estimate, [_request(cfg, "lora", 16, 256 * (1 + i)) for i in range(args.repeat)])
        new_r = _timed(ensure_generic, estimate, [_request(cfg, ("lora", "qlora", "dora", "qdora")[i % 4], 8 + i)
                                                  for i in range(args.repeat)])
        print(f"{path.stem:48} {kind:>5} {modules:>8} {first:>8.1f} {1000 * store:>9.1f} {later:>9.2f} {new_r:>9.2f}")
    catalog = "meta-llama/Llama-3.1-8B"
    later = _timed(ensure_generic, estimate, [_request(catalog, "lora", 16, 256 * (1 + i)) for i in range(args.repeat)])
    new_r = _timed(ensure_generic, estimate, [_request(catalog, ("lora", "qlora", "dora", "qdora")[i % 4], 8 + i)
                                              for i in range(args.repeat)])
    print(f"{'catalog ' + catalog:48} {'':>5} {'':>8} {'':>8} {'':>9} {later:>9.2f} {new_r:>9.2f}")
    _pool().shutdown()


if __name__ == "__main__":
    main()
