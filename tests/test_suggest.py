"""'Did you mean': app.core.catalog.suggest_models / suggest_gpus, and the 422 messages of the API and the page.

Expected suggestions are the Hub's own naming: the catalog holds the base checkpoints (Qwen/Qwen3-8B is the
post-trained model, Qwen/Qwen3-8B-Base the pre-trained one: the same config.json), Llama 2's "-hf" repos, Gemma 3's
"-it"/"-pt" pair; unsloth and NousResearch re-upload the same configs, unsloth with "-bnb-4bit" suffixes.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from app.core.catalog import model_configs, suggest_gpus, suggest_models
from app.main import create_app


@pytest.mark.parametrize(("text", "expected"), [
    ("qwen/qwen3-8b", ["Qwen/Qwen3-8B"]),  # case
    ("https://huggingface.co/Qwen/Qwen3-8B", ["Qwen/Qwen3-8B"]),
    ("Qwen/Qwen3-8B-Base", ["Qwen/Qwen3-8B"]),  # -Base → the catalog's id
    ("Qwen/Qwen2.5-7B-Base", ["Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct"]),
    ("meta-llama/Llama-3.2-1B-Instruct", ["meta-llama/Llama-3.2-1B"]),  # -Instruct → base
    ("meta-llama/Llama-3.2-1B-Instruct", ["meta-llama/Llama-3.2-1B"]),
    ("google/gemma-3-1b", ["google/gemma-3-1b-it", "google/gemma-3-1b-pt"]),  # the reverse: base → -it/-pt
    ("meta-llama/Llama-2-7b", ["meta-llama/Llama-2-7b-hf"]),  # the reverse: → -hf
    ("meta-llama/Llama-2-7b-chat-hf", ["meta-llama/Llama-2-7b-hf"]),
    ("mistralai/Mistral-Nemo-Instruct-2407", ["mistralai/Mistral-Nemo-Base-2407"]),
    ("unsloth/Llama-3.2-1B-Instruct-bnb-4bit", ["meta-llama/Llama-3.2-1B"]),  # mirror + quantized suffix
    ("unsloth/Qwen3-8B-unsloth-bnb-4bit", ["Qwen/Qwen3-8B"]),
    ("NousResearch/Llama-2-7b-hf", ["meta-llama/Llama-2-7b-hf"]),  # mirror
    ("Qwen3-8B", ["Qwen/Qwen3-8B"]),  # no organisation
    ("meta-llama/Llama-3.1-8B", []),  # known: nothing to suggest
    ("nobody/nothing", []),
])
def test_suggest_models(text: str, expected: list[str]) -> None:
    assert suggest_models(text) == expected
    assert all(s in model_configs() for s in expected)


def test_suggest_models_close_spelling() -> None:
    assert suggest_models("meta-llama/Lama-3.1-8B")[0] == "meta-llama/Llama-3.1-8B"
    assert suggest_models("Qwen/Qwen2.5-14b")[0] == "Qwen/Qwen2.5-14B"


@pytest.mark.parametrize(("text", "expected"), [
    ("NVIDIA-RTX-4090", ["nvidia-rtx-4090"]),
    ("RTX 4090", ["nvidia-rtx-4090"]),
    ("NVIDIA GeForce RTX 4090 24GB", ["nvidia-rtx-4090"]),  # torch's device name, as the catalog spells it
    ("4090", ["nvidia-rtx-4090"]),
    ("a100", ["nvidia-a100-40gb", "nvidia-a100-80gb"]),
    ("H100", ["nvidia-h100-pcie-80gb", "nvidia-h100-sxm-80gb", "nvidia-h100-nvl-94gb"]),
    ("mi300x", ["amd-mi300x"]),
    ("nvidia-rtx-4900", ["nvidia-rtx-4090", "nvidia-rtx-5090", "nvidia-rtx-3090"]),  # transposed digits
    ("nvidia-rtx-4090", []),
    ("tpu-v5", []),
])
def test_suggest_gpus(text: str, expected: list[str]) -> None:
    assert suggest_gpus(text) == expected


@pytest.mark.parametrize(("body", "loc", "hint"), [
    ({"model": "Qwen/Qwen3-8B-Base"}, ["body", "model"], "did you mean 'Qwen/Qwen3-8B'?"),
    ({"model": "NousResearch/Llama-2-7b-hf"}, ["body", "model"], "did you mean 'meta-llama/Llama-2-7b-hf'?"),
    ({"model": "Qwen/Qwen3-8B", "hardware": {"gpu": "rtx4090"}}, ["body", "hardware", "gpu"],
     "did you mean 'nvidia-rtx-4090'?"),
])
def test_api_and_page_422_say_did_you_mean(body: dict, loc: list[str], hint: str) -> None:
    client = TestClient(create_app())
    r = client.post("/api/v1/estimate", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert detail[0]["loc"] == loc and hint in detail[0]["msg"]
    page = client.get("/", params={"model": body["model"], **({"gpu": body["hardware"]["gpu"]}
                                                                if "hardware" in body else {})})
    assert page.status_code == 422
    assert hint.replace("'", "&#39;") in page.text
