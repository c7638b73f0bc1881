"""Unsloth training scripts (a notebook's cells saved as ``train.py``) → a full PlanRequest body, framework 'unsloth'.

Unsloth is configured in Python, so the script is read, never run: :func:`parse_unsloth_script` parses it with
``ast`` and takes the keyword arguments of its ``FastLanguageModel.from_pretrained`` (or ``FastModel``),
``FastLanguageModel.get_peft_model`` and ``SFTConfig`` / ``TrainingArguments`` / ``UnslothTrainingArguments`` calls.
An argument is a literal, a ``torch.<dtype>``, or a name bound to a literal at the script's top level
(``max_seq_length = 2048`` … ``max_seq_length = max_seq_length``); anything else (``is_bfloat16_supported()``) is
reported and the default applies.

Defaults and meanings as Unsloth 2026.8 reads them (``unsloth/models/loader.py FastLanguageModel.from_pretrained``,
``unsloth/models/llama.py FastLlamaModel.get_peft_model``):

- ``from_pretrained``: ``model_name`` → the model; ``max_seq_length`` 2048 → ``seq_len`` (the trainer's
  ``max_length`` / ``max_seq_length`` wins when given); ``load_in_4bit`` (default true: bitsandbytes NF4 with double
  quantization) / ``load_in_8bit``; ``full_finetuning``; ``dtype`` None (bfloat16 where the GPU supports it),
  ``torch.bfloat16`` → bf16, ``torch.float32`` → fp32 (``torch.float16`` trains 16-bit weights under fp16 autocast,
  which the planner's precisions do not name: estimated as bf16, the same bytes).
- ``get_peft_model``: ``r`` 16, ``lora_alpha`` 16, ``lora_dropout`` 0, ``bias`` 'none', ``target_modules`` the seven
  attention and MLP projections, ``use_rslora``, ``modules_to_save``, ``use_gradient_checkpointing`` 'unsloth'
  ('unsloth' or true → checkpointing, modelled as Unsloth's offloaded one; false → off). Without a
  ``get_peft_model`` call the run is full fine-tuning (``full_finetuning``; Unsloth's checkpointing then follows
  ``from_pretrained``'s ``use_gradient_checkpointing``).
- The trainer's arguments are HF ``TrainingArguments`` / TRL ``SFTConfig`` fields, read by
  :func:`app.importers.hf_training.from_hf_training` (batch size, accumulation, ``optim`` with its aliases such as
  ``adamw_8bit``, packing, sequence length); the model's dtype and Unsloth's checkpointing come from the calls above.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.importers.common import ConfigImportError, Draft, ImportNote, positive_int
from app.importers.hf_training import from_hf_training

LOADERS = ("FastLanguageModel", "FastModel")
TRAINER_ARGS = ("SFTConfig", "TrainingArguments", "UnslothTrainingArguments")
_SCRIPT = re.compile(r"\bFast(Language)?Model\s*\.\s*from_pretrained\s*\(")
POSITIONAL: dict[str, tuple[str | None, ...]] = {
    "from_pretrained": ("model_name", "max_seq_length", "dtype", "load_in_4bit"),
    "get_peft_model": (None, "r", "target_modules", "lora_alpha", "lora_dropout", "bias"), "args": ()}
"""The leading parameters of each call, in their signatures' order (``get_peft_model``'s first is the model)."""
MAX_SCRIPT_CHARS = 1_000_000
"""The longest script read (Unsloth's notebooks export to ~20k characters)."""
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LOAD_DEFAULTS: dict[str, Any] = {"max_seq_length": 2048, "load_in_4bit": True, "load_in_8bit": False,
                                 "full_finetuning": False, "dtype": None, "use_gradient_checkpointing": "unsloth"}
PEFT_DEFAULTS: dict[str, Any] = {"r": 16, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none",
                                 "target_modules": SEVEN, "use_rslora": False, "modules_to_save": None,
                                 "use_gradient_checkpointing": "unsloth"}
LOAD_IGNORED = frozenset({"token", "device_map", "trust_remote_code", "fast_inference", "gpu_memory_utilization",
                          "max_lora_rank", "random_state", "revision", "use_exact_model_name", "cache_dir"})
PEFT_IGNORED = frozenset({"random_state", "loftq_config", "max_seq_length", "init_lora_weights",
                          "temporary_location", "use_gradient_checkpointing"})
DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float32": "fp32", "float": "fp32", "float16": "bf16", "half": "bf16"}


class Unresolved(str):
    """An argument the script computes (its source text): not a value the importer can know."""


class UnslothScript(dict[str, Any]):
    """The keyword arguments of an Unsloth script's calls: ``from_pretrained``, ``get_peft_model`` (absent when the
    script makes none) and ``args`` (the trainer's arguments), with ``args_class`` naming the class called."""

    def __init__(self, calls: dict[str, dict[str, Any]], args_class: str | None) -> None:
        super().__init__(calls)
        self.args_class = args_class


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _value(node: ast.AST, names: Mapping[str, Any]) -> Any:
    """A literal, ``torch.<dtype>`` (its name), or a top-level name bound to one; else :class:`Unresolved`."""
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    dotted = _dotted(node)
    if dotted.startswith("torch.") and dotted.count(".") == 1:
        return dotted.removeprefix("torch.")
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return Unresolved(ast.unparse(node))


def notebook_code(text: str) -> str | None:
    """A Jupyter notebook's code cells as one script (IPython ``!shell`` and ``%magic`` lines left out), or None when
    ``text`` is not a notebook (nbformat JSON)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or "nbformat" not in data or not isinstance(data.get("cells"), list):
        return None
    lines: list[str] = []
    for cell in data["cells"]:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            src = cell.get("source", "")
            code = "".join(src) if isinstance(src, list) else str(src)
            lines += [line for line in code.splitlines() if not line.lstrip().startswith(("!", "%"))]
    return "\n".join(lines) + "\n"


def parse_unsloth_script(text: str, source: str) -> UnslothScript | None:
    """The calls of an Unsloth script (module docstring), or None when ``text`` calls no Unsloth loader."""
    if not _SCRIPT.search(text):
        return None
    if len(text) > MAX_SCRIPT_CHARS:
        raise ConfigImportError(source, None, f"a script has at most {MAX_SCRIPT_CHARS:,} characters")
    try:
        tree = ast.parse(text)
    except SyntaxError as exc:
        if not source.endswith((".py", ".ipynb")):
            return None  # a YAML or command file that only mentions the call
        raise ConfigImportError(source, None, f"not valid Python (an Unsloth script): {exc.msg} at line "
                                f"{exc.lineno}") from None
    names: dict[str, Any] = {}
    calls: dict[str, dict[str, Any]] = {}
    args_class = None
    for node in ast.walk(tree):  # walk order: top-level statements first, each call before its arguments' calls
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _value(node.value, names)
            if not isinstance(value, Unresolved):
                names.setdefault(node.targets[0].id, value)  # the first binding (the notebook's settings cell)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = _dotted(node.func)
        owner, _, method = func.rpartition(".")
        key = (method if owner in LOADERS and method in ("from_pretrained", "get_peft_model") else
               "args" if func.rsplit(".", 1)[-1] in TRAINER_ARGS else None)
        if key is None or key in calls:
            continue
        calls[key] = {name: _value(arg, names) for name, arg in zip(POSITIONAL[key], node.args, strict=False)
                      if name is not None}
        calls[key] |= {kw.arg: _value(kw.value, names) for kw in node.keywords if kw.arg is not None}
        if key == "args":
            args_class = func.rsplit(".", 1)[-1]
    return UnslothScript(calls, args_class)


def _known(section: Mapping[str, Any], key: str, defaults: Mapping[str, Any], where: str, draft: Draft) -> Any:
    """``section[key]``, or its default (noted as assumed) when absent or computed by the script."""
    value = section.get(key, defaults[key])
    if isinstance(value, Unresolved):
        draft.note(f"{where}.{key}", "unsupported", f"{value!r} is computed by the script: Unsloth's default "
                   f"{defaults[key]!r} is estimated")
        return defaults[key]
    return value


def from_unsloth(data: UnslothScript, source: str = "Unsloth script",
                 base_dir: Path | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    """An Unsloth script's calls (:func:`parse_unsloth_script`) → (body, notes); see the module docstring."""
    load = data.get("from_pretrained") or {}
    peft = data.get("get_peft_model")
    draft = Draft(source, training={"framework": "unsloth"})
    name = _known(load, "model_name", {"model_name": None}, "from_pretrained", draft)
    draft.model(name, "from_pretrained.model_name", base_dir)
    full = peft is None
    if full and not _known(load, "full_finetuning", LOAD_DEFAULTS, "from_pretrained", draft):
        draft.note("get_peft_model", "note", "the script adds no LoRA adapter: full fine-tuning estimated "
                   "(Unsloth needs full_finetuning=True for it)")
    four, eight = (_known(load, k, LOAD_DEFAULTS, "from_pretrained", draft) for k in ("load_in_4bit", "load_in_8bit"))
    quantized = not full and (bool(four) or bool(eight))
    draft.body["method"] = "full" if full else ("qlora" if quantized else "lora")
    if quantized:
        # bitsandbytes NF4 + double quantization (unsloth/models/loader.py), computed in the model's dtype
        draft.quant.update(load_in_8bit=bool(eight) and not four, bnb_4bit_quant_type="nf4",
                           bnb_4bit_use_double_quant=True, prepare_kbit=False)
    dtype = _known(load, "dtype", LOAD_DEFAULTS, "from_pretrained", draft)
    if dtype is None:
        draft.note("from_pretrained.dtype", "note", "None: bfloat16 where the GPU supports it (Ampere and newer)")
    elif str(dtype) not in DTYPES:
        raise ConfigImportError(source, "from_pretrained.dtype", f"{dtype!r}: expected torch.bfloat16, "
                                "torch.float16, torch.float32 or None")
    elif str(dtype) in ("float16", "half"):
        draft.note("from_pretrained.dtype", "unsupported", "float16 weights under fp16 autocast: estimated as "
                   "bf16 (the same bytes)")
    precision = DTYPES.get(str(dtype), "bf16")
    if quantized:
        draft.quant["bnb_4bit_compute_dtype"] = "float32" if precision == "fp32" else "bfloat16"
    if peft is not None:
        values = {k: _known(peft, k, PEFT_DEFAULTS, "get_peft_model", draft) for k in PEFT_DEFAULTS}
        targets = values["target_modules"]
        if not (targets == "all-linear" or (isinstance(targets, list) and targets
                                            and all(isinstance(t, str) for t in targets))):
            raise ConfigImportError(source, "get_peft_model.target_modules", f"expected module names, got {targets!r}")
        draft.lora.update(r=positive_int(values["r"], source, "get_peft_model.r"), lora_alpha=values["lora_alpha"],
                          lora_dropout=values["lora_dropout"], bias=values["bias"], target_modules=targets,
                          use_rslora=bool(values["use_rslora"]))
        if values["modules_to_save"]:
            draft.lora["modules_to_save"] = list(values["modules_to_save"])
        if peft.get("use_dora"):
            draft.note("get_peft_model.use_dora", "unsupported", "DoRA is not among Unsloth's get_peft_model "
                       "arguments the planner reads: estimated as LoRA")
        for key in peft:
            if key not in PEFT_DEFAULTS and key not in PEFT_IGNORED and key != "use_dora":
                draft.note(f"get_peft_model.{key}", "unknown", "not a get_peft_model argument the planner reads")
    checkpointing = _known(peft if peft is not None else load, "use_gradient_checkpointing", LOAD_DEFAULTS,
                           "get_peft_model" if peft is not None else "from_pretrained", draft)
    for key in load:
        if key not in LOAD_DEFAULTS and key not in LOAD_IGNORED and key != "model_name":
            draft.note(f"from_pretrained.{key}", "unknown", "not a from_pretrained argument the planner reads")
    args = {k: v for k, v in (data.get("args") or {}).items() if not isinstance(v, Unresolved)}
    for key, value in (data.get("args") or {}).items():
        if isinstance(value, Unresolved) and key not in ("bf16", "fp16"):  # Unsloth's notebooks compute these two
            draft.note(f"args.{key}", "unsupported", f"{value!r} is computed by the script: not read")
    for key in ("bf16", "fp16"):
        if key in (data.get("args") or {}):
            args.pop(key, None)
            draft.note(f"args.{key}", "note", "the model's dtype (from_pretrained.dtype) decides the precision")
    trainer, trainer_notes = from_hf_training(args, source, base_dir, sft=data.args_class == "SFTConfig")
    # Unsloth decides checkpointing and the model's dtype itself: the trainer's own notes on them do not apply
    overridden = ("training.gradient_checkpointing", "training.precision")
    draft.notes += [n for n in trainer_notes if n.field not in overridden
                    and not n.key.startswith(("gradient_checkpointing", "activation_checkpointing"))]
    training = {**trainer.get("training", {}), **draft.training}
    training["precision"] = precision
    training["gradient_checkpointing"] = bool(checkpointing)
    if checkpointing is True:
        draft.note("use_gradient_checkpointing", "note", "true: estimated as Unsloth's offloaded checkpointing")
    length = next((args[k] for k in ("max_length", "max_seq_length") if args.get(k) is not None), None)
    if length is None:
        length = _known(load, "max_seq_length", LOAD_DEFAULTS, "from_pretrained", draft)
    training["seq_len"] = positive_int(length, source, "max_seq_length")
    draft.training = training
    for name, section in (("lora", draft.lora), ("quantization", draft.quant), ("training", draft.training),
                          ("hardware", trainer.get("hardware", {}))):
        if section:
            draft.body[name] = section
    return draft.body, draft.notes
