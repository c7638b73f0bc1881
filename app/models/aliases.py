"""Read the config-key aliases transformers' config classes accept (``attribute_map``) into core data.

``PretrainedConfig.attribute_map`` maps an alias to the attribute it sets (``num_experts`` →
``num_local_experts`` for Qwen3-MoE in transformers 5). When a config.json carries both names, which
one wins depends on the class (explicit ``__init__`` parameters are set before or after the leftover
keyword arguments), so each pair's winner is measured by building the class with both.

``python -m app.models.aliases`` rewrites ``app/core/data/config_aliases.json``; a test checks the file
against the installed transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.core.architectures import SUPPORTED_MODEL_TYPES

ALIASES_PATH = Path(__file__).resolve().parents[1] / "core" / "data" / "config_aliases.json"


def read_aliases(model_types: tuple[str, ...] = SUPPORTED_MODEL_TYPES) -> dict[str, dict[str, Any]]:
    """``{model_type: {alias: {"key": attribute, "alias_wins": bool}}}`` from the real config classes."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    out: dict[str, dict[str, Any]] = {}
    for model_type in model_types:
        entry = {}
        for alias, key in sorted(CONFIG_MAPPING[model_type].attribute_map.items()):
            both = AutoConfig.for_model(model_type, **{alias: 3, key: 5})
            entry[alias] = {"key": key, "alias_wins": getattr(both, key) == 3}
        out[model_type] = entry
    return out


def write_aliases() -> None:
    ALIASES_PATH.write_text(json.dumps(read_aliases(), indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_aliases()
