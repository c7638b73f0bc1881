"""Learning from measurements: fit the overhead model per GPU and error bars from stored calibrations.

Inputs are finished GPU calibrations of the same GPU (``app/calibration`` stores them): the estimate made
for each job's request and what the job measured. Fitted (medians over the samples):
- CUDA context (+ libraries outside the allocator) = device memory in use − ``max_memory_reserved``;
- allocator reserve as a fraction of the allocated peak = (reserved − allocated) / allocated.
Error bars: the relative gaps (measured − predicted) / predicted of the allocated peak; the answer's
``calibration.peak_low_bytes`` / ``peak_high_bytes`` apply the smallest and largest gap to this peak.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from app.core.result import CalibrationRef, EstimateResult


@dataclass(frozen=True)
class CalibrationSample:
    """One finished GPU calibration (bytes)."""

    job_id: str
    predicted_peak: int
    measured_peak: int
    measured_reserved: int
    measured_device_used: int


MAX_SAMPLES = 500
"""A summary is fitted from the newest this many finished calibrations of its GPU."""


@dataclass(frozen=True)
class CalibrationSummary:
    """What :func:`apply_calibrations` needs from the samples of one GPU, computed once per finished job.

    ``context_bytes``: median (device used − reserved); ``reserve_fraction``: median (reserved − allocated) /
    allocated; ``gap_low`` / ``gap_high``: smallest / largest (measured − predicted) / predicted peak.
    """

    gpu: str
    job_ids: tuple[str, ...]
    context_bytes: int
    reserve_fraction: float
    gap_low: float
    gap_high: float


def summarise(gpu_id: str, samples: list[CalibrationSample]) -> CalibrationSummary | None:
    """The summary of ``samples`` (same GPU), or None when none is usable (inconsistent or empty figures)."""
    usable = [s for s in samples if s.measured_peak > 0 and s.measured_reserved >= s.measured_peak
              and s.measured_device_used >= s.measured_reserved and s.predicted_peak > 0]
    if not usable:
        return None
    gaps = [(s.measured_peak - s.predicted_peak) / s.predicted_peak for s in usable]
    return CalibrationSummary(
        gpu=gpu_id, job_ids=tuple(s.job_id for s in usable),
        context_bytes=int(statistics.median(s.measured_device_used - s.measured_reserved for s in usable)),
        reserve_fraction=statistics.median((s.measured_reserved - s.measured_peak) / s.measured_peak
                                           for s in usable),
        gap_low=min(gaps), gap_high=max(gaps),
    )


def apply_calibrations(result: EstimateResult, summary: CalibrationSummary | None) -> EstimateResult:
    """The estimate with overhead fitted from ``summary`` (of the request's GPU) and error bars; unchanged when
    None. Constant time: the per-job work was done once by :func:`summarise`."""
    if summary is None:
        return result
    mem = result.memory
    reserve = int(summary.reserve_fraction * mem.peak)
    overhead = summary.context_bytes + reserve
    memory = mem.model_copy(update={"reserved": mem.peak + reserve, "overhead": overhead,
                                    "total": mem.peak + overhead})
    paged = mem.paged_optimizer_states
    fits = [f.model_copy(update={"headroom_bytes": f.vram_bytes - memory.total, "fits": memory.total <= f.vram_bytes,
                                 "paged_on_gpu": f.vram_bytes - memory.total >= paged if paged else None})
            if f.gpu == summary.gpu else f for f in result.fits]
    info = CalibrationRef(
        gpu=summary.gpu, used=list(summary.job_ids), context_bytes=summary.context_bytes,
        reserve_fraction=round(summary.reserve_fraction, 6),
        peak_error_low_percent=round(100 * summary.gap_low, 3),
        peak_error_high_percent=round(100 * summary.gap_high, 3),
        peak_low_bytes=int(mem.peak * (1 + summary.gap_low)), peak_high_bytes=int(mem.peak * (1 + summary.gap_high)),
    )
    assumptions = [*result.assumptions,
                   f"Overhead and error bars fitted from {len(summary.job_ids)} calibration(s) on {summary.gpu}."]
    return result.model_copy(update={"memory": memory, "fits": fits, "calibration": info,
                                     "assumptions": assumptions})
