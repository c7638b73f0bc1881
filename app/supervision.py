"""Child processes die with the server: the parent-death signal, set in each worker process at its start.

``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (Linux, ``man 2 prctl``) asks the kernel to SIGKILL this process when the
thread that forked it exits, which includes a ``kill -9`` of the server. Elsewhere (no prctl) a watchdog thread
polls the parent pid and exits the process when it changes (reparented to init).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCHDOG_POLL_S = 1.0


def die_with_parent() -> None:
    """Call first thing in a multiprocessing worker (``initializer`` / process target). The expected parent is
    the process that started this one (``multiprocessing.parent_process()``), so a server that died while this
    process was still starting up is noticed too."""
    started_by = multiprocessing.parent_process()
    parent = started_by.pid if started_by is not None and started_by.pid is not None else os.getppid()
    armed = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        threading.Thread(target=_watch, args=(parent,), name="parent-watchdog", daemon=True).start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCHDOG_POLL_S)
    os._exit(1)
