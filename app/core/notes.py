"""Short explanations of the answers that look wrong at first sight, for the page to show where they appear.

- **QLoRA above LoRA or full fine-tuning.** bitsandbytes replaces only ``nn.Linear``/``Conv1D`` modules
  (transformers ``quantizers/base.py``), so embeddings, norms, ``lm_head`` and the 3-D fused MoE experts of
  transformers 5 stay 16-bit; PEFT's ``prepare_model_for_kbit_training`` (``peft/utils/other.py``) then
  casts every non-quantized fp16/bf16 parameter to fp32, doubling them. The fp32 embedding output makes the
  residual stream fp32, and a bitsandbytes 4-bit layer returns its input's dtype, so the saved activations
  double too (app/core/activations.py, ``a``). The note gives the same plan's total without the upcast.
- **A peak outside the backward pass.** The optimizer step holds every gradient plus the step's own
  temporaries (torch's foreach AdamW: ``_foreach_sqrt`` of the second moments, app/core/optimizers.py);
  the loss phase holds the logits and the loss's fp32 copies. Those bytes are not activations.

Pure Python: imports neither torch nor FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, Field

from app.core.errors import PlanError
from app.core.estimate import estimate
from app.core.request import Method, PlanRequest
from app.core.result import EstimateResult
from app.core.units import format_bytes

LABELS: dict[str, str] = {"full": "Full FT", "lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA", "qdora": "QDoRA"}


class Note(BaseModel):
    topic: Literal["quantized_above", "quantized_activations", "peak_phase"] = Field(
        description="what the note explains")
    methods: list[Method] = Field(description="the methods it is about")
    text: str


def transient_label(phase: str) -> str:
    """What the bytes beyond weights, states and gradients are at a peak of ``phase``."""
    return {"optimizer": "Optimizer-step temporaries", "loss": "Activations + logits"}.get(phase, "Activations")


def _quantized_above(req: PlanRequest, results: Mapping[str, EstimateResult | None]) -> Note | None:
    q, lora, full = results.get("qlora"), results.get("lora"), results.get("full")
    if q is None or q.quantization is None:
        return None
    above = [(name, r) for name, r in (("LoRA", lora), ("full fine-tuning", full))
             if r is not None and q.memory.total > r.memory.total]
    if not above:
        return None
    unquantized = q.parameters.total - q.quantization.quantized_params
    parts = "the fused MoE experts, embeddings, norms and lm_head" if q.model.num_experts else \
        "embeddings, norms and lm_head"
    text = (f"QLoRA needs {format_bytes(q.memory.total)}, more than "
            + " and ".join(f"{name} ({format_bytes(r.memory.total)})" for name, r in above)
            + f": bitsandbytes quantizes only nn.Linear layers, so {unquantized:,} parameters ({parts}) stay "
            "unquantized")
    if req.quantization.prepare_kbit:
        no_upcast: int | None
        try:
            probe = req.model_copy(update={"method": "qlora", "quantization": req.quantization.model_copy(
                update={"prepare_kbit": False})})
            no_upcast = estimate(probe).memory.total
        except PlanError:
            no_upcast = None
        text += (", and prepare_model_for_kbit_training stores them in fp32, twice their bf16 size; the fp32 "
                 "embedding output also makes the residual stream, and so the saved activations, fp32")
        if no_upcast is not None:
            text += f". Without that upcast (prepare_kbit off): {format_bytes(no_upcast)}"
    return Note(topic="quantized_above", methods=["qlora"], text=text + ".")


def _quantized_activations(req: PlanRequest, results: Mapping[str, EstimateResult | None]) -> Note | None:
    """QLoRA keeps more activations than LoRA (same micro-batch and length): say why."""
    q, lora = results.get("qlora"), results.get("lora")
    if q is None or lora is None or q.memory.activations <= lora.memory.activations:
        return None
    text = (f"QLoRA's activations ({format_bytes(q.memory.activations)}) exceed LoRA's "
            f"({format_bytes(lora.memory.activations)}) at the same micro-batch and length: ")
    if req.quantization.prepare_kbit:
        text += ("prepare_model_for_kbit_training's fp32 embeddings make the residual stream fp32, and a 4-bit "
                 "layer returns its input's dtype, so many tensors saved for the backward pass take 4 bytes per "
                 "element instead of 2 (prepare_kbit off: LoRA's figure); the backward also dequantizes a 16-bit "
                 "copy of each 4-bit weight it passes through.")
    else:
        text += "bitsandbytes dequantizes a 16-bit copy of a 4-bit weight in each layer's forward and backward."
    return Note(topic="quantized_activations", methods=["qlora"], text=text)


def _peak_phases(results: Mapping[str, EstimateResult | None]) -> list[Note]:
    by_phase: dict[str, list[tuple[str, EstimateResult]]] = {}
    for m, r in results.items():
        if r is not None and r.peak.phase != "backward":
            by_phase.setdefault(r.peak.phase, []).append((m, r))
    out: list[Note] = []
    for phase, rows in by_phase.items():
        who = ", ".join(f"{LABELS.get(m, m)} ({format_bytes(r.memory.activations)})" for m, r in rows)
        if phase == "optimizer":
            text = (f"Peak at the optimizer step for {who}: every gradient is alive and the step adds its own "
                    "temporaries (torch's foreach AdamW takes the square root of all second moments of a "
                    "parameter group at once). The figures in brackets are those temporaries, not activations: "
                    "the activations were freed after the backward pass.")
        elif phase == "loss":
            text = (f"Peak at the loss for {who}: the logits (micro-batch × seq_len × vocabulary) and the "
                    "loss's fp32 copies are alive on top of the saved activations.")
        else:
            text = (f"Peak in the {phase} pass for {who}: one layer's largest temporary outweighs what the "
                    "backward pass holds.")
        out.append(Note(topic="peak_phase", methods=[m for m, _ in rows], text=text))
    return out


def surprises(req: PlanRequest, results: Mapping[str, EstimateResult | None]) -> list[Note]:
    """Notes for the compare view of ``req``: ``results`` maps each method to its estimate (None if refused)."""
    out: list[Note] = []
    note = _quantized_above(req, results) or _quantized_activations(req, results)
    if note is not None:
        out.append(note)
    return out + _peak_phases(results)


__all__ = ["Note", "surprises", "transient_label"]
