"""Bad or odd input gets a 4xx, never a 500: random request bodies and page queries (hypothesis)."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.catalog import gpus, model_configs
from app.main import create_app

CLIENT = TestClient(create_app(), raise_server_exceptions=False)
MODELS = [*sorted(model_configs())[::5], "no/such-model"]
NAMES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "qkv_proj",
         "gate_up_proj", "embed_tokens", "lm_head", "w1", "w3", "gate", "experts.gate_up_proj", "norm", "x", ""]
NUM = st.one_of(st.integers(-5, 10**7), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
                st.none())

lora = st.fixed_dictionaries({}, optional={
    "r": NUM, "lora_alpha": NUM, "lora_dropout": NUM,
    "target_modules": st.one_of(st.none(), st.sampled_from(["all-linear", ".*q_proj", "(", "x"]),
                                st.lists(st.sampled_from(NAMES), max_size=4)),
    "target_parameters": st.one_of(st.none(), st.lists(st.sampled_from(NAMES), max_size=3)),
    "layers_to_transform": st.one_of(st.none(), st.lists(st.integers(-2, 200), max_size=3)),
    "bias": st.sampled_from(["none", "all", "lora_only", "some"]),
    "modules_to_save": st.one_of(st.none(), st.lists(st.sampled_from(NAMES), max_size=2)),
})
training = st.fixed_dictionaries({}, optional={
    "precision": st.sampled_from(["bf16", "bf16-mixed", "fp16-mixed", "fp32", "fp8"]),
    "optim": st.sampled_from(["adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit",
                              "paged_adamw_32bit", "adafactor", "sgd", "lion_32bit", "lion_8bit", "adam"]),
    "micro_batch_size": NUM, "seq_len": NUM, "gradient_checkpointing": st.one_of(st.booleans(), NUM),
    "attn_implementation": st.sampled_from([None, "sdpa", "eager", "flash_attention_2", "x"]),
    "momentum": NUM,
})
quantization = st.fixed_dictionaries({}, optional={
    "bnb_4bit_quant_type": st.sampled_from(["nf4", "fp4", "int4"]), "bnb_4bit_use_double_quant": st.booleans(),
    "blocksize": st.sampled_from([32, 64, 65, 4096, 0]), "load_in_8bit": st.booleans(),
    "prepare_kbit": st.booleans(),
})
hardware = st.fixed_dictionaries({}, optional={
    "gpu": st.sampled_from([*list(gpus())[::6], "tpu"]), "num_gpus": NUM,
    "sharding": st.sampled_from(["none", "ddp", "zero1", "zero2", "zero3", "fsdp", "x"]),
})
model_types = st.sampled_from(["llama", "qwen3_moe", "gpt2", "phi3", "no_such_arch", 3])
config = st.fixed_dictionaries({"model_type": model_types},
                               optional={"hidden_size": NUM, "num_hidden_layers": NUM, "num_attention_heads": NUM,
                                         "num_key_value_heads": NUM, "vocab_size": NUM, "head_dim": NUM,
                                         "intermediate_size": NUM, "num_experts": NUM, "n_embd": NUM,
                                         "mlp_only_layers": st.lists(NUM, max_size=2)})
body = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(MODELS), st.fixed_dictionaries({"config": config}))},
    optional={"method": st.sampled_from(["full", "lora", "qlora", "dora", "qdora", "x"]), "lora": lora,
              "training": training, "quantization": quantization, "hardware": hardware},
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body)
def test_estimate_never_500(payload: dict[str, Any]) -> None:
    r = CLIENT.post("/api/v1/estimate", json=payload)
    assert r.status_code in (200, 422), (payload, r.text[:500])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["model", "method", "r", "seq_len", "micro_batch_size", "target_modules",
                                        "gpu", "num_gpus", "sharding", "optim", "tokens", "mfu", "price",
                                        "qlora_slowdown", "bias", "precision"]),
                       st.text(max_size=12), max_size=6))
def test_page_never_500(query: dict[str, str]) -> None:
    for path in ("/", "/compare.json", "/api/v1/fit"):
        r = CLIENT.get(path, params=query)
        assert r.status_code in (200, 422), (path, query, r.text[:300])


# Trainer-config keys of several formats (axolotl, PEFT, DeepSpeed, TRL, LLaMA-Factory, a plan body), each given a
# hostile value: wrong types, NaN/Infinity (json.dumps writes them; json.loads reads them back), lone surrogates
# (in a value, and a key that holds one).
IMPORT_KEYS = ["base_model", "adapter", "lora_r", "lora_alpha", "lora_target_modules", "sequence_len",
               "micro_batch_size", "deepspeed", "peft_type", "r", "target_modules", "zero_optimization",
               "train_micro_batch_size_per_gpu", "model_name_or_path", "per_device_train_batch_size", "max_length",
               "stage", "finetuning_type", "cutoff_len", "lora", "training", "model", "load_in_4bit", "model_type",
               "x\ud800"]
HOSTILE = st.recursive(
    st.one_of(NUM, st.just(float("nan")), st.just(float("inf")), st.booleans(),
              st.sampled_from(["meta-llama/Llama-3.1-8B", "lora", "qlora", "auto", "\ud800", "LORA", "sft", "llama",
                               "zero3.json", "all-linear"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(IMPORT_KEYS),
                                                                         inner, max_size=3)),
    max_leaves=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(IMPORT_KEYS), HOSTILE, min_size=1, max_size=6))
def test_import_never_500(doc: dict[str, Any]) -> None:
    text = json.dumps(doc)  # NaN, Infinity and "\ud800" escapes included
    r = CLIENT.post("/api/v1/import?filename=x.json", content=text.encode(), headers={"content-type": "text/plain"})
    assert r.status_code < 500, (doc, r.text[:500])
    page = CLIENT.post("/import", data={"train_config": text})
    assert page.status_code < 500, (doc, page.text[:500])
