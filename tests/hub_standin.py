"""A stand-in Hugging Face Hub on 127.0.0.1: the two requests ``hf_hub_download`` makes for one file.

Protocol as huggingface_hub 2.4.0 reads it (``file_download.get_hf_file_metadata``, ``_get_metadata_or_catch_error``,
``http_get``; ``utils/_http.hf_raise_for_status``):

- ``HEAD /{org}/{name}/resolve/{revision}/config.json`` → 200 with ``X-Repo-Commit`` (the commit sha),
  ``ETag`` (the blob id: the cache stores the blob under it) and ``Content-Length``; no body;
- ``GET`` of the same URL → the bytes;
- errors carry ``X-Error-Code`` as the real Hub sends it: ``RepoNotFound`` (401 without a token, the Hub's answer
  for private and missing repos; 404 here for a repo this stand-in has never heard of), ``GatedRepo`` (401 without
  a token, 403 with a token that has no access), ``RevisionNotFound`` (404), ``EntryNotFound`` (404 with
  ``X-Repo-Commit``).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

GOOD_TOKEN = "hf_standin_good_token"


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str
    access: str = "public"  # public | gated | private
    branches: tuple[str, ...] = ("main",)
    delay_s: float = 0.0  # answer this late (a Hub that hangs)


def config_repo(config: dict[str, Any], commit_seed: str, access: str = "public", delay_s: float = 0.0) -> Repo:
    body = json.dumps(config, indent=2).encode()
    return Repo({"config.json": body}, hashlib.sha1(commit_seed.encode()).hexdigest(), access, delay_s=delay_s)


@dataclass
class StandInHub:
    repos: dict[str, Repo]
    url: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request seen


def _handler(hub: StandInHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
            pass

        def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET" and body:
                self.wfile.write(body)

        def _error(self, status: int, code: str, extra: dict[str, str] | None = None) -> None:
            self._answer(status, {"X-Error-Code": code, "X-Error-Message": code, **(extra or {})},
                         json.dumps({"error": code}).encode())

        def _serve(self) -> None:
            hub.requests.append((self.command, self.path))
            parts = self.path.split("?")[0].split("/")
            # ['', org, name, 'resolve', revision, *filename]
            if len(parts) < 6 or parts[3] != "resolve":
                self._error(404, "RepoNotFound")
                return
            repo_id, revision, filename = f"{parts[1]}/{parts[2]}", unquote(parts[4]), "/".join(parts[5:])
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound")
                return
            time.sleep(repo.delay_s)
            auth = self.headers.get("Authorization", "")
            if repo.access != "public" and auth != f"Bearer {GOOD_TOKEN}":
                if repo.access == "gated":
                    self._error(403 if auth else 401, "GatedRepo")
                else:
                    self._error(401, "RepoNotFound")
                return
            if revision not in (*repo.branches, repo.commit):
                self._error(404, "RevisionNotFound")
                return
            body = repo.files.get(filename)
            if body is None:
                self._error(404, "EntryNotFound", {"X-Repo-Commit": repo.commit})
                return
            blob = hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()  # git's blob id, as the Hub's ETag
            self._answer(200, {"X-Repo-Commit": repo.commit, "ETag": f'"{blob}"',
                               "Content-Type": "application/json"}, body)

        do_HEAD = _serve
        do_GET = _serve

    return Handler


@contextmanager
def running_hub(repos: dict[str, Repo]) -> Iterator[StandInHub]:
    """Serve ``repos`` on a free 127.0.0.1 port in a thread; yields the hub (``.url`` is its HF_ENDPOINT)."""
    hub = StandInHub(repos)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
