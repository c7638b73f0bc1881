"""Warm CPU slots: one long-lived spawned process runs a slot's CPU calibrations one after another.

A fresh process per job costs the import of torch/transformers/PEFT/bitsandbytes (seconds; most of a tiny
CPU calibration). On CPU the measured bytes come from a live-storage counter that is reset for each run
(:mod:`app.calibration.measure`), so a reused process measures the same bytes (tests/test_fleet.py checks
each job against the trace engine to the byte). CUDA slots keep a fresh process per job: the caching
allocator's reserved bytes and the device memory in use are part of the measurement there.

The warm process is killed like a fresh one (cancel, timeout, shutdown) and started again for the next job.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from app.calibration.worker import DeviceWorker, _child, job_args


def _serve(inbox: Any, out: Any) -> None:
    """Warm process: run each job from ``inbox`` with :func:`_child` (None ends it). Dies with its parent.

    After the imports and after each job, what survives a full collection (modules, lazy-import caches) is
    moved to the permanent generation (``gc.freeze``): the step's own ``gc.collect()`` calls then scan only
    what the job allocates (with transformers imported a full scan takes seconds on a loaded machine)."""
    import ctypes
    import gc
    import signal
    import sys

    if sys.platform == "linux":  # PR_SET_PDEATHSIG = 1 (prctl(2)): a kill -9 of the worker ends this too
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    import bitsandbytes  # noqa: F401  (the imports every job needs, before the first freeze)
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import app.calibration.measure
    import app.trace.engine  # noqa: F401  (a fleet's traces: their clock starts after the imports, as in the API)

    gc.collect()
    gc.freeze()
    while (item := inbox.get()) is not None:
        _child(*item, out)
        gc.collect()
        gc.freeze()


class WarmDeviceWorker(DeviceWorker):
    """:class:`DeviceWorker` whose jobs share one spawned process until it is killed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._proc: Any = None
        self._inbox: Any = None
        self._out: Any = None

    def _ensure(self) -> None:
        """Start the warm process unless it runs (it imports while the slot waits for a job)."""
        if self._proc is None or not self._proc.is_alive():
            ctx = multiprocessing.get_context("spawn")
            self._inbox, self._out = ctx.Queue(), ctx.Queue()
            self._proc = ctx.Process(target=_serve, name=f"calibration-{self.device}", daemon=True,
                                     args=(self._inbox, self._out))
            self._proc.start()

    def _launch(self, job: dict[str, Any]) -> tuple[Any, Any]:
        self._ensure()
        self._inbox.put(job_args(job))
        return self._proc, self._out

    def _release(self, proc: Any, out: Any) -> None:
        if not proc.is_alive():  # killed (cancel, timeout, shutdown) or crashed: start the next one now
            self._shutdown()
            if not self.stopping.is_set():
                self._ensure()

    def _shutdown(self) -> None:
        if self._proc is None:
            return
        if self._proc.is_alive():
            self._kill(self._proc)
        self._proc.join(timeout=5)
        for queue in (self._inbox, self._out):
            queue.close()
            queue.cancel_join_thread()
        self._proc = self._inbox = self._out = None

    def run(self) -> None:
        try:
            self._ensure()
            super().run()
        finally:
            self._shutdown()


def worker_class(device: str) -> type[DeviceWorker]:
    """Warm slots for ``cpu``, a fresh process per job on CUDA (see the module docstring)."""
    return WarmDeviceWorker if device == "cpu" else DeviceWorker
