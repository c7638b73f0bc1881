"""``POST /api/v1/export``: a plan as its trainer's config (app/exporters). Thin: parse, export, return."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter

from app.core import PlanRequest
from app.errors import api_error, error_responses
from app.exporters import EXPORTERS, ExportResult, export_result

router = APIRouter(prefix="/api/v1", tags=["v1"])


ExportFormat = Literal["trl", "axolotl", "llama-factory", "ms-swift", "litgpt", "torchtune", "unsloth"]
"""app.exporters.EXPORTERS' keys (tests/test_exporters.py checks they agree)."""


@router.post("/export", response_model=ExportResult, responses=error_responses(413, 422))
def post_export(req: PlanRequest, format: ExportFormat | None = None) -> ExportResult:
    """The plan as a TRL recipe, an axolotl, LLaMA-Factory, litgpt or torchtune YAML, an ms-swift command or an
    Unsloth script (``format``; default: the plan's ``training.framework``), the inverse of the config importers;
    ``unexpressed`` lists what that format cannot carry (also the text's leading comments). Another ``format`` than
    the plan's framework converts the plan to that trainer, whose estimate may differ."""
    if (format or req.training.framework) not in EXPORTERS:
        raise api_error(422, ["query", "format"], f"training.framework {req.training.framework!r} has no exporter: "
                        f"give format ({', '.join(EXPORTERS)})", "no_exporter")
    return export_result(req, format)
