"""In-process calibration worker: one thread per device, each running one job at a time in a spawned process
(on ``cpu`` one warm process for all jobs: app/calibration/warm.py).

A job's process is started with ``multiprocessing``'s spawn context (CUDA cannot be used after fork, and a
fresh process gives clean allocator statistics), reports progress and its result through a queue, and is
killed when it overruns the per-job timeout (→ ``failed``), when the job is cancelled (→ ``cancelled``) or
when the service shuts down (→ ``interrupted``). The store is the source of truth: the worker claims the
oldest queued job of its device, so queued jobs survive a restart and run when the service comes back.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import queue as queue_mod
import threading
import time
import traceback
from typing import Any

from app.calibration.store import JobStore

POLL_S = 0.2


def _child(kind: str, request_json: str, device: str, warmup_steps: int, measure_steps: int, model_dir: str | None,
           out: Any) -> None:
    """Worker-process entry point: run one job (a calibration, streaming progress, or a trace of a fleet's
    ``POST /api/v1/trace``: :func:`app.trace.service.run_trace_json`, as the API's own trace worker runs it) and
    send the result or the error."""
    from app.supervision import die_with_parent

    die_with_parent()
    try:
        if kind == "trace":
            from app.trace.service import run_trace_json

            out.put(("result", run_trace_json(request_json)))
            return
        from app.calibration.measure import calibrate
        from app.core.request import PlanRequest

        req = PlanRequest.model_validate_json(request_json)
        result = calibrate(req, device, warmup_steps, measure_steps, model_dir,
                           progress=lambda pct, text: out.put(("progress", pct, text)))
        out.put(("result", result))
    except BaseException as exc:
        tb = traceback.format_exc(limit=8)
        out.put(("error", f"{type(exc).__name__}: {exc}", tb[-4000:]))


def job_args(job: dict[str, Any]) -> tuple[str, str, str, int, int, str | None]:
    """:func:`_child`'s arguments for ``job`` (before the queue); jobs of the SQLite store are calibrations."""
    return (job.get("kind", "calibration"), json.dumps(job["request"]), job["device"], job["warmup_steps"],
            job["measure_steps"], job["model_dir"])


class DeviceWorker(threading.Thread):
    def __init__(self, store: JobStore, device: str, timeout_s: float, trace_timeout_s: float | None = None) -> None:
        """``timeout_s`` bounds a calibration, ``trace_timeout_s`` a trace (fleet workers only)."""
        super().__init__(name=f"calibration-{device}", daemon=True)
        self.store, self.device, self.timeout_s = store, device, timeout_s
        self.trace_timeout_s = trace_timeout_s if trace_timeout_s is not None else timeout_s
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.current: str | None = None
        self._cancel: set[str] = set()
        self._lock = threading.Lock()

    def request_cancel(self, job_id: str) -> bool:
        """Kill the running process of ``job_id`` (if it is the one running here)."""
        with self._lock:
            if self.current != job_id:
                return False
            self._cancel.add(job_id)
            return True

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            job = self.store.claim_next(self.device)
            if job is None:
                self.wake.wait(timeout=1.0)
                self.wake.clear()
                continue
            with self._lock:
                self.current = job["id"]
            try:
                self._run_job(job)
            except Exception as exc:  # never let the thread die: record and go on
                self.store.finish(job["id"], "failed", error=f"worker error: {type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self.current = None
                    self._cancel.discard(job["id"])

    def _launch(self, job: dict[str, Any]) -> tuple[Any, Any]:
        """Start the job's process; returns it and the queue it reports on."""
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        proc = ctx.Process(target=_child, name=f"calibration-{job['id'][:8]}", daemon=True,
                           args=(*job_args(job), out))
        proc.start()
        return proc, out

    def _release(self, proc: Any, out: Any) -> None:
        """After a job: stop its process and close its queue."""
        if proc.is_alive():
            self._kill(proc)
        proc.join(timeout=5)
        out.close()
        out.cancel_join_thread()

    def _run_job(self, job: dict[str, Any]) -> None:
        proc, out = self._launch(job)
        trace = job.get("kind") == "trace"
        limit_s = self.trace_timeout_s if trace else self.timeout_s
        deadline = time.monotonic() + limit_s
        job_id = job["id"]
        pending: Any = None
        checked = time.monotonic()
        try:
            while True:
                if pending is not None:
                    msg, pending = pending, None
                else:
                    try:
                        msg = out.get(timeout=POLL_S)
                    except queue_mod.Empty:
                        msg = None
                if msg is not None:
                    kind = msg[0]
                    if kind == "progress":
                        self.store.progress(job_id, msg[1], msg[2])
                        continue
                    if kind == "result":
                        result = msg[1]
                        status = "oom" if result.get("status") == "oom" else "done"
                        text = (f"out of memory at {result.get('does_not_fit_at')}" if status == "oom" else "done")
                        self.store.finish(job_id, status, result=result, progress_text=text)
                        return
                    if kind == "error":
                        self.store.finish(job_id, "failed", error=f"{msg[1]}\n\n{msg[2]}", progress_text="failed")
                        return
                if time.monotonic() - checked > 1.0:  # cancelled through another path (store first)
                    checked = time.monotonic()
                    current = self.store.get(job_id)
                    if current is not None and current["status"] == "cancelled":
                        self._cancel.add(job_id)
                if job_id in self._cancel:
                    self._kill(proc)
                    self.store.finish(job_id, "cancelled", error="cancelled by request", progress_text="cancelled")
                    return
                if self.stopping.is_set():
                    self._kill(proc)
                    self.store.finish(job_id, "interrupted", error="the service shut down while this job was running",
                                      progress_text="interrupted")
                    return
                if time.monotonic() > deadline:
                    self._kill(proc)
                    what = ("trace", "TRACE") if trace else ("calibration", "CALIBRATION")
                    self.store.finish(job_id, "failed", progress_text="timed out",
                                      error=f"the {what[0]} ran past the per-job timeout of {limit_s:g} s "
                                            f"(PEFT_PLANNER_{what[1]}_TIMEOUT_S) and its worker process was killed")
                    return
                if msg is None and not proc.is_alive():
                    with contextlib.suppress(queue_mod.Empty):  # a last message may still be in the pipe
                        pending = out.get(timeout=1.0)
                    if pending is not None:
                        continue
                    self.store.finish(job_id, "failed", progress_text="failed",
                                      error=f"the worker process exited with code {proc.exitcode} without a result "
                                            "(killed by the OS, e.g. out of host memory?)")
                    return
        finally:
            self._release(proc, out)

    @staticmethod
    def _kill(proc: Any) -> None:
        proc.kill()
        proc.join(timeout=10)


class CalibrationWorkers:
    """One :class:`DeviceWorker` per device, started on demand."""

    def __init__(self, store: JobStore, timeout_s: float) -> None:
        self.store, self.timeout_s = store, timeout_s
        self._workers: dict[str, DeviceWorker] = {}
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Startup: mark jobs of a dead process interrupted, run the queued ones."""
        self.store.recover()
        for device in self.store.queued_devices():
            self.wake(device)

    def wake(self, device: str) -> None:
        with self._lock:
            if self._closed:
                return
            worker = self._workers.get(device)
            if worker is None or not worker.is_alive():
                from app.calibration.warm import worker_class

                worker = worker_class(device)(self.store, device, self.timeout_s)
                self._workers[device] = worker
                worker.start()
        worker.wake.set()

    def cancel(self, job_id: str) -> str | None:
        """Cancel a job: a queued one is marked cancelled, a running one's process is killed. Returns the
        status the job had before (None: unknown id)."""
        before = self.store.cancel(job_id)  # marks it cancelled in the store first (a late result is ignored)
        if before == "running":
            for worker in list(self._workers.values()):
                worker.request_cancel(job_id)
        return before

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._workers.values())
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join(timeout=30)

    def slots(self) -> list[dict[str, Any]]:
        """This process's device threads and the job each runs (GET /api/v1/workers on a single server)."""
        with self._lock:
            return [{"device": device, "gpu": None, "current_job": worker.current}
                    for device, worker in self._workers.items() if worker.is_alive()]
