"""Reading files: JSON or YAML by content, directories, stdin; each file imported in its detected format."""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.importers.accelerate import from_accelerate
from app.importers.axolotl import from_axolotl
from app.importers.bnb import from_bnb
from app.importers.cli_args import parse_command
from app.importers.common import ConfigImportError, Format, Imported, ImportNote
from app.importers.deepspeed import from_deepspeed
from app.importers.detect import NAMES, detect
from app.importers.hf_training import from_hf_training
from app.importers.litgpt import from_litgpt
from app.importers.llama_factory import from_llama_factory
from app.importers.model_config import from_model_config
from app.importers.ms_swift import from_ms_swift
from app.importers.peft import from_peft
from app.importers.torchtune import from_torchtune
from app.importers.trl import from_trl
from app.importers.tune_run import parse_tune_run
from app.importers.unsloth import from_unsloth, notebook_code, parse_unsloth_script


def import_data(data: Any, source: str = "input", fmt: Format | None = None,
                base_dir: Path | None = None) -> Imported:
    """Import already-parsed data (``fmt`` forces the format instead of detecting it)."""
    detected = ""
    if fmt is None:
        fmt, detected = detect(data, source)
    if fmt == "plan":
        if not isinstance(data, Mapping):
            raise ConfigImportError(source, None, "a PlanRequest body must be a mapping")
        body, notes = copy.deepcopy(dict(data)), []
    elif fmt == "peft":
        body, notes = from_peft(data, source, base_dir)
    elif fmt == "bnb":
        body, notes = from_bnb(data, source)
    elif fmt == "axolotl":
        body, notes = from_axolotl(data, source, base_dir)
    elif fmt == "hf_training":
        body, notes = from_hf_training(data, source, base_dir)
    elif fmt == "model_config":
        body, notes = from_model_config(data, source)
    elif fmt == "llama_factory":
        body, notes = from_llama_factory(data, source, base_dir)
    elif fmt == "ms_swift":
        body, notes = from_ms_swift(data, source, base_dir)
    elif fmt == "trl":
        body, notes = from_trl(data, source, base_dir)
    elif fmt == "litgpt":
        body, notes = from_litgpt(data, source, base_dir)
    elif fmt == "torchtune":
        body, notes = from_torchtune(data, source, base_dir)
    elif fmt == "accelerate":
        body, notes = from_accelerate(data, source, base_dir)
    elif fmt == "unsloth":
        body, notes = from_unsloth(data, source, base_dir)
    elif fmt == "deepspeed":
        body, notes = from_deepspeed(data, source)
    else:  # pragma: no cover - Literal exhausted
        raise ConfigImportError(source, None, f"unknown format {fmt!r}")
    return Imported(source, fmt, body, notes, detected or NAMES[fmt])


def parse_text(text: str, source: str) -> Any:
    """JSON when the text is JSON (a Jupyter notebook: its code cells read as below), an Unsloth script's calls
    (:mod:`.unsloth`), a ``tune run`` command (:mod:`.tune_run`) or the arguments of a ``swift sft`` / ``trl sft``
    command line when it holds one (:mod:`.cli_args`), else YAML (safe_load)."""
    stripped = text.lstrip()
    code = notebook_code(text) if stripped.startswith("{") else None
    script = parse_unsloth_script(text if code is None else code, source)
    if script is not None:
        return script
    if not stripped.startswith(("{", "[")):
        run = parse_tune_run(text, source)
        if run is not None:
            return run
        command = parse_command(text, source)
        if command is not None:
            return command
    if stripped.startswith(("{", "[")):
        try:
            return valid_unicode(json.loads(text), source)
        except json.JSONDecodeError as exc:
            if source.endswith(".json"):
                raise ConfigImportError(source, None, f"invalid JSON: {exc.msg} at line {exc.lineno}") from None
    import yaml  # lazy: only files need it

    try:
        return valid_unicode(yaml.safe_load(text), source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigImportError(source, None, f"invalid YAML/JSON: {problem}{where}") from None


def valid_unicode(data: Any, source: str) -> Any:
    """``data`` when each of its strings, keys included, is valid Unicode: JSON's and YAML's escapes can spell a lone
    surrogate (``"\\ud800"``) that no UTF-8 output (a note, an API answer) can carry. Shared nodes (YAML anchors) are
    walked once."""
    seen: set[int] = set()
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigImportError(source, None, f"{ascii(item)[:60]} holds a lone surrogate, which is not "
                                        "valid Unicode text") from None
        elif isinstance(item, (dict, list)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend([*item.keys(), *item.values()] if isinstance(item, dict) else item)
    return data


def import_file(path: str | Path, fmt: Format | None = None) -> Imported:
    """Read and import one file. A directory means its ``adapter_config.json`` (a saved PEFT adapter) or
    else its ``config.json`` (a model); ``-`` reads standard input."""
    source = str(path)
    if source == "-":
        return import_data(parse_text(sys.stdin.read(), "<stdin>"), "<stdin>", fmt, Path.cwd())
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("adapter_config.json", "config.json"):
            if (p / name).is_file():
                p = p / name
                source = str(p)
                break
        else:
            raise ConfigImportError(source, None, "a directory without adapter_config.json or config.json")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigImportError(source, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigImportError(source, None, f"cannot read: {exc}") from None
    return import_data(parse_text(text, source), source, fmt, p.parent)


def load_plan_file(path: str | Path) -> tuple[dict[str, Any], list[ImportNote]]:
    """One file (format auto-detected) → (PlanRequest body, notes)."""
    imported = import_file(path)
    return imported.body, imported.notes
