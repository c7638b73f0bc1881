"""JSON API v1: estimate, model catalog, GPU catalog. Thin: parse, call the core, return."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.core import PlanRequest, estimate
from app.core.catalog import gpus, model_config, model_configs
from app.core.result import EstimateResult
from app.model_info import model_detail, model_row

router = APIRouter(prefix="/api/v1", tags=["v1"])


@router.post("/estimate", response_model=EstimateResult)
def post_estimate(req: PlanRequest) -> EstimateResult:
    """Parameters and per-GPU memory (bytes) of one fine-tuning run."""
    return estimate(req)


@router.get("/models")
def list_models() -> list[dict[str, Any]]:
    """Catalog models with their architecture summary and exact parameter count."""
    return [model_row(model_id) for model_id in model_configs()]


@router.get("/models/{model_id:path}")
def get_model(model_id: str) -> dict[str, Any]:
    """A catalog model's config.json and inventory summary (parameters by group, adaptable modules)."""
    model_config(model_id)  # 422 with the list size when unknown
    return model_detail(model_id)


@router.get("/gpus")
def list_gpus() -> list[dict[str, Any]]:
    """GPU catalog: VRAM bytes, dense bf16 TFLOP/s, memory bandwidth (bytes/s), indicative price."""
    return [vars(g) for g in gpus().values()]
