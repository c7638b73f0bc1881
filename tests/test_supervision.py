"""Fault tests: kill -9 of each worker kind and of the server, SIGTERM, restart. Nothing is left running,
nothing is lost, the next request is served. Real uvicorn processes on 127.0.0.1 (tests/serving.py)."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.calibration.store import JobStore
from app.main import create_app
from app.settings import Settings, get_settings

from .conftest import TINY_CONFIGS
from .serving import ROOT, free_port, uvicorn_command

pytestmark = pytest.mark.slow

TRACE_BODY = {"model": {"config": TINY_CONFIGS["qwen3"]}, "method": "lora", "lora": {"r": 4},
              "training": {"micro_batch_size": 1, "seq_len": 32}}
CAL_BODY = {"model": {"config": TINY_CONFIGS["llama"]}, "method": "lora", "lora": {"r": 4},
            "training": {"micro_batch_size": 1, "seq_len": 32}, "measure_steps": 2}


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - out
        out |= frontier
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _wait_gone(pids: set[int], limit_s: float = 20) -> set[int]:
    deadline = time.monotonic() + limit_s
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(pids)


def _request(url: str, method: str = "GET", body: Any = None, token: str | None = None,
             timeout: float = 300) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Server:
    """uvicorn as `make run` starts it, with kill/terminate under the test's control."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PEFT_PLANNER_DATABASE_PATH": str(workdir / "planner.sqlite3"),
               "PEFT_PLANNER_TOKEN": "t", "PEFT_PLANNER_TRACE_TIMEOUT_S": "300"}
        self.log = (workdir / f"uvicorn-{self.port}.log").open("wb")
        self.proc = subprocess.Popen(uvicorn_command(self.port), cwd=ROOT, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if _request(self.url + "/healthz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.1)

    def wait_for_child(self, limit_s: float = 120) -> set[int]:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            kids = {p for p in _children(self.proc.pid) if b"multiprocessing" in _cmdline(p)}
            if kids:
                return kids
            time.sleep(0.2)
        raise AssertionError("no worker process appeared")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.log.close()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _in_background(fn: Any) -> threading.Thread:
    """Run a request in a thread; the server may be killed under it (a dropped connection is expected)."""

    def quietly() -> None:
        with contextlib.suppress(OSError, ValueError):
            fn()

    t = threading.Thread(target=quietly, daemon=True)
    t.start()
    return t


def test_kill9_server_takes_its_workers_and_restart_keeps_the_jobs(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        status, job = _request(server.url + "/api/v1/calibrations", "POST", CAL_BODY, token="t")
        assert status == 202
        _in_background(lambda: _request(server.url + "/api/v1/trace", "POST", TRACE_BODY, timeout=120))
        workers = server.wait_for_child()
        time.sleep(1.0)  # let the second worker kind start too
        workers |= {p for p in _children(server.proc.pid) if b"multiprocessing" in _cmdline(p)}
        everything = _children(server.proc.pid)
        server.proc.kill()  # kill -9: no lifespan shutdown runs
        server.proc.wait(timeout=10)
        assert _wait_gone(everything) == set(), "children outlived a kill -9 of the server"
    finally:
        server.stop()
    restarted = Server(tmp_path)
    try:
        status, after = _request(restarted.url + f"/api/v1/calibrations/{job['id']}")
        assert status == 200 and after["status"] in ("interrupted", "queued", "running", "done")  # not lost
        assert _request(restarted.url + "/api/v1/estimate", "POST", {"model": "openai-community/gpt2",
                                                                       "training": {"seq_len": 512}})[0] == 200
    finally:
        restarted.stop()


def test_sigterm_is_graceful_bounded_and_leaves_nothing(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        answers: list[tuple[int, Any]] = []
        _in_background(lambda: answers.append(_request(server.url + "/api/v1/trace", "POST", TRACE_BODY)))
        server.wait_for_child()
        everything = _children(server.proc.pid)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=60)
        assert time.monotonic() - started < 15  # the trace in flight does not hold the shutdown
        deadline = time.monotonic() + 5
        while not answers and time.monotonic() < deadline:
            time.sleep(0.1)
        assert answers and answers[0][0] == 503, answers  # told, not cut off
        assert answers[0][1]["detail"][0]["type"] == "shutting_down"
        assert _wait_gone(everything) == set(), "children outlived SIGTERM"
    finally:
        server.stop()


def test_killed_trace_worker_is_replaced() -> None:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(trace_timeout_s=300)
    with TestClient(app) as client:
        first = client.post("/api/v1/trace", json=copy.deepcopy(TRACE_BODY))
        assert first.status_code == 200, first.text
        service = client.app.state.trace_service
        (pid,) = service.worker_pids()
        os.kill(pid, signal.SIGKILL)
        _wait_gone({pid})
        other = copy.deepcopy(TRACE_BODY)
        other["lora"]["r"] = 8  # not cached: needs a worker
        second = client.post("/api/v1/trace", json=other)
        assert second.status_code == 200, second.text
        assert service.worker_pids() and service.worker_pids() != [pid]
        service.close()


def test_killed_calibration_worker_fails_its_job_and_the_next_job_runs(tmp_path: Path) -> None:
    db = tmp_path / "db.sqlite3"
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(token="t", database_path=db)
    with TestClient(app) as client:
        auth = {"authorization": "Bearer t"}
        first = client.post("/api/v1/calibrations", json=CAL_BODY, headers=auth).json()["id"]
        second = client.post("/api/v1/calibrations", json=CAL_BODY, headers=auth).json()["id"]
        service = client.app.state.calibration_service
        deadline = time.monotonic() + 60
        kids: set[int] = set()
        while not kids and time.monotonic() < deadline:
            kids = {p for p in _children(os.getpid()) if b"multiprocessing" in _cmdline(p)
                    and b"resource_tracker" not in _cmdline(p)}
            time.sleep(0.1)
        assert kids, "the calibration worker process did not start"
        for pid in kids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs = {j: JobStore(db).get(j)["status"] for j in (first, second)}
            if jobs[first] in ("failed", "done") and jobs[second] in ("done", "failed", "oom"):
                break
            time.sleep(0.5)
        assert JobStore(db).get(first)["status"] == "failed"
        assert "exited with code -9" in JobStore(db).get(first)["error"]
        assert JobStore(db).get(second)["status"] == "done"  # the worker thread went on with the next job
        service.close()
