"""A model's ``config.json`` from the Hugging Face Hub, for ``model: "org/name"`` ids outside the catalog.

Network through ``huggingface_hub`` only, so its environment applies: ``HF_ENDPOINT`` (the Hub or a mirror),
``HF_TOKEN`` (gated and private repos), ``HF_HUB_OFFLINE`` (cache only) and ``HF_HOME`` / ``HF_HUB_CACHE``
(the on-disk cache, shared with transformers). The protocol followed is huggingface_hub 2.4.0's
``file_download.py``: a ``HEAD {endpoint}/{repo}/resolve/{revision}/config.json`` answered with
``X-Repo-Commit``, ``ETag`` and the size, then ``hf_hub_download`` (GET into the cache).

Bounds: one HEAD without retries (``get_hf_file_metadata(retry_on_errors=False)``, ``hub_timeout_s``), the
file refused over ``hub_max_config_bytes`` before it is downloaded (and again on disk), then an in-process LRU
(``hub_cache_size`` entries, ``hub_cache_ttl_s``) on top of huggingface_hub's disk cache; with
``PEFT_PLANNER_DATABASE_URL`` a table in PostgreSQL between the two, shared by API replicas
(:class:`app.models.shared_cache.PgHubCache`, same ``hub_cache_ttl_s``). When the Hub cannot
be reached (network error, timeout, 5xx, offline mode) the cached copy is used, as ``hf_hub_download`` itself
does; without one the request is refused.

Every failure is a :class:`PlanError` on ``("model",)`` (HTTP 422) that says what to do: set ``HF_TOKEN``,
fix the id, or paste the config.json. See docs/hub.md.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.catalog import did_you_mean, suggest_models
from app.core.errors import PlanError
from app.settings import Settings, get_settings

COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
PASTE = 'or paste the model\'s config.json ({"model": {"config": {...}}}, or the page\'s config field)'


@dataclass(frozen=True)
class HubConfig:
    repo_id: str
    revision: str  # as asked ("main" when not given)
    commit_sha: str | None  # the commit the file was read at (huggingface_hub's snapshot folder)
    config: dict[str, Any]
    origin: str  # the URL it was read from, or the cache path and why the cache was used


def hub_error(repo_id: str, message: str) -> PlanError:
    """A 422 on ``model`` for a Hub id the Hub could not answer, with catalog suggestions (case, Base/Instruct
    variants, mirrors: :func:`app.core.catalog.suggest_models`)."""
    return PlanError(("model",), f"{repo_id!r} is not a catalog model;{did_you_mean(suggest_models(repo_id))} "
                                 f"from the Hub: {message}")


def _token_set() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def _http_refusal(exc: Exception, repo_id: str, revision: str) -> PlanError | None:
    """The PlanError for an answer of the Hub that the cache must not paper over (None: a connectivity issue)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(exc, "response", None), "status_code", None)
    token = "HF_TOKEN is set but its account has no access" if _token_set() else "HF_TOKEN is not set"
    if isinstance(exc, GatedRepoError):
        return hub_error(repo_id, f"a gated repository ({token}): accept its terms on the Hub and set HF_TOKEN to a "
                               f"token with access, {PASTE}")
    if isinstance(exc, RepositoryNotFoundError):
        if status == 401:
            return hub_error(repo_id, f"no such model on the Hub, or a private/gated one ({token}): check the id; "
                                      f"if it is private, set HF_TOKEN, {PASTE}")
        return hub_error(repo_id, f"no such model on the Hub: check the id (GET /api/v1/models lists the catalog), "
                               f"{PASTE}")
    if isinstance(exc, RevisionNotFoundError):
        return hub_error(repo_id, f"the Hub has no revision {revision!r} of this model: use a branch, tag or commit "
                               "it has (or no '@revision' for main)")
    if isinstance(exc, RemoteEntryNotFoundError):
        return hub_error(repo_id, f"this repository has no config.json at {revision!r} (not a transformers model?): "
                               f"{PASTE}")
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return hub_error(repo_id, f"the Hub refused access (HTTP {status}; {token}): set HF_TOKEN to a token with "
                               f"access, {PASTE}")
    return None


def _read(path: str, repo_id: str, max_bytes: int) -> dict[str, Any]:
    file = Path(path)
    size = file.stat().st_size
    if size > max_bytes:
        raise hub_error(repo_id, f"its config.json is {size} bytes, over the {max_bytes}-byte limit "
                              f"(PEFT_PLANNER_HUB_MAX_CONFIG_BYTES): {PASTE}")
    try:
        data = json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise hub_error(repo_id, f"its config.json is not valid JSON ({exc}): {PASTE}") from None
    if not isinstance(data, dict):
        raise hub_error(repo_id, f"its config.json is not a JSON object: {PASTE}")
    return data


def _snapshot_commit(path: str) -> str | None:
    """huggingface_hub's cache keeps files under ``snapshots/<commit sha>/``: the commit the file was read at."""
    name = Path(path).parent.name
    return name if COMMIT_SHA.fullmatch(name) else None


def fetch_config(repo_id: str, revision: str | None, timeout_s: float, max_bytes: int) -> HubConfig:
    """Download (or read from the cache) ``config.json`` of a Hub model repo; :class:`PlanError` when it cannot."""
    import httpx2
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import LocalEntryNotFoundError

    rev = revision or constants.DEFAULT_REVISION
    url = hf_hub_url(repo_id, "config.json", revision=rev)

    def from_cache(why: str) -> HubConfig:
        try:
            path = hf_hub_download(repo_id, "config.json", revision=rev, local_files_only=True)
        except LocalEntryNotFoundError:
            raise hub_error(repo_id, f"cannot fetch its config.json ({why}) and huggingface_hub's cache (HF_HOME) has "
                                  f"no copy: retry when {constants.ENDPOINT} is reachable, {PASTE}") from None
        return HubConfig(repo_id, rev, _snapshot_commit(path), _read(path, repo_id, max_bytes),
                         f"huggingface_hub cache {path} ({why})")

    if constants.is_offline_mode():
        return from_cache("HF_HUB_OFFLINE is set")
    try:
        meta = get_hf_file_metadata(url, timeout=timeout_s, retry_on_errors=False)
        if meta.size is not None and meta.size > max_bytes:
            raise hub_error(repo_id, f"its config.json is {meta.size} bytes, over the {max_bytes}-byte limit "
                                  f"(PEFT_PLANNER_HUB_MAX_CONFIG_BYTES): {PASTE}")
        path = hf_hub_download(repo_id, "config.json", revision=rev, etag_timeout=timeout_s)
    except (httpx2.HTTPError, OSError) as exc:
        refusal = _http_refusal(exc, repo_id, rev)
        if refusal is not None:
            raise refusal from None
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return from_cache(f"{constants.ENDPOINT} answered HTTP {status}" if status else
                          f"{constants.ENDPOINT} unreachable: {type(exc).__name__}")
    commit = _snapshot_commit(path) or meta.commit_hash
    return HubConfig(repo_id, rev, commit, _read(path, repo_id, max_bytes),
                     hf_hub_url(repo_id, "config.json", revision=commit or rev))


class _TtlLru:
    """A small thread-safe LRU whose entries expire after ``ttl_s`` seconds (a branch can move on the Hub)."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[str, ...], tuple[float, HubConfig]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...], ttl_s: float) -> HubConfig | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None or time.monotonic() - hit[0] > ttl_s:
                return None
            self._items.move_to_end(key)
            return hit[1]

    def put(self, key: tuple[str, ...], value: HubConfig, size: int) -> None:
        with self._lock:
            self._items[key] = (time.monotonic(), value)
            self._items.move_to_end(key)
            while len(self._items) > size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_CACHE = _TtlLru()


def hub_config(repo_id: str, revision: str | None = None) -> HubConfig:
    """:func:`fetch_config` behind the in-process LRU and, with a database URL, the replicas' shared table (keyed
    by endpoint, repo and revision; failures are not cached). Bounds from :class:`app.settings.Settings`
    (``PEFT_PLANNER_HUB_*``)."""
    from huggingface_hub import constants

    settings = get_settings()
    key = (constants.ENDPOINT, repo_id, revision or constants.DEFAULT_REVISION)
    hit = _CACHE.get(key, settings.hub_cache_ttl_s)
    if hit is None:
        shared = _shared_cache(settings)
        hit = shared.get(key, settings.hub_cache_ttl_s) if shared is not None else None
        if hit is None:
            hit = fetch_config(repo_id, revision, settings.hub_timeout_s, settings.hub_max_config_bytes)
            if shared is not None:
                shared.put(key, hit)
        if settings.hub_cache_size:
            _CACHE.put(key, hit, settings.hub_cache_size)
    return hit


def _shared_cache(settings: Settings) -> Any:
    """The replicas' shared cache (:class:`app.models.shared_cache.PgHubCache`) when a database URL is set."""
    if not settings.database_url:
        return None
    from app.jobs import pg_store
    from app.models.shared_cache import PgHubCache

    return PgHubCache(pg_store(settings))
