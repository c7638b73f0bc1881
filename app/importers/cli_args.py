"""A training launch command (``swift sft --model … \\``, ``trl sft --config …``) → its arguments as a mapping.

ms-swift and TRL are launched with ``--key value`` arguments parsed by transformers' ``HfArgumentParser``; their
example scripts (ms-swift ``examples/train/*.sh``) are shell commands with environment assignments in front
(``NPROC_PER_NODE=4 CUDA_VISIBLE_DEVICES=0,1,2,3 swift sft …``). Values are typed as HfArgumentParser would
for the dataclass fields: ``true``/``false`` → bool, integers, floats, several values after one flag → a list,
a flag with no value → ``True`` (a bool field's ``--flag``).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from app.importers.common import ConfigImportError

# (program, subcommand) pairs that start a training run, by the format that reads their arguments
LAUNCHERS: dict[tuple[str, str], str] = {
    ("swift", "sft"): "ms_swift", ("swift", "pt"): "ms_swift", ("trl", "sft"): "trl",
}
# scripts run with ``python``/``accelerate launch`` that take the same arguments (TRL's docs use them)
SCRIPTS: dict[str, str] = {"trl/scripts/sft.py": "trl", "examples/scripts/sft.py": "trl"}
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
MAX_ARGS = 2_000
"""Most tokens in one command (ms-swift's longest example scripts have ~80)."""


class CliArgs(dict[str, Any]):
    """The ``--key value`` arguments of a launch command; ``command`` ('swift sft'), ``fmt`` (the importer that
    reads them) and ``env`` (the ``NAME=value`` assignments before the program) ride along."""

    def __init__(self, args: dict[str, Any], command: str, fmt: str, env: dict[str, str]) -> None:
        super().__init__(args)
        self.command, self.fmt, self.env = command, fmt, env


def _value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_command(text: str, source: str) -> CliArgs | None:
    """The arguments of the first launch command in ``text`` (comments and line continuations allowed), or None
    when the text holds no ``swift sft`` / ``swift pt`` / ``trl sft`` command nor a TRL ``sft.py`` script."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    try:
        tokens = shlex.split("\n".join(lines).replace("\\\n", " "), comments=True)
    except ValueError as exc:
        if not any(re.search(rf"\b{p}\s+{s}\b", text) for p, s in LAUNCHERS) and not any(
                path in text for path in SCRIPTS):
            return None
        raise ConfigImportError(source, None, f"cannot split the command line: {exc}") from None
    for i in range(len(tokens)):
        script = next((fmt for path, fmt in SCRIPTS.items() if tokens[i].endswith(path)), None)
        pair = (tokens[i].rsplit("/", 1)[-1], tokens[i + 1]) if i + 1 < len(tokens) else None
        fmt = (script or LAUNCHERS.get(pair)) if pair else script
        if fmt is None:
            continue
        if len(tokens) - i > MAX_ARGS:
            raise ConfigImportError(source, None, f"a command has at most {MAX_ARGS} arguments")
        command, first = (tokens[i], i + 1) if script else (f"{tokens[i]} {tokens[i + 1]}", i + 2)
        if first < len(tokens) and not tokens[first].startswith("--"):
            continue  # prose that mentions the command ('use trl sft to …' in a YAML value), not a command line
        env = {}
        for tok in reversed(tokens[:i]):  # assignments directly before the program (separators end them)
            if not _ENV.match(tok):
                break
            name, _, value = tok.partition("=")
            env[name] = value
        args: dict[str, Any] = {}
        key = None
        for tok in tokens[first:]:
            if tok in ("&&", "||", ";", "|", "&"):
                break
            if tok.startswith("--") and len(tok) > 2:
                key, eq, value = tok[2:].partition("=")
                key = key.replace("-", "_")
                args[key] = _value(value) if eq else True
                continue
            if key is None:
                raise ConfigImportError(source, tok, f"a value before any --option in {command}")
            previous = args[key]
            value = _value(tok)
            args[key] = value if previous is True else [*previous, value] if isinstance(previous, list) else [
                previous, value]
        return CliArgs(args, command, fmt, env)
    return None
