"""``peft-planner export``: the plan (from config files and flags, as ``estimate`` reads them) as a trainer's own
config on stdout — a TRL recipe, an axolotl, LLaMA-Factory, litgpt or torchtune YAML, an ms-swift command, an
Unsloth script (:mod:`app.exporters`).
With ``--format`` other than the inputs' framework it converts between trainers; the settings the target format
cannot carry are leading comments and, with ``--exact``, exit 2."""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXPORT_FORMATS = ("trl", "axolotl", "llama-factory", "ms-swift", "litgpt", "torchtune", "unsloth")
"""app.exporters.EXPORTERS' keys, spelled out so that ``--help`` imports nothing (a test checks they agree)."""


def add_export_parser(sub: Any, inputs: argparse.ArgumentParser) -> None:
    from app.cli import cmd_export

    p = sub.add_parser("export", parents=[inputs],
                       help="the plan as a TRL recipe, an axolotl, LLaMA-Factory, litgpt or torchtune YAML, an "
                            "ms-swift command or an Unsloth script",
                       description="Print the plan as its trainer's config (the inverse of the importers): "
                                   "--format trl, axolotl, llama-factory, ms-swift, litgpt, torchtune or unsloth "
                                   "(default: the plan's training.framework).")
    p.add_argument("--format", choices=EXPORT_FORMATS, help="the trainer to write for (default: the plan's)")
    p.add_argument("--exact", action="store_true", help="exit 2 when the format cannot carry a setting of the plan "
                                                         "(instead of a comment in the YAML)")
    p.set_defaults(func=cmd_export)


def export_text(req: Any, fmt: str | None, exact: bool) -> tuple[str, list[str]]:
    """(the YAML, lines for stderr) for ``req`` in ``fmt`` (None: the plan's framework). Raises ValueError with the
    message when there is no exporter for it, or (``exact``) when the format cannot carry a setting."""
    from app.exporters import EXPORTERS, export_result

    target = fmt or req.training.framework
    if target not in EXPORTERS:
        raise ValueError(f"training.framework: no exporter for {target!r}; give --format "
                         f"({', '.join(EXPORTERS)})")
    out = export_result(req, target)
    if exact and out.unexpressed:
        raise ValueError(f"--exact: {target} cannot carry: " + "; ".join(out.unexpressed))
    return out.text, [f"# {out.title}"] + [f"not expressible in {target}: {line}" for line in out.unexpressed]


def print_lines(lines: list[str], quiet: bool) -> None:
    """The export's title and what the format cannot carry, on stderr (``--quiet``: only the latter)."""
    for line in lines:
        if not quiet or not line.startswith("#"):
            print(line, file=sys.stderr)
