"""POST /api/v1/trace: run the real training step on fake tensors and report its measured memory."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from app.core import PlanRequest, estimate
from app.core.catalog import gpu
from app.core.overhead import cublas_workspace_bytes
from app.deps import TraceServiceDep
from app.errors import api_error, error_responses
from app.models.resolve import resolve_request
from app.pool import POLL_S, STOPPING, ClientGone, shutting_down
from app.trace.service import TraceBusy, TraceNoWorker, TraceTimeout, TraceUnsupported, TraceWorkerDied

router = APIRouter(prefix="/api/v1", tags=["v1"])


@router.post("/trace", responses=error_responses(413, 422, 429, 503, 504))
async def post_trace(req: PlanRequest, request: Request, service: TraceServiceDep) -> dict[str, Any]:
    """Trace two real steps (transformers + PEFT + bitsandbytes on fake tensors) and return the second one's
    peak in bytes, its phase, per-phase peaks, the largest live tensors at the peak, and the analytic
    estimate of the same tensors for comparison. Bounded: a supervised worker, a queue, a timeout, a cache;
    a trace whose client disconnects is stopped. With PostgreSQL the trace may run on a fleet worker (same
    answer; docs/deployment.md)."""
    # a Hub id or a model outside the rules (no peak fit: the trace itself is the full answer)
    req = (await run_in_threadpool(resolve_request, req, fit_peak=False))[0]
    result_estimate = estimate(req)  # validates the request (422) before any heavy work
    work = asyncio.ensure_future(service.trace(req))
    try:
        while not (await asyncio.wait({work}, timeout=POLL_S))[0]:
            if STOPPING.is_set():
                raise shutting_down()  # the finally below cancels the trace, which kills its worker
            if await request.is_disconnected():
                raise ClientGone
        traced, cached = work.result()
    except TraceBusy as exc:
        raise api_error(429, [], str(exc), "busy", headers={"Retry-After": "5"}) from None
    except TraceTimeout as exc:
        raise api_error(504, [], str(exc), "timeout") from None
    except TraceWorkerDied as exc:
        raise api_error(503, [], str(exc), "worker_died") from None
    except TraceNoWorker as exc:
        raise api_error(503, [], str(exc), "no_worker", headers={"Retry-After": "30"}) from None
    except TraceUnsupported as exc:
        raise api_error(422, ["body", "quantization", "load_in_8bit"], str(exc), "unsupported") from None
    finally:
        if not work.done():
            work.cancel()
    analytic = result_estimate.memory.peak - cublas_workspace_bytes(gpu(req.hardware.gpu).arch)
    return {
        "trace": traced,
        "cached": cached,
        "analytic_peak_bytes": analytic,
        "analytic_phase": result_estimate.peak.phase,
        "error_percent": round(100 * (analytic - traced["peak_bytes"]) / traced["peak_bytes"], 3),
        "note": "peaks count tensor storages (torch.cuda.max_memory_allocated minus cuBLAS workspaces)",
    }
