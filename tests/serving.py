"""A real uvicorn serving app.main:app on a free 127.0.0.1 port, for tests that go over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uvicorn_command(port: int) -> list[str]:
    """uvicorn on 127.0.0.1:``port`` as `make run` starts it (bounded graceful shutdown)."""
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
            "--timeout-graceful-shutdown", "10"]


@contextmanager
def running_server(workdir: Path, env: dict[str, str] | None = None, timeout_s: float = 60) -> Iterator[str]:
    """Start uvicorn (log and SQLite database under ``workdir``), wait for /healthz, yield its URL, stop it."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PEFT_PLANNER_DATABASE_PATH": str(workdir / "planner.sqlite3"), **(env or {})}
    log = workdir / "uvicorn.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(uvicorn_command(port), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"uvicorn exited with {proc.returncode}: {log.read_text()}")
                try:
                    with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"uvicorn did not answer /healthz in {timeout_s:g} s: {log.read_text()}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
