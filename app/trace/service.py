"""Bounded execution of traces for the API: a supervised worker process, a timeout, a queue limit, a cache.

A trace imports torch/transformers/PEFT/bitsandbytes (10–13 s) and runs a model's whole step (seconds to a
minute for the largest catalog models), so it runs in a separate process. The imports happen once, when a
worker starts (``initializer``), and a new pool is awaited ready before any trace is submitted, so
``timeout_s`` counts the trace only. A trace that overruns ``timeout_s`` has its worker killed; a worker that
dies (killed, out of memory) is replaced by a fresh pool on the next trace. Workers die with the server
(app/supervision.py). At most ``concurrency`` traces run and ``queue`` wait; further requests get 429.
Results are cached by the request's canonical JSON.

With a fleet (``fleet``: :class:`app.jobs.traces.FleetTraces`, PostgreSQL configured) a trace goes to the
workers' shared queue instead when ``offload`` is ``always``; with ``busy``, when every local worker is taken,
live worker slots take traces, and the fleet has fewer traces waiting per slot than this process has per
local worker (or the local queue is full): each trace waits where fewer are ahead of it. The answer is the
same either way.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.core.request import PlanRequest

if TYPE_CHECKING:
    from app.jobs.traces import FleetTraces

CACHE_SIZE = 128


class TraceBusy(Exception):
    """Every trace slot and queue place is taken."""


class TraceTimeout(Exception):
    """The trace ran past the configured timeout and its worker was stopped."""


class TraceUnsupported(Exception):
    """The trace engine cannot run this request (message says why)."""


class TraceWorkerDied(Exception):
    """The worker process died during this trace; the next trace gets a fresh one."""


class TraceNoWorker(Exception):
    """No fleet worker took the queued trace in time (it was cancelled)."""


def _start_worker() -> None:
    """Worker initializer: die with the server, then import the heavy libraries before any trace is timed."""
    from app.supervision import die_with_parent

    die_with_parent()
    import bitsandbytes  # noqa: F401  (app/trace/engine.py imports these lazily, inside the step)
    import peft  # noqa: F401
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: F401

    import app.trace.engine  # noqa: F401  (torch)


def _ready() -> int:
    """A no-op task: when it returns, its worker has finished :func:`_start_worker`."""
    return os.getpid()


def run_trace_json(request_json: str) -> dict[str, Any]:
    """Worker-process entry point (this service's pool, and ``peft-planner worker`` for a fleet's traces): run
    one trace and return plain data; ``{"unsupported": why}`` when the engine cannot run the request."""
    from app.trace.engine import UnsupportedStep, run_trace

    try:
        result = run_trace(PlanRequest.model_validate_json(request_json))
    except UnsupportedStep as exc:
        return {"unsupported": str(exc)}
    return result.as_dict()


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (``/proc/<pid>/stat``): a killed worker counts as dead before its
    pool's management thread has reaped it and marked the pool broken."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


class TraceService:
    def __init__(self, timeout_s: float, concurrency: int, queue: int = 0, import_timeout_s: float = 300.0,
                 fleet: FleetTraces | None = None, offload: Literal["never", "busy", "always"] = "busy") -> None:
        self.fleet, self.offload = fleet, offload
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.queue = queue
        self.import_timeout_s = import_timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting = 0
        self._on_workers = 0  # this process's traces on the fleet now
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._executor: ProcessPoolExecutor | None = None

    def worker_pids(self) -> list[int]:
        """Process ids of the live trace workers (for supervision tests and operators)."""
        if self._executor is None:
            return []
        return [p.pid for p in getattr(self._executor, "_processes", {}).values() if p.is_alive() and _running(p.pid)]

    async def _pool(self) -> ProcessPoolExecutor:
        """A pool whose workers have imported the libraries; a broken one (dead worker) is replaced."""
        if self._executor is not None and (getattr(self._executor, "_broken", False)
                                           or len(self.worker_pids()) < self.concurrency):
            self._kill_pool()  # a worker died while idle: its pool may not have noticed yet
        if self._executor is None:
            executor = ProcessPoolExecutor(max_workers=self.concurrency, initializer=_start_worker,
                                           mp_context=multiprocessing.get_context("spawn"))
            loop = asyncio.get_running_loop()
            try:
                await asyncio.wait_for(asyncio.gather(*(loop.run_in_executor(executor, _ready)
                                                        for _ in range(self.concurrency))),
                                       timeout=self.import_timeout_s)
            except (TimeoutError, BrokenProcessPool) as exc:
                self._executor = executor
                self._kill_pool()
                raise TraceWorkerDied(f"a new trace worker did not import its libraries within "
                                      f"{self.import_timeout_s:g} s" if isinstance(exc, TimeoutError) else
                                      "a new trace worker died while importing its libraries") from None
            self._executor = executor
        return self._executor

    def _kill_pool(self) -> None:
        if self._executor is not None:
            for proc in list(getattr(self._executor, "_processes", {}).values()):
                proc.kill()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def _on_fleet(self) -> bool:
        """Whether this trace goes to the fleet's workers (see the module docstring). The caller acts on the
        answer before it next awaits, so concurrent requests see each other's choices in ``_waiting`` and
        ``_on_workers`` (the database's count may not show this process's latest submissions yet)."""
        if self.fleet is None or self.offload == "never":
            return False
        if self.offload == "always":
            return True
        if not self._slots.locked():
            return False
        slots, active = await self.fleet.load()
        if slots == 0:
            return False
        fleet_ahead = (max(active, self._on_workers) - slots) / slots  # negative: a worker slot is free
        return fleet_ahead < self._waiting / self.concurrency or self._waiting >= self.queue

    async def trace(self, req: PlanRequest) -> tuple[dict[str, Any], bool]:
        """(result, cached). Raises TraceBusy, TraceTimeout, TraceUnsupported, TraceWorkerDied or (fleet)
        TraceNoWorker."""
        key = req.model_dump_json()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key], True
        if await self._on_fleet():
            self._on_workers += 1
            try:
                result, cached = await self.fleet.trace(key)
            finally:
                self._on_workers -= 1
        else:
            result, cached = await self._local(key), False
        if "unsupported" in result:
            raise TraceUnsupported(result["unsupported"])
        self._cache[key] = result
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result, cached

    async def _local(self, key: str) -> dict[str, Any]:
        """Run the trace of ``key`` in this process's pool."""
        if self._slots.locked() and self._waiting >= self.queue:
            raise TraceBusy(f"all {self.concurrency} trace worker(s) are busy and {self.queue} trace(s) wait; "
                            "retry shortly")
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            pool = await self._pool()
            future = asyncio.get_running_loop().run_in_executor(pool, run_trace_json, key)
            try:
                result = await asyncio.wait_for(future, timeout=self.timeout_s)
            except TimeoutError:
                self._kill_pool()
                raise TraceTimeout(f"the trace ran past {self.timeout_s:g} s and was stopped") from None
            except BrokenProcessPool:
                self._kill_pool()
                raise TraceWorkerDied("the trace worker process died during this trace (killed or out of "
                                      "memory); it is replaced on the next request") from None
            except asyncio.CancelledError:  # the client went away or the server is shutting down
                self._kill_pool()
                raise
        finally:
            self._slots.release()
        return result

    def close(self) -> None:
        self._kill_pool()
