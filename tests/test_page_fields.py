"""Every PlanRequest field can be set from the planner page: each leaf of the request has a labelled form field
whose typed text reaches the request as the value written here by hand, stays in the re-rendered form, and gives
the page the numbers estimate() gives that request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from app.core import PlanRequest, estimate, format_bytes
from app.forms import parse_form
from app.main import create_app
from tests.test_pages import Page

BASE = {"model": "meta-llama/Llama-3.1-8B", "method": "qlora", "gpu": "nvidia-a100-80gb"}
TWO_GPUS = {"num_gpus": "2"}
TORCHTUNE = {"framework": "torchtune"}
QWEN_MOE = "Qwen/Qwen3-30B-A3B"

OFF_PAGE = {
    "quantization.blocksize": "transformers' BitsAndBytesConfig has no block size: it always quantizes in blocks of "
                              "64, so the page offers no choice (the API keeps the field for bitsandbytes users)",
}

# request path → (form field, text typed, the value the request must hold, other fields the setting needs)
CASES: dict[str, tuple[str, str, Any, dict[str, str]]] = {
    "model": ("model", QWEN_MOE, QWEN_MOE, {}),
    "transformers_version": ("transformers_version", "4.57", "4.57", {"model": QWEN_MOE}),
    "torch_version": ("torch_version", "2.0", "2.0", {"method": "lora"}),
    "method": ("method", "dora", "dora", {}),
    "lora.r": ("r", "16", 16, {}),
    "lora.lora_alpha": ("lora_alpha", "32", 32.0, {}),
    "lora.lora_dropout": ("lora_dropout", "0.1", 0.1, {}),
    "lora.target_modules": ("target_modules", "q_proj, v_proj", ["q_proj", "v_proj"], {}),
    "lora.target_parameters": ("target_parameters", "mlp.experts.gate_up_proj", ["mlp.experts.gate_up_proj"],
                               {"model": QWEN_MOE, "method": "lora", "target_modules": "q_proj"}),
    "lora.layers_to_transform": ("layers_to_transform", "0, 1, 31", [0, 1, 31], {}),
    "lora.bias": ("bias", "lora_only", "lora_only", {}),
    "lora.modules_to_save": ("modules_to_save", "lm_head", ["lm_head"], {"method": "lora"}),
    "lora.use_rslora": ("use_rslora", "on", True, {}),
    "lora.enable_lora": ("enable_lora", "on,off,on", [True, False, True],
                         {"model": "microsoft/Phi-3-mini-4k-instruct", "method": "lora", "framework": "litgpt",
                          "target_modules": "qkv_proj"}),
    "quantization.bnb_4bit_quant_type": ("bnb_4bit_quant_type", "fp4", "fp4", {}),
    "quantization.bnb_4bit_use_double_quant": ("bnb_4bit_use_double_quant", "off", False, {}),
    "quantization.bnb_4bit_compute_dtype": ("bnb_4bit_compute_dtype", "float16", "float16", {}),
    "quantization.bnb_4bit_quant_storage": ("bnb_4bit_quant_storage", "bfloat16", "bfloat16",
                                            {**TWO_GPUS, "sharding": "fsdp"}),
    "quantization.load_in_8bit": ("load_in_8bit", "on", True, {}),
    "quantization.prepare_kbit": ("prepare_kbit", "off", False, {}),
    "training.precision": ("precision", "bf16-mixed", "bf16-mixed", {"method": "lora"}),
    "training.optim": ("optim", "adamw_bnb_8bit", "adamw_bnb_8bit", {}),
    "training.momentum": ("momentum", "0.9", 0.9, {"optim": "sgd"}),
    "training.micro_batch_size": ("micro_batch_size", "4", 4, {}),
    "training.gradient_accumulation_steps": ("gradient_accumulation_steps", "4", 4, {}),
    "training.seq_len": ("seq_len", "1024", 1024, {}),
    "training.gradient_checkpointing": ("gradient_checkpointing", "off", False, {}),
    "training.attn_implementation": ("attn_implementation", "eager", "eager", {}),
    "training.framework": ("framework", "trl", "trl", {}),
    "training.gradient_checkpointing_kwargs.use_reentrant": ("use_reentrant", "on", True, {}),
    "training.use_liger_kernel": ("use_liger_kernel", "on", True, {}),
    "training.activation_offloading": ("activation_offloading", "on", True, {"framework": "trl"}),
    "training.packing": ("packing", "on", True, {"framework": "trl", "attn_implementation": "flash_attention_2"}),
    "training.padding_free": ("padding_free", "on", True,
                              {"framework": "trl", "attn_implementation": "flash_attention_2"}),
    "training.torch_compile": ("torch_compile", "on", True, {}),
    "training.optimizer_in_bwd": ("optimizer_in_bwd", "on", True, {**TORCHTUNE, "method": "full"}),
    "training.num_output_chunks": ("num_output_chunks", "0", 0, TORCHTUNE),
    "training.custom_sharded_layers": ("custom_sharded_layers", "tok_embeddings, output", ["tok_embeddings", "output"],
                                       {**TORCHTUNE, **TWO_GPUS, "sharding": "fsdp", "method": "lora"}),
    "hardware.gpu": ("gpu", "nvidia-rtx-4090", "nvidia-rtx-4090", {}),
    "hardware.num_gpus": ("num_gpus", "2", 2, {"sharding": "ddp"}),
    "hardware.sharding": ("sharding", "zero3", "zero3", TWO_GPUS),
    "hardware.offload_optimizer": ("offload_optimizer", "cpu", "cpu", {**TWO_GPUS, "sharding": "zero3"}),
    "hardware.offload_param": ("offload_param", "cpu", "cpu", {**TWO_GPUS, "sharding": "zero3"}),
    "hardware.reduce_bucket_size": ("reduce_bucket_size", "500000000", 500_000_000, {**TWO_GPUS, "sharding": "zero2"}),
    "hardware.stage3_prefetch_bucket_size": ("stage3_prefetch_bucket_size", "50000000", 50_000_000,
                                             {**TWO_GPUS, "sharding": "zero3"}),
    "hardware.pytorch_cuda_alloc_conf": ("pytorch_cuda_alloc_conf", "expandable_segments:True",
                                         "expandable_segments:True", {}),
}


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def leaves(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Dotted paths of a pydantic model's non-model fields, nested models walked."""
    for name, info in model.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from leaves(kind, f"{prefix}{name}.")
        else:
            yield prefix + name


def at(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_request_field_has_a_case_or_a_reason() -> None:
    """A field added to the API without a page field (or a reason here) fails this test."""
    assert set(leaves(PlanRequest)) == set(CASES) | set(OFF_PAGE)
    assert not set(CASES) & set(OFF_PAGE)


@pytest.mark.parametrize("path", sorted(CASES))
def test_field_reaches_the_request_and_the_numbers(client: TestClient, path: str) -> None:
    key, text, expected, needs = CASES[path]
    form = {**BASE, **needs, key: text}
    r = client.get("/", params=form)
    assert r.status_code == 200, r.text[:2000]
    page = Page(r.text)
    # the form shows what was typed (a select: that option selected; the method: its radio checked)
    assert page.fields[key] == text
    assert (f"method-{text}" if key == "method" else key) in page.labels
    # what the page submits again is the request with the value derived by hand
    req, errors = parse_form(page.fields)
    assert errors == [] and req is not None
    assert at(req, path) == expected
    default = at(PlanRequest.model_validate({"model": BASE["model"]}), path)
    assert expected != default
    # the selected method's total is estimate()'s for that request
    method = form["method"]
    assert page.cell(method, "total") == format_bytes(estimate(req).memory.total)


def test_more_training_options_open_when_one_is_set(client: TestClient) -> None:
    closed = client.get("/", params=BASE).text
    assert 'id="more-training">' in closed
    for key, text in (("use_reentrant", "off"), ("torch_version", "2.0"), ("num_output_chunks", "4")):
        assert 'id="more-training" open>' in client.get("/", params={**BASE, key: text}).text, key


def test_new_list_fields_name_the_field_when_wrong(client: TestClient) -> None:
    """Text that is not what the field holds re-renders the page (422) naming the field and the item."""
    litgpt = {"model": "microsoft/Phi-3-mini-4k-instruct", "method": "lora", "framework": "litgpt",
              "target_modules": "qkv_proj"}
    for form, named in (({**litgpt, "enable_lora": "on,off"}, "lora.enable_lora: List should have at least 3"),
                        ({**litgpt, "enable_lora": "on,maybe,on"}, "lora.enable_lora.1: Input should be a valid"),
                        ({**BASE, "layers_to_transform": "0,x"}, "lora.layers_to_transform.1: Input should be a"),
                        ({**BASE, "layers_to_transform": "-1"}, "lora.layers_to_transform.0: Input should be greater"),
                        ({**BASE, **TORCHTUNE, "custom_sharded_layers": "norm"},
                         "training.custom_sharded_layers.0: Input should be"),
                        ({**BASE, "use_reentrant": "sometimes"},
                         "training.gradient_checkpointing_kwargs.use_reentrant: Input should be a valid boolean")):
        r = client.get("/", params=form)
        assert r.status_code == 422 and named in r.text, (form, r.text[:3000])
