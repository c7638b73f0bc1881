"""The config.json files the generic-path benchmarks run on: tests/data/configs, each with whether it is a real
copy of the Hub file or reconstructed from config-class defaults (tests/data/config_sources.json: ``copy``)."""

from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def config_files(only: list[str] | None = None, copy: str | None = None) -> list[tuple[Path, str]]:
    """(path, "real" | "reconstructed") of every test config, sorted by name; ``only``: these file stems;
    ``copy``: only files of that kind."""
    sources = json.loads((DATA / "config_sources.json").read_text())
    out = []
    for path in sorted((DATA / "configs").glob("*.json")):
        kind = sources[path.stem]["copy"]
        if (only and path.stem not in only) or (copy and kind != copy):
            continue
        out.append((path, kind))
    return out
