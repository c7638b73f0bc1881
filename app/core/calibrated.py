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


def apply_calibrations(result: EstimateResult, gpu_id: str, samples: list[CalibrationSample]) -> EstimateResult:
    """The estimate with overhead fitted from ``samples`` (same GPU) and error bars; unchanged when empty."""
    usable = [s for s in samples if s.measured_peak > 0 and s.measured_reserved >= s.measured_peak
              and s.measured_device_used >= s.measured_reserved and s.predicted_peak > 0]
    if not usable:
        return result
    context = int(statistics.median(s.measured_device_used - s.measured_reserved for s in usable))
    fraction = statistics.median((s.measured_reserved - s.measured_peak) / s.measured_peak for s in usable)
    gaps = [(s.measured_peak - s.predicted_peak) / s.predicted_peak for s in usable]
    mem = result.memory
    overhead = context + int(fraction * mem.peak)
    memory = mem.model_copy(update={"overhead": overhead, "total": mem.peak + overhead})
    paged = mem.paged_optimizer_states
    fits = [f.model_copy(update={"headroom_bytes": f.vram_bytes - memory.total, "fits": memory.total <= f.vram_bytes,
                                 "paged_on_gpu": f.vram_bytes - memory.total >= paged if paged else None})
            if f.gpu == gpu_id else f for f in result.fits]
    info = CalibrationRef(
        gpu=gpu_id, used=[s.job_id for s in usable], context_bytes=context, reserve_fraction=round(fraction, 6),
        peak_error_low_percent=round(100 * min(gaps), 3), peak_error_high_percent=round(100 * max(gaps), 3),
        peak_low_bytes=int(mem.peak * (1 + min(gaps))), peak_high_bytes=int(mem.peak * (1 + max(gaps))),
    )
    assumptions = [*result.assumptions,
                   f"Overhead and error bars fitted from {len(usable)} calibration(s) on {gpu_id}."]
    return result.model_copy(update={"memory": memory, "fits": fits, "calibration": info,
                                     "assumptions": assumptions})
