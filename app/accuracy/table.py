"""The validation table: every mappable published row next to the planner's figure, summarised per source, per
framework, per counter and overall (median |error|, share within 10%, OOM verdicts).

:func:`published_table` computes it once per process and planner version (:func:`cache_key`): the GET
/api/v1/accuracy endpoint and the /accuracy page call it inside the bounded estimate pool, so the ~100 estimates
run once, at the first request, and later requests read the cached table.

Pure Python (app.core and app.accuracy.rows only).
"""

from __future__ import annotations

import statistics
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pydantic import BaseModel, Field

from app.accuracy.residuals import RESIDUALS
from app.accuracy.rows import COUNTER, CSV_PATH, NOT_A_STEP, Mapped, Skip, map_row, read_rows, run, settings_text
from app.core.errors import PlanError
from app.core.request import PlanRequest
from app.core.versions import MODELLED_VERSIONS

WITHIN = 0.10
"""The share of rows within ±10% of the published figure is reported (the issue's bar: ≥ 80%)."""


class ComparedRow(BaseModel):
    row_id: int
    source_id: str
    source: str
    framework_published: str = Field(description="the CSV's framework column")
    framework: str = Field(description="training.framework the row was estimated with")
    model: str
    method: str
    settings: str = Field(description="the request, in short (r, targets, batch, sequence, sharding, …)")
    measures: str = Field(description="what the source measured, as it says")
    counter: str = Field(description="the planner figure compared: peak, peak + allocator reserve, total, weights")
    outcome: str = Field(description="measured, or OOM (only the fit verdict is compared)")
    gpu: str
    published_gib: float | None
    ours_gib: float | None
    error_percent: float | None = Field(description="100 · (ours − published) / published")
    predicted_fits: bool | None = Field(None, description="OOM rows: the planner's verdict for the card (must be "
                                        "false)")
    in_medians: bool = Field(description="false for weights-only rows (not a training step)")
    notes: list[str]
    residual: str | None = Field(None, description="rows more than 10% off: what is known about the difference (the "
                                 "cause, or what was ruled out); app/accuracy/residuals.py")


class SkippedRow(BaseModel):
    row_id: int
    model: str
    method: str
    framework_published: str
    reason: str
    detail: str


class Summary(BaseModel):
    group: str
    rows: int = Field(description="measured training-step rows in the group")
    median_abs_error_percent: float | None
    median_error_percent: float | None = Field(description="signed: negative = the planner is low")
    within_10_percent: float | None = Field(description="share of rows with |error| ≤ 10%")
    oom_rows: int
    oom_predicted_not_fitting: int


class PublishedTable(BaseModel):
    csv: str
    rows_total: int
    compared: list[ComparedRow]
    skipped: list[SkippedRow]
    overall: Summary
    per_source: list[Summary]
    per_framework: list[Summary]
    per_counter: list[Summary]
    planner_version: str


def cache_key(path: Path = CSV_PATH) -> str:
    """The app's version, the modelled library releases and the CSV's size/mtime: a new release or data file
    recomputes the table."""
    try:
        app = version("peft-planner")
    except PackageNotFoundError:  # a checkout run without installing
        app = "unknown"
    stat = path.stat()
    libs = ",".join(f"{k} {v}" for k, v in sorted(MODELLED_VERSIONS.items()))
    return f"peft-planner {app}; {libs}; csv {stat.st_size} B @ {stat.st_mtime_ns}"


Skipped = list[tuple[dict[str, str], Skip]]


Prepare = Callable[[PlanRequest], PlanRequest]
"""Makes a row's request answerable by the core before it is estimated: for a model outside the hand-written rules
(the rows given by their ``config.json``), the build and the activation fit of the generic path
(:func:`app.models.resolve.resolve_request`, waiting for the fit). Injected by the callers (the accuracy router,
bench/published_check.py), so this module stays pure."""


def compare(rows: Iterable[dict[str, str]], check: Callable[[], None] | None = None,
            stand_in: str | None = None, prepare: Prepare | None = None) -> tuple[list[Mapped], Skipped]:
    """Map and estimate every row: (compared, skipped with the reason). ``check`` is called between rows (the
    pool's cancellation hook); ``stand_in``: see :func:`app.accuracy.rows.map_row`; ``prepare``: see
    :data:`Prepare` (without it, a row of a model outside the rules is skipped as the core refuses it)."""
    mapped: list[Mapped] = []
    skipped: Skipped = []
    for row in rows:
        if check is not None:
            check()
        try:
            mp = map_row(row, stand_in)
            if prepare is not None:  # a catalog model outside the rules (phi) is built as a pasted one
                mp.req = prepare(mp.req)
            run(mp)
        except Skip as sk:
            skipped.append((row, sk))
            continue
        except PlanError as exc:
            skipped.append((row, Skip("planner rejected the request", str(exc)[:200])))
            continue
        mapped.append(mp)
    return mapped, skipped


def summary_of(group: str, errors: list[float], oom_verdicts: Sequence[bool | None] = ()) -> Summary:
    """Median |error|, signed median and share within 10% of ``errors`` (fractions: (ours − real) / real); OOM
    rows counted with how many the planner says do not fit (``oom_verdicts``: its fits verdict per OOM row)."""
    return Summary(
        group=group, rows=len(errors),
        median_abs_error_percent=round(100 * statistics.median(abs(e) for e in errors), 2) if errors else None,
        median_error_percent=round(100 * statistics.median(errors), 2) if errors else None,
        within_10_percent=round(sum(abs(e) <= WITHIN for e in errors) / len(errors), 3) if errors else None,
        oom_rows=len(oom_verdicts), oom_predicted_not_fitting=sum(v is False for v in oom_verdicts),
    )


def summarise(group: str, rows: list[Mapped]) -> Summary:
    """:func:`summary_of` the group's measured training-step rows and its OOM rows."""
    return summary_of(group, [mp.error for mp in rows if mp.error is not None and mp.kind not in NOT_A_STEP],
                      [mp.predicted_fits for mp in rows if mp.oom])


def _groups(rows: list[Mapped], key: Callable[[Mapped], str]) -> list[Summary]:
    by: dict[str, list[Mapped]] = defaultdict(list)
    for mp in rows:
        by[key(mp)].append(mp)
    return [summarise(name, group) for name, group in sorted(by.items())]


def _row(mp: Mapped) -> ComparedRow:
    r = mp.row
    weights = mp.kind in NOT_A_STEP
    return ComparedRow(
        row_id=int(r["row_id"]), source_id=r["source_id"], source=r["source"], framework_published=r["framework"],
        framework=mp.req.training.framework, model=mp.model_label, method=r["method"],
        settings=("weights only" if weights else settings_text(mp.req)), measures=r["measures"],
        counter=COUNTER[mp.kind], outcome=r["outcome"], gpu=mp.req.hardware.gpu,
        published_gib=None if mp.published_gib is None else round(mp.published_gib, 3),
        ours_gib=round(mp.ours["match"], 3) if mp.ours else None,
        error_percent=None if mp.error is None else round(100 * mp.error, 2),
        predicted_fits=mp.predicted_fits, in_medians=not weights and not mp.oom, notes=mp.notes,
        residual=RESIDUALS.get(int(r["row_id"])),
    )


def build_table(path: Path = CSV_PATH, check: Callable[[], None] | None = None,
                prepare: Prepare | None = None) -> PublishedTable:
    rows = read_rows(path)
    mapped, skipped = compare(rows, check, prepare=prepare)
    return PublishedTable(
        csv=path.name, rows_total=len(rows), compared=[_row(mp) for mp in mapped],
        skipped=[SkippedRow(row_id=int(r["row_id"]), model=r["model"], method=r["method"],
                            framework_published=r["framework"], reason=sk.reason, detail=sk.detail)
                 for r, sk in skipped],
        overall=summarise("overall", mapped),
        per_source=_groups(mapped, lambda mp: mp.row["source_id"]),
        per_framework=_groups(mapped, lambda mp: mp.req.training.framework),
        per_counter=_groups(mapped, lambda mp: f"{mp.kind} → {COUNTER[mp.kind]}"),
        planner_version=cache_key(path),
    )


_cache: dict[str, PublishedTable] = {}
_lock = threading.Lock()


def published_table(check: Callable[[], None] | None = None, path: Path = CSV_PATH,
                    prepare: Prepare | None = None) -> PublishedTable:
    """The table for this process's planner version, computed on the first call (one computation at a time; the
    others wait for it and read the cache)."""
    key = cache_key(path)
    with _lock:
        if key not in _cache:
            _cache.clear()
            _cache[key] = build_table(path, check, prepare)
        return _cache[key]
