"""What every exporter shares: :class:`Export` (the config as data, how it runs, what it cannot carry) and its
rendering as YAML or as a shell command, and the small helpers the format modules use. Pure Python."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.core.request import PlanRequest


@dataclass(frozen=True)
class Export:
    """A config in a trainer's format: ``data`` (YAML-able), how to run it, and what it cannot say."""

    title: str  # e.g. "TRL recipe: trl sft --config recipe.yaml"
    filename: str
    data: dict[str, Any]
    unexpressed: list[str] = field(default_factory=list)  # plan settings this format has no key for
    command: str | None = None  # a launch command ("swift sft") whose --key value arguments are ``data``
    env: dict[str, str] = field(default_factory=dict)  # NAME=value before the command (NPROC_PER_NODE)
    script: str | None = None  # a Python script (Unsloth), in place of ``data``

    def text(self) -> str:
        """The YAML (the shell command, the script), headed by a comment per setting the format cannot carry."""
        head = "".join(f"# not expressible here: {line}\n" for line in self.unexpressed)
        if self.script is not None:
            return head + self.script
        if self.command is not None:
            return head + shell_command(self.command, self.data, self.env)
        import yaml  # lazy: only rendering needs it

        return head + yaml.safe_dump(self.data, sort_keys=False, default_flow_style=False, width=100)


def shell_command(command: str, args: dict[str, Any], env: dict[str, str]) -> str:
    """``NAME=value command --key value …`` one argument a line, as transformers' HfArgumentParser reads them:
    booleans as true/false, lists as several values after one flag, mappings as JSON."""
    import json
    import shlex

    lines = [" ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), command])]
    for key, value in args.items():
        if isinstance(value, bool):
            shown = "true" if value else "false"
        elif isinstance(value, list):
            shown = " ".join(shlex.quote(str(v)) for v in value)
        elif isinstance(value, dict):
            shown = shlex.quote(json.dumps(value, separators=(",", ":")))
        else:
            shown = shlex.quote(str(value))
        lines.append(f"    --{key} {shown}")
    return " \\\n".join(lines) + "\n"


def set_given(data: dict[str, Any], pairs: list[tuple[str, Any]]) -> None:
    """Write each ``(key, value)`` whose value is given (not None, False or empty): the format's default is the
    plan's otherwise."""
    for key, value in pairs:
        if value:
            data[key] = value


def unsupported_switches(req: PlanRequest, names: tuple[str, ...], trainer: str) -> list[str]:
    """The ``unexpressed`` lines of the plan's ``training`` switches (among ``names``) that ``trainer`` has no
    argument for, or that the planner does not model under it."""
    return [f"training.{name} (not {trainer} argument, or not modelled under it)" for name in names
            if getattr(req.training, name)]


def fixed_nf4(req: PlanRequest, precision: str, trainer: str) -> list[str]:
    """The ``unexpressed`` lines of a 4-bit plan for a trainer that always quantizes to NF4 with double
    quantization, computed in its training dtype (``precision`` as written: fp32, else bf16), packed its own way."""
    q = req.quantization
    compute = "float32" if precision == "fp32" else "bfloat16"
    out = []
    if q.bnb_4bit_quant_type != "nf4" or not q.bnb_4bit_use_double_quant or q.bnb_4bit_compute_dtype != compute:
        out.append(f"bitsandbytes {q.bnb_4bit_quant_type}, double quant {q.bnb_4bit_use_double_quant}, compute "
                   f"{q.bnb_4bit_compute_dtype} ({trainer} quantizes to NF4 with double quantization, computed in the "
                   f"training dtype, {compute})")
    if q.bnb_4bit_quant_storage != "uint8":
        out.append(f"bnb_4bit_quant_storage {q.bnb_4bit_quant_storage!r} ({trainer} packs the 4-bit weights itself)")
    return out


def model_name(req: PlanRequest) -> str:
    """The model as the trainer loads it: the Hub/catalog id, or a placeholder for a pasted config.json."""
    return req.model if isinstance(req.model, str) else "path/to/your-model"
