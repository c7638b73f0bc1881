"""Memory-relevant request fields that no input gave: the planner's default fills each, and the CLI says so
(``note: assumed training.seq_len=2048 (default; not in any input)``; ``--strict`` refuses them instead)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.importers.common import ImportNote

# Fields that change the parameter count or per-GPU memory (app/core: inventory, adapters, quantization,
# optimizers, activations, sharding, overhead), by the methods they apply to. Fields that change neither
# (lora_alpha, bnb_4bit_quant_type: nf4 and fp4 take the same bytes) are not listed.
ALWAYS = ("model", "method", "training.precision", "training.optim", "training.micro_batch_size",
          "training.gradient_accumulation_steps", "training.seq_len", "training.gradient_checkpointing",
          "training.attn_implementation", "hardware.gpu", "hardware.num_gpus")
ADAPTER = ("lora.r", "lora.target_modules", "lora.lora_dropout")
QUANTIZED = ("quantization.load_in_8bit", "quantization.bnb_4bit_use_double_quant",
             "quantization.bnb_4bit_compute_dtype", "quantization.prepare_kbit")
MULTI_GPU = ("hardware.sharding",)
SOURCE = "planner"


def _get(body: Mapping[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = body
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _default(path: str) -> Any:
    """PlanRequest's default for ``path`` (read from the pydantic model, never restated here)."""
    from app.core.request import PlanRequest

    section, _, field = path.partition(".")
    info = PlanRequest.model_fields[section]
    if not field:
        return info.get_default(call_default_factory=True)
    return type(info.get_default(call_default_factory=True)).model_fields[field].get_default()


def memory_fields(body: Mapping[str, Any]) -> list[str]:
    """The memory-relevant fields of this body's method, in request order."""
    method = body.get("method", _default("method"))
    fields = list(ALWAYS)
    if method != "full":
        fields += ADAPTER
    if method in ("qlora", "qdora"):
        fields += QUANTIZED
    _, gpus = _get(body, "hardware.num_gpus")
    if isinstance(gpus, int) and gpus > 1:
        fields += MULTI_GPU
    return fields


def planner_defaults(body: Mapping[str, Any]) -> list[ImportNote]:
    """An ``assumed`` note for each memory-relevant field absent from ``body`` (the merged files and flags);
    ``model`` has no default and is left to the planner's own error."""
    notes = []
    for path in memory_fields(body):
        present, _ = _get(body, path)
        if present or path == "model":
            continue
        value = _default(path)
        notes.append(ImportNote(SOURCE, path, "assumed", "default; not in any input", field=path, value=value))
    return notes
