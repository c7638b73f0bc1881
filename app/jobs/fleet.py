"""``peft-planner worker``: run calibration jobs from the shared PostgreSQL store on this node's GPUs.

One slot per GPU (or one ``cpu`` slot), each a :class:`app.calibration.worker.DeviceWorker` (warm on CPU:
:mod:`app.calibration.warm`) — the run loop
of the API's in-process worker, with its spawned process per job, timeout, cancellation and result
handling — whose store is a :class:`SlotStore`: it claims with a lease (:meth:`PgJobStore.claim`), writes
progress and the result with the lease token, and reports a job as cancelled to the loop (which kills the
job's process) once the heartbeat finds that the lease is gone. A heartbeat thread extends the leases every
third of ``PEFT_PLANNER_WORKER_LEASE_S`` and refreshes the registry row shown by ``GET /api/v1/workers``.

A worker killed mid-job stops heartbeating: after the lease expires any worker or API replica requeues the
job (:meth:`PgJobStore.recover`), up to ``PEFT_PLANNER_WORKER_MAX_ATTEMPTS`` runs, then marks it
``interrupted``. A worker stopped with SIGTERM/SIGINT gives its jobs back at once. Database outages are
waited out (claims pause, progress is dropped, results are retried until the lease would be lost).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

from app.calibration.measure import _versions
from app.calibration.warm import worker_class
from app.jobs.pg import PgJobStore, StoreUnavailable, retrying

log = logging.getLogger("peft_planner.worker")
IDLE_WAIT_S = 1.0  # a slot with nothing to claim asks again after this long (DeviceWorker's wait)
TRACE_KEEP_S = 7 * 86400.0  # finished fleet traces answer identical requests for a week, then are deleted


class SlotStore:
    """The JobStore face that one slot's :class:`DeviceWorker` sees (see the module docstring)."""

    def __init__(self, store: PgJobStore, worker_id: str, gpu_id: str, device: str,
                 kinds: tuple[str, ...] = ("calibration",)) -> None:
        self.store, self.worker_id, self.gpu_id, self.device, self.kinds = store, worker_id, gpu_id, device, kinds
        self.job_id: str | None = None
        self.token: str | None = None
        self.lost = threading.Event()
        self.stopping = threading.Event()

    def claim_next(self, device: str) -> dict[str, Any] | None:
        try:
            self.store.recover()
            job = self.store.claim(self.worker_id, self.gpu_id, self.device, self.kinds)
        except StoreUnavailable as exc:
            log.warning("slot %s: %s", self.device, exc)
            time.sleep(IDLE_WAIT_S)
            return None
        if job is not None:
            self.lost.clear()
            self.job_id, self.token = job["id"], job.pop("lease_token")
            job["device"] = self.device  # a GPU job runs on this slot's cuda:N
            log.info("slot %s (%s): claimed %s %s (attempt %s)", self.device, self.gpu_id, job["kind"], job["id"],
                     job["attempts"])
        return job

    def progress(self, job_id: str, percent: float, text: str) -> None:
        with contextlib.suppress(StoreUnavailable):  # progress is advisory; the result is not (see finish)
            self.store.progress(job_id, percent, text, token=self.token)

    def finish(self, job_id: str, status: str, *, result: dict[str, Any] | None = None, error: str | None = None,
               progress_text: str | None = None) -> bool:
        token, self.job_id, self.token = self.token, None, None
        if token is None:
            return False
        if status == "interrupted" and self.stopping.is_set():  # the worker is stopping: give the job back
            call = lambda: self.store.release(job_id, token, f"requeued: worker {self.worker_id} stopped")  # noqa: E731
        else:
            call = lambda: self.store.finish(job_id, status, result=result, error=error,  # noqa: E731
                                             progress_text=progress_text, token=token)
        try:
            done = retrying(call, give_up_after_s=self.store.lease_s * self.store.max_attempts * 4)
        except StoreUnavailable:
            log.error("slot %s: could not record %s of %s (database unavailable); its lease will expire",
                      self.device, status, job_id)
            return False
        log.info("slot %s: %s %s%s", self.device, status, job_id, "" if done else " (refused: lease lost)")
        return done

    def get(self, job_id: str) -> dict[str, Any] | None:
        """Only the run loop's cancellation check asks: the heartbeat keeps ``lost`` current."""
        return {"id": job_id, "status": "cancelled" if self.lost.is_set() else "running"}


class FleetWorker:
    """This process's slots, their heartbeat and its registry row."""

    def __init__(self, store: PgJobStore, slots: list[dict[str, Any]], timeout_s: float,
                 worker_id: str | None = None, traces: bool = True, trace_timeout_s: float | None = None) -> None:
        """``traces``: the ``cpu`` slots also take the fleet's traces (``POST /api/v1/trace``, app/jobs/traces.py),
        each bounded by ``trace_timeout_s``; GPU slots run calibrations only."""
        self.store = store
        self.host = socket.gethostname()
        self.worker_id = worker_id or f"{self.host}-{os.getpid()}"
        self.slots_info = [{**s, "traces": traces and s["device"] == "cpu"} for s in slots]
        self.slots = [SlotStore(store, self.worker_id, s["gpu"], s["device"],
                                ("calibration", "trace") if s["traces"] else ("calibration",))
                      for s in self.slots_info]
        self.loops = [worker_class(slot.device)(slot, slot.device, timeout_s, trace_timeout_s)  # type: ignore[arg-type]
                      for slot in self.slots]
        self.stopping = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True)

    def start(self) -> None:
        retrying(lambda: self.store.register_worker(self.worker_id, self.host, os.getpid(), _versions(),
                                                    self.slots_info), give_up_after_s=300, wait_s=1.0)
        self._beat.start()
        for loop in self.loops:
            loop.start()
        log.info("worker %s: %d slot(s): %s", self.worker_id, len(self.slots),
                 ", ".join(f"{s['device']}={s['gpu']}" for s in self.slots_info))

    def _heartbeat(self) -> None:
        interval = self.store.lease_s / 3
        while not self.stopping.wait(interval):
            held = {slot.token: slot for slot in self.slots if slot.token is not None}
            try:
                kept = self.store.heartbeat(self.worker_id, list(held))
            except StoreUnavailable as exc:
                log.warning("heartbeat: %s", exc)
                continue
            for token, slot in held.items():
                if token not in kept and slot.token == token:
                    log.info("slot %s: lease of %s lost (cancelled or expired): stopping it", slot.device,
                             slot.job_id)
                    slot.lost.set()

    def stop(self) -> None:
        """Give running jobs back (requeued), stop the slots and say goodbye in the registry."""
        self.stopping.set()
        for slot in self.slots:
            slot.stopping.set()
        for loop in self.loops:
            loop.stop()
        for loop in self.loops:
            loop.join(timeout=30)
        with contextlib.suppress(StoreUnavailable):
            self.store.stop_worker(self.worker_id)


class FleetDispatcher:
    """The API's side of a fleet (jobs run here only with ``worker_in_api``): cancellation through the store,
    and a periodic :meth:`PgJobStore.recover` so that a job whose worker died is requeued even when no worker
    is left (and old fleet traces are pruned)."""

    def __init__(self, store: PgJobStore, in_process: bool = False, timeout_s: float = 1800.0,
                 trace_timeout_s: float | None = None) -> None:
        from app.jobs.worker_cli import configured_slots

        self.store = store
        self._stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="lease-reaper", daemon=True)
        self.local = (FleetWorker(store, configured_slots(), timeout_s, trace_timeout_s=trace_timeout_s,
                                  worker_id=f"{socket.gethostname()}-{os.getpid()}-api") if in_process else None)

    def start(self) -> None:
        self._reaper.start()
        if self.local is not None:
            self.local.start()

    def _reap(self) -> None:
        while not self._stop.wait(self.store.lease_s):
            try:
                self.store.recover()
                self.store.prune_traces(TRACE_KEEP_S)
            except StoreUnavailable:
                continue

    def wake(self, device: str) -> None:
        """Workers poll the store (every :data:`IDLE_WAIT_S`): nothing to wake here."""

    def cancel(self, job_id: str) -> str | None:
        """Mark the job cancelled; its worker sees the lost lease at its next heartbeat and kills the run."""
        return self.store.cancel(job_id)

    def close(self) -> None:
        self._stop.set()
        if self.local is not None:
            self.local.stop()
