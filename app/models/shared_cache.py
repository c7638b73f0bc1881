"""The model/config cache in PostgreSQL, shared by API replicas (``PEFT_PLANNER_DATABASE_URL`` set).

Two stores with the interfaces of the one-machine ones, so that callers do not know which they have:

- :class:`PgGenericStore` is :class:`app.models.generic.GenericStore` (generic inventories and PEFT target
  resolutions, as canonical JSON text under the same keys) in the tables ``generic_inventories`` and
  ``generic_resolutions``. :meth:`PgGenericStore.building` holds a transaction-level advisory lock on the key
  while a replica builds it, so a model is built once across the fleet: a replica asking for the same key waits
  and then reads the row. ``generic_inventories.builds`` counts the saves of a key (1 when it was built once).
  The generic path's peak fits (:mod:`app.models.peak_fit`) live beside them in ``generic_peak_fits``.
- :class:`PgHubCache` is the in-process LRU of :mod:`app.models.hub` (``get(key, ttl_s)`` / ``put``) in the
  table ``hub_configs``: a config.json one replica fetched from the Hub is answered by the others until it is
  ``hub_cache_ttl_s`` old (database time), without asking the Hub.

Both use the connection pool and the migrations of the job store (:func:`app.jobs.pg_store`, migration 3).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from app.core.generic import Resolution, canonical_json
from app.jobs.pg import PgJobStore
from app.models.hub import HubConfig

BUILD_LOCK = 0x67656E  # first key of the advisory lock of a generic build ("gen"); the second: hashtext(key)


class PgGenericStore:
    """Built inventories and resolutions shared by every replica (see the module docstring)."""

    def __init__(self, db: PgJobStore, build_timeout_s: float) -> None:
        self.db, self.build_timeout_s = db, build_timeout_s

    def load(self, key: str, targets: list[str]) -> tuple[dict[str, Any] | None, dict[str, Resolution]]:
        with self.db.transaction() as conn:
            row = conn.execute("SELECT data FROM generic_inventories WHERE key = %s", (key,)).fetchone()
            rows = conn.execute("SELECT target, data FROM generic_resolutions WHERE key = %s AND target = ANY(%s)",
                                (key, targets)).fetchall()
        return (json.loads(row["data"]) if row else None,
                {r["target"]: Resolution.from_data(json.loads(r["data"])) for r in rows})

    def save(self, key: str, inventory: dict[str, Any] | None, resolutions: dict[str, dict[str, Any]]) -> None:
        with self.db.transaction() as conn:
            if inventory is not None:
                conn.execute("INSERT INTO generic_inventories (key, data) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE"
                             " SET data = EXCLUDED.data, builds = generic_inventories.builds + 1, updated_at = now()",
                             (key, canonical_json(inventory)))
            for target, data in resolutions.items():
                conn.execute("INSERT INTO generic_resolutions (key, target, data) VALUES (%s, %s, %s)"
                             " ON CONFLICT (key, target) DO UPDATE SET data = EXCLUDED.data",
                             (key, target, canonical_json(data)))

    def load_fits(self, key: str, settings: str) -> dict[int, dict[str, Any]]:
        """The peak fits of config ``key`` under request ``settings``, by length bucket (GenericStore's)."""
        with self.db.transaction() as conn:
            rows = conn.execute("SELECT bucket, data FROM generic_peak_fits WHERE key = %s AND settings = %s",
                                (key, settings)).fetchall()
        return {int(r["bucket"]): json.loads(r["data"]) for r in rows}

    def save_fit(self, key: str, settings: str, bucket: int, data: dict[str, Any]) -> None:
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO generic_peak_fits (key, settings, bucket, data) VALUES (%s, %s, %s, %s)"
                         " ON CONFLICT (key, settings, bucket) DO UPDATE SET data = EXCLUDED.data",
                         (key, settings, bucket, canonical_json(data)))

    @contextmanager
    def building(self, key: str) -> Iterator[None]:
        """Held while this process looks up and builds ``key``: other replicas wait (at most one build's time
        limit plus a minute, PostgreSQL's ``lock_timeout``), then find the row."""
        with self.db.transaction() as conn:
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(self.build_timeout_s + 60)}s",))
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (BUILD_LOCK, key))
            yield


class PgHubCache:
    """Hub configs shared by every replica, keyed like the in-process LRU: (endpoint, repo id, revision)."""

    def __init__(self, db: PgJobStore) -> None:
        self.db = db

    def get(self, key: tuple[str, ...], ttl_s: float) -> HubConfig | None:
        endpoint, repo_id, revision = key
        with self.db.transaction() as conn:
            row = conn.execute("SELECT commit_sha, config, origin FROM hub_configs WHERE endpoint = %s AND repo_id = %s"
                               " AND revision = %s AND fetched_at > now() - make_interval(secs => %s)",
                               (endpoint, repo_id, revision, ttl_s)).fetchone()
        if row is None:
            return None
        return HubConfig(repo_id, revision, row["commit_sha"], json.loads(row["config"]), row["origin"])

    def put(self, key: tuple[str, ...], value: HubConfig) -> None:
        endpoint, repo_id, revision = key
        with self.db.transaction() as conn:
            conn.execute("INSERT INTO hub_configs (endpoint, repo_id, revision, commit_sha, config, origin)"
                         " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (endpoint, repo_id, revision) DO UPDATE SET"
                         " commit_sha = EXCLUDED.commit_sha, config = EXCLUDED.config, origin = EXCLUDED.origin,"
                         " fetched_at = now()",
                         (endpoint, repo_id, revision, value.commit_sha, json.dumps(value.config), value.origin))
