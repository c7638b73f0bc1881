"""POST /api/v1/trace: run the real training step on fake tensors and report its measured memory."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool

from app.core import PlanRequest, estimate
from app.core.catalog import gpu
from app.core.overhead import cublas_workspace_bytes
from app.deps import TraceServiceDep
from app.models.generic import ensure_generic
from app.trace.service import TraceBusy, TraceTimeout, TraceUnsupported

router = APIRouter(prefix="/api/v1", tags=["v1"])


@router.post("/trace")
async def post_trace(req: PlanRequest, service: TraceServiceDep) -> dict[str, Any]:
    """Trace two real steps (transformers + PEFT + bitsandbytes on fake tensors) and return the second one's
    peak in bytes, its phase, per-phase peaks, the largest live tensors at the peak, and the analytic
    estimate of the same tensors for comparison. Bounded: one worker, a timeout, a cache."""
    await run_in_threadpool(ensure_generic, req)
    result_estimate = estimate(req)  # validates the request (422) before any heavy work
    try:
        traced, cached = await service.trace(req)
    except TraceBusy as exc:
        raise HTTPException(status_code=429, detail=str(exc)) from None
    except TraceTimeout as exc:
        raise HTTPException(status_code=504, detail=str(exc)) from None
    except TraceUnsupported as exc:
        raise HTTPException(status_code=422, detail=[{"loc": ["body", "quantization", "load_in_8bit"],
                                                      "msg": str(exc), "type": "unsupported"}]) from None
    analytic = result_estimate.memory.peak - cublas_workspace_bytes(gpu(req.hardware.gpu).arch)
    return {
        "trace": traced,
        "cached": cached,
        "analytic_peak_bytes": analytic,
        "analytic_phase": result_estimate.peak.phase,
        "error_percent": round(100 * (analytic - traced["peak_bytes"]) / traced["peak_bytes"], 3),
        "note": "peaks count tensor storages (torch.cuda.max_memory_allocated minus cuBLAS workspaces)",
    }
