"""The compare view of the Jinja pages: one column per method, the stacked-bar geometry, the page's globals and
its JSON. No arithmetic of the plan: every number comes from ``estimate`` or ``throughput``. Text formats are in
``app.formatting``, the GPU × method table in ``app.gpu_table``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from app.core.architectures import SUPPORTED_MODEL_TYPES
from app.core.catalog import Gpu, gpus
from app.core.errors import PlanError
from app.core.estimate import estimate
from app.core.levers import Lever
from app.core.notes import Note, surprises, transient_label
from app.core.ownership import BuyVsRent, buy_vs_rent
from app.core.request import Method, PlanRequest
from app.core.result import EstimateResult, GpuFit, ModelSource
from app.core.throughput import CLASS_MFU, DEFAULT_SLOWDOWN, GpuCost, ThroughputReport, throughput
from app.core.units import GiB, MiB, format_bytes
from app.formatting import format_flops, format_hours, format_tokens, format_usd, short_gpu
from app.forms import CostOptions
from app.models.generic import ensure_generic
from app.models.resolve import with_source

# (memory field, label, colour): the order of the stacked bar and the legend.
SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("weights", "Weights", "#4c78a8"),
    ("quantization_constants", "Quant. constants", "#9ecae9"),
    ("adapter_weights", "Adapters", "#f58518"),
    ("gradients", "Gradients", "#e45756"),
    ("optimizer_states", "Optimizer states", "#72b7b2"),
    ("activations", "Activations & temporaries", "#54a24b"),
    ("overhead", "CUDA context + allocator", "#bab0ac"),
)

# (method, short label, long label): the compare view's columns, in the order of the article.
METHODS: tuple[tuple[Method, str, str], ...] = (
    ("full", "Full FT", "Full fine-tuning"),
    ("lora", "LoRA", "LoRA"),
    ("qlora", "QLoRA", "QLoRA (4-bit NF4 base)"),
    ("dora", "DoRA", "DoRA"),
    ("qdora", "QDoRA", "QDoRA (DoRA on 4-bit)"),
)
METHOD_LABELS: dict[str, str] = {m: short for m, short, _ in METHODS}


@dataclass(frozen=True)
class Segment:
    key: str
    label: str
    colour: str
    nbytes: int
    x: float
    width: float

    @property
    def text(self) -> str:
        return format_bytes(self.nbytes)


def bar_segments(result: EstimateResult, scale_bytes: int, width: float = 100.0) -> list[Segment]:
    """Segments of the stacked bar, in percent of ``scale_bytes`` (a common scale for side-by-side bars).

    The bar shows the peak moment, so its gradient segment is the gradients alive then (all of them at the
    optimizer step, only lm_head's at the start of backward): the segments add up to ``memory.total``.
    """
    mem = result.memory.model_dump()
    peak_phase = next(p for p in result.peak.phases if p.name == result.peak.phase)
    mem["gradients"] = peak_phase.gradient_bytes
    out: list[Segment] = []
    x = 0.0
    for key, label, colour in SEGMENTS:
        nbytes = mem[key]
        if key == "activations":
            label = transient_label(result.peak.phase)  # optimizer-step temporaries are not activations
        w = width * nbytes / scale_bytes if scale_bytes else 0.0
        out.append(Segment(key, label, colour, nbytes, x, w))
        x += w
    return out


# ---------------------------------------------------------------------------------------- compare view


@dataclass
class MethodColumn:
    """One method of the compare view: its request, its estimate (or the planner's refusal) and costs."""

    method: Method
    label: str
    long_label: str
    request: PlanRequest
    result: EstimateResult | None = None
    error: str | None = None
    costs: ThroughputReport | None = None
    segments: list[Segment] = field(default_factory=list)
    cells: dict[str, str] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.result is not None

    def fit_on(self, gpu_id: str) -> GpuFit | None:
        if self.result is None:
            return None
        return next((f for f in self.result.fits if f.gpu == gpu_id), None)

    def cost_on(self, gpu_id: str) -> GpuCost | None:
        if self.costs is None:
            return None
        return next((c for c in self.costs.gpus if c.gpu == gpu_id), None)


@dataclass
class Tick:
    x: float
    label: str


@dataclass
class CompareView:
    columns: list[MethodColumn]
    selected: Method
    gpu: Gpu
    num_gpus: int
    options: CostOptions
    scale_bytes: int
    ticks: list[Tick]
    vram_x: float | None
    notes: list[Note] = field(default_factory=list)
    buy: BuyVsRent | None = None  # buy vs rent for the selected method

    @property
    def has_paged(self) -> bool:
        return any(c.result is not None and c.result.memory.paged_optimizer_states for c in self.columns)

    @property
    def column(self) -> MethodColumn:
        return next(c for c in self.columns if c.method == self.selected)

    @property
    def by_method(self) -> dict[str, MethodColumn]:
        return {c.method: c for c in self.columns}

    @property
    def gpu_label(self) -> str:
        return f"{short_gpu(self.gpu.name)}" + (f" ×{self.num_gpus}" if self.num_gpus > 1 else "")


def _nice_scale(max_bytes: int) -> tuple[int, list[Tick]]:
    """A round axis end ≥ max_bytes and 3–6 ticks, in GiB (MiB under 1 GiB)."""
    unit, name = (GiB, "GiB") if max_bytes >= GiB else (MiB, "MiB")
    top = max(max_bytes / unit, 1e-9)
    raw = top / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = max(1, math.ceil(top / step - 1e-9))
    scale = n * step * unit
    ticks = [Tick(100.0 * i / n, f"{i * step:g}" + (f" {name}" if i == n else "")) for i in range(n + 1)]
    return round(scale), ticks


def _cells(col: MethodColumn, view_gpu: Gpu) -> None:
    r = col.result
    if r is None:
        return
    m, p = r.memory, r.parameters
    c: dict[str, str] = {
        "trainable": f"{p.trainable:,}",
        "percent": f"{p.trainable_percent:.4f} %",
        "total": format_bytes(m.total),
        "peak": format_bytes(m.peak),
        "phase": r.peak.phase,
    }
    for key, _, _ in SEGMENTS:
        c[key] = format_bytes(getattr(m, key))
    c["activations_kind"] = "" if r.peak.phase != "optimizer" else "step temporaries"
    c["paged_optimizer_states"] = format_bytes(m.paged_optimizer_states)
    fit = col.fit_on(view_gpu.id)
    if fit is not None:
        c["fits_selected"] = "fits" if fit.fits else "no"
        c["fits_note"] = (f"{format_bytes(fit.headroom_bytes)} spare" if fit.fits
                          else f"short {format_bytes(-fit.headroom_bytes)}")
        if fit.paged_on_gpu is not None and fit.fits:
            c["fits_note"] += " · paged state on the GPU" if fit.paged_on_gpu else " · paged state pages to host RAM"
    fitting = [f for f in r.fits if f.fits]
    c["fits_count"] = f"{len(fitting)} of {len(r.fits)}"
    c["fits_smallest"] = f"from {short_gpu(fitting[0].name)}" if fitting else "none"
    cost = col.cost_on(view_gpu.id)
    fl = col.costs.flops_per_token if col.costs else None
    if cost is not None and fl is not None and col.costs is not None:
        c["time_selected"] = format_hours(cost.hours)
        col.titles["time_selected"] = (
            f"{format_flops(fl.total)}/token (forward {format_flops(fl.forward)} + backward "
            f"{format_flops(fl.backward)} + recompute {format_flops(fl.recompute)}) × {format_tokens(col.costs.tokens)}"
            f" tokens ÷ ({cost.num_gpus} × {cost.bf16_tflops:g} TFLOP/s × MFU {cost.mfu:.2f} ({cost.mfu_source}))"
            " × slowdown "
            f"{col.costs.slowdown:g} = {cost.hours:.2f} h")
        if cost.cost_usd is not None:
            col.titles["cost_selected"] = (f"{cost.hours:.2f} h × {cost.num_gpus} × ${cost.price_usd_per_hour:g}/GPU-h"
                                           f" ({cost.price_source}{', ' + cost.price_date if cost.price_date else ''})")
        c["cost_selected"] = format_usd(cost.cost_usd)
    else:
        c["time_selected"] = "does not fit"
        c["cost_selected"] = "—"
    priced = [g for g in (col.costs.gpus if col.costs else []) if g.cost_usd is not None]
    if priced:
        best = min(priced, key=lambda g: (g.cost_usd, g.hours))
        c["cheapest"] = f"{format_usd(best.cost_usd)} · {format_hours(best.hours)}"
        c["cheapest_gpu"] = short_gpu(best.name) + (f" ×{best.num_gpus}" if best.num_gpus > 1 else "")
    else:
        c["cheapest"] = "no priced GPU fits"
        c["cheapest_gpu"] = ""
    col.cells = c
    col.titles |= {"trainable": f"{p.trainable:,} of {p.all_params:,} parameters (base + adapters)",
                  "peak": f"{m.peak:,} bytes at the {r.peak.phase} phase",
                  "total": f"{m.total:,} bytes = peak {m.peak:,} + overhead {m.overhead:,}"}


def build_compare(req: PlanRequest, options: CostOptions, source: ModelSource | None = None) -> CompareView:
    """Estimate (and time/cost) of ``req`` under each of the five methods, on one common bar scale; each result
    carries ``source`` (where the config came from, see app/models/resolve.py).

    The scale is the largest ``memory.total`` (or sum of the bar's components, if larger) among the methods
    the planner accepts, or the selected GPU's VRAM when that is within 1.6× of it (so the dashed VRAM line
    is on the chart), rounded up to a tick.
    """
    view_gpu = gpus().get(req.hardware.gpu) or next(iter(gpus().values()))
    prices = {**options.prices, **({view_gpu.id: options.price} if options.price is not None else {})}
    columns: list[MethodColumn] = []
    try:
        ensure_generic(req)  # every method's target resolution at once (LoRA and DoRA)
        refusal = None
    except PlanError as exc:
        refusal = exc
    for method, short, long in METHODS:
        mreq = req.model_copy(update={"method": method})
        col = MethodColumn(method=method, label=short, long_label=long, request=mreq)
        try:
            if refusal is not None:
                raise refusal
            col.result = estimate(mreq) if source is None else with_source(estimate(mreq), source)
            col.costs = throughput(mreq, [f.gpu for f in col.result.fits if f.fits], tokens=options.tokens,
                                   mfu=options.mfu, slowdown=options.slowdown, prices=prices,
                                   measured_mfu=options.measured_mfu)
        except PlanError as exc:
            col.result = None
            col.error = f"{'.'.join(str(p) for p in exc.loc)}: {exc.message}"
        columns.append(col)
    # the scale covers each bar (the sum of its components) and each total, so no bar runs off the chart
    parts = [k for k, _, _ in SEGMENTS]
    totals = [max(c.result.memory.total, sum(getattr(c.result.memory, k) for k in parts))
              for c in columns if c.result is not None]
    top = max(totals) if totals else GiB
    if view_gpu.vram_bytes <= 1.6 * top:
        top = max(top, view_gpu.vram_bytes)
    scale, ticks = _nice_scale(top)
    for c in columns:
        if c.result is not None:
            c.segments = bar_segments(c.result, scale)
        _cells(c, view_gpu)
    vram_x = 100.0 * view_gpu.vram_bytes / scale if view_gpu.vram_bytes <= scale else None
    notes = surprises(req, {c.method: c.result for c in columns})
    selected = next(c for c in columns if c.method == req.method)
    purchase = {**options.purchase_prices,
                **({view_gpu.id: options.buy_price} if options.buy_price is not None else {})}
    buy = (buy_vs_rent(selected.costs, usd_per_kwh=options.usd_per_kwh, purchase_prices=purchase)
           if selected.costs is not None else None)
    return CompareView(columns=columns, selected=req.method, gpu=view_gpu, num_gpus=req.hardware.num_gpus,
                       options=options, scale_bytes=scale, ticks=ticks, vram_x=vram_x, notes=notes, buy=buy)


def mfu_text(view: CompareView) -> str:
    """'per GPU class (datacenter 0.40, workstation 0.35, consumer 0.30)' plus the GPUs this server measured."""
    text = "per GPU class (" + ", ".join(f"{k} {v:.2f}" for k, v in CLASS_MFU.items()) + ")"
    measured = view.options.measured_mfu
    if measured:
        table = gpus()
        text += "; measured here: " + ", ".join(f"{short_gpu(table[g].name)} {v:.2f}" for g, v in measured.items()
                                                 if g in table)
    return text


def view_globals(view: CompareView) -> dict[str, str]:
    """Values of the whole view that the page shows in several places (``data-g`` in the templates)."""
    lora = view.by_method["lora"]
    req = lora.request
    ok = next((c.result for c in view.columns if c.result is not None), None)
    if isinstance(req.model, str):
        model = req.model
    elif ok and ok.model.id:  # a Hub id, resolved to its config
        model = ok.model.id
    else:
        model = f"pasted {ok.model.model_type} config" if ok else "pasted config"
    qres = view.by_method["qlora"].result
    q = qres.quantization if qres else None
    if q:
        quant = (f"For this model's {q.quantized_params:,} quantized parameters: "
                 f"{format_bytes(q.constants_bytes_no_double_quant)} without double quantization → "
                 f"{format_bytes(q.constants_bytes_double_quant)} with it ({q.bits_per_param_double_quant:.3f} "
                 "bit/param). The article's “~4 GB → ~0.1 GB” overstates the saving: it is about 4×.")
    else:
        quant = "This plan quantizes no layer in 4 bits."
    opts = view.options
    price = (f"${opts.price:g}/GPU-h entered for {short_gpu(view.gpu.name)}" if opts.price is not None
             else (f"catalog price ${view.gpu.price_usd_per_hour:g}/GPU-h for {short_gpu(view.gpu.name)}, "
                   f"read {view.gpu.price_date}" if view.gpu.price_usd_per_hour is not None
                   else f"the catalog has no price for {short_gpu(view.gpu.name)}"))
    slow = {**DEFAULT_SLOWDOWN, **opts.slowdown}
    return {
        "model": model,
        "r": str(req.lora.r),
        "scaling": f"{req.lora.lora_alpha / req.lora.r:g}",
        "targeted": f"{lora.result.parameters.targeted_modules:,}" if lora.result else "—",
        "mbs": str(req.training.micro_batch_size),
        "seq_len": str(req.training.seq_len),
        "ckpt": "on" if req.training.gradient_checkpointing else "off",
        "optim": req.training.optim,
        "precision": req.training.precision,
        "gpu": view.gpu_label,
        "tokens": format_tokens(opts.tokens),
        "mfu": f"{opts.mfu:.2f}" if opts.mfu is not None else mfu_text(view),
        "qlora_factor": f"{slow['qlora']:g}",
        "dora_factor": f"{slow['dora']:g}",
        "qdora_factor": f"{slow['qlora'] * slow['dora']:.3g}",
        "price_note": price,
        "quant_text": quant,
        "vram_label": vram_label(view),
        "chart_desc": chart_desc(view),
        "has_paged": "yes" if view.has_paged else "",
    }


def compare_data(view: CompareView) -> dict[str, Any]:
    """The compare view as JSON for static/planner.js: display strings, bar geometry and the raw results."""
    methods: dict[str, Any] = {}
    for c in view.columns:
        methods[c.method] = {
            "ok": c.ok,
            "error": c.error,
            "label": c.label,
            "cells": c.cells,
            "titles": c.titles,
            "bar_label": bar_label(c),
            "segments": [{"key": s.key, "x": round(s.x, 4), "width": round(s.width, 4),
                          "title": f"{s.label}: {s.text}", "bytes": s.nbytes} for s in c.segments],
            "estimate": c.result.model_dump(mode="json") if c.result else None,
            "throughput": c.costs.model_dump(mode="json") if c.costs else None,
        }
    return {
        "selected": view.selected,
        "gpu": view.gpu.id,
        "scale_bytes": view.scale_bytes,
        "ticks": [{"x": round(t.x, 4), "label": t.label} for t in view.ticks],
        "vram_x": None if view.vram_x is None else round(view.vram_x, 4),
        "globals": view_globals(view),
        "methods": methods,
    }


def source_text(result: EstimateResult) -> str:
    """Where the config came from and which path estimated it, for the page (one line)."""
    src = result.source
    if src is None:
        return ""
    if src.kind == "hub":
        where = (f"Hub: {src.hub_id} at commit {src.commit_sha[:12] if src.commit_sha else 'unknown'}"
                 f"{f' (revision {src.revision})' if src.revision not in (None, 'main') else ''}, {src.origin}")
    elif src.kind == "catalog":
        where = f"catalog: {src.origin}"
    else:
        where = "pasted config.json"
    path = ("the hand-written rules" if result.model.model_type in SUPPORTED_MODEL_TYPES
            else "the generic path (transformers on the meta device)")
    return f"config.json from {where} · estimated by {path}"


def bar_label(c: MethodColumn) -> str:
    if c.result is None:
        return f"{c.label}: refused by the planner (see the table)"
    return f"{c.label} · {format_bytes(c.result.memory.total)}"


def vram_label(view: CompareView) -> str:
    where = "dashed line" if view.vram_x is not None else "off this scale"
    return f"{short_gpu(view.gpu.name)}: {format_bytes(view.gpu.vram_bytes)} ({where})"


def chart_desc(view: CompareView) -> str:
    parts = [f"{c.label} {format_bytes(c.result.memory.total)}" if c.result else f"{c.label} refused"
             for c in view.columns]
    return "Memory per GPU the card must hold: " + "; ".join(parts) + "."


# --------------------------------------------------------------------------------------- make it fit


def lever_fields(lever: Lever) -> dict[str, str]:
    """The page's flat form fields a lever sets: 'training.seq_len' → 'seq_len', booleans as 'on'/'off'."""
    return {path.rsplit(".", 1)[-1]: (("on" if v else "off") if isinstance(v, bool) else str(v))
            for path, v in lever.changes.items()}


def paged_verdict(result: EstimateResult, vram_bytes: int) -> str:
    """The fit verdict's sentence on paged optimizer state (CUDA unified memory, outside ``memory.total``):
    whether the card's spare memory can keep it resident, or it will page to host RAM."""
    paged = result.memory.paged_optimizer_states
    if not paged:
        return ""
    spare = vram_bytes - result.memory.total
    where = ("the card's spare memory holds it, so it stays on the GPU" if spare >= paged else
             f"only {format_bytes(max(spare, 0))} of it fits beside the run, so the rest pages out to host RAM "
             "and each optimizer step waits for it")
    return (f"Plus {format_bytes(paged)} of paged optimizer state in CUDA unified memory, not in this total: "
            f"{where}.")
