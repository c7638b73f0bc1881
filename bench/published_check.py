"""Benchmark (not a test): the planner against every published peak-memory figure whose settings can be known.

Reads ``app/accuracy/data/published_peak_memory.csv`` (a copy of the shared data set, see its README) through
:mod:`app.accuracy.rows`, the same mapping the server's ``/accuracy`` page and ``GET /api/v1/accuracy`` use: each row's
framework column becomes ``training.framework`` (rows of a framework the planner has no value for are skipped, with
the reason), its settings a PlanRequest, and its figure is compared on the counter its source read
(allocated → ``memory.peak``; reserved → peak + allocator reserve; nvidia-smi and unstated → ``memory.total``;
``get_memory_footprint()`` → ``memory.weights``, not in the medians). OOM rows are checked for the verdict: the
planner must say the run does not fit.

Prints the table (published, ours, error, counter), the terms of our figure, median |error| / share within 10% /
OOM verdicts per source, per framework, per counter and overall, the seq-len sweeps, and the skipped rows grouped
by reason. Deterministic, CPU only. Rows of a model outside the hand-written rules (given by its config.json)
go through the generic path first, as the served table does: transformers builds it on the meta device and its
activations are fitted from traces of small variants (a worker process; seconds per setting, stored in the generic
store, so a second run reads them):

    .venv/bin/python bench/published_check.py [--csv PATH] [--stand-in hf-trainer]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

from app.accuracy.rows import COUNTER, CSV_PATH, FRAMEWORKS, Mapped, Skip, read_rows, settings_text  # noqa: E402
from app.accuracy.table import Summary, compare, summarise  # noqa: E402
from app.core.request import PlanRequest  # noqa: E402


def method_label(mp: Mapped) -> str:
    if mp.kind == "weights":
        return "weights"
    return mp.req.method + ("+emb" if mp.req.lora.modules_to_save else "")


def print_table(title: str, rows: list[Mapped]) -> None:
    print(f"\n{title}")
    print("error = (ours - published) / published on the row's counter: allocated->peak, reserved->peak+allocator "
          "reserve, nvidia-smi/unstated->total, weights->memory.weights; OOM rows: our fit verdict")
    hdr = (f"{'row':>4} {'source':<16} {'framework':<10} {'model':<26} {'method':<9} {'settings':<64} "
           f"{'pub GiB':>8} {'ours':>8} {'error':>8}  counter")
    print(hdr)
    print("-" * len(hdr))
    for mp in rows:
        st = "weights only" if mp.kind == "weights" else settings_text(mp.req)
        head = (f"{mp.row['row_id']:>4} {mp.row['source_id'][:16]:<16} {mp.req.training.framework:<10} "
                f"{mp.model_label[:26]:<26} {method_label(mp):<9} {st[:64]:<64}")
        if mp.oom:
            verdict = "does not fit (right)" if mp.predicted_fits is False else "FITS (wrong)"
            print(f"{head} {'OOM':>8} {mp.ours['total']:8.2f} {'':>8}  total vs card: {verdict}")
        else:
            assert mp.published_gib is not None and mp.error is not None
            print(f"{head} {mp.published_gib:8.3f} {mp.ours['match']:8.3f} {100 * mp.error:+7.1f}%  "
                  f"{COUNTER[mp.kind]} ({mp.kind})")
    notes = [(mp.row["row_id"], n) for mp in rows for n in mp.notes]
    if notes:
        print("notes:")
        seen: dict[str, list[str]] = defaultdict(list)
        for rid, n in notes:
            seen[n].append(rid)
        for n, rids in seen.items():
            print(f"  rows {_ranges(rids)}: {n}")


def print_terms(title: str, rows: list[Mapped]) -> None:
    print(f"\n{title} (GiB per GPU). static = weights + quant constants + adapters; acts* = memory.activations "
          "(everything above the resident bytes at the peak phase: in backward it includes the gradients built "
          "so far); other = gathered ZeRO-3/FSDP layers + cuBLAS workspace; pub-match = what we miss")
    hdr = (f"{'row':>4} {'phase':<9} {'static':>7} {'optim':>6} {'grads':>6} {'acts*':>7} {'other':>6} "
           f"{'peak':>7} {'ctx':>5} {'rsv':>5} {'total':>7} {'pub':>7} {'pub-match':>9}")
    print(hdr)
    print("-" * len(hdr))
    for mp in rows:
        o = mp.ours
        phase = mp.result.peak.phase if mp.result else "?"
        print(f"{mp.row['row_id']:>4} {phase:<9} {o['static']:7.2f} {o['optim']:6.2f} {o['grads']:6.2f} "
              f"{o['acts']:7.2f} {o['other']:6.2f} {o['peak']:7.2f} {o['ctx']:5.2f} {o['rsv']:5.2f} "
              f"{o['total']:7.2f} {mp.published_gib:7.2f} {mp.published_gib - o['match']:9.2f}")


def print_summaries(title: str, summaries: list[Summary]) -> None:
    print(f"\n{title}")
    print(f"  {'group':<34} {'rows':>4} {'median |err|':>12} {'median err':>10} {'within 10%':>10}  OOM not fitting")
    for s in summaries:
        med = "—" if s.median_abs_error_percent is None else f"{s.median_abs_error_percent:.1f}%"
        signed = "—" if s.median_error_percent is None else f"{s.median_error_percent:+.1f}%"
        within = "—" if s.within_10_percent is None else f"{100 * s.within_10_percent:.0f}%"
        oom = f"{s.oom_predicted_not_fitting} of {s.oom_rows}" if s.oom_rows else "—"
        print(f"  {s.group[:34]:<34} {s.rows:>4} {med:>12} {signed:>10} {within:>10}  {oom}")


def grouped(rows: list[Mapped], key: str) -> list[Summary]:
    by: dict[str, list[Mapped]] = defaultdict(list)
    for mp in rows:
        by[{"source": mp.row["source_id"], "framework": mp.req.training.framework,
            "counter": f"{mp.kind} -> {COUNTER[mp.kind]}"}[key]].append(mp)
    return [summarise(name, group) for name, group in sorted(by.items())]


def print_sweeps(rows: list[Mapped]) -> None:
    """Series that differ only in seq_len: published vs predicted growth (isolates the activation slope)."""
    series: dict[tuple, list[Mapped]] = defaultdict(list)
    for mp in rows:
        if mp.kind == "weights":
            continue
        t = mp.req.training
        key = (mp.model_label, method_label(mp), mp.req.lora.r, t.micro_batch_size, t.precision,
               mp.req.hardware.gpu, mp.req.hardware.num_gpus, mp.kind)
        series[key].append(mp)
    series = {k: sorted(v, key=lambda m: m.req.training.seq_len) for k, v in series.items() if len(v) >= 3}
    if not series:
        return
    print("\nseq-len sweeps: growth from the shortest sequence (GiB); ours = Δ match quantity, "
          "Δacts = our activation term's share")
    for (label, meth, *_rest), group in series.items():
        base = group[0]
        cells = []
        for mp in group[1:]:
            dp = mp.published_gib - base.published_gib
            do = mp.ours["match"] - base.ours["match"]
            cells.append(f"s{mp.req.training.seq_len}: pub {dp:+5.1f} ours {do:+5.1f}")
        first_last = group[-1]
        dp = first_last.published_gib - base.published_gib
        do = first_last.ours["match"] - base.ours["match"]
        da = first_last.ours["acts"] - base.ours["acts"]
        slope = f"ours/pub {do / dp:.2f}" if dp > 0.05 else "pub flat"
        print(f"  {label[:22]:<22} {meth:<8} s{base.req.training.seq_len}->s{first_last.req.training.seq_len}: "
              f"pub {dp:+5.1f}, ours {do:+5.1f} (Δacts {da:+5.1f}) {slope}")
        print(f"      {'; '.join(cells)}")


def _ranges(ids: list[str]) -> str:
    nums = sorted({int(i) for i in ids})
    out: list[str] = []
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(out)


def print_skipped(skipped: list[tuple[dict[str, str], Skip]]) -> None:
    print(f"\nskipped rows ({len(skipped)}), grouped by reason:")
    groups: dict[str, list[tuple[dict[str, str], Skip]]] = defaultdict(list)
    for row, sk in skipped:
        groups[sk.reason].append((row, sk))
    for reason, items in groups.items():
        print(f"  [{reason}] ({len(items)}): rows {_ranges([row['row_id'] for row, _ in items])}")
        details = sorted({f"{row['framework'][:40]} / {sk.detail[:70]}" if sk.detail else row["framework"][:40]
                          for row, sk in items})
        for d in details[:8]:
            print(f"      {d}")
        if len(details) > 8:
            print(f"      … {len(details) - 8} more")


def prepare(req: PlanRequest) -> PlanRequest:
    """The generic path's build and traced fit, waited for (:data:`app.accuracy.table.Prepare`)."""
    from app.models.resolve import resolve_request
    from app.settings import get_settings

    return resolve_request(req, fit_wait_s=get_settings().generic_peak_fit_timeout_s)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=CSV_PATH)
    ap.add_argument("--stand-in", metavar="FRAMEWORK", help="also estimate the rows of trainers the planner has no "
                    "training.framework value for (torchtune, litgpt) with this one, in a separate table that is "
                    "not in the medians above (e.g. hf-trainer: how far today's recipes are from theirs)")
    args = ap.parse_args()

    rows = read_rows(args.csv)
    mapped, skipped = compare(rows, prepare=prepare)
    print(f"{args.csv.name}: {len(rows)} rows; compared {len(mapped)}; skipped {len(skipped)}")
    print_table("== published rows whose settings can be known ==", mapped)
    print_terms("terms", [mp for mp in mapped if not mp.oom])
    print_sweeps([mp for mp in mapped if not mp.oom])
    print_skipped(skipped)
    print_summaries("per source:", grouped(mapped, "source"))
    print_summaries("per counter:", grouped(mapped, "counter"))
    print_summaries("per framework (training.framework):", grouped(mapped, "framework"))
    print_summaries("overall:", [summarise("overall", mapped)])
    if args.stand_in:
        stood = [mp for mp in compare(rows, stand_in=args.stand_in, prepare=prepare)[0]
                 if FRAMEWORKS[mp.row["framework"]][0] != mp.req.training.framework]
        print_table(f"== rows of trainers without a training.framework value, estimated as {args.stand_in!r} "
                    "(not in the medians above) ==", stood)
        print_summaries(f"per framework column, estimated as {args.stand_in!r}:",
                        [summarise(name, [mp for mp in stood if mp.row["framework"] == name])
                         for name in sorted({mp.row["framework"] for mp in stood})])


if __name__ == "__main__":
    main()
