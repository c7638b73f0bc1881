"""Traces (``POST /api/v1/trace``) as jobs of the shared PostgreSQL store, run by ``peft-planner worker``'s ``cpu``
slots: the API's answer when its own trace workers are busy (``PEFT_PLANNER_TRACE_ON_WORKERS=busy``, the
default with a database URL) or for every trace (``always``).

A trace is a row of ``calibration_jobs`` with ``kind='trace'`` (migration 2 of :mod:`app.jobs.pg`): claimed,
leased, heartbeated, retried after a ``kill -9`` of its worker (up to ``PEFT_PLANNER_WORKER_MAX_ATTEMPTS`` runs)
and finished with the lease token exactly as a calibration (:class:`app.jobs.fleet.SlotStore`), and run in the
slot's warm process by :func:`app.trace.service.run_trace_json`, the function the API's own trace pool runs.
The request stays synchronous: the API polls the job and answers with the same body as an in-process trace.

Bounds: at most ``trace_fleet_queue`` traces wait in the shared queue (more: 429 with ``Retry-After``); a queued
trace no worker takes within ``trace_fleet_wait_s`` is cancelled (503 with ``Retry-After``); a running one is
stopped by its worker after ``trace_timeout_s`` (504), and the API gives up (cancelling it) after that plus two
leases. A trace whose client goes away is cancelled (its worker sees the lost lease and kills the run). A trace
is never lost: every accepted one ends in a final status that its row keeps.

The store is also the fleet's trace cache: a request traced before (``done``, any replica) is answered from its
row, and a request that is queued or running already is waited for rather than traced twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from app.calibration.store import FINAL
from app.jobs.pg import PgJobStore, StoreUnavailable
from app.trace.service import TraceBusy, TraceNoWorker, TraceTimeout, TraceWorkerDied

POLL_S = 0.2  # how often a waiting request reads its trace's row (seconds)
JOIN_TRIES = 3  # a joined trace cancelled by its own client (it went away) is submitted again, this often


class FleetTraces:
    """The API's side of fleet traces (see the module docstring)."""

    def __init__(self, store: PgJobStore, trace_timeout_s: float, max_queued: int, wait_s: float) -> None:
        self.store, self.trace_timeout_s, self.max_queued, self.wait_s = store, trace_timeout_s, max_queued, wait_s

    async def load(self) -> tuple[int, int]:
        """(live worker slots that take traces, traces queued or running on the fleet); (0, 0) while the database
        cannot be reached (the API then traces itself)."""
        try:
            return await asyncio.to_thread(self.store.trace_load)
        except StoreUnavailable:
            return 0, 0

    async def trace(self, key: str) -> tuple[dict[str, Any], bool]:
        """(result, cached) for the canonical request JSON ``key``; raises TraceBusy, TraceNoWorker, TraceTimeout
        or TraceWorkerDied (the result may be ``{"unsupported": why}``, as from the API's own pool)."""
        request = json.loads(key)
        for _ in range(JOIN_TRIES):
            found = await asyncio.to_thread(self.store.find_trace, request)
            if found is not None and found["status"] == "done":
                return found["result"], True
            job_id = found["id"] if found is not None else await asyncio.to_thread(
                self.store.submit_trace, request, self.max_queued)
            if job_id is None:
                raise TraceBusy(f"{self.max_queued} trace(s) wait for the fleet's workers already; retry shortly")
            job = await self._wait(job_id)
            if job["status"] == "done":
                return job["result"], False
            if job["status"] != "cancelled":  # cancelled: by the client of a trace we joined; submit again
                error = (job["error"] or job["status"]).split("\n", 1)[0]
                if job["progress_text"] == "timed out":
                    raise TraceTimeout(error)
                raise TraceWorkerDied(f"the trace failed on worker {job['worker_id']}: {error}")
        raise TraceWorkerDied("the trace was cancelled repeatedly by other clients of the same request; retry")

    async def _wait(self, job_id: str) -> dict[str, Any]:
        """The job once final. A queued job waits at most ``wait_s`` for a worker (again after a requeue), a
        running one ``trace_timeout_s`` plus two leases per attempt; past that it is cancelled. Database
        outages are waited out within the same bounds."""
        deadline = time.monotonic() + self.wait_s
        state: tuple[str, int] = ("queued", 0)
        try:
            while True:
                try:
                    job = await asyncio.to_thread(self.store.get, job_id, "trace")
                except StoreUnavailable:
                    job = None
                if job is not None:
                    if job["status"] in FINAL:
                        return job
                    now_state = (job["status"], job["attempts"])
                    if now_state != state:
                        state = now_state
                        deadline = time.monotonic() + (self.trace_timeout_s + 2 * self.store.lease_s
                                                       if state[0] == "running" else self.wait_s)
                if time.monotonic() > deadline:
                    self._cancel(job_id, "gave up waiting")
                    if state[0] == "running":
                        raise TraceTimeout(f"the trace ran past {self.trace_timeout_s:g} s on worker and was stopped")
                    raise TraceNoWorker(f"no worker took the trace within {self.wait_s:g} s (is a `peft-planner "
                                        "worker` with a cpu slot running?); retry later")
                await asyncio.sleep(POLL_S)
        except (asyncio.CancelledError, Exception) as exc:
            if not isinstance(exc, TraceTimeout | TraceNoWorker):  # the client went away, the server stops
                self._cancel(job_id, "the client went away")
            raise

    def _cancel(self, job_id: str, why: str) -> None:
        """Mark the trace cancelled (a queued one is never claimed; a running one's worker kills it at its next
        heartbeat). A short blocking call: it must also work while the request's task is being cancelled."""
        with contextlib.suppress(StoreUnavailable):
            self.store.finish(job_id, "cancelled", error=f"cancelled: {why}", progress_text="cancelled")
