"""Turn configs people already have into a PlanRequest body (POST /api/v1/estimate's JSON).

Formats, detected by content (JSON or YAML, whatever the file is called; :mod:`.detect` says which and why):

- ``plan``: a PlanRequest body, whole or in part (e.g. only ``training``); passed through unchanged, so
  the planner's own validation refuses unknown fields and names them.
- ``peft``: a PEFT ``adapter_config.json`` as ``LoraConfig.save_pretrained`` writes it (or the adapter
  directory holding it) (:mod:`.peft`).
- ``bnb``: a transformers ``BitsAndBytesConfig`` (``to_dict()``, or ``to_json_string()``, which keeps
  only the keys that differ from transformers' defaults) (:mod:`.bnb`).
- ``axolotl``: an axolotl training YAML (:mod:`.axolotl`).
- ``hf_training``: HF ``TrainingArguments`` (``training_args.json``, ``to_json_string()``, ``to_dict()``) or TRL
  ``SFTConfig`` (:mod:`.hf_training`); never read as axolotl.
- ``llama_factory``: a LLaMA-Factory training YAML (:mod:`.llama_factory`); framework 'llama-factory'.
- ``ms_swift``: ms-swift ``swift sft`` arguments, as YAML/JSON or as the command line (:mod:`.ms_swift`,
  :mod:`.cli_args`); framework 'ms-swift'.
- ``trl``: a TRL recipe (``trl sft --config recipe.yaml``: SFTConfig + ModelConfig keys, or the ``trl sft`` command)
  (:mod:`.trl`); framework 'trl'.
- ``litgpt``: a litgpt fine-tuning config (``config_hub/finetune/*/*.yaml``) (:mod:`.litgpt`); framework 'litgpt'.
- ``torchtune``: a torchtune recipe config (``recipes/configs/<family>/<name>.yaml``), or a ``tune run`` command naming
  one beside it, with its overrides (:mod:`.torchtune`, :mod:`.tune_run`); framework 'torchtune'.
- ``unsloth``: an Unsloth training script or a saved notebook's code cells, read with ``ast`` and never run
  (:mod:`.unsloth`); framework 'unsloth'.
- ``accelerate``: an accelerate launch config (``accelerate launch --config_file x.yaml``): GPU count, DeepSpeed /
  FSDP sharding and offload (:mod:`.accelerate`).
- ``deepspeed``: a DeepSpeed config JSON on its own (the file a trainer config's ``deepspeed:`` names): ZeRO stage,
  CPU offload, bucket sizes, integer batch keys (:mod:`.deepspeed`).
- ``model_config``: a model's ``config.json`` (becomes ``{"model": {"config": …}}``; a bitsandbytes
  ``quantization_config`` inside it is imported as ``bnb``) (:mod:`.model_config`).

Nothing is dropped silently. Each key of an imported file is mapped into the body, accepted without a
word (PEFT keys known to change neither parameters nor memory: ``task_type``, ``inference_mode``,
``init_lora_weights``, …), or reported as an :class:`ImportNote` with its path in the file:

- ``unknown``: not a key of the detected format (a typo, or a newer version's option);
- ``unsupported``: a known key whose value changes parameters or memory in a way the planner does
  not model (``llm_int8_skip_modules``, PEFT ``rank_pattern``, axolotl ``rl``, LLaMA-Factory ``use_galore``,
  …); the estimate is made without it;
- ``ignored``: a known key that does not affect per-GPU training memory (axolotl ``datasets``,
  ``num_epochs``, ``learning_rate``, …);
- ``assumed``: a memory-relevant field the file leaves out, given the format's default (axolotl's
  ``sequence_len`` 512, TrainingArguments' batch size 8), with ``field`` and ``value``; :mod:`.assumed` adds the
  planner's own defaults for fields no input gave;
- ``note``: a value the importer translated (an optimizer alias, a hub id whose case was normalized).

Pure Python: imports neither torch nor FastAPI (PyYAML for YAML; ``app.core.catalog`` to resolve model ids).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from app.importers.accelerate import from_accelerate
from app.importers.assumed import memory_fields, planner_defaults
from app.importers.axolotl import from_axolotl
from app.importers.bnb import compute_dtype, from_bnb
from app.importers.common import (
    ConfigImportError,
    Format,
    Imported,
    ImportNote,
    NoteKind,
    resolve_model,
    without_local_files,
)
from app.importers.detect import detect, detect_format
from app.importers.files import import_data, import_file, load_plan_file, parse_text
from app.importers.hf_training import from_hf_training
from app.importers.llama_factory import from_llama_factory
from app.importers.merge import combine_methods, merge
from app.importers.model_config import from_model_config
from app.importers.ms_swift import from_ms_swift
from app.importers.optim import map_optimizer
from app.importers.peft import from_peft
from app.importers.torchtune import from_torchtune
from app.importers.trl import from_trl


def load_plan_files(paths: Iterable[str | Path]) -> tuple[dict[str, Any], list[ImportNote]]:
    """Several files, each imported (format auto-detected) and then merged in order → (body, notes). The first
    note of each file (kind ``detected``) says what it was read as."""
    return combine([import_file(p) for p in paths])


def import_texts(files: Sequence[tuple[str, str]]) -> tuple[dict[str, Any], list[ImportNote]]:
    """Uploaded files as ``(name, text)``, imported and merged as :func:`load_plan_files` does, reading no file a
    config names (:func:`without_local_files`): POST /api/v1/import and the page's import."""
    with without_local_files():
        return combine([import_data(parse_text(text, name), name) for name, text in files])


def combine(imported: Sequence[Imported]) -> tuple[dict[str, Any], list[ImportNote]]:
    """Imported files merged in order → (body, notes), each file's notes after its ``detected`` note."""
    body, merge_notes = merge([i.body for i in imported], [i.source for i in imported])
    later: set[str] = set()  # request fields set by the files after the one being read
    per_file: list[list[ImportNote]] = []
    for i in reversed(imported):
        # a default one file assumed is no longer assumed when a later file gives the field
        per_file.append([ImportNote(i.source, "", "detected", f"detected {i.detected}"),
                         *(n for n in i.notes if not (n.kind == "assumed" and n.field in later))])
        later |= _fields(i.body)
    return body, [n for notes in reversed(per_file) for n in notes] + merge_notes


def _fields(body: Mapping[str, Any]) -> set[str]:
    """'method', 'training.seq_len', …: the request fields a body sets."""
    return {f"{key}.{field}" for key, value in body.items() if isinstance(value, Mapping) and key != "model"
            for field in value} | set(body)


__all__ = [
    "ConfigImportError",
    "Format",
    "ImportNote",
    "Imported",
    "NoteKind",
    "combine_methods",
    "compute_dtype",
    "detect",
    "detect_format",
    "from_accelerate",
    "from_axolotl",
    "from_bnb",
    "from_hf_training",
    "from_llama_factory",
    "from_model_config",
    "from_ms_swift",
    "from_peft",
    "from_torchtune",
    "from_trl",
    "import_data",
    "import_file",
    "import_texts",
    "load_plan_file",
    "load_plan_files",
    "map_optimizer",
    "memory_fields",
    "merge",
    "parse_text",
    "planner_defaults",
    "resolve_model",
    "without_local_files",
]
