"""A plan as the configuration its trainer reads: the inverse of :mod:`app.importers`, one module per format.

Each exporter returns the config as data plus the plan's settings the format cannot carry (shown as comments), and
tests/test_exporters.py reads every export back through the matching importer and gets the plan's request again.
:func:`framework_config` picks the one for ``training.framework`` (None for the frameworks without one yet: the page
then shows only the HF Trainer snippet). Pure Python (app.core, pydantic and yaml).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

from app.core.errors import PlanError
from app.core.request import PlanRequest
from app.exporters.axolotl import axolotl_config
from app.exporters.base import Export
from app.exporters.litgpt import litgpt_config
from app.exporters.llama_factory import llama_factory_config
from app.exporters.ms_swift import ms_swift_command
from app.exporters.torchtune import torchtune_config
from app.exporters.trl import trl_recipe
from app.exporters.unsloth import unsloth_script

EXPORTERS: dict[str, Callable[[PlanRequest], Export]] = {
    "trl": trl_recipe, "axolotl": axolotl_config, "llama-factory": llama_factory_config,
    "ms-swift": ms_swift_command, "litgpt": litgpt_config, "torchtune": torchtune_config,
    "unsloth": unsloth_script}
"""The exporter of each ``training.framework`` that has one."""


def framework_config(req: PlanRequest) -> Export | None:
    """The config of the plan's ``training.framework``, where an exporter exists and can write the plan (a torchtune
    plan of a model no torchtune builder builds has none: the page then shows the HF snippet only)."""
    fn = EXPORTERS.get(req.training.framework)
    try:
        return fn(req) if fn is not None else None
    except PlanError:
        return None


class ExportResult(BaseModel):
    """POST /api/v1/export: the plan as a trainer's config."""

    format: str = Field(description="the trainer: trl, axolotl, llama-factory, ms-swift, litgpt, torchtune or unsloth")
    title: str = Field(description="what the file is and the command that runs it")
    filename: str
    text: str = Field(description="the config (YAML, ms-swift's shell command, Unsloth's Python script), headed by a "
                                  "comment per setting "
                                  "it cannot carry")
    unexpressed: list[str] = Field(description="the plan's settings this format has no key for")


def export_result(req: PlanRequest, fmt: str | None = None) -> ExportResult:
    """``req`` as the config of ``fmt`` (None: its ``training.framework``); the plan's framework becomes ``fmt``.
    Raises KeyError when that framework has no exporter, PlanError when the exporter cannot write the plan (torchtune:
    a model without a builder)."""
    target = fmt or req.training.framework
    fn = EXPORTERS[target]
    if target != req.training.framework:
        req = req.model_copy(update={"training": req.training.model_copy(update={"framework": target})})
    out = fn(req)
    return ExportResult(format=target, title=out.title, filename=out.filename, text=out.text(),
                        unexpressed=out.unexpressed)
