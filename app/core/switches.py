"""The training switches people turn on (issue 13): which combinations exist, and their memory effect.

See docs/switches.md. Each effect is checked against the trace engine (``app/trace/switches.py``,
tests/test_switches.py).
"""

from __future__ import annotations

from app.core.errors import PlanError
from app.core.request import PlanRequest


def padding_free(req: PlanRequest) -> bool:
    """TRL ``SFTTrainer``: ``padding_free or (packing and packing_strategy in {"bfd", "bfd_split"})``; the
    default ``packing_strategy`` is ``"bfd"``, so ``packing`` flattens the batch too (trl/trainer/sft_trainer.py)."""
    return req.training.padding_free or req.training.packing
