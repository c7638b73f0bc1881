"""What every importer shares: the note and error types, the imported-file record, model id resolution."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from app.core.hub_ids import parse_hub_id

# unknown / unsupported / ignored / note: see app/importers/__init__.py; assumed: a memory-relevant request
# field that no input gave, filled with a default (``field`` and ``value`` say which); detected: the format
# a file was read as.
NoteKind = Literal["unknown", "unsupported", "ignored", "note", "assumed", "detected"]
Format = Literal["plan", "peft", "bnb", "axolotl", "hf_training", "model_config", "llama_factory", "ms_swift", "trl",
                 "litgpt", "torchtune", "accelerate", "unsloth", "deepspeed"]

PLAN_KEYS = frozenset({"model", "method", "lora", "quantization", "training", "hardware"})
SECTIONS = ("lora", "quantization", "training", "hardware")


_READ_LOCAL_FILES: ContextVar[bool] = ContextVar("importers_read_local_files", default=True)


@contextmanager
def without_local_files() -> Iterator[None]:
    """Within it, importers read no file a config names (a model directory, a DeepSpeed JSON, a ``tune run``
    config): on the server (POST /api/v1/import) such a path is on the user's machine, not the server's disk. What
    would have been read is noted instead, saying to upload that file too."""
    token = _READ_LOCAL_FILES.set(False)
    try:
        yield
    finally:
        _READ_LOCAL_FILES.reset(token)


def local_files() -> bool:
    """Whether importers may read the files a config names (the CLI: yes; the server: :func:`without_local_files`)."""
    return _READ_LOCAL_FILES.get()


SET_GPU_COUNT = "set hardware.num_gpus (--num-gpus)"
"""What a note says where the GPU count comes from a launcher the config does not hold (the page and the CLI)."""
FROM_LAUNCHER = f"the GPU count comes from the launcher: {SET_GPU_COUNT}"
UPLOAD_IT = "the server reads no file a config names"
"""Said where :func:`without_local_files` kept an importer from reading a file the config names."""


@dataclass(frozen=True)
class ImportNote:
    """One key of an imported file that did not map one-to-one onto the request."""

    source: str  # the file (as given), or the format name for in-memory data
    key: str  # path inside the file: 'llm_int8_skip_modules', 'fsdp_config.offload_params', 'datasets'
    kind: NoteKind
    message: str
    field: str | None = None  # kind 'assumed': the request field, e.g. 'training.seq_len'
    value: Any = None  # kind 'assumed': the value it was given

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.kind}: {self.message}"


class ConfigImportError(ValueError):
    """A file that cannot be imported at all (unreadable, unrecognized, or a PEFT type that is not LoRA)."""

    def __init__(self, source: str, key: str | None, message: str) -> None:
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")
        self.source, self.key, self.message = source, key, message


@dataclass
class Imported:
    """One imported file: the detected format (and how it was told), the body it maps to, and its notes."""

    source: str
    format: Format
    body: dict[str, Any]
    notes: list[ImportNote]
    detected: str = ""  # e.g. 'axolotl config', 'HF TrainingArguments (per_device_train_batch_size, optim)'


@dataclass
class Draft:
    """The request body one trainer-config importer is building, section by section, and its notes."""

    source: str
    training: dict[str, Any] = field(default_factory=dict)
    notes: list[ImportNote] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] = field(default_factory=dict)
    quant: dict[str, Any] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)

    def note(self, key: str, kind: NoteKind, message: str) -> None:
        self.notes.append(ImportNote(self.source, key, kind, message))

    def leftovers(self, data: dict[str, Any], handled: Collection[str], unsupported: dict[str, str],
                  known: Collection[str], unknown: str, *, unset: Callable[[str, Any], bool] | None = None) -> None:
        """Notes for the keys no section read: an ``unsupported`` key that is set (its reason and value; unset, or
        ``unset(key, value)``, is 'not set'), a ``known`` key that does not affect memory, anything else ``unknown``."""
        for key, value in data.items():
            if key in handled:
                continue
            if key in unsupported:
                if is_unset(value) or (unset is not None and unset(key, value)):
                    self.note(key, "ignored", "not set")
                else:
                    self.note(key, "unsupported", f"{unsupported[key]} (value {value!r})")
            elif key in known:
                self.note(key, "ignored", "does not affect per-GPU training memory")
            else:
                self.note(key, "unknown", unknown)

    def assumed(self, key: str, field: str, value: Any, why: str) -> None:
        """``field`` ('lora.r', 'training.seq_len') takes the trainer's default ``value`` for the absent ``key``."""
        section, _, name = field.partition(".")
        {"lora": self.lora, "training": self.training}[section][name] = value
        self.notes.append(ImportNote(self.source, key, "assumed", why, field=field, value=value))

    def accumulation(self, data: Any, default: int, why: str) -> None:
        """``gradient_accumulation_steps`` (the HF TrainingArguments field these trainers extend) →
        ``training.gradient_accumulation_steps``, a positive integer (else refused naming the key); absent: the
        trainer's ``default``, noted as assumed with ``why``."""
        value = data.get("gradient_accumulation_steps")
        if value is None:
            self.assumed("gradient_accumulation_steps", "training.gradient_accumulation_steps", default, why)
        else:
            self.training["gradient_accumulation_steps"] = positive_int(value, self.source,
                                                                        "gradient_accumulation_steps")

    def model(self, value: Any, key: str, base_dir: Path | None) -> None:
        """The file's model (see :func:`resolve_model`), when it names one."""
        if value:
            model, notes = resolve_model(value, self.source, key, base_dir)
            self.notes += notes
            if model is not None:
                self.body["model"] = model

    def bitsandbytes(self, data: Any, qmethod: Any, bits: Any, *, method_key: str, type_key: str,
                     double_key: str) -> int:
        """A quantized base as these trainers load it for (Q)LoRA: bitsandbytes 8-bit, or 4-bit with the file's
        quant type (NF4 by default) and double quantization (on by default); any other method or width is noted
        and estimated as bitsandbytes 4-bit. Neither trainer calls ``prepare_model_for_kbit_training``
        (``quantization.prepare_kbit`` false). Returns the bits modelled (4 or 8)."""
        if qmethod != "bnb" or bits not in (4, 8):
            self.note(method_key, "unsupported", f"{qmethod} {bits}-bit base weights are not modelled; estimated as "
                      "bitsandbytes 4-bit (NF4)")
            bits = 4
        if bits == 8:
            self.quant["load_in_8bit"] = True
        else:
            qtype = data.get(type_key, "nf4")
            if qtype not in ("nf4", "fp4"):
                raise ConfigImportError(self.source, type_key, f"{qtype!r} is not nf4 or fp4")
            self.quant["bnb_4bit_quant_type"] = qtype
            double = bool_key(data, double_key, self.source)
            self.quant["bnb_4bit_use_double_quant"] = True if double is None else double
        self.quant["prepare_kbit"] = False
        return int(bits)

    def finish(self) -> tuple[dict[str, Any], list[ImportNote]]:
        """The body with its non-empty sections (packed rows on FlashAttention-2 unless the file names a kernel:
        :func:`varlen_attention`), and the notes."""
        varlen_attention(self.training, self.notes, self.source)
        for name, section in zip(SECTIONS, (self.lora, self.quant, self.training, self.hardware), strict=True):
            if section:
                self.body[name] = section
        return self.body, self.notes


def varlen_attention(training: dict[str, Any], notes: list[ImportNote], source: str) -> None:
    """Packed / padding-free rows (``training.packing`` or ``padding_free``) of a file that names no attention
    kernel run on FlashAttention-2's variable-length kernel, the one these trainers document for them (TRL
    ``padding_free``, axolotl ``sample_packing``, LLaMA-Factory ``neat_packing``, ms-swift ``padding_free``); the
    planner models packed rows only with it (app/core/switches.py)."""
    packed = "padding_free" if training.get("padding_free") else "packing" if training.get("packing") else None
    if packed is not None and "attn_implementation" not in training:
        training["attn_implementation"] = "flash_attention_2"
        notes.append(ImportNote(source, packed, "assumed", "packed rows attend per document with FlashAttention-2's "
                                "variable-length kernel; the file names no attention implementation",
                                field="training.attn_implementation", value="flash_attention_2"))


def bool_key(data: Any, key: str, source: str) -> bool | None:
    """A true/false key of a trainer's config: None when absent or null; anything but a bool is refused naming the key
    (the trainers' own argument parsers refuse it too)."""
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise ConfigImportError(source, key, f"expected true or false, got {value!r}")


def positive_int(value: Any, source: str, key: str) -> int:
    """A count the trainers' argument parsers take as a positive integer (``gradient_accumulation_steps``, litgpt's
    batch sizes): 0, a negative number, a float, a bool or a string is refused naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigImportError(source, key, f"expected a positive integer, got {value!r}")
    return value


def non_negative_int(value: Any, source: str, key: str) -> int:
    """An element count (DeepSpeed's bucket sizes, ``pp_int`` fields with ``ge=0``): a bool, a fraction, a string or
    a negative number is refused naming the key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigImportError(source, key, f"expected a non-negative integer or 'auto', got {value!r}")
    return value


def use_reentrant(value: Any, source: str, key: str) -> bool | None:
    """``use_reentrant`` of a ``gradient_checkpointing_kwargs`` value (a mapping, or its JSON text as command lines
    give it); None when it does not say."""
    if isinstance(value, str) and value.strip():
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigImportError(source, key, f"{value!r} is not a JSON object") from None
    found = value.get("use_reentrant") if isinstance(value, dict) else None
    return found if isinstance(found, bool) else None


def is_unset(value: Any) -> bool:
    """None, False, 0, '' and empty containers: the 'not set' values of an optional config key."""
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict, set)) and not value)


def resolve_model(value: Any, source: str, key: str, base_dir: Path | None = None) -> tuple[Any, list[ImportNote]]:
    """A catalog id (case-insensitive, 'https://huggingface.co/' prefix allowed), or a local directory /
    file holding a ``config.json`` (→ ``{"config": …}``). ``(None, [note])`` when it is neither; the note
    names the catalog ids it was probably meant as (:func:`app.core.catalog.suggest_models`)."""
    from app.core.catalog import did_you_mean, model_configs, suggest_models  # lazy: keeps `--help` light

    notes: list[ImportNote] = []
    if not isinstance(value, str) or not value.strip():
        return None, [ImportNote(source, key, "unsupported", f"expected a hub id or a path, got {value!r}")]
    text = value.strip()
    ids = model_configs()
    if text in ids:
        return text, notes
    bare = re.sub(r"^(https?://)?(huggingface\.co|hf\.co)/", "", text).strip("/")
    by_lower = {k.lower(): k for k in ids}
    if bare.lower() in by_lower:
        found = by_lower[bare.lower()]
        notes.append(ImportNote(source, key, "note", f"{text!r} read as the catalog model {found!r}"))
        return found, notes
    if not local_files():
        if parse_hub_id(bare) is not None:
            notes.append(ImportNote(source, key, "note", f"{text!r} read as a Hub id: the planner fetches its "
                                    "config.json (never the weights)"))
            return bare, notes
        notes.append(ImportNote(
            source, key, "unsupported",
            f"{text!r} is not a catalog model ({len(ids)} ids, GET /api/v1/models);{did_you_mean(suggest_models(text))}"
            f" if it is a Hub id, set it as the model; if it is a directory, {UPLOAD_IT}: upload its config.json "
            "with this file",
        ))
        return None, notes
    candidates = [Path(text).expanduser()]
    if base_dir is not None and not Path(text).is_absolute():
        candidates.insert(0, base_dir / text)
    for path in candidates:
        config = path / "config.json" if path.is_dir() else path
        if config.is_file() and config.suffix == ".json":
            try:
                data = json.loads(config.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigImportError(source, key, f"cannot read {config}: {exc}") from None
            notes.append(ImportNote(source, key, "note", f"model config read from {config}"))
            return {"config": data}, notes
    notes.append(ImportNote(
        source, key, "unsupported",
        f"{text!r} is not a catalog model ({len(ids)} ids, GET /api/v1/models) nor a local directory with a "
        f"config.json;{did_you_mean(suggest_models(text))} pass --model ID or the model's config.json as another FILE",
    ))
    return None, notes
