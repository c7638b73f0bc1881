"""Every catalog config.json has its source recorded (app/core/data/model_sources.json, described in
docs/catalog.md), and a catalog file said to be a copy of a tests/data/configs file is that file. Data only:
no model is built here (tests/test_catalog.py compares the parameter counts with transformers and PEFT)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from app.core.catalog import model_configs, model_source, model_sources
from app.core.model_types import checkpoint_quantization_note

TEST_CONFIGS = Path(__file__).parent / "data" / "configs"
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _problems(model_id: str, src: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if "repo" in src:
        if set(src) - {"repo", "path", "commit", "note", "keys"}:
            out.append(f"unknown fields {sorted(set(src) - {'repo', 'path', 'commit', 'note', 'keys'})}")
        if not _REPO.match(src["repo"]) or not _COMMIT.match(src.get("commit", "")) or not src.get("path"):
            out.append("repo/path/commit malformed")
    elif "index_file" in src:
        if set(src) - {"index_file", "note", "keys"} or not str(src["index_file"]).isdigit():
            out.append("index_file source malformed")
        if not src.get("note"):  # an index id alone says nothing about what the copy is
            out.append("an index_file source needs a note saying what the copy is")
    else:
        out.append("neither repo/path/commit nor index_file")
    if "note" in src and not (isinstance(src["note"], str) and src["note"].strip()):
        out.append("empty note")
    if "keys" in src:
        keys = src["keys"]
        if not keys or len(set(keys)) != len(keys) or not set(keys) <= set(cfg):
            out.append(f"keys not a non-empty subset of the file's keys: {sorted(set(keys) - set(cfg))}")
        if not {"hidden_size", "n_embd"} & set(keys):  # a partial source must at least confirm the width
            out.append("a partial source that does not confirm the hidden size")
    return [f"{model_id}: {p}" for p in out]


def test_every_catalog_config_has_a_well_formed_source() -> None:
    configs, sources = model_configs(), model_sources()
    assert len(configs) >= 100
    assert sorted(sources) == sorted(configs)
    problems = [p for mid, src in sources.items() for p in _problems(mid, src, configs[mid])]
    assert problems == []


def test_catalog_copies_of_test_configs_are_those_files() -> None:
    """A source note naming tests/data/configs/<file> (the generic-path suite checks those files for LoRA,
    DoRA and QLoRA against PEFT) means the catalog holds exactly that config.json."""
    copies = {mid: m.group(1) for mid, src in model_sources().items()
              if (m := re.search(r"tests/data/configs/([\w.-]+\.json)", src.get("note", "")))}
    assert len(copies) >= 18
    for model_id, name in copies.items():
        assert model_configs()[model_id] == json.loads((TEST_CONFIGS / name).read_text()), model_id


def test_source_text_names_the_copy_and_a_partial_confirmation() -> None:
    full = model_source("openai-community/gpt2")
    assert full.endswith("(from github.com/Shubham2376G/FAQ_generator/blob/2443d948e54e/gpt2/config.json)")
    indexed = model_source("deepseek-ai/DeepSeek-R1")
    assert indexed.endswith("(from public code-index file 1570491832)")
    partial = model_source("google/gemma-7b")  # litgpt's shape table: 8 keys
    assert partial.endswith("litgpt/config.py; only 8 keys confirmed)"), partial


@pytest.mark.parametrize(("model_id", "stored"), [
    ("openai/gpt-oss-20b", "MXFP4"), ("openai/gpt-oss-120b", "MXFP4"),
    ("deepseek-ai/DeepSeek-V3", "FP8"), ("deepseek-ai/DeepSeek-R1", "FP8"),
])
def test_mxfp4_and_fp8_catalog_checkpoints_say_what_the_recipe_loads(model_id: str, stored: str) -> None:
    """The catalog keeps these checkpoints' quantization_config, so their estimates carry the assumption
    (dequantized bf16 for full/LoRA/DoRA, bitsandbytes 4-bit of those weights for QLoRA/QDoRA)."""
    note = checkpoint_quantization_note(model_configs()[model_id])
    assert note is not None and f"stored in {stored}" in note
    assert "dequantized to bf16" in note and "bitsandbytes 4-bit" in note
