"""Activation terms of a model outside the hand-written rules, fitted from traces of small variants of it.

:mod:`app.models.peak_traces` (a worker) traces the real step of variants of the model that keep one or two
layers of each layer kind, at probe sizes bracketing the request's length, and fits, per phase of the step
(forward, loss, backward), what the phase holds beyond the resident state (weights, quantization constants,
adapters, optimizer states):

    R(b, s) = A + E·s + b·(C₁·s + C₂·s²)        (bytes; b micro-batch, s sequence length)

already extrapolated to the model's real layer counts. This module keeps those fits (registered by
:mod:`app.models.peak_fit` from its persistent store) and turns them into the phases of an estimate: phase
bytes = the estimate's exact resident state (per GPU) + cuBLAS workspace + gathered layers (+ DDP buckets in
backward) + ``R``; the optimizer phase (no activations) stays the analytic one.

Which request fields change R (the fit's key, :func:`fit_settings`): the method, precision, quantization
settings, the LoRA rank, target spec and whether dropout is on, gradient checkpointing and its kwargs, the
attention implementation and the framework switches; and the length bucket (:func:`length_bucket`: the fit
interpolates between traced lengths, and for a quantized base stays on the request's side of bitsandbytes'
1,536-row dequantize threshold). Not in the key: ``seq_len`` within its bucket and ``micro_batch_size`` (in R),
the optimizer and the hardware (resident state and the optimizer phase are analytic), ``lora_alpha``,
``use_rslora``. The rank is in the key although LoRA's bytes are linear in it: the phase peaks are not (a
phase's peak is the largest of several moments, and at a larger rank the adapters' gradients can move it from
the loss's backward to the layers'), so a fit at one rank does not carry to another within 3%.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.core.generic import canonical_json, target_spec
from app.core.request import PlanRequest
from app.core.result import Phase

FIT_PHASES = ("forward", "loss", "backward")
BNB_FALLBACK_ROWS = 1536  # bitsandbytes gemm_4bit dequantizes first above this many rows (app/trace/cuda_kernels.py)
MIN_BUCKET = 256
FALLBACK_MIN_BUCKET = 4096  # its shortest probe, S/2 = 2048 rows, is past the threshold
MAX_REGISTERED = 1024


def length_bucket(req: PlanRequest) -> int:
    """The longest probe length ``S`` of the fit that prices ``req``: the power of two at or above its seq_len
    (at least 256). A quantized base stays on the request's side of bitsandbytes' dequantize threshold: all
    probes at most 1,536 rows when the request is (``S`` ≤ 1536), all past it when the request is (``S`` ≥ 4096).
    """
    s = req.training.seq_len
    bucket = max(MIN_BUCKET, 1 << (s - 1).bit_length())
    if req.quantized:
        past = req.training.micro_batch_size * s > BNB_FALLBACK_ROWS
        bucket = max(bucket, FALLBACK_MIN_BUCKET) if past else min(bucket, BNB_FALLBACK_ROWS)
    return bucket


def probe_sizes(bucket: int) -> tuple[tuple[int, int], ...]:
    """(b, s) of the traces: S/2, 3S/4 and S at b = 1 (the requests of the bucket lie in (S/2, S]) and S/2 at
    b = 2, so that a request is interpolated between traced lengths rather than extrapolated."""
    return (1, bucket // 2), (1, 3 * bucket // 4), (1, bucket), (2, bucket // 2)


def fit_settings(req: PlanRequest) -> dict[str, Any]:
    """The request fields the fitted terms depend on (see the module docstring)."""
    # gradient accumulation is added to the fitted single-micro-batch phases analytically
    training = req.training.model_dump(mode="json", exclude={"seq_len", "micro_batch_size", "optim", "momentum",
                                                             "gradient_accumulation_steps"})
    return {
        "method": req.method,
        "quantization": req.quantization.model_dump(mode="json") if req.quantized else None,
        "lora": {**target_spec(req.lora, dora=req.uses_dora), "r": req.lora.r} if req.uses_adapter else None,
        "training": training,
    }


def fit_key(req: PlanRequest) -> str:
    return canonical_json(fit_settings(req))


@dataclass(frozen=True)
class PeakFit:
    """Fitted ``[A, E, C₁, C₂]`` per phase (bytes), the LoRA rank it was traced at, and how it was made."""

    phases: dict[str, tuple[float, float, float, float]]
    r: int
    kinds: dict[str, int]
    traces: int
    seconds: float

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> PeakFit:
        return cls(phases={p: tuple(c) for p, c in data["phases"].items()}, r=int(data["r"]),
                   kinds=dict(data["kinds"]), traces=int(data["traces"]), seconds=float(data["seconds"]))

    def remainder(self, phase: str, b: int, s: int) -> int:
        a, e, c1, c2 = self.phases[phase]
        return round(a + e * s + b * (c1 * s + c2 * s * s))


_FITS: OrderedDict[tuple[str, str], dict[int, PeakFit | str]] = OrderedDict()


def register_fit(config_key: str, key: str, bucket: int, fit: PeakFit | str) -> None:
    """Make a fit (or the reason there is none) of config ``config_key`` under settings ``key`` and length bucket
    ``bucket`` known."""
    _FITS.setdefault((config_key, key), {})[bucket] = fit
    _FITS.move_to_end((config_key, key))
    while len(_FITS) > MAX_REGISTERED:
        _FITS.popitem(last=False)


def registered_fit(config_key: str, key: str, bucket: int) -> PeakFit | str | None:
    """The fit, the reason it failed, or None when it has not been asked for in this process."""
    return _FITS.get((config_key, key), {}).get(bucket)


def usable_fit(generic_key: str | None, req: PlanRequest) -> tuple[PeakFit | str | None, bool]:
    """(the fit that prices ``req``'s activations or the reason there is none (None: the rules' model), whether
    it was traced for ``req``'s length bucket). Without a fit of its bucket, the nearest bucket's fit of the same
    settings extrapolates (the peak then stays provisional)."""
    if generic_key is None:
        return None, False
    if req.transformers_version != "5.24":
        return "the fit traces transformers 5.24", False
    hw = req.hardware
    if hw.num_gpus > 1 and hw.sharding not in ("none", "ddp"):
        return f"the fitted terms are those of an unsharded step; {hw.sharding} partitions its gradients", False
    fits = _FITS.get((generic_key, fit_key(req)), {})
    bucket = length_bucket(req)
    if isinstance(fits.get(bucket), PeakFit | str):
        return fits[bucket], True
    traced = [b for b, f in fits.items() if isinstance(f, PeakFit)]
    if not traced:
        return ("no traced fit for these settings yet: the first request starts one, which takes minutes; "
                "ask again then"), False
    return fits[min(traced, key=lambda b: abs(b.bit_length() - bucket.bit_length()))], False


def fit_note(fit: PeakFit | str | None, own_bucket: bool) -> str:
    """The assumption line on a generic model's activations."""
    if not isinstance(fit, PeakFit):
        return f"activations use the rules' decoder formulas and are provisional ({fit})"
    made = (f"activations are fitted from {fit.traces} traces of small variants of it ({len(fit.kinds)} decoder "
            f"layer kinds: {sorted(fit.kinds.values())} layers), extrapolated to all its layers and the micro-batch")
    if own_bucket:
        return f"{made}, interpolated between traced lengths"
    return f"{made}, and from traced lengths of another range to this one: provisional until a request of this length"


def fitted_phases(fit: PeakFit, req: PlanRequest, static: dict[str, int], workspace: int,
                  gathered: Callable[[str], int], analytic: list[Phase]) -> list[Phase]:
    """The estimate's phases from the fitted remainders (see the module docstring); the optimizer phase (and
    every phase's gradient bytes) stay ``analytic``'s. ``gathered``: a phase's gathered ZeRO-3/FSDP bytes."""
    resident = static["weights"] + static["constants"] + static["adapters"] + static["optimizer"]
    resident += static["zero3_buffers"]
    b, s = req.training.micro_batch_size, req.training.seq_len
    out = []
    for phase in analytic:
        if phase.name not in FIT_PHASES:
            out.append(phase)
            continue
        comm = static["comm_buffers"] if phase.name == "backward" else 0
        nbytes = resident + workspace + gathered(phase.name) + comm + fit.remainder(phase.name, b, s)
        out.append(Phase(name=phase.name, bytes=nbytes, gradient_bytes=phase.gradient_bytes))
    return out
