"""Bounded pools for heavy requests: at most ``workers`` run at once, at most ``queue`` wait, the rest get 429.

A job runs in a thread and is handed a ``check()`` callable that it calls between units of work (the fit
searches call it before every ``estimate``): ``check()`` raises once the job is past its time budget (→ 504)
or once the job was cancelled because its client went away or the server is shutting down. Pure-Python work
in a thread cannot be interrupted from outside; with a check every ≤ 0.2 s (one estimate at the config
limits, docs/limits.md) it stops soon after.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import HTTPException, Request

from app.errors import api_error

T = TypeVar("T")
POLL_S = 0.1
"""How often a waiting request checks whether its client disconnected or the server is stopping (seconds)."""

STOPPING = threading.Event()
"""Set when the server got SIGTERM/SIGINT (:func:`watch_exit_signals`): heavy work in flight stops and answers 503
at once instead of holding the graceful shutdown until uvicorn cuts the connection."""


def watch_exit_signals() -> None:
    """Chain a handler in front of the server's SIGTERM/SIGINT handlers (uvicorn's, installed before the app's
    startup) that sets :data:`STOPPING`. Only possible on the main thread (not under TestClient)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: Any, previous: Any = previous) -> None:
            STOPPING.set()
            if callable(previous):
                previous(sig, frame)

        signal.signal(signum, handler)


def shutting_down() -> HTTPException:
    return api_error(503, [], "the server is shutting down; retry on its replacement", "shutting_down")


class Cancelled(Exception):
    """The job's client went away or the server is shutting down."""


class OverBudget(Exception):
    """The job ran past its time budget."""


class ClientGone(Exception):
    """The client disconnected before the answer was ready; nothing is sent."""


class HeavyPool:
    def __init__(self, name: str, workers: int, queue: int, timeout_s: float | None) -> None:
        self.name, self.workers, self.queue, self.timeout_s = name, workers, queue, timeout_s
        self._limiter = anyio.CapacityLimiter(workers)
        self._pending = 0
        self._live: set[threading.Event] = set()

    @property
    def pending(self) -> int:
        """Jobs running or queued now."""
        return self._pending

    async def run(self, request: Request | None, job: Callable[[Callable[[], None]], T]) -> T:
        """Run ``job(check)`` in the pool. Raises HTTP 429 when full, 504 past the budget, ClientGone."""
        if self._pending >= self.workers + self.queue:
            raise api_error(429, [], f"{self.name}: {self.workers} running and {self.queue} queued already; "
                            "retry shortly", "busy", headers={"Retry-After": "1"})
        self._pending += 1
        cancel = threading.Event()
        self._live.add(cancel)
        budget = self.timeout_s

        def call() -> T:
            # the clock starts when a worker picks the job up; no budget: only cancellation stops the job
            deadline = time.monotonic() + budget if budget is not None else float("inf")

            def check() -> None:
                if cancel.is_set():
                    raise Cancelled
                if time.monotonic() > deadline:
                    raise OverBudget

            check()
            return job(check)

        work = asyncio.ensure_future(anyio.to_thread.run_sync(call, limiter=self._limiter))
        work.add_done_callback(_retrieve)  # an abandoned job's Cancelled is expected, not "never retrieved"
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=POLL_S)
                if done:
                    break
                if STOPPING.is_set():
                    cancel.set()
                    raise shutting_down()
                if request is not None and await request.is_disconnected():
                    cancel.set()
                    raise ClientGone
            try:
                return work.result()
            except OverBudget:
                raise api_error(504, [], f"{self.name} ran past its budget of {budget:g} s and was stopped",
                                "timeout") from None
            except Cancelled:
                raise ClientGone from None
        finally:
            cancel.set()  # a no-op when the job has finished; otherwise it stops at its next check()
            self._live.discard(cancel)
            self._pending -= 1

    def close(self) -> None:
        """Shutdown: every running job stops at its next check()."""
        for cancel in list(self._live):
            cancel.set()


def _retrieve(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()
