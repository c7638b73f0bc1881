"""What fits: GPU plans and reverse searches over :func:`app.core.estimate.estimate`.

Every memory figure is integer bytes per GPU and is ``EstimateResult.memory.total``: what the card must
hold, ``memory.reserved`` (peak allocated plus the caching allocator's reserve, app/core/reserved.py) plus
the CUDA context and NCCL buffers, as nvidia-smi shows it; the same number ``estimate`` compares with a
GPU's ``vram_bytes`` in ``result.fits``. A run *fits* a budget when ``memory.total <= budget``.

- :func:`gpu_plan`: for every catalog GPU, the run on one card, and else the smallest ZeRO-3 group
  (2, 4, …, 64 cards of that GPU) whose per-GPU total fits.
- :func:`max_micro_batch_size`, :func:`max_seq_len`, :func:`max_lora_r`: the largest value of one
  knob that fits a budget, by exponential then binary search. The answer always fits and value + 1
  never does; it is *the* largest only where ``memory.total`` is monotone non-decreasing in the knob
  (tests/test_fit.py checks that property for the torch optimizers). bitsandbytes optimizers break it
  for ``lora.r`` by a few MiB: 8-bit states start at 4,096 elements per tensor and paged states leave
  the allocator at 100,000, so a larger r can be cheaper than r - 1 when a LoRA tensor crosses a threshold.
- :func:`cheapest_method`: the highest-fidelity method that fits (full > dora > lora > qdora > qlora).
- :func:`fit`: all of the above for one request (``POST``/``GET /api/v1/fit``).

Pure Python: imports neither torch nor FastAPI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.catalog import gpu as catalog_gpu
from app.core.catalog import gpus
from app.core.errors import PlanError
from app.core.estimate import estimate
from app.core.request import Method, PlanRequest
from app.core.units import parse_bytes

ZERO3_GPU_COUNTS: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
"""Group sizes :func:`gpu_plan` tries, smallest first, when one card is not enough."""

METHOD_ORDER: tuple[Method, ...] = ("full", "dora", "lora", "qdora", "qlora")
"""Methods from the most trainable capacity / fidelity to the least."""

Knob = Literal["micro_batch_size", "seq_len", "r"]

# knob → (PlanError/field location, smallest value, largest value); bounds are PlanRequest's own.
_KNOBS: dict[str, tuple[tuple[str, str], int, int]] = {
    "micro_batch_size": (("training", "micro_batch_size"), 1, 4096),
    "seq_len": (("training", "seq_len"), 1, 1_048_576),
    "r": (("lora", "r"), 1, 4096),
}


# --------------------------------------------------------------------------------------------- outputs


class GpuPlan(BaseModel):
    """One catalog GPU: the run on a single card, and else the smallest ZeRO-3 group that holds it."""

    gpu: str = Field(description="catalog id (GET /api/v1/gpus)")
    name: str
    vram_bytes: int = Field(description="the card's memory, bytes")
    single_total_bytes: int = Field(description="memory.total on one card (num_gpus=1, sharding none), bytes")
    fits_single: bool = Field(description="single_total_bytes <= vram_bytes")
    single_headroom_bytes: int = Field(description="vram_bytes - single_total_bytes (negative: short by that)")
    num_gpus: int | None = Field(
        description="1 when one card fits; else the smallest of 2, 4, 8, 16, 32, 64 cards with sharding "
        "zero3 whose per-GPU total fits; null when even 64 do not"
    )
    sharding: Literal["none", "zero3"] | None = Field(description="'none' for one card, 'zero3' for a group")
    total_bytes: int | None = Field(description="per-GPU memory.total at num_gpus, bytes")
    headroom_bytes: int | None = Field(description="vram_bytes - total_bytes at num_gpus, bytes")
    smallest_total_bytes: int = Field(
        description="the lowest per-GPU memory.total seen (at 64 cards when none fits), bytes"
    )


class SearchResult(BaseModel):
    """The largest value of one knob whose memory.total fits the budget (all other fields as requested)."""

    field: str = Field(description="the request field searched, e.g. 'training.micro_batch_size'")
    low: int = Field(description="smallest value searched")
    high: int = Field(description="largest value searched (PlanRequest's bound)")
    value: int | None = Field(description="largest value that fits; null when even `low` does not")
    total_bytes: int | None = Field(description="memory.total at value, bytes")
    next_total_bytes: int | None = Field(
        description="memory.total at value + 1 (or at low when nothing fits), bytes; null when not "
        "evaluated (value == high) or when the planner refuses that value"
    )
    limited_by: Literal["budget", "range", "model", "not_applicable"] = Field(
        description="budget: value + 1 is over the budget; range: value == high; model: the planner refuses "
        "value + 1 (e.g. gpt2's n_positions); not_applicable: e.g. lora.r for method 'full'"
    )
    message: str | None = Field(None, description="why value + 1 is refused, or why the search does not apply")
    evaluations: int = Field(description="estimate() calls this search made")


class MethodFit(BaseModel):
    method: Method
    total_bytes: int | None = Field(description="memory.total with this method, bytes; null when refused")
    fits: bool
    trainable_params: int | None = Field(None, description="trainable parameters with this method")
    error: str | None = Field(None, description="the planner's reason when it refuses this method")


class MethodChoice(BaseModel):
    """The highest-fidelity method that fits, in the order full > dora > lora > qdora > qlora."""

    best: Method | None = Field(description="first method in `order` that fits; null when none does")
    order: list[Method]
    methods: list[MethodFit]


class FitSearches(BaseModel):
    micro_batch_size: SearchResult
    seq_len: SearchResult
    r: SearchResult


class FitResult(BaseModel):
    """POST/GET /api/v1/fit's response. All memory figures are integer bytes per GPU."""

    budget_bytes: int = Field(description="per-GPU budget the searches use, bytes")
    budget_source: Literal["budget_bytes", "budget", "hardware.gpu"]
    current_total_bytes: int = Field(description="memory.total of the request as given, bytes")
    current_fits: bool = Field(description="current_total_bytes <= budget_bytes")
    searches: FitSearches
    methods: MethodChoice
    gpu_plan: list[GpuPlan]


class FitRequest(BaseModel):
    """POST /api/v1/fit's body: a PlanRequest and an optional per-GPU budget."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"request": {"model": "Qwen/Qwen3-32B", "method": "qlora", "training": {"seq_len": 4096},
                     "hardware": {"gpu": "nvidia-rtx-5090"}}},
        {"request": {"model": "meta-llama/Llama-3.1-8B", "method": "lora"}, "budget": "24GiB"},
    ]})

    request: PlanRequest
    budget_bytes: int | None = Field(None, gt=0, description="per-GPU budget in bytes")
    budget: str | None = Field(
        None, max_length=64, description="per-GPU budget as text: '24GiB', '80 GiB', '512MiB', '24GB' or bytes"
    )

    @field_validator("budget")
    @classmethod
    def _readable(cls, v: str | None) -> str | None:
        if v is not None:
            parse_budget(v)
        return v

    @model_validator(mode="after")
    def _one_budget(self) -> FitRequest:
        if self.budget is not None and self.budget_bytes is not None:
            raise ValueError("give budget_bytes or budget, not both")
        return self

    def resolved_budget(self) -> tuple[int | None, Literal["budget_bytes", "budget", "hardware.gpu"]]:
        """(budget in bytes or None for the request's GPU, where it came from)."""
        if self.budget_bytes is not None:
            return self.budget_bytes, "budget_bytes"
        if self.budget is not None:
            return parse_budget(self.budget), "budget"
        return None, "hardware.gpu"


def parse_budget(text: str) -> int:
    """A positive byte count from text like '24GiB' (binary), '24GB' (decimal) or '25769803776'.

    Raises ValueError for text that is not a finite size (e.g. 'lots', 'inf GiB') or not positive.
    """
    n = parse_bytes(text)
    if n <= 0:
        raise ValueError(f"a budget must be a positive number of bytes, got {text!r}")
    return n


# ------------------------------------------------------------------------------------------ evaluation


class _Evaluator:
    """estimate() with a memo keyed by the request's JSON, so repeated probes cost nothing."""

    def __init__(self, check: Callable[[], None] | None = None) -> None:
        self._memo: dict[str, tuple[int, int] | PlanError] = {}
        self.calls = 0
        self._check = check

    def _run(self, req: PlanRequest) -> tuple[int, int] | PlanError:
        key = req.model_dump_json()
        if key not in self._memo:
            if self._check is not None:
                self._check()  # the caller's cancellation / time-budget hook (app/pool.py)
            self.calls += 1
            try:
                result = estimate(req)
                self._memo[key] = (result.memory.total, result.parameters.trainable)
            except PlanError as exc:
                self._memo[key] = exc
        return self._memo[key]

    def total(self, req: PlanRequest) -> int | PlanError:
        """memory.total of ``req`` in bytes, or the PlanError estimate raised."""
        out = self._run(req)
        return out if isinstance(out, PlanError) else out[0]

    def trainable(self, req: PlanRequest) -> int | None:
        """Trainable parameters of ``req`` (None when refused)."""
        out = self._run(req)
        return None if isinstance(out, PlanError) else out[1]


def _with(req: PlanRequest, section: str, **values: object) -> PlanRequest:
    """A copy of ``req`` with ``req.<section>.<k> = v`` (no deep copy of a pasted config)."""
    return req.model_copy(update={section: getattr(req, section).model_copy(update=values)})


def _on_hardware(req: PlanRequest, gpu_id: str, num_gpus: int, sharding: str) -> PlanRequest:
    """``req`` on ``num_gpus`` × ``gpu_id`` with ``sharding``; CPU offload kept where that sharding has it
    (none on one unsharded card; FSDP offloads parameters and optimizer together: app/core/switches.py)."""
    hw = req.hardware
    offload = "cpu" if "cpu" in (hw.offload_optimizer, hw.offload_param) else "none"
    if sharding == "none":
        kept = {"offload_optimizer": "none", "offload_param": "none"}
    elif sharding == "fsdp":
        kept = {"offload_optimizer": offload, "offload_param": offload}
    else:
        kept = {"offload_param": hw.offload_param if sharding == "zero3" else "none"}
    return _with(req, "hardware", gpu=gpu_id, num_gpus=num_gpus, sharding=sharding, **kept)


# ------------------------------------------------------------------------------------------- gpu plan


def gpu_plan(req: PlanRequest) -> list[GpuPlan]:
    """For every catalog GPU (VRAM ascending): does the run fit one card, and if not, on how many.

    One card: ``hardware = (gpu, num_gpus=1, sharding="none")``. Otherwise the counts
    :data:`ZERO3_GPU_COUNTS` are tried smallest first with ``sharding="zero3"``; the first whose
    per-GPU ``memory.total`` is ``<= vram_bytes`` is reported. Everything else in ``req`` is kept.
    Raises :class:`PlanError` when the request itself is refused (e.g. an unknown model).
    """
    return _gpu_plan(req, _Evaluator())


def _gpu_plan(req: PlanRequest, ev: _Evaluator) -> list[GpuPlan]:
    rows: list[GpuPlan] = []
    for g in gpus().values():
        single = ev.total(_on_hardware(req, g.id, 1, "none"))
        if isinstance(single, PlanError):
            raise single
        num: int | None = None
        total: int | None = None
        smallest = single
        if single <= g.vram_bytes:
            num, total = 1, single
        else:
            num, total, smallest = _smallest_group(req, g.id, g.vram_bytes, "zero3", ev)
            smallest = min(smallest, single)
        rows.append(GpuPlan(
            gpu=g.id, name=g.name, vram_bytes=g.vram_bytes,
            single_total_bytes=single, fits_single=single <= g.vram_bytes,
            single_headroom_bytes=g.vram_bytes - single,
            num_gpus=num, sharding=None if num is None else ("none" if num == 1 else "zero3"),
            total_bytes=total, headroom_bytes=None if total is None else g.vram_bytes - total,
            smallest_total_bytes=smallest,
        ))
    return rows


def _smallest_group(req: PlanRequest, gpu_id: str, budget: int, sharding: str,
                    ev: _Evaluator) -> tuple[int | None, int | None, int]:
    """(n, per-GPU total at n, lowest total seen): the first of :data:`ZERO3_GPU_COUNTS` cards of ``gpu_id``
    with ``sharding`` whose per-GPU ``memory.total`` is ``<= budget``; (None, None, total at 64) when none."""
    smallest: int | None = None
    for n in ZERO3_GPU_COUNTS:
        t = ev.total(_on_hardware(req, gpu_id, n, sharding))
        if isinstance(t, PlanError):
            raise t
        smallest = t if smallest is None else min(smallest, t)
        if t <= budget:
            return n, t, smallest
    assert smallest is not None
    return None, None, smallest


def smallest_group(req: PlanRequest, sharding: Literal["zero3", "fsdp"] = "zero3",
                   budget_bytes: int | None = None) -> tuple[int | None, int | None]:
    """The fewest cards of ``hardware.gpu`` (2, 4, …, 64) with ``sharding`` whose per-GPU memory.total fits
    ``budget_bytes`` (default: the GPU's VRAM), and that total; (None, None) when 64 do not."""
    n, total, _ = _smallest_group(req, req.hardware.gpu, _budget(req, budget_bytes), sharding, _Evaluator())
    return n, total


# -------------------------------------------------------------------------------------- reverse search


def default_budget(req: PlanRequest) -> int:
    """The request's GPU VRAM in bytes (raises PlanError for an unknown hardware.gpu)."""
    return catalog_gpu(req.hardware.gpu).vram_bytes


def _search(req: PlanRequest, knob: Knob, budget_bytes: int, ev: _Evaluator) -> SearchResult:
    """Largest value of ``knob`` in its range with ``memory.total <= budget_bytes``.

    Exponential probing from the request's own value v (clamped to [low, high]; doubling while it fits)
    brackets the answer between a value that fits and one known not to; when v does not fit, the bracket
    is [low, v] (and nothing fits when low does not). Binary search then closes the bracket. A PlanError
    located at the knob's own field (gpt2's learned positions for seq_len) counts as "does not fit"; any
    other PlanError is the request's and is raised.
    """
    loc, low, high = _KNOBS[knob]
    section, name = loc
    field = ".".join(loc)
    before = ev.calls

    def probe(v: int) -> int | PlanError:
        t = ev.total(_with(req, section, **{name: v}))
        if isinstance(t, PlanError) and tuple(t.loc) != loc:
            raise t
        return t

    def fits(t: int | PlanError) -> bool:
        return not isinstance(t, PlanError) and t <= budget_bytes

    if knob == "r" and not req.uses_adapter:
        return SearchResult(field=field, low=low, high=high, value=None, total_bytes=None, next_total_bytes=None,
                            limited_by="not_applicable", message="lora.r applies to adapter methods only",
                            evaluations=0)

    good: int | None = None  # largest value known to fit
    good_total: int | PlanError | None = None
    bad: int | None = None  # smallest value known not to fit
    bad_total: int | PlanError | None = None
    v = min(max(getattr(getattr(req, section), name), low), high)
    t = probe(v)
    if fits(t):
        good, good_total = v, t
        while v < high:  # double until something does not fit or the range ends
            v = min(v * 2, high)
            t = probe(v)
            if not fits(t):
                bad, bad_total = v, t
                break
            good, good_total = v, t
    else:
        bad, bad_total = v, t
        if v > low:  # the smallest value decides at once whether anything fits
            t = probe(low)
            if fits(t):
                good, good_total = low, t
            else:
                bad, bad_total = low, t
    if good is None:
        return _result(field, low, high, None, None, bad_total, ev.calls - before)
    if bad is not None:  # binary: good fits, bad does not
        while bad - good > 1:
            mid = (good + bad) // 2
            t = probe(mid)
            if fits(t):
                good, good_total = mid, t
            else:
                bad, bad_total = mid, t
    assert isinstance(good_total, int)
    return _result(field, low, high, good, good_total, bad_total, ev.calls - before)


def _result(field: str, low: int, high: int, value: int | None, total: int | None,
            nxt: int | PlanError | None, evaluations: int) -> SearchResult:
    if isinstance(nxt, PlanError):
        return SearchResult(field=field, low=low, high=high, value=value, total_bytes=total, next_total_bytes=None,
                            limited_by="model", message=nxt.message, evaluations=evaluations)
    if nxt is None:
        return SearchResult(field=field, low=low, high=high, value=value, total_bytes=total, next_total_bytes=None,
                            limited_by="range", evaluations=evaluations)
    return SearchResult(field=field, low=low, high=high, value=value, total_bytes=total, next_total_bytes=nxt,
                        limited_by="budget", evaluations=evaluations)


def _budget(req: PlanRequest, budget_bytes: int | None) -> int:
    return default_budget(req) if budget_bytes is None else budget_bytes


def max_micro_batch_size(req: PlanRequest, budget_bytes: int | None = None) -> SearchResult:
    """Largest training.micro_batch_size (1..4096) with memory.total <= budget_bytes (default: the GPU's VRAM)."""
    return _search(req, "micro_batch_size", _budget(req, budget_bytes), _Evaluator())


def max_seq_len(req: PlanRequest, budget_bytes: int | None = None) -> SearchResult:
    """Largest training.seq_len (1..1,048,576 tokens) with memory.total <= budget_bytes (default: the GPU's VRAM)."""
    return _search(req, "seq_len", _budget(req, budget_bytes), _Evaluator())


def max_lora_r(req: PlanRequest, budget_bytes: int | None = None) -> SearchResult:
    """Largest lora.r (1..4096) with memory.total <= budget_bytes (default: the GPU's VRAM); adapter methods only."""
    return _search(req, "r", _budget(req, budget_bytes), _Evaluator())


def cheapest_method(req: PlanRequest, budget_bytes: int | None = None) -> MethodChoice:
    """Each method's memory.total (bytes) against the budget, and the highest-fidelity one that fits.

    Despite the name this prefers the *most* capable method that fits: full > dora > lora > qdora > qlora.
    The request's lora/quantization/training/hardware settings are kept; a method the planner refuses
    (e.g. DoRA on fused MoE experts) is listed with its error and does not fit.
    """
    return _methods(req, _budget(req, budget_bytes), _Evaluator())


def _methods(req: PlanRequest, budget: int, ev: _Evaluator) -> MethodChoice:
    rows: list[MethodFit] = []
    for m in METHOD_ORDER:
        probe = req.model_copy(update={"method": m})
        t = ev.total(probe)
        if isinstance(t, PlanError):
            where = ".".join(str(p) for p in t.loc)
            rows.append(MethodFit(method=m, total_bytes=None, fits=False, error=f"{where}: {t.message}"))
        else:
            rows.append(MethodFit(method=m, total_bytes=t, fits=t <= budget, trainable_params=ev.trainable(probe)))
    best = next((row.method for row in rows if row.fits), None)
    return MethodChoice(best=best, order=list(METHOD_ORDER), methods=rows)


def fit(req: PlanRequest, budget_bytes: int | None = None,
        budget_source: Literal["budget_bytes", "budget", "hardware.gpu"] | None = None,
        check: Callable[[], None] | None = None) -> FitResult:
    """Searches, method choice and GPU plan for one request; budget_bytes defaults to hardware.gpu's VRAM.

    ``check`` is called before every estimate and may raise to stop the search (cancellation, time budget).
    Raises :class:`PlanError` when the request as given is refused (same rules as ``estimate``).
    """
    ev = _Evaluator(check)
    budget = _budget(req, budget_bytes)
    current = ev.total(req)
    if isinstance(current, PlanError):
        raise current
    return FitResult(
        budget_bytes=budget,
        budget_source=budget_source or ("hardware.gpu" if budget_bytes is None else "budget_bytes"),
        current_total_bytes=current,
        current_fits=current <= budget,
        searches=FitSearches(
            micro_batch_size=_search(req, "micro_batch_size", budget, ev),
            seq_len=_search(req, "seq_len", budget, ev),
            r=_search(req, "r", budget, ev),
        ),
        methods=_methods(req, budget, ev),
        gpu_plan=_gpu_plan(req, ev),
    )


__all__ = [
    "METHOD_ORDER",
    "ZERO3_GPU_COUNTS",
    "FitRequest",
    "FitResult",
    "GpuPlan",
    "MethodChoice",
    "MethodFit",
    "SearchResult",
    "cheapest_method",
    "default_budget",
    "fit",
    "gpu_plan",
    "max_lora_r",
    "max_micro_batch_size",
    "max_seq_len",
    "parse_budget",
    "smallest_group",
]
