"""``tune run`` command lines → the torchtune config they run, with the command's overrides applied.

torchtune v0.4.0 ``torchtune/_cli/run.py``: ``tune run [TORCHRUN-OPTIONS] <recipe> --config <config>
[RECIPE-OPTIONS]``; torchrun's ``--nproc_per_node`` / ``--nnodes`` come before the recipe, and any of them makes the
run distributed (a recipe that does not support it is refused). ``torchtune/config/_utils.py
_merge_yaml_and_cli_args``: each override is ``key=value`` (exactly one ``=``); ``key=<path>`` sets
``key._component_`` when the config's ``key`` is a component; ``~key`` removes a key (never a ``_component_``);
``None`` is null; values are typed as OmegaConf's dotlist reads them (YAML scalars).
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.importers.common import UPLOAD_IT, ConfigImportError, local_files, positive_int

_SEPARATORS = ("&&", "||", ";", "|", "&")
_FLAGS = frozenset({"--standalone", "--no-python", "--no_python", "--run-path", "--run_path", "--module", "-m"})
"""torchrun options that take no value (``torch/distributed/run.py get_args_parser``)."""


@dataclass(frozen=True)
class TuneRun:
    """One ``tune run`` command: the recipe, the ``--config`` it names, its overrides, and torchrun's process counts."""

    recipe: str
    config: str
    overrides: tuple[str, ...]
    nproc_per_node: int | None = None
    nnodes: int | None = None

    @property
    def distributed(self) -> bool:
        """torchrun options given: ``tune run`` launches the recipe through torchrun (``_is_distributed_args``)."""
        return self.nproc_per_node is not None or self.nnodes is not None


def parse_tune_run(text: str, source: str) -> TuneRun | None:
    """The first ``tune run`` command in ``text`` (comments and line continuations allowed), or None."""
    lines = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    # a command line starts with it (after NAME=value assignments); torchtune's YAMLs name it in comments only
    if not re.search(r"^\s*([A-Za-z_]\w*=\S*\s+)*(\S*/)?tune\s+run\s", lines, re.MULTILINE):
        return None
    try:
        tokens = shlex.split(lines.replace("\\\n", " "), comments=True)
    except ValueError as exc:
        raise ConfigImportError(source, None, f"cannot split the command line: {exc}") from None
    start = next((i + 2 for i in range(len(tokens) - 1) if tokens[i].rsplit("/", 1)[-1] == "tune"
                  and tokens[i + 1] == "run"), None)
    if start is None:
        return None
    rest = tokens[start:]
    rest = rest[:next((i for i, t in enumerate(rest) if t in _SEPARATORS), len(rest))]
    counts: dict[str, int] = {}
    i = 0
    while i < len(rest) and rest[i].startswith("-"):  # torchrun's options, before the recipe
        name, eq, value = rest[i].partition("=")
        takes_value = not eq and name not in _FLAGS
        if takes_value:
            value = rest[i + 1] if i + 1 < len(rest) else ""
        key = name.lstrip("-").replace("-", "_")
        if key in ("nproc_per_node", "nnodes"):
            number = int(value) if value.isdigit() else value
            counts[key] = positive_int(number, source, f"--{key}")
        i += 2 if takes_value else 1
    if i >= len(rest):
        raise ConfigImportError(source, None, "`tune run` names no recipe")
    recipe, args = rest[i], rest[i + 1:]
    if "--config" not in args or args.index("--config") + 1 >= len(args):
        raise ConfigImportError(source, "--config", "`tune run` needs --config <config> (torchtune: 'The "
                                "'--config' argument is required.')")
    at = args.index("--config")
    return TuneRun(recipe, args[at + 1], tuple(args[:at] + args[at + 2:]), counts.get("nproc_per_node"),
                   counts.get("nnodes"))


def _value(text: str) -> Any:
    """An override's value as OmegaConf's dotlist types it (YAML scalars; ``None`` is null)."""
    if text == "None":
        return None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(run: TuneRun, source: str, base_dir: Path | None) -> tuple[dict[str, Any], Path]:
    """The YAML ``--config`` names (a path, relative to the command's directory), with the overrides applied.
    A built-in config name (``llama3_2/3B_qlora_single_device``) is not shipped here: refused, saying how to copy it."""
    import yaml

    if not local_files():
        raise ConfigImportError(source, "--config", f"{run.config!r} not read: {UPLOAD_IT}; upload the YAML itself")
    name = Path(run.config).expanduser()
    candidates = [name] if name.is_absolute() else [(base_dir or Path.cwd()) / name, Path.cwd() / name]
    path = next((p for c in candidates for p in (c, c.with_name(c.name + ".yaml")) if p.is_file()), None)
    if path is None:
        raise ConfigImportError(source, "--config", f"{run.config!r} is not a file here: for torchtune's built-in "
                                f"config, copy it beside the command (`tune cp {run.config} <name>.yaml`) and name "
                                "that file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigImportError(str(path), None, f"cannot read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigImportError(str(path), None, "expected a YAML mapping")
    return apply_overrides(data, run.overrides, source), path


def apply_overrides(data: Mapping[str, Any], overrides: tuple[str, ...], source: str) -> dict[str, Any]:
    """``data`` with ``tune run``'s ``key=value`` / ``~key`` overrides applied (``_merge_yaml_and_cli_args``); a
    malformed override is refused naming it."""
    out = copy.deepcopy(dict(data))
    for arg in overrides:
        if arg.startswith("~"):
            *parents, last = arg[1:].split("=")[0].split(".")
            node: Any = out
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if "_component_" in arg or not isinstance(node, dict) or last not in node:
                raise ConfigImportError(source, arg, "torchtune removes only an existing key that is not a "
                                        "_component_")
            del node[last]
            continue
        if arg.count("=") != 1 or not arg.split("=")[0]:
            raise ConfigImportError(source, arg, "torchtune: 'Command-line overrides must be in the form of "
                                    "key=value'")
        key, text = arg.split("=")
        if isinstance(out.get(key), dict) and "_component_" in out[key]:
            key += "._component_"  # `loss=<path>`: tune's shorthand for the component
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigImportError(source, arg, f"{part!r} is not a mapping in the config")
        node[last] = _value(text)
    return out
