"""The generic path: any model_type transformers 5.24 can build, priced with the core's own machinery.

:func:`ensure_generic` is called (by the API, the page and the CLI) before ``app.core.estimate``. For a
config the hand-written rules cover it does nothing. Otherwise it makes sure the core's registry
(:mod:`app.core.generic`) holds the model's inventory and PEFT's target resolution for the request's LoRA
target spec (both DoRA and plain LoRA, so the page's method comparison and ``fit`` need nothing more):

1. in memory (the registry): free;
2. in the persistent store (SQLite under ``var/``, or PostgreSQL shared by API replicas when
   ``PEFT_PLANNER_DATABASE_URL`` is set: :mod:`app.models.shared_cache`; keyed by sha256 of the canonical
   config, the target spec and the library versions): one indexed read, what a catalog model costs after its
   first parse;
3. else built from the real libraries by :func:`app.models.build.build` in a spawned worker process, one
   build at a time, stopped after ``generic_timeout_s`` and refused beyond ``generic_max_modules``.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, closing, nullcontext
from pathlib import Path
from typing import Any

from app.core.catalog import model_configs
from app.core.errors import PlanError
from app.core.generic import (
    Resolution,
    canonical_json,
    config_key,
    inventory_from_data,
    register,
    registered,
    registered_resolution,
    target_spec,
    uses_rules,
)
from app.core.request import PlanRequest
from app.settings import get_settings

LOCK = threading.Lock()  # one build at a time (a build holds a whole model on meta plus PEFT copies)
_POOL: ProcessPoolExecutor | None = None


def request_config(req: PlanRequest) -> dict[str, Any] | None:
    """The request's config.json (a catalog model's or the pasted one); None for an unknown id."""
    if isinstance(req.model, str):
        return model_configs().get(req.model)
    return req.model.config


class GenericStore:
    """Built inventories and resolutions, persistent across restarts (SQLite, one row per key)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS inventories (key TEXT PRIMARY KEY, data TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS resolutions (key TEXT NOT NULL, target TEXT NOT NULL, "
                       "data TEXT NOT NULL, PRIMARY KEY (key, target))")
            db.execute("CREATE TABLE IF NOT EXISTS peak_fits (key TEXT NOT NULL, settings TEXT NOT NULL, "
                       "bucket INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (key, settings, bucket))")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def load(self, key: str, targets: list[str]) -> tuple[dict[str, Any] | None, dict[str, Resolution]]:
        with closing(self._connect()) as db:
            row = db.execute("SELECT data FROM inventories WHERE key = ?", (key,)).fetchone()
            marks = ",".join("?" * len(targets))
            rows = db.execute(f"SELECT target, data FROM resolutions WHERE key = ? AND target IN ({marks})",
                              (key, *targets)).fetchall()
        return (json.loads(row[0]) if row else None,
                {t: Resolution.from_data(json.loads(d)) for t, d in rows})

    def save(self, key: str, inventory: dict[str, Any] | None, resolutions: dict[str, dict[str, Any]]) -> None:
        with closing(self._connect()) as db, db:
            if inventory is not None:
                db.execute("INSERT OR REPLACE INTO inventories VALUES (?, ?)", (key, canonical_json(inventory)))
            db.executemany("INSERT OR REPLACE INTO resolutions VALUES (?, ?, ?)",
                           [(key, t, canonical_json(d)) for t, d in resolutions.items()])

    def building(self, key: str) -> AbstractContextManager[None]:
        """Held while ``key`` is looked up and built: on one machine ``LOCK`` serialises builds already (the
        PostgreSQL store locks across replicas)."""
        return nullcontext()

    def load_fits(self, key: str, settings: str) -> dict[int, dict[str, Any]]:
        """The peak fits (:mod:`app.models.peak_fit`) of config ``key`` under request ``settings``, by length
        bucket."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT bucket, data FROM peak_fits WHERE key = ? AND settings = ?",
                              (key, settings)).fetchall()
        return {int(b): json.loads(d) for b, d in rows}

    def save_fit(self, key: str, settings: str, bucket: int, data: dict[str, Any]) -> None:
        with closing(self._connect()) as db, db:
            db.execute("INSERT OR REPLACE INTO peak_fits VALUES (?, ?, ?, ?)",
                       (key, settings, bucket, canonical_json(data)))


def store() -> Any:
    """The configured store: :class:`GenericStore`, or with a database URL the fleet's
    :class:`app.models.shared_cache.PgGenericStore` (same methods)."""
    settings = get_settings()
    if settings.database_url:
        from app.jobs import pg_store
        from app.models.shared_cache import PgGenericStore

        return PgGenericStore(pg_store(settings), settings.generic_timeout_s)
    return GenericStore(settings.generic_cache_path)


def _pool() -> ProcessPoolExecutor:
    """The build worker's pool; one whose worker died while idle (killed, out of memory) is replaced first."""
    global _POOL
    if _POOL is not None and getattr(_POOL, "_broken", False):
        _kill_pool()
    if _POOL is None:
        _POOL = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    return _POOL


def _kill_pool() -> None:
    global _POOL
    if _POOL is not None:
        for proc in list(getattr(_POOL, "_processes", {}).values()):
            proc.kill()
        _POOL.shutdown(wait=False, cancel_futures=True)
        _POOL = None


def run_in_worker(fn: Callable[..., dict[str, Any]], *args: Any, timeout_s: float | None = None) -> dict[str, Any]:
    """``fn(*args)`` in the build worker, stopped after ``timeout_s`` (default ``generic_timeout_s``; call it
    holding ``LOCK``)."""
    settings = get_settings()
    timeout_s = settings.generic_timeout_s if timeout_s is None else timeout_s
    try:
        try:
            future = _pool().submit(fn, *args)
        except BrokenProcessPool:  # broken between the check and the submit: once more on a fresh pool
            _kill_pool()
            future = _pool().submit(fn, *args)
        return future.result(timeout=timeout_s)
    except FutureTimeout:
        _kill_pool()
        raise PlanError(("model", "config"), f"building this model ran past {timeout_s:g} s "
                                             "and was stopped") from None
    except BrokenProcessPool:  # the worker died (e.g. out of host memory): a fresh one serves the next build
        _kill_pool()
        raise PlanError(("model", "config"), "the worker building this model stopped abruptly (too large a "
                                             "model for this server?)") from None


def ensure_config(cfg: dict[str, Any], specs: list[dict[str, Any]]) -> None:
    """Register the inventory of ``cfg`` and PEFT's resolution of each target spec (see module docstring)."""
    if not isinstance(cfg, dict) or uses_rules(cfg) or not isinstance(cfg.get("model_type"), str):
        return
    key = config_key(cfg)
    targets = [canonical_json(s) for s in specs]
    if registered(key) is not None and all(registered_resolution(key, t) for t in targets):
        return
    cache = store()
    with LOCK, cache.building(key):
        inv_data, found = cache.load(key, targets)
        if inv_data is not None:
            register(key, inventory_from_data(inv_data), found)
        missing = [s for s, t in zip(specs, targets, strict=True) if t not in found]
        if inv_data is not None and not missing:
            return
        from app.models.build import build

        result = run_in_worker(build, cfg, key, missing, get_settings().generic_max_modules)
        if "error" in result:
            loc, message = result["error"]
            raise PlanError(tuple(loc), message)
        cache.save(key, None if inv_data is not None else result["inventory"], result["resolutions"])
        register(key, inventory_from_data(inv_data or result["inventory"]),
                 {t: Resolution.from_data(d) for t, d in result["resolutions"].items()})


def ensure_generic(req: PlanRequest) -> None:
    """Make ``app.core.estimate(req)`` (and ``fit`` over its methods and ranks) answerable for any model
    transformers can build. Raises :class:`PlanError` (422) for a config it cannot build."""
    cfg = request_config(req)
    if cfg is None:
        return
    ensure_config(cfg, [target_spec(req.lora, dora=False), target_spec(req.lora, dora=True)])
