"""Bounded execution of traces for the API: a worker process, a timeout, a concurrency limit, a cache.

A trace imports torch/transformers/PEFT/bitsandbytes (seconds) and runs a model's whole step (seconds
to a minute for the largest catalog models), so it runs in a separate process that is killed and
replaced when it overruns ``timeout_s``. At most ``concurrency`` traces run at once; further requests
get 429 instead of queueing without bound. Results are cached by the request's canonical JSON.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from app.core.request import PlanRequest

CACHE_SIZE = 128


class TraceBusy(Exception):
    """Every trace slot is taken."""


class TraceTimeout(Exception):
    """The trace ran past the configured timeout and its worker was stopped."""


class TraceUnsupported(Exception):
    """The trace engine cannot run this request (message says why)."""


def _run(request_json: str) -> dict[str, Any]:
    """Worker-process entry point: run one trace and return plain data."""
    from app.trace.engine import UnsupportedStep, run_trace

    try:
        result = run_trace(PlanRequest.model_validate_json(request_json))
    except UnsupportedStep as exc:
        return {"unsupported": str(exc)}
    return result.as_dict()


class TraceService:
    def __init__(self, timeout_s: float, concurrency: int) -> None:
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(max_workers=self.concurrency,
                                                 mp_context=multiprocessing.get_context("spawn"))
        return self._executor

    def _kill_pool(self) -> None:
        if self._executor is not None:
            for proc in list(getattr(self._executor, "_processes", {}).values()):
                proc.kill()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def trace(self, req: PlanRequest) -> tuple[dict[str, Any], bool]:
        """(result, cached). Raises TraceBusy, TraceTimeout or TraceUnsupported."""
        key = req.model_dump_json()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key], True
        if self._slots.locked():
            raise TraceBusy(f"all {self.concurrency} trace slot(s) are busy; retry shortly")
        async with self._slots:
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._pool(), _run, key)
            try:
                result = await asyncio.wait_for(future, timeout=self.timeout_s)
            except TimeoutError:
                self._kill_pool()
                raise TraceTimeout(f"the trace ran past {self.timeout_s:g} s and was stopped") from None
        if "unsupported" in result:
            raise TraceUnsupported(result["unsupported"])
        self._cache[key] = result
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return result, False

    def close(self) -> None:
        self._kill_pool()
