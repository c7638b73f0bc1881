"""app/pool.py: the bounded pool for heavy requests (queue limit → 429, time budget → 504, a client that goes
away stops its job)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from fastapi import HTTPException

from app.pool import ClientGone, HeavyPool


class _Client:
    """The one method HeavyPool asks of a request: whether its client has gone (after ``gone_after_s``)."""

    def __init__(self, gone_after_s: float | None = None) -> None:
        self.started = time.monotonic()
        self.gone_after_s = gone_after_s

    async def is_disconnected(self) -> bool:
        return self.gone_after_s is not None and time.monotonic() - self.started > self.gone_after_s


def _spin(stopped: threading.Event, limit_s: float = 30) -> Callable[[Callable[[], None]], str]:
    """A job that works in small steps, calling check() between them, until stopped (or limit_s)."""
    def job(check: Callable[[], None]) -> str:
        deadline = time.monotonic() + limit_s
        try:
            while time.monotonic() < deadline:
                check()
                time.sleep(0.01)
            return "done"
        finally:
            stopped.set()
    return job


def test_a_gone_client_stops_its_job() -> None:
    stopped = threading.Event()
    pool = HeavyPool("fit", workers=1, queue=0, timeout_s=60)

    async def main() -> None:
        with pytest.raises(ClientGone):
            await pool.run(_Client(gone_after_s=0.3), _spin(stopped))  # type: ignore[arg-type]

    started = time.monotonic()
    asyncio.run(main())
    assert stopped.wait(5), "the job kept running after its client went away"
    assert time.monotonic() - started < 10 and pool.pending == 0


def test_past_the_budget_is_504_and_full_is_429() -> None:
    stopped = threading.Event()
    pool = HeavyPool("fit", workers=1, queue=1, timeout_s=0.5)

    async def main() -> list[int]:
        jobs = [asyncio.create_task(pool.run(_Client(), _spin(stopped))) for _ in range(3)]  # type: ignore[arg-type]
        out = []
        for job in jobs:
            try:
                await job
                out.append(200)
            except HTTPException as exc:
                out.append(exc.status_code)
                assert exc.detail[0]["type"] in ("busy", "timeout")
        return out

    # one runs (504 after 0.5 s), one waits then runs (504), the third finds both places taken (429)
    assert sorted(asyncio.run(main())) == [429, 504, 504]
