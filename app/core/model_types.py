"""What transformers 5.24 can build from a ``config.json`` without remote code, and what a checkpoint's own
``quantization_config`` means for a fine-tuning run. Pure Python: the list of model types is data.

``data/transformers_model_types.json`` holds the keys of transformers 5.24's
``transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES`` (``tests/test_hub.py`` checks it against
the installed library). Regenerate it with::

    python -c "from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES as m; \\
    import json, transformers; print(json.dumps({'transformers': transformers.__version__, \\
    'source': 'transformers.models.auto.configuration_auto.CONFIG_MAPPING_NAMES', 'model_types': sorted(m)}))"
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from app.core.catalog import DATA_DIR


@cache
def transformers_model_types() -> frozenset[str]:
    """Every ``model_type`` transformers 5.24 has a config class (and so, built-in code) for."""
    return frozenset(json.loads((DATA_DIR / "transformers_model_types.json").read_text())["model_types"])


def remote_code_reason(cfg: dict[str, Any]) -> str | None:
    """Why building this config would need ``trust_remote_code=True``, or None when transformers has the code.

    transformers' ``AutoConfig.from_pretrained`` uses the repo's own code (``auto_map``) only for a
    ``model_type`` missing from ``CONFIG_MAPPING``; a known ``model_type`` is built from the library's classes
    even when the config also carries an ``auto_map``.
    """
    model_type = cfg.get("model_type")
    if isinstance(model_type, str) and model_type in transformers_model_types():
        return None
    auto_map = cfg.get("auto_map")
    if not isinstance(auto_map, dict) or not auto_map:
        return None  # not remote code; the estimator says what it does not support
    classes = ", ".join(sorted(str(v) if isinstance(v, str) else str(v[0]) for v in auto_map.values())[:4])
    return (f"model_type {model_type!r} is not in transformers 5.24: this config needs trust_remote_code (auto_map: "
            f"{classes}), and the planner runs no code from a repository")


# quant_method values of pre-quantized checkpoints that fine-tuning recipes load dequantized
# (transformers 5.24 quantizers: Mxfp4Config(dequantize=True), FineGrainedFP8Config(dequantize=True)).
DEQUANTIZED_ON_LOAD = {"mxfp4": "MXFP4", "fp8": "FP8"}


def checkpoint_quantization_note(cfg: dict[str, Any]) -> str | None:
    """An assumption for the result when the checkpoint is stored in MXFP4 or FP8 (gpt-oss, DeepSeek-V3,
    Devstral…): the estimate is for the recipe that dequantizes it, not for the stored format."""
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict):
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method not in DEQUANTIZED_ON_LOAD:
        return None
    return (f"the checkpoint is stored in {DEQUANTIZED_ON_LOAD[method]} (quantization_config.quant_method="
            f"{method!r}); fine-tuning recipes load it dequantized to bf16 (transformers "
            f"{'Mxfp4Config' if method == 'mxfp4' else 'FineGrainedFP8Config'}(dequantize=True)) for full, LoRA "
            "and DoRA, and QLoRA/QDoRA quantize those bf16 weights with bitsandbytes 4-bit; this estimate assumes "
            f"that, not {DEQUANTIZED_ON_LOAD[method]} storage, and not a bitsandbytes checkpoint")
