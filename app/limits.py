"""Every input and work limit of this server, as served by ``GET /api/v1/limits`` (docs/limits.md explains them)."""

from __future__ import annotations

from typing import Any

from app.calibration.measure import MAX_MEASURE_STEPS, MAX_WARMUP_STEPS
from app.core.architectures import LIMITS as CONFIG_LIMITS
from app.core.patterns import MAX_PATTERN_CHARS, RE2_MAX_MEM
from app.core.request import (
    MAX_CONFIG_KEYS,
    MAX_CONFIG_VALUES,
    MAX_ID_CHARS,
    MAX_LAYERS,
    MAX_NAME_CHARS,
    MAX_NAMES,
    HardwareSpec,
    LoraSpec,
    TrainingSpec,
)
from app.settings import Settings

MAX_OFFSET = 1_000_000_000
"""Largest ``offset`` of the calibration list (API and page): SQLite's OFFSET is a signed 64-bit integer."""
MAX_LIST_LIMIT = 500
"""Largest ``limit`` of the calibration list."""
MAX_IMPORT_FILES = 8
"""Most files in one import (POST /api/v1/import, the page's import): a trainer config, its accelerate launcher,
an adapter_config.json, a BitsAndBytesConfig, a model config.json, …"""
MAX_UPLOAD_BYTES = 256 * 1024
"""Largest uploaded file (bytes), imported configs and the page's config.json alike: real ones are a few KiB."""
MAX_IMPORT_VALUES = 50_000
"""Most JSON values in an imported plan: YAML anchors let a small file stand for a huge tree."""


def _bounds(model: type, name: str) -> dict[str, Any]:
    """ge/gt/le/lt of one pydantic field (from its metadata)."""
    out: dict[str, Any] = {}
    for meta in model.model_fields[name].metadata:
        for key in ("ge", "gt", "le", "lt"):
            if getattr(meta, key, None) is not None:
                out[key] = getattr(meta, key)
    return out


def limits(settings: Settings) -> dict[str, Any]:
    """The limits as JSON: sizes, counts, ranges, pools and time budgets (seconds)."""
    return {
        "max_body_bytes": settings.max_body_bytes,
        "config": {"max_keys": MAX_CONFIG_KEYS, "max_values": MAX_CONFIG_VALUES, "dimensions": CONFIG_LIMITS},
        "ids": {"max_chars": MAX_ID_CHARS},
        "lora": {
            "r": _bounds(LoraSpec, "r"),
            "lora_alpha": _bounds(LoraSpec, "lora_alpha"),
            "target_modules": {"max_names": MAX_NAMES, "max_name_chars": MAX_NAME_CHARS,
                               "regex_max_chars": MAX_PATTERN_CHARS, "regex_engine": "RE2 (linear time)",
                               "regex_max_mem_bytes": RE2_MAX_MEM},
            "target_parameters": {"max_names": MAX_NAMES, "max_name_chars": MAX_NAME_CHARS},
            "modules_to_save": {"max_names": MAX_NAMES, "max_name_chars": MAX_NAME_CHARS},
            "layers_to_transform": {"max_items": MAX_LAYERS, "index_lt": MAX_LAYERS},
        },
        "training": {name: _bounds(TrainingSpec, name) for name in ("micro_batch_size", "seq_len", "momentum")},
        "hardware": {"num_gpus": _bounds(HardwareSpec, "num_gpus")},
        "import": {"max_files": MAX_IMPORT_FILES, "max_file_bytes": MAX_UPLOAD_BYTES,
                   "max_values": MAX_IMPORT_VALUES},
        "estimate": {"workers": settings.estimate_workers, "queue": settings.estimate_queue},
        "fit": {"workers": settings.fit_workers, "queue": settings.fit_queue, "timeout_s": settings.fit_timeout_s},
        "trace": {"workers": settings.trace_concurrency, "queue": settings.trace_queue,
                  "timeout_s": settings.trace_timeout_s, "import_timeout_s": settings.trace_import_timeout_s},
        "calibration": {"timeout_s": settings.calibration_timeout_s,
                        "cpu_max_params": settings.calibration_cpu_max_params,
                        "cpu_max_tokens": settings.calibration_cpu_max_tokens,
                        "cuda_max_tokens": settings.calibration_cuda_max_tokens,
                        "max_warmup_steps": MAX_WARMUP_STEPS, "max_measure_steps": MAX_MEASURE_STEPS,
                        "list_max_limit": MAX_LIST_LIMIT, "list_max_offset": MAX_OFFSET},
    }
