"""Trace small variants of a model and fit its per-layer, per-token activation terms (runs in a worker process).

For a model outside the hand-written rules, :func:`fit_peak` runs the trace engine (:func:`app.trace.engine.
run_trace`: the real transformers/PEFT/bitsandbytes step on fake tensors) on variants of the real model that
keep a few of its decoder layers (:mod:`app.trace.variants`):

- the *base* variant keeps the first layer of each layer kind (dense and MoE, attention and Mamba or
  gated-DeltaNet mixers, sliding and full attention, …);
- for each kind with ``N_k ≥ 2`` layers, a variant with one more layer of that kind.

Each variant is traced at the probe sizes ``(b, s)`` = (1, S/2), (1, 3S/4), (1, S), (2, S/2) around the
request's length (:func:`app.core.fitted_activations.length_bucket`). What a phase (forward, loss, backward)
holds beyond the resident state (weights, quantization constants and adapters as the trace reports them; one
step is traced, before which no optimizer state exists) is ``R`` = phase peak − resident. Per probe it is
extrapolated to the real layer counts, ``R = R_base + Σ_k (N_k − 1)·(R_k − R_base)`` (each layer of a kind
adds what one did), and over the probes it is solved exactly for

    R(b, s) = A + E·s + b·(C₁·s + C₂·s²)

(``A``: per-step constants such as autocast's cached weight casts and LoRA's weight gradients; ``E``:
per-position tensors shared by the batch, e.g. rotary tables; ``C₁``: per-token activations; ``C₂``:
per-sequence s² terms — eager attention scores, materialised sliding-window masks, chunked-scan decay
matrices). A phase's peak is the largest of several moments (e.g. a gated-DeltaNet layer's backward vs the
loss), each linear in the length, so the peak is piecewise in ``s``: the probes bracket the request's length,
so requests of a bucket are interpolated.

Imports torch (through the trace engine): only ever import this module in a worker.
"""

from __future__ import annotations

import time
from collections import Counter
from fractions import Fraction
from typing import Any

from app.core.errors import PlanError
from app.core.fitted_activations import FIT_PHASES, length_bucket, probe_sizes
from app.core.request import PlanRequest

MAX_KINDS = 8  # a base variant with more distinct layer kinds than this is not "small"; the fit is refused


def _variants(kinds: list[str]) -> tuple[list[int], dict[str, tuple[int, list[int]]]]:
    """(base layer indices, {kind: (layer count, variant indices)} for kinds with ≥ 2 layers)."""
    first: dict[str, int] = {}
    second: dict[str, int] = {}
    for i, kind in enumerate(kinds):
        if kind not in first:
            first[kind] = i
        elif kind not in second:
            second[kind] = i
    base = sorted(first.values())
    counts = Counter(kinds)
    return base, {k: (counts[k], sorted([*base, second[k]])) for k in second}


def _remainders(req: PlanRequest, layers: list[int]) -> dict[str, int]:
    """Bytes each phase of the traced step holds beyond weights, constants, adapters and optimizer states."""
    from app.trace.engine import run_trace

    # one step: forward, loss and backward hold the same beyond the resident state in every step (the
    # optimizer states of the steady step are resident, and absent before the first optimizer.step())
    result = run_trace(req, layers=layers, steps=1)
    resident = sum(v for k, v in result.static.items() if k != "optimizer_states")
    return {p: result.phases[p] - resident for p in FIT_PHASES}


def _solve(points: list[tuple[int, int, int]]) -> list[float]:
    """[A, E, C₁, C₂] of R(b, s) = A + E·s + b·(C₁·s + C₂·s²) through the probes (b, s, R), exactly."""
    (_, s1, r1), (_, s2, r2), (_, s3, r3), (_, _, r4) = points
    # b = 1: R = A + (E + C₁)·s + C₂·s², a parabola through three points (divided differences)
    d12 = Fraction(r2 - r1, s2 - s1)
    d23 = Fraction(r3 - r2, s3 - s2)
    c2 = (d23 - d12) / (s3 - s1)
    linear = d12 - c2 * (s1 + s2)
    a = r1 - linear * s1 - c2 * s1 * s1
    # b = 2 at s₁ adds one more sequence's C₁·s₁ + C₂·s₁²
    c1 = (Fraction(r4 - r1) - c2 * s1 * s1) / s1
    return [float(a), float(linear - c1), float(c1), float(c2)]


def fit_peak(cfg: dict[str, Any], req_json: str, max_modules: int) -> dict[str, Any]:
    """Worker entry point: ``{"phases": {phase: [A, E, C₁, C₂]}, "r": …, "kinds": …, "traces": …, "seconds": …}``
    or ``{"error": message}``."""
    from transformers.utils import logging as hf_logging

    from app.models.build import meta_model
    from app.trace.engine import UnsupportedStep
    from app.trace.variants import layer_kinds

    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    req = PlanRequest.model_validate_json(req_json)
    # the fit prices one micro-batch; the estimate adds what gradient accumulation keeps (app/core/estimate.py)
    req = req.model_copy(update={"training": req.training.model_copy(update={"gradient_accumulation_steps": 1})})
    try:
        kinds = layer_kinds(meta_model(cfg, max_modules))
        base, extra = _variants(kinds)
        if len(base) > MAX_KINDS:
            return {"error": f"the model has {len(base)} distinct decoder layer kinds; the fit traces at most "
                             f"{MAX_KINDS}"}
        per_phase: dict[str, list[tuple[int, int, int]]] = {p: [] for p in FIT_PHASES}
        for b, s in probe_sizes(length_bucket(req)):
            probe = req.model_copy(update={"training": req.training.model_copy(
                update={"micro_batch_size": b, "seq_len": s, "optim": "adamw_torch"})})
            at_base = _remainders(probe, base)
            total = dict(at_base)
            for count, layers in extra.values():
                at_kind = _remainders(probe, layers)
                for p in FIT_PHASES:
                    total[p] += (count - 1) * (at_kind[p] - at_base[p])
            for p in FIT_PHASES:
                per_phase[p].append((b, s, total[p]))
    except (PlanError, UnsupportedStep, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"}
    except Exception as exc:  # whatever the libraries raise on a variant: the peak stays provisional
        return {"error": f"the trace of a small variant failed: {type(exc).__name__}: {exc}"}
    return {
        "phases": {p: _solve(points) for p, points in per_phase.items()},
        "r": req.lora.r,
        "kinds": dict(Counter(kinds)),
        "traces": len(probe_sizes(length_bucket(req))) * (1 + len(extra)),
        "layers_traced": [base, *(layers for _, layers in extra.values())],
        "seconds": round(time.perf_counter() - started, 3),
    }
