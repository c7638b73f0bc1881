"""Unsloth scripts and notebooks (app/importers/unsloth.py): read with ``ast``, never run. The scripts below are
written as Unsloth's own notebooks write them (a settings cell, ``FastLanguageModel.from_pretrained``,
``get_peft_model``, TRL's ``SFTTrainer`` with ``SFTConfig``); each expected body is what the module docstring's
defaults give, derived by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.core import PlanRequest, estimate
from app.importers import import_file
from app.importers.common import ConfigImportError

ROOT = Path(__file__).resolve().parent.parent
MODEL = "meta-llama/Llama-3.1-8B"
NOTEBOOK_CELLS = [
    "%%capture\n!pip install unsloth\n",
    "from unsloth import FastLanguageModel, is_bfloat16_supported\nimport torch\nmax_seq_length = 4096\n"
    "dtype = None\nload_in_4bit = True\n",
    f'model, tokenizer = FastLanguageModel.from_pretrained(\n    model_name = "{MODEL}",\n'
    "    max_seq_length = max_seq_length,\n    dtype = dtype,\n    load_in_4bit = load_in_4bit,\n)\n",
    'model = FastLanguageModel.get_peft_model(\n    model,\n    r = 32,\n    target_modules = ["q_proj", "k_proj", '
    '"v_proj", "o_proj",\n                      "gate_proj", "up_proj", "down_proj",],\n    lora_alpha = 16,\n'
    '    lora_dropout = 0,\n    bias = "none",\n    use_gradient_checkpointing = "unsloth",\n    random_state = 3407,\n'
    "    use_rslora = False,\n    loftq_config = None,\n)\n",
    "from trl import SFTTrainer, SFTConfig\ntrainer = SFTTrainer(\n    model = model,\n    tokenizer = tokenizer,\n"
    "    train_dataset = dataset,\n    args = SFTConfig(\n        dataset_text_field = \"text\",\n"
    "        max_seq_length = max_seq_length,\n        per_device_train_batch_size = 2,\n"
    "        gradient_accumulation_steps = 4,\n        fp16 = not is_bfloat16_supported(),\n"
    "        bf16 = is_bfloat16_supported(),\n        optim = \"adamw_8bit\",\n        output_dir = \"outputs\",\n"
    "    ),\n)\ntrainer.train()\n",
]
EXPECTED: dict[str, Any] = {
    "model": MODEL, "method": "qlora",
    "lora": {"r": 32, "lora_alpha": 16, "lora_dropout": 0, "bias": "none", "use_rslora": False,
             "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
    "quantization": {"load_in_8bit": False, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                     "prepare_kbit": False, "bnb_4bit_compute_dtype": "bfloat16"},
}


def _read(tmp_path: Path, name: str, text: str) -> tuple[dict[str, Any], list[Any], str]:
    path = tmp_path / name
    path.write_text(text)
    imported = import_file(path)
    assert imported.format == "unsloth"
    return imported.body, imported.notes, imported.detected


def test_script_reads_as_the_notebooks_run(tmp_path: Path) -> None:
    """The notebook's settings cell feeds the calls (max_seq_length = max_seq_length); dtype None is bf16; the
    trainer's fp16/bf16 (computed by is_bfloat16_supported()) are left to the model's dtype; adamw_8bit is
    transformers' alias of adamw_bnb_8bit; 'unsloth' checkpointing is on."""
    body, notes, detected = _read(tmp_path, "train.py", "".join(NOTEBOOK_CELLS[1:]))
    assert detected == "Unsloth script (from_pretrained, get_peft_model, SFTConfig)"
    assert {k: body[k] for k in EXPECTED} == EXPECTED
    assert body["training"] == {"framework": "unsloth", "micro_batch_size": 2, "gradient_accumulation_steps": 4,
                                "optim": "adamw_bnb_8bit", "seq_len": 4096, "precision": "bf16",
                                "gradient_checkpointing": True}
    keys = {n.key for n in notes}
    assert {"from_pretrained.dtype", "args.bf16", "args.fp16"} <= keys
    # 32 layers × r 32 × (q 8192 + k 5120 + v 5120 + o 8192 + gate/up/down 3 × 18432) for Llama-3.1-8B
    assert estimate(PlanRequest.model_validate(body)).parameters.trainable == 32 * 32 * (
        2 * 8192 + 2 * 5120 + 3 * 18432)


def test_notebook_code_cells_are_read(tmp_path: Path) -> None:
    """A saved .ipynb: its code cells joined (the !pip / %%capture lines dropped), read as the script."""
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {},
                "cells": [{"cell_type": "markdown", "source": ["# Llama 3.1 QLoRA"]},
                          *({"cell_type": "code", "source": cell.splitlines(keepends=True)}
                            for cell in NOTEBOOK_CELLS)]}
    body, _, _ = _read(tmp_path, "Llama3.1_(8B)-Alpaca.ipynb", json.dumps(notebook))
    assert {k: body[k] for k in EXPECTED} == EXPECTED and body["training"]["seq_len"] == 4096


def test_defaults_full_fine_tuning_and_8bit(tmp_path: Path) -> None:
    """Unsloth's defaults where the script is silent: load_in_4bit true, r 16, alpha 16, the seven projections,
    max_seq_length 2048 (the model given as the first positional argument, as get_peft_model's r and targets);
    no get_peft_model with full_finetuning → full (its checkpointing from from_pretrained);
    load_in_8bit → an 8-bit base; dtype torch.float32 → fp32."""
    body, _, _ = _read(tmp_path, "a.py", f'from unsloth import FastLanguageModel\nm, t = FastLanguageModel.'
                           f'from_pretrained("{MODEL}")\nm = FastLanguageModel.get_peft_model(m)\n')
    assert (body["method"], body["lora"]["r"], body["lora"]["lora_alpha"], body["training"]["seq_len"]) == (
        "qlora", 16, 16, 2048)
    assert body["lora"]["target_modules"] == EXPECTED["lora"]["target_modules"]
    body, _, _ = _read(tmp_path, "b.py", f'from unsloth import FastModel\nimport torch\nm, t = FastModel.'
                       f'from_pretrained(model_name="{MODEL}", full_finetuning=True, load_in_4bit=False, '
                       'dtype=torch.float32, use_gradient_checkpointing=False)\n')
    assert (body["method"], body["training"]["precision"], body["training"]["gradient_checkpointing"]) == (
        "full", "fp32", False)
    body, _, _ = _read(tmp_path, "c.py", f'from unsloth import FastLanguageModel\nm, t = FastLanguageModel.'
                       f'from_pretrained(model_name="{MODEL}", load_in_4bit=False, load_in_8bit=True)\n'
                       'm = FastLanguageModel.get_peft_model(m, 8, ["q_proj", "v_proj"])\n')
    lora = body["lora"]
    assert (body["method"], body["quantization"]["load_in_8bit"], lora["target_modules"], lora["r"]) == (
        "qlora", True, ["q_proj", "v_proj"], 8)


def test_computed_arguments_are_reported_not_guessed(tmp_path: Path) -> None:
    """An argument the script computes is named in an 'unsupported' note and Unsloth's default applies."""
    body, notes, _ = _read(tmp_path, "d.py", f'from unsloth import FastLanguageModel\nm, t = FastLanguageModel.'
                           f'from_pretrained(model_name="{MODEL}", max_seq_length=int(sys.argv[1]))\n'
                           'm = FastLanguageModel.get_peft_model(m, r=rank * 2)\n')
    assert body["training"]["seq_len"] == 2048 and body["lora"]["r"] == 16
    by_key = {n.key: n for n in notes}
    assert by_key["get_peft_model.r"].kind == "unsupported" and "'rank * 2'" in by_key["get_peft_model.r"].message
    assert by_key["from_pretrained.max_seq_length"].kind == "unsupported"


def test_not_a_script(tmp_path: Path) -> None:
    """A YAML that only mentions the call stays YAML; a .py that does not parse is refused with its line."""
    yaml_file = tmp_path / "axolotl.yml"
    yaml_file.write_text(f"base_model: {MODEL}\n# like FastLanguageModel.from_pretrained(...) in Unsloth\n"
                         "adapter: lora\nsequence_len: 1024\n")
    assert import_file(yaml_file).format == "axolotl"
    bad = tmp_path / "bad.py"
    bad.write_text("model = FastLanguageModel.from_pretrained(\n    model_name = 'x',\n")
    with pytest.raises(ConfigImportError, match="not valid Python"):
        import_file(bad)
    bad.write_text("m = FastLanguageModel.from_pretrained(dtype=torch.int8)\n")
    with pytest.raises(ConfigImportError, match=r"from_pretrained\.dtype"):
        import_file(bad)


def test_cli_estimates_a_script(tmp_path: Path) -> None:
    """``peft-planner estimate train.py`` reads the script (never runs it: the script would import unsloth, which
    is not installed here)."""
    path = tmp_path / "train.py"
    path.write_text("".join(NOTEBOOK_CELLS[1:]))
    out = subprocess.run([sys.executable, "-m", "app.cli", "estimate", str(path), "--json", "-q"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["versions"]["models_framework"].startswith("unsloth: ")
    assert data["parameters"]["trainable"] == 32 * 32 * (2 * 8192 + 2 * 5120 + 3 * 18432)
    assert any(b["key"] == "weights/mlp" and b["dtype"] == "nf4" for b in data["breakdown"])
