"""Pure-Python planner core: model inventories and parameter/byte/memory arithmetic.

Imports neither torch nor FastAPI. Typical use::

    from app.core import PlanRequest, estimate
    result = estimate(PlanRequest(model="meta-llama/Llama-3.1-8B", method="qlora"))
    result.memory.peak  # bytes
"""

from app.core.architectures import SUPPORTED_MODEL_TYPES, ArchSpec, parse_config
from app.core.catalog import gpus, model_config, model_configs
from app.core.errors import PlanError
from app.core.estimate import estimate
from app.core.inventory import Inventory, build_inventory
from app.core.request import PlanRequest
from app.core.result import EstimateResult
from app.core.units import format_bytes, parse_bytes

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "ArchSpec",
    "EstimateResult",
    "Inventory",
    "PlanError",
    "PlanRequest",
    "build_inventory",
    "estimate",
    "format_bytes",
    "gpus",
    "model_config",
    "model_configs",
    "parse_bytes",
    "parse_config",
]
