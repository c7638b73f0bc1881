"""The calibration service of one app: settings, limits, job creation, the predicted-vs-measured comparison.

Settings specific to calibration are read from ``PEFT_PLANNER_CALIBRATION_*`` environment variables (the
token and the database path come from :class:`app.settings.Settings`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from app.calibration.worker import CalibrationWorkers
from app.core import PlanRequest, estimate
from app.core.catalog import gpu, gpus
from app.core.errors import PlanError
from app.core.overhead import cublas_workspace_bytes
from app.jobs import open_store
from app.settings import Settings, get_settings

DEVICE_RE = re.compile(r"^(cpu|cuda:\d{1,2})$")


CUDA_PROBE = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
CUDA_PROBE_TIMEOUT_S = 120.0
"""Budget for the probe's torch import and CUDA initialisation (seconds)."""


@lru_cache(maxsize=1)
def _cuda_devices() -> int:
    """Number of visible CUDA devices, asked of a child process so that torch is never imported into the API
    process (answered once per server process: devices do not come and go under a running server)."""
    try:
        out = subprocess.run([sys.executable, "-c", CUDA_PROBE], capture_output=True, text=True,
                             timeout=CUDA_PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return 0
    lines = out.stdout.strip().splitlines()
    return int(lines[-1]) if out.returncode == 0 and lines and lines[-1].isdigit() else 0


# Absolute paths in error texts (e.g. '/home/x/.venv/lib/python3.11/site-packages/…'), hidden from anonymous readers
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s/'\"():,]+){2,}/?")


def redacted(job: dict[str, Any]) -> dict[str, Any]:
    """``job`` as anonymous readers see it: the error's first line with server paths replaced by '…' (no
    traceback), and model_dir reduced to its last component."""
    out = dict(job)
    if out.get("error"):
        out["error"] = _PATH.sub("…", str(out["error"]).split("\n", 1)[0])
    if out.get("model_dir"):
        out["model_dir"] = "…/" + Path(out["model_dir"]).name
    return out


def check_model_dir(model_dir: str, allowed: list[Path]) -> None:
    """``model_dir`` must resolve to a directory inside one of ``allowed`` (PEFT_PLANNER_MODEL_DIRS). Outside them
    the answer is the same whether the path exists or not, so it reveals nothing about the server's files."""
    where = ("model_dir",)
    if not allowed:
        raise PlanError(where, "model_dir is disabled on this server (set PEFT_PLANNER_MODEL_DIRS to the "
                        "directories that hold checkpoints)")
    try:
        resolved = Path(model_dir).resolve()
    except (OSError, RuntimeError, ValueError):
        resolved = None
    if resolved is None or not any(resolved == root or root in resolved.parents for root in allowed):
        raise PlanError(where, "must be inside one of the directories allowed by PEFT_PLANNER_MODEL_DIRS")
    if not resolved.is_dir():
        raise PlanError(where, f"{model_dir}: not a directory")


def workers_for(store: Any, settings: Settings) -> Any:
    """Who runs the jobs: the in-process worker (SQLite); with a database URL the fleet, plus this process's
    own slots when ``worker_in_api`` is set."""
    if not settings.database_url:
        return CalibrationWorkers(store, settings.calibration_timeout_s)
    from app.jobs.fleet import FleetDispatcher

    return FleetDispatcher(store, in_process=settings.worker_in_api, timeout_s=settings.calibration_timeout_s,
                           trace_timeout_s=settings.trace_timeout_s)


class CalibrationService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: Any = open_store(settings)
        self.workers: Any = workers_for(self.store, settings)
        self.workers.start()

    # --- validation -----------------------------------------------------------------------------
    def check(self, req: PlanRequest, device: str, model_dir: str | None) -> dict[str, Any]:
        """Validate a calibration request; returns the planner's estimate for it. Raises PlanError (422)."""
        if not DEVICE_RE.match(device):
            raise PlanError(("device",), "device must be 'cpu' or 'cuda:N'")
        result = estimate(req)  # PlanError for anything the planner refuses
        tokens = req.training.micro_batch_size * req.training.seq_len
        if device == "cpu":
            if result.parameters.total > self.settings.calibration_cpu_max_params:
                raise PlanError(("model",), f"the model has {result.parameters.total:,} parameters; calibration on "
                                f"cpu is limited to {self.settings.calibration_cpu_max_params:,} (use a cuda device)")
            if tokens > self.settings.calibration_cpu_max_tokens:
                raise PlanError(("training", "seq_len"), f"micro_batch_size·seq_len = {tokens:,} tokens; on cpu at "
                                f"most {self.settings.calibration_cpu_max_tokens:,}")
        elif not self.settings.database_url:  # a fleet's GPUs are on the workers' machines
            count = _cuda_devices()
            index = int(device.split(":")[1])
            if count == 0:
                raise PlanError(("device",), f"{device}: no CUDA device here (torch.cuda.is_available() is false)")
            if index >= count:
                raise PlanError(("device",), f"{device}: only {count} CUDA device(s) visible")
        if device != "cpu" and tokens > self.settings.calibration_cuda_max_tokens:
            raise PlanError(("training", "seq_len"), f"micro_batch_size·seq_len = {tokens:,} tokens; at most "
                            f"{self.settings.calibration_cuda_max_tokens:,}")
        if req.quantized and req.quantization.load_in_8bit:
            raise PlanError(("quantization", "load_in_8bit"), "calibration runs 4-bit bases (qlora/qdora); "
                            "LLM.int8 is not calibrated")
        if model_dir is not None:
            check_model_dir(model_dir, self.settings.allowed_model_dirs)
        return result.model_dump(mode="json")

    def submit(self, req: PlanRequest, device: str, warmup_steps: int, measure_steps: int,
               model_dir: str | None, worker_gpu: str | None = None) -> str:
        est = self.check(req, device, model_dir)
        extra = {}
        if worker_gpu is not None:
            if not self.settings.database_url:
                raise PlanError(("worker_gpu",), "worker_gpu picks a worker of a fleet; this server has one "
                                "in-process worker (set PEFT_PLANNER_DATABASE_URL, see docs/deployment.md)")
            if worker_gpu != "cpu" and worker_gpu not in gpus():
                raise PlanError(("worker_gpu",), f"unknown gpu {worker_gpu!r}; 'cpu' or a catalog id: "
                                f"{', '.join(gpus())}")
            extra["wanted_gpu"] = worker_gpu
        job_id = self.store.create(req.model_dump(mode="json"), device, warmup_steps, measure_steps, est,
                                   model_dir=model_dir, **extra)
        self.workers.wake(device)
        return job_id

    def close(self) -> None:
        self.workers.close()


def comparison(job: dict[str, Any]) -> dict[str, Any] | None:
    """Predicted (the stored estimate) vs measured peak and total, with error % = 100·(predicted − measured)/measured.

    On cpu the live-storage counter does not see cuBLAS workspaces, so the predicted peak is compared without
    them (as POST /api/v1/trace does); on a GPU ``max_memory_allocated`` includes them.
    """
    result, est = job.get("result"), job.get("estimate")
    if not result or not est or result.get("status") != "done":
        return None
    memory = est["memory"]
    predicted_peak = memory["peak"]
    workspace = 0
    if result.get("kind") == "cpu":
        try:
            workspace = cublas_workspace_bytes(gpu(job["request"]["hardware"]["gpu"]).arch)
        except PlanError:
            workspace = 0
        predicted_peak -= workspace

    def err(predicted: int | None, measured: int | None) -> float | None:
        if not predicted or not measured:
            return None
        return round(100 * (predicted - measured) / measured, 3)

    measured_peak = result.get("peak_allocated_bytes")
    measured_total = result.get("device_used_bytes")
    measured_phases = result.get("phases") or {}
    # per phase: the estimate's high-water mark of each phase (less the same workspace on cpu) next to the measured
    # one; CUDA measures the loss inside the forward phase (no hook between them), so its loss row has no measure
    phases = [{"name": p["name"], "predicted_bytes": p["bytes"] - workspace,
               "measured_bytes": measured_phases.get(p["name"]),
               "error_percent": err(p["bytes"] - workspace, measured_phases.get(p["name"]))}
              for p in est["peak"]["phases"]]
    return {
        "predicted_peak_bytes": predicted_peak,
        "predicted_peak_excludes_cublas_workspace_bytes": workspace,
        "measured_peak_bytes": measured_peak,
        "peak_error_percent": err(predicted_peak, measured_peak),
        "predicted_total_bytes": memory["total"],
        "measured_reserved_bytes": result.get("peak_reserved_bytes"),
        "measured_total_bytes": measured_total,
        "total_error_percent": err(memory["total"], measured_total),
        "predicted_phase": est["peak"]["phase"],
        "measured_phase": result.get("peak_phase"),
        "otf_dequant_slowdown": result.get("otf_dequant_slowdown"),
        "phases": phases,
    }


def _resolve(app: FastAPI) -> Settings:
    return app.dependency_overrides.get(get_settings, get_settings)()


def service_for(app: FastAPI) -> CalibrationService:
    """The app's calibration service, created on first use (opens the database, starts recovery)."""
    service = getattr(app.state, "calibration_service", None)
    if service is None:
        service = CalibrationService(_resolve(app))
        app.state.calibration_service = service
    return service


@asynccontextmanager
async def calibration_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Startup: when the SQLite database exists, reopen it (running → interrupted, queued jobs run again); with
    a database URL, connect (migrations) and start the lease reaper (app/jobs/fleet.py).
    Shutdown: stop the workers (a running job's process is killed and the job marked interrupted)."""
    settings = _resolve(app)
    if settings.database_url or Path(settings.database_path).exists():
        service_for(app)
    try:
        yield
    finally:
        service = getattr(app.state, "calibration_service", None)
        if service is not None:
            service.close()
            app.state.calibration_service = None
