"""Activation terms of a model outside the hand-written rules, fitted from traces of small variants of it.

:mod:`app.models.peak_traces` (a worker) traces the real step of variants of the model that keep one or two
layers of each layer kind, at four probe sizes, and fits, per phase of the step (forward, loss, backward),
what the phase holds beyond the resident state (weights, quantization constants, adapters, optimizer states):

    R(b, s) = A + E·s + b·(C₁·s + C₂·s²)        (bytes; b micro-batch, s sequence length)

already extrapolated to the model's real layer counts. This module keeps those fits (registered by
:mod:`app.models.peak_fit` from its persistent store) and turns them into the phases of an estimate: phase
bytes = the estimate's exact resident state (per GPU) + cuBLAS workspace + gathered layers (+ DDP buckets in
backward) + ``R(b, s)``; the optimizer phase (no activations) stays the analytic one.

Which request fields change R (the fit's key, :func:`fit_settings`): the method, precision, quantization
settings, the LoRA target spec and whether dropout is on, gradient checkpointing and its kwargs, the attention
implementation and the framework switches, and for a quantized base which side of bitsandbytes' 1,536-row
dequantize threshold the tokens are on. Not in the key: ``seq_len`` and ``micro_batch_size`` (in R), the
optimizer and the hardware (resident state and the optimizer phase are analytic), ``lora_alpha``,
``use_rslora``, and ``r``: the fit is made at the first request's rank and the analytic model's difference
between two ranks (LoRA's ``A·x`` outputs and autocast's weight casts, :mod:`app.core.activations`) moves it
to another rank.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from app.core.generic import canonical_json, target_spec
from app.core.request import PlanRequest
from app.core.result import Phase

FIT_PHASES = ("forward", "loss", "backward")
BNB_FALLBACK_ROWS = 1536  # bitsandbytes gemm_4bit dequantizes first above this many rows (app/trace/cuda_kernels.py)
# Probe sizes (b, s): three lengths at b = 1 and one at b = 2; past the bitsandbytes threshold when the request is.
PROBE_SIZES = {
    "short": ((1, 256), (1, 512), (1, 1024), (2, 256)),
    "bnb_fallback": ((1, 2048), (1, 4096), (1, 8192), (2, 2048)),
}
MAX_REGISTERED = 1024


def probe_request(req: PlanRequest) -> str:
    """The probe set for ``req``: past bitsandbytes' dequantize threshold or not."""
    t = req.training.micro_batch_size * req.training.seq_len
    return "bnb_fallback" if req.quantized and t > BNB_FALLBACK_ROWS else "short"


def fit_settings(req: PlanRequest) -> dict[str, Any]:
    """The request fields the fitted terms depend on (see the module docstring)."""
    training = req.training.model_dump(mode="json", exclude={"seq_len", "micro_batch_size", "optim", "momentum"})
    return {
        "method": req.method,
        "quantization": req.quantization.model_dump(mode="json") if req.quantized else None,
        "lora": target_spec(req.lora, dora=req.uses_dora) if req.uses_adapter else None,
        "training": training,
        "probes": probe_request(req),
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


_FITS: OrderedDict[tuple[str, str], PeakFit | str] = OrderedDict()


def register_fit(config_key: str, key: str, fit: PeakFit | str) -> None:
    """Make a fit (or the reason there is none) of config ``config_key`` under settings ``key`` known."""
    _FITS[(config_key, key)] = fit
    _FITS.move_to_end((config_key, key))
    while len(_FITS) > MAX_REGISTERED:
        _FITS.popitem(last=False)


def registered_fit(config_key: str, key: str) -> PeakFit | str | None:
    """The fit, the reason it failed, or None when it has not been asked for in this process."""
    return _FITS.get((config_key, key))


def usable_fit(generic_key: str | None, req: PlanRequest) -> PeakFit | str | None:
    """The fit that prices ``req``'s activations, a reason why the peak stays provisional, or None (rules)."""
    if generic_key is None:
        return None
    if req.transformers_version != "5.24":
        return "the fit traces transformers 5.24"
    hw = req.hardware
    if hw.num_gpus > 1 and hw.sharding not in ("none", "ddp"):
        return f"the fitted terms are those of an unsharded step; {hw.sharding} partitions its gradients"
    fit = registered_fit(generic_key, fit_key(req))
    return fit if fit is not None else "no traced fit for these settings yet"


def fitted_phases(fit: PeakFit, req: PlanRequest, static: dict[str, int], workspace: int, gathered: int,
                  analytic: list[Phase], analytic_at_fit_rank: list[Phase]) -> list[Phase]:
    """The estimate's phases from the fitted remainders (see the module docstring). ``analytic`` and
    ``analytic_at_fit_rank``: the analytic phases at the request's rank and at the fit's; their difference
    moves the fit to the request's rank."""
    resident = static["weights"] + static["constants"] + static["adapters"] + static["optimizer"]
    b, s = req.training.micro_batch_size, req.training.seq_len
    out = []
    for now, then in zip(analytic, analytic_at_fit_rank, strict=True):
        if now.name not in FIT_PHASES:
            out.append(now)
            continue
        comm = static["comm_buffers"] if now.name == "backward" else 0
        nbytes = resident + workspace + gathered + comm + fit.remainder(now.name, b, s) + now.bytes - then.bytes
        out.append(Phase(name=now.name, bytes=nbytes, gradient_bytes=now.gradient_bytes))
    return out
