"""Simulated reserved memory of the trace grid: the data the analytic allocator-reserve rule is fitted on.

    .venv/bin/python bench/allocator_grid.py            # print the table from the cache
    .venv/bin/python bench/allocator_grid.py --regen    # re-trace the cases (minutes) and rewrite the cache

Each case of bench/trace_grid.py is traced (app/trace/engine.py) and its recorded allocation stream replayed
through the caching-allocator simulator (app/core/allocator.py) on the default A100 80GB, with torch's
default settings and with expandable_segments:True. The cache (tests/data/allocator_grid.json) stores per
case the traced peak and the simulated max_memory_allocated / max_memory_reserved in bytes;
app/core/reserved.py's rule is fitted on it (``fit_rule``) and tests/test_reserved.py checks the rule against it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.trace_grid import bodies  # noqa: E402

CACHE = ROOT / "tests" / "data" / "allocator_grid.json"
KEYS = ("max_allocated_bytes", "max_reserved_bytes", "reserve_bytes", "fragmentation_at_peak",
        "largest_free_block_at_peak_bytes", "peak_phase", "cuda_malloc_calls", "failed_requests",
        "expandable_segments_max_reserved_bytes")


def fits_the_card(row: dict[str, Any]) -> bool:
    """False for cases that do not fit the A100 80GB they were replayed on (an OOM: the allocator released
    its cache to go on, so the reserve is not the one of a run that works): left out of the fit and checks."""
    from app.core.catalog import gpu
    from app.core.overhead import outside_allocator_bytes

    capacity = gpu("nvidia-a100-80gb").vram_bytes - outside_allocator_bytes(1)
    return not row.get("failed_requests") and row["max_reserved_bytes"] <= capacity


def regenerate(only: set[int] | None) -> list[dict[str, Any]]:
    from app.core import PlanRequest
    from app.trace.engine import run_trace

    old = json.loads(CACHE.read_text()) if CACHE.exists() else []
    done = {json.dumps(r["request"], sort_keys=True): r for r in old}
    rows = []
    for i, b in enumerate(bodies()):
        key = json.dumps(b, sort_keys=True)
        if (only is not None and i not in only) or key in done:
            if key in done:
                rows.append(done[key])
            continue
        t0 = time.perf_counter()
        result = run_trace(PlanRequest.model_validate(b))
        rows.append({"case": i, "request": b, "trace_peak_bytes": result.peak_bytes,
                     "trace_peak_rounded_bytes": result.peak_rounded_bytes,
                     **{k: result.allocator[k] for k in KEYS}, "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{i} {b['model']} {b['method']}: reserve {result.allocator['reserve_bytes'] / 2**20:.0f} MiB "
              f"({rows[-1]['seconds']} s)", flush=True)
        CACHE.write_text(json.dumps(sorted(rows, key=lambda r: r["case"]), indent=1) + "\n")
    return sorted(rows, key=lambda r: r["case"])


def table(rows: list[dict[str, Any]]) -> None:
    from app.core import PlanRequest, estimate

    print(f"{'#':>2} {'model':32} {'method':6} {'alloc GiB':>9} {'reserved GiB':>12} {'reserve MiB':>11} "
          f"{'frag %':>6} {'rule MiB':>8} {'flat 10% MiB':>12} {'expandable saves MiB':>20} rule")
    rule_err, flat_err = [], []
    for r in filter(fits_the_card, rows):
        req = PlanRequest.model_validate(r["request"])
        est = estimate(req)
        rule = est.allocator.reserve_bytes
        flat = max(int(0.10 * est.memory.peak), 128 * 2**20)
        rule_err.append(abs(rule - r["reserve_bytes"]) / r["max_reserved_bytes"])
        flat_err.append(abs(flat - r["reserve_bytes"]) / r["max_reserved_bytes"])
        saves = r["max_reserved_bytes"] - r["expandable_segments_max_reserved_bytes"]
        print(f"{r['case']:>2} {r['request']['model'][:32]:32} {r['request']['method']:6} "
              f"{r['max_allocated_bytes'] / 2**30:9.3f} {r['max_reserved_bytes'] / 2**30:12.3f} "
              f"{r['reserve_bytes'] / 2**20:11.0f} {100 * r['fragmentation_at_peak']:6.1f} {rule / 2**20:8.0f} "
              f"{flat / 2**20:12.0f} {saves / 2**20:20.0f} {est.allocator.rule.split(':')[0]}")
    print(f"\n{len(rule_err)} cases that fit the card: median |reserve error| / simulated reserved: rule "
          f"{100 * statistics.median(rule_err):.2f}% (max {100 * max(rule_err):.2f}%), flat 10% "
          f"{100 * statistics.median(flat_err):.2f}% (max {100 * max(flat_err):.2f}%)")


def _features(row: dict[str, Any]) -> dict[str, int]:
    """The rule's inputs as the estimate computes them for the row's request (analytic activations included)."""
    from app.core import PlanRequest, estimate
    from app.core.activations import activation_model
    from app.core.estimate import _static_parts
    from app.core.precision import dtypes_for
    from app.core.reserved import reserve_features

    req = PlanRequest.model_validate(row["request"])
    static = _static_parts(req)
    act = activation_model(static.inv, static.plan, req, dtypes_for(req))
    memory = estimate(req).memory
    return reserve_features(req, static.inv.arch.vocab_size, act, memory.activations, memory.peak)


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None for a singular system."""
    n = len(b)
    m = [[*row, b[i]] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        if abs(m[p][c]) < 1e-12:
            return None
        m[c], m[p] = m[p], m[c]
        for r in range(n):
            if r != c:
                f = m[r][c] / m[c][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[c], strict=True)]
    return [m[i][n] / m[i][i] for i in range(n)]


def _fit_group(xs: list[dict[str, int]], ys: list[int], scale: list[int]) -> tuple[dict[str, float], float]:
    """Non-negative weighted least squares of y on the features (weights 1/scale: relative errors), by trying
    every subset of features and keeping the best one whose coefficients are all ≥ 0."""
    from itertools import combinations

    from app.core.reserved import FEATURES

    best: tuple[float, dict[str, float]] = (float("inf"), dict.fromkeys(FEATURES, 0.0))
    for k in range(1, len(FEATURES) + 1):
        for subset in combinations(FEATURES, k):
            a = [[sum(x[i] * x[j] / w**2 for x, w in zip(xs, scale, strict=True)) for j in subset] for i in subset]
            b = [sum(x[i] * y / w**2 for x, y, w in zip(xs, ys, scale, strict=True)) for i in subset]
            coef = _solve(a, b)
            if coef is None or min(coef) < 0:
                continue
            sse = sum(((sum(c * x[f] for c, f in zip(coef, subset, strict=True)) - y) / w) ** 2
                      for x, y, w in zip(xs, ys, scale, strict=True))
            if sse < best[0]:
                best = (sse, {f: (dict(zip(subset, coef, strict=True)).get(f, 0.0)) for f in FEATURES})
    return best[1], best[0]


def fit_rule(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Coefficients per group (allocator setting × checkpointing) for app/core/data/allocator_reserve.json."""
    rows = [r for r in rows if fits_the_card(r)]
    feats = [_features(r) for r in rows]
    rules = {}
    for setting, reserved_key in (("default", "max_reserved_bytes"),
                                  ("expandable_segments", "expandable_segments_max_reserved_bytes")):
        for checkpointed in (True, False):
            group = [(f, r) for f, r in zip(feats, rows, strict=True)
                     if r["request"]["training"].get("gradient_checkpointing", True) == checkpointed]
            ys = [r[reserved_key] - r["max_allocated_bytes"] for _, r in group]
            scale = [r[reserved_key] for _, r in group]
            coef, _ = _fit_group([f for f, _ in group], ys, scale)
            name = f"{setting}/{'checkpointed' if checkpointed else 'not_checkpointed'}"
            rules[name] = {"coefficients": {k: round(v, 6) for k, v in coef.items()},
                           "min_bytes": min(ys) // 2**20 * 2**20, "cases": len(group)}
    return {"source": "bench/allocator_grid.py --fit on tests/data/allocator_grid.json (trace grid streams "
                      "replayed through app/core/allocator.py, A100 80GB, torch 2.13 defaults)",
            "rules": rules}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--regen", action="store_true", help="trace the cases missing from the cache")
    parser.add_argument("--only", type=int, nargs="*", help="with --regen: only these case indexes")
    parser.add_argument("--fit", action="store_true", help="refit app/core/data/allocator_reserve.json")
    args = parser.parse_args()
    rows = regenerate(set(args.only) if args.only is not None else None) if args.regen \
        else json.loads(CACHE.read_text())
    if args.fit:
        from app.core.reserved import RULES_FILE, _rules

        RULES_FILE.write_text(json.dumps(fit_rule(rows), indent=1) + "\n")
        _rules.cache_clear()  # the fit's estimates read the former rules
    table(rows)


if __name__ == "__main__":
    main()
