"""Real processes for fleet tests: uvicorn API replicas and ``peft-planner worker`` processes on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .serving import ROOT, free_port

AUTH = {"Authorization": "Bearer t"}


class Proc:
    """A child process with its log file; ``kill9`` is the crash, ``stop`` the polite end."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                          stderr=subprocess.STDOUT)

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.kill9()


class Api(Proc):
    def __init__(self, env: dict[str, str], workdir: Path, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port",
                          str(self.port)], env, workdir / f"{name}.log")
        deadline = time.monotonic() + 120
        while True:
            assert self.popen.poll() is None, f"uvicorn exited: {self.log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"no /healthz in 120 s: {self.log.read_text()[-3000:]}"
                time.sleep(0.2)

    def call(self, method: str, path: str, body: Any = None, retry_s: float = 60) -> Any:
        """JSON over HTTP; a 503 (database restarting) or a refused connection is retried for ``retry_s``."""
        deadline = time.monotonic() + retry_s
        while True:
            data = json.dumps(body).encode() if body is not None else None
            req = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={**AUTH, "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return json.loads(r.read())
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or time.monotonic() > deadline:
                    raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:2000]!r}") from None
            except urllib.error.URLError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.3)

    def page(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return r.read().decode()


class Worker(Proc):
    def __init__(self, env: dict[str, str], workdir: Path, name: str, gpu: str) -> None:
        self.name, self.gpu = name, gpu
        super().__init__([sys.executable, "-m", "app.cli", "worker", "--gpu", gpu, "--name", name], env,
                         workdir / f"{name}.log")


def wait_for(check: Any, limit_s: float, what: str, every_s: float = 0.3) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {limit_s:g} s waiting for {what}"
        time.sleep(every_s)
