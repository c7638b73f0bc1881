"""Benchmark (not a test): reserved and nvidia-smi figures against published rows, before and after the
allocator simulator's fitted reserve rule (app/core/reserved.py) replaced the flat 10% reserve.

Uses app/accuracy/rows.py's mapping of app/accuracy/data/published_peak_memory.csv (rows the planner
can express) and keeps the rows that measured ``reserved``
(torch.cuda.max_memory_reserved) or ``nvidia-smi``. For each row:

- before: reserved = peak + max(10% of peak, 128 MiB) (the former ``ALLOCATOR_RESERVE_FRACTION`` and
  ``ALLOCATOR_RESERVE_MIN_BYTES`` of app/core/overhead.py); total = reserved + CUDA context (+ NCCL);
- after: ``memory.reserved`` and ``memory.total`` of today's estimate.

The compared figure is reserved for ``reserved`` rows and total for ``nvidia-smi`` rows; the table prints the
signed error (ours − published) / published and the medians of |error| per kind.

    .venv/bin/python bench/allocator_check.py [--csv PATH]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.accuracy.rows import CSV_PATH as DEFAULT_CSV  # noqa: E402
from app.accuracy.rows import Mapped, Skip, map_row, run  # noqa: E402
from app.accuracy.rows import settings_text as settings  # noqa: E402
from app.core import PlanError  # noqa: E402
from app.core.overhead import outside_allocator_bytes  # noqa: E402
from app.core.units import GiB, MiB  # noqa: E402

FLAT_FRACTION = 0.10  # the former overhead.ALLOCATOR_RESERVE_FRACTION
FLAT_MIN_BYTES = 128 * MiB  # the former overhead.ALLOCATOR_RESERVE_MIN_BYTES
KINDS = ("reserved", "nvidia-smi")


def figures(mp: Mapped) -> tuple[float, float]:
    """(before, after) in GiB for the row's measured kind."""
    assert mp.result is not None
    mem = mp.result.memory
    flat_reserved = mem.peak + max(int(FLAT_FRACTION * mem.peak), FLAT_MIN_BYTES)
    if mp.kind == "reserved":
        return flat_reserved / GiB, mem.reserved / GiB
    outside = outside_allocator_bytes(mp.req.hardware.num_gpus)
    return (flat_reserved + outside) / GiB, mem.total / GiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    args = ap.parse_args()
    with args.csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept: list[Mapped] = []
    for row in rows:
        try:
            mp = map_row(row)
            if mp.kind not in KINDS or mp.oom:
                continue
            run(mp)
        except (Skip, PlanError):
            continue
        kept.append(mp)
    print(f"{len(kept)} published rows measuring reserved or nvidia-smi that the planner can map")
    print(f"{'row':>4} {'kind':10} {'model':28} {'settings':60} {'published':>9} {'before':>7} {'err%':>7} "
          f"{'after':>7} {'err%':>7}")
    errors: dict[str, dict[str, list[float]]] = {k: {"before": [], "after": []} for k in KINDS}
    for mp in kept:
        before, after = figures(mp)
        pub = mp.published_gib
        eb, ea = 100 * (before - pub) / pub, 100 * (after - pub) / pub
        errors[mp.kind]["before"].append(abs(eb))
        errors[mp.kind]["after"].append(abs(ea))
        print(f"{mp.row['row_id']:>4} {mp.kind:10} {mp.model_label[:28]:28} {settings(mp.req)[:60]:60} "
              f"{mp.published_gib:9.2f} {before:7.2f} {eb:+7.1f} {after:7.2f} {ea:+7.1f}")
    print()
    for kind in KINDS:
        e = errors[kind]
        if e["before"]:
            print(f"{kind:10} {len(e['before']):>3} rows: median |error| before (flat 10%) "
                  f"{statistics.median(e['before']):.1f}%, after (simulated-allocator rule) "
                  f"{statistics.median(e['after']):.1f}%")


if __name__ == "__main__":
    main()
