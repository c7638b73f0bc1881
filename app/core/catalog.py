"""The shipped catalogs: model ``config.json`` files keyed by hub id, and GPUs.

Model files live in ``app/core/data/models/<org>--<name>.json`` (the hub's config.json), with where each was
read recorded in ``app/core/data/model_sources.json`` (see :func:`model_sources`; docs/catalog.md);
GPUs in ``app/core/data/gpus.json`` (VRAM in bytes as ``torch.cuda.get_device_properties().total_memory``
reports it where measured, dense bf16 TFLOP/s, bandwidth in bytes/s, indicative price with its date).
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from app.core.errors import PlanError

DATA_DIR = Path(__file__).with_name("data")


@dataclass(frozen=True)
class Gpu:
    id: str
    name: str
    vendor: str
    vram_bytes: int
    vram_is_measured: bool
    bf16_tflops: float
    fp32_tflops: float
    memory_bandwidth_bytes_per_s: int
    arch: str
    compute_capability: str
    form: str
    price_usd_per_hour: float | None
    price_date: str
    source: str
    tdp_watts: int | None = None  # board power (NVIDIA specifications), for the power cost of an owned card
    purchase_price_usd: float | None = None  # consumer/workstation cards: what buying one costs
    purchase_price_date: str | None = None  # when the catalog's purchase price was entered (YYYY-MM)
    purchase_price_source: str | None = None


@cache
def model_configs() -> dict[str, dict[str, Any]]:
    """Hub id → config.json of every catalog model, sorted by id (read once)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((DATA_DIR / "models").glob("*.json")):
        out[path.stem.replace("--", "/", 1)] = json.loads(path.read_text())
    return out


@cache
def model_sources() -> dict[str, dict[str, Any]]:
    """Hub id → where its catalog config.json was read (the Hub itself is not reachable from where the catalog
    is built, so each is a public copy of the Hub's file):

    - ``repo``, ``path``, ``commit``: a file in a public GitHub repository, or ``index_file``: the id of a file of
      the public code search index this project's sessions read (its repository was not resolved);
    - ``note``: what that copy is and how it differs from the Hub's file;
    - ``keys``: present when the copy states only these keys (a table of shapes, a library's own names for
      them); the other values of the catalog file are not confirmed by any copy. Absent: every key.
    """
    return json.loads((DATA_DIR / "model_sources.json").read_text())


def model_source(model_id: str) -> str:
    """A readable origin of a catalog config: the file and the public copy its values were checked against."""
    text = f"catalog file app/core/data/models/{model_id.replace('/', '--', 1)}.json"
    src = model_sources().get(model_id)
    if src is None:
        return text
    if "repo" in src:
        text += f" (from github.com/{src['repo']}/blob/{src['commit'][:12]}/{src['path']}"
    else:
        text += f" (from public code-index file {src['index_file']}"
    return text + (f"; only {len(src['keys'])} keys confirmed)" if "keys" in src else ")")


def did_you_mean(suggestions: list[str]) -> str:
    """' did you mean 'a' or 'b'?' for an error message ('' when there is nothing to suggest)."""
    if not suggestions:
        return ""
    quoted = [repr(s) for s in suggestions]
    shown = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" or {quoted[-1]}"
    return f" did you mean {shown}?"


def model_config(model_id: str) -> dict[str, Any]:
    configs = model_configs()
    if model_id not in configs:
        hint = did_you_mean(suggest_models(model_id))
        raise PlanError(
            ("model",),
            f"unknown model {model_id!r};{hint} use a catalog id (GET /api/v1/models lists {len(configs)}) "
            "or pass {'config': {...config.json...}}",
        )
    return configs[model_id]


# --- "did you mean" ------------------------------------------------------------------------------------
# Name parts that mark a variant or a re-upload of the same architecture, dropped before comparing names:
# checkpoint flavours on the Hub (Qwen "-Base", "-Instruct", Gemma "-it"/"-pt", Llama 2 "-hf"/"-chat-hf",
# Meta's "Meta-" prefix of Llama 3) and re-quantized mirrors (unsloth "-bnb-4bit", "-unsloth-bnb-4bit",
# TheBloke "-GPTQ"/"-AWQ"/"-GGUF"). The config (and so the estimate) of a variant equals the catalog model's,
# except for vocabulary-size changes some chat variants make; the suggestion is a suggestion, not a mapping.
_VARIANT_PARTS = frozenset({"base", "instruct", "it", "pt", "hf", "chat", "meta", "bnb", "4bit", "8bit", "unsloth",
                            "gptq", "awq", "gguf", "dynamic"})
_HUB_URL = re.compile(r"^(https?://)?(huggingface\.co|hf\.co)/", re.IGNORECASE)
MAX_SUGGESTIONS = 5


def _model_core(model_id: str) -> tuple[str, ...]:
    """The name without its organisation and variant parts: 'unsloth/Meta-Llama-3-8B-Instruct-bnb-4bit' →
    ('llama', '3', '8b')."""
    name = model_id.rsplit("/", 1)[-1].lower()
    return tuple(part for part in re.split(r"[-_]", name) if part and part not in _VARIANT_PARTS)


def suggest_models(text: str) -> list[str]:
    """Catalog ids a user probably meant by ``text`` (an unknown hub id), best first; empty when none is close.

    In order: the same id in another case (or with a ``https://huggingface.co/`` prefix); ids with the same name
    once variant and mirror parts are dropped (``Qwen/Qwen3-8B-Base`` → ``Qwen/Qwen3-8B``,
    ``unsloth/Llama-3.2-1B-Instruct-bnb-4bit`` → ``meta-llama/Llama-3.2-1B``, ``NousResearch/Llama-2-7b-hf`` →
    ``meta-llama/Llama-2-7b-hf``), the same organisation first; else close spellings (``difflib``, ratio ≥ 0.8).
    """
    ids = list(model_configs())
    bare = _HUB_URL.sub("", str(text).strip()).strip("/")
    if not bare:
        return []
    by_lower = {i.lower(): i for i in ids}
    if bare.lower() in by_lower:
        found = by_lower[bare.lower()]
        return [found] if found != text else []
    core = _model_core(bare)
    org = bare.rsplit("/", 1)[0].lower() if "/" in bare else ""
    same = [i for i in ids if core and _model_core(i) == core]
    if same:
        # the same organisation first, then the catalog id closest in spelling
        same.sort(key=lambda i: (i.split("/", 1)[0].lower() != org,
                                 -difflib.SequenceMatcher(None, i.lower(), bare.lower()).ratio(), i))
        return same[:MAX_SUGGESTIONS]
    close = difflib.get_close_matches(bare.lower(), list(by_lower), n=3, cutoff=0.8)
    if "/" not in bare:  # a name without its organisation: compare names
        names = {i.rsplit("/", 1)[-1].lower(): i for i in ids}
        close += difflib.get_close_matches(bare.lower(), list(names), n=3, cutoff=0.8)
        return list(dict.fromkeys(by_lower.get(c) or names[c] for c in close))[:MAX_SUGGESTIONS]
    return [by_lower[c] for c in close]


def _gpu_key(text: str) -> str:
    """Lower-case letters and digits only: 'RTX 4090', 'rtx_4090', 'NVIDIA-RTX-4090' compare alike."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def suggest_gpus(text: str) -> list[str]:
    """Catalog GPU ids a user probably meant by ``text``, catalog order; empty when none is close.

    The same id or catalog name with other case, spaces or punctuation (``NVIDIA RTX 4090``); ids and names
    containing the text's letters and digits (``4090``, ``a100`` → both A100s, ``h100`` → the three H100s);
    else close spellings of the id (``difflib``, ratio ≥ 0.75).
    """
    table = gpus()
    key = _gpu_key(str(text))
    if not key:
        return []
    # id, name, and id without the vendor ('rtx4090' for nvidia-rtx-4090)
    keys = {g.id: (_gpu_key(g.id), _gpu_key(g.name), _gpu_key(g.id).removeprefix(_gpu_key(g.vendor)))
            for g in table.values()}
    exact = [i for i, forms in keys.items() if key in forms]
    if exact:
        return [i for i in exact if i != text][:MAX_SUGGESTIONS]
    if len(key) >= 3:
        contained = [i for i, (k_id, k_name, _) in keys.items() if key in k_id or key in k_name]
        if contained:
            return contained[:MAX_SUGGESTIONS]
    return difflib.get_close_matches(str(text).strip().lower(), list(table), n=3, cutoff=0.75)


@cache
def gpus() -> dict[str, Gpu]:
    """GPU id → :class:`Gpu`, in catalog order (VRAM ascending)."""
    rows = json.loads((DATA_DIR / "gpus.json").read_text())
    return {row["id"]: Gpu(**row) for row in rows}


def gpu(gpu_id: str) -> Gpu:
    table = gpus()
    if gpu_id not in table:
        hint = did_you_mean(suggest_gpus(gpu_id))
        raise PlanError(("hardware", "gpu"), f"unknown gpu {gpu_id!r};{hint} one of: {', '.join(table)}")
    return table[gpu_id]


# --- the card a calibration measured -----------------------------------------------------------------------
# Name parts that say nothing about which card it is (vendor, brand, packaging: torch reports the A100 SXM as
# "NVIDIA A100-SXM4-80GB" and the H100 SXM as "NVIDIA H100 80GB HBM3"), and parts that make a different card
# of the same number (an RTX 4070 Ti SUPER is not an RTX 4070; an H100 PCIe or NVL is not the SXM part).
_NEUTRAL = re.compile(r"^(nvidia|amd|geforce|rtx|tesla|instinct|quadro|gpu|generation|hbm\d?e?|sxm\d?|\d+gb)$")
_VARIANTS = frozenset({"ti", "super", "pcie", "nvl", "ada", "laptop", "mobile", "max", "vf"})
# Reported totals differ from the catalog's by driver and OS (the catalog's notes: a few MiB on Linux, ~1 %
# under Windows); cards of one name differ by 2x (A100 40/80 GB), so 5 % tells them apart without refusing one.
DEVICE_MEMORY_TOLERANCE = 0.05


def _tokens(text: str) -> set[str]:
    return {t for t in re.split(r"[^a-z0-9]+", text.lower()) if t}


def gpu_for_device(name: str, total_bytes: int) -> str | None:
    """The catalog id of a CUDA/ROCm device as torch reports it (``get_device_properties(i).name`` and
    ``.total_memory``), or None when no catalog card is that device.

    A catalog card matches when its id's model parts (``a100``, ``4090``, ``6000`` + ``ada``) are all in the
    device name, the name has no variant part (``ti``, ``pcie``, ``nvl``, …) the id lacks, and the total memory is
    within :data:`DEVICE_MEMORY_TOLERANCE` of its ``vram_bytes`` (the closest wins: A100 40 vs 80 GB).
    """
    words = _tokens(name)
    found: list[tuple[float, str]] = []
    for card in gpus().values():
        parts = {t for t in _tokens(card.id) if not _NEUTRAL.match(t)}
        if not parts or not parts <= words:
            continue
        if (words & _VARIANTS) - parts:
            continue
        gap = abs(total_bytes - card.vram_bytes) / card.vram_bytes
        if gap <= DEVICE_MEMORY_TOLERANCE:
            found.append((gap, card.id))
    return min(found)[1] if found else None
