"""Optimizer names (HF ``TrainingArguments.optim``, axolotl ``optimizer``) → the planner's ``training.optim``.

Names: transformers 5.24 ``OptimizerNames`` (``src/transformers/training_args.py``) and axolotl's own.
"""

from __future__ import annotations

from typing import Any

from app.importers.common import ImportNote, NoteKind

# HF TrainingArguments.optim / axolotl `optimizer` → PlanRequest training.optim
OPTIM_EXACT = frozenset({"adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit",
                         "paged_adamw_32bit", "adafactor", "sgd", "lion_8bit", "lion_32bit"})
OPTIM_ALIASES: dict[str, tuple[str, str]] = {
    "adamw_8bit": ("adamw_bnb_8bit", "transformers' alias of adamw_bnb_8bit"),
    "adamw_hf": ("adamw_torch", "transformers' AdamW (removed in v5) keeps the same two states"),
    "adamw_torch_xla": ("adamw_torch", "same states as adamw_torch"),
    "adamw_torch_npu_fused": ("adamw_torch_fused", "same states as adamw_torch_fused"),
    "adamw_apex_fused": ("adamw_torch_fused", "same states as adamw_torch_fused"),
}
# Known optimizers (transformers 5 OptimizerNames, axolotl's own) the planner does not model.
OPTIM_KNOWN_UNMODELLED = frozenset({
    "adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "adagrad", "ademamix_8bit",
    "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop",
    "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit",
    "galore_adafactor", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise",
    "lomo", "adalomo", "grokadamw", "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd",
    "apollo_adamw", "apollo_adamw_layerwise", "stable_adamw", "optimi_adamw", "ao_adamw_4bit", "ao_adamw_8bit",
    "ao_adamw_fp8", "adopt_adamw", "came_pytorch", "muon", "dion",
})


def map_optimizer(name: Any, source: str, key: str) -> tuple[str | None, list[ImportNote]]:
    """An HF/axolotl optimizer name → training.optim, or (None, [note]) when the planner has no equivalent."""
    text = str(name).strip().lower()
    if text in OPTIM_EXACT:
        return text, []
    if text in OPTIM_ALIASES:
        optim, why = OPTIM_ALIASES[text]
        return optim, [ImportNote(source, key, "note", f"{name!r} modelled as {optim!r} ({why})")]
    modelled = ", ".join(sorted(OPTIM_EXACT))
    kind: NoteKind = "unsupported" if text in OPTIM_KNOWN_UNMODELLED else "unknown"
    what = "is not modelled" if kind == "unsupported" else "is not a known optimizer"
    return None, [ImportNote(source, key, kind, f"{name!r} {what}; training.optim left at the planner's default "
                             f"adamw_torch (modelled: {modelled})")]


# Known axolotl keys that do not change per-GPU training memory.
