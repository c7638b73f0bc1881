"""HF TrainingArguments / TRL SFTConfig importer (app/importers/hf_training.py): field lists against the real
libraries, detection next to axolotl, sharding and the notes it writes."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from app.importers import ConfigImportError, detect, from_hf_training
from app.importers.hf_training import SFT_CONFIG_FIELDS, SFT_DEFAULTS, TA_DEFAULTS, TRAINING_ARGUMENTS_FIELDS


def test_field_lists_are_the_libraries() -> None:
    """The importer's field lists and defaults are transformers 5.24's TrainingArguments and TRL 1.16's SFTConfig."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers import TrainingArguments
        from trl import SFTConfig
    ta = {f.name: f for f in dataclasses.fields(TrainingArguments)}
    sft = {f.name: f for f in dataclasses.fields(SFTConfig)}
    assert set(ta) == TRAINING_ARGUMENTS_FIELDS
    assert set(sft) - set(ta) == SFT_CONFIG_FIELDS
    assert {k: ta[k].default for k in TA_DEFAULTS} == {**TA_DEFAULTS, "activation_checkpointing": None}  # → False
    shared = ("per_device_train_batch_size", "gradient_accumulation_steps", "optim", "max_length")
    assert {k: sft[k].default for k in shared} == {k: SFT_DEFAULTS[k] for k in shared}
    assert sft["gradient_checkpointing"].default is SFT_DEFAULTS["activation_checkpointing"] is True


@pytest.mark.parametrize(("data", "fmt", "name"), [
    ({"output_dir": "out", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "learning_rate": 2e-4},
     "hf_training", "HF TrainingArguments"),
    ({"max_seq_length": 2048, "per_device_train_batch_size": 1, "output_dir": "o"}, "hf_training", "TRL SFTConfig"),
    # axolotl spells its own: micro_batch_size, sequence_len, optimizer
    ({"base_model": "x", "micro_batch_size": 2, "sequence_len": 1024, "optimizer": "adamw_torch", "output_dir": "o",
      "gradient_accumulation_steps": 4}, "axolotl", "axolotl config"),
    # a model config shares use_cache / pad_token with TrainingArguments but has model_type
    ({"model_type": "llama", "use_cache": True, "hidden_size": 64}, "model_config", "model config.json"),
])
def test_detection(data: dict, fmt: str, name: str) -> None:
    found, description = detect(data)
    assert found == fmt and description.startswith(name)


@pytest.mark.parametrize(("extra", "sharding", "kind"), [
    ({"fsdp": "full_shard auto_wrap"}, "fsdp", "note"),
    ({"fsdp": ["shard_grad_op"]}, "zero2", "note"),
    ({"fsdp": "full_shard offload auto_wrap"}, "fsdp", "note"),  # offload: hardware.offload_* (test_fsdp_offload)
    ({"deepspeed": {"zero_optimization": {"stage": 3}}}, "zero3", "note"),
    ({"deepspeed": "configs/ds_zero2.json"}, "zero2", "note"),  # not found: the stage from its name
    ({"fsdp": None, "fsdp_config": {"min_num_params": 0, "xla": False}}, None, "ignored"),  # to_dict()'s defaults
])
def test_sharding(extra: dict, sharding: str | None, kind: str) -> None:
    body, notes = from_hf_training({"per_device_train_batch_size": 1, **extra}, "t.json")
    assert body.get("hardware", {}).get("sharding") == sharding
    key = "deepspeed" if "deepspeed" in extra else "fsdp_config" if sharding is None else "fsdp"
    assert kind in {n.kind for n in notes if n.key == key}


def test_fsdp_offload() -> None:
    """transformers' fsdp "offload" option is FSDP CPUOffload(offload_params=True): parameters, gradients and the
    optimizer step in host RAM."""
    body, _ = from_hf_training({"per_device_train_batch_size": 1, "fsdp": "full_shard offload auto_wrap"}, "t.json")
    assert body["hardware"] == {"sharding": "fsdp", "offload_optimizer": "cpu", "offload_param": "cpu"}


def test_notes_and_legacy_names() -> None:
    body, notes = from_hf_training({"max_seq_length": 512, "padding_free": True, "per_gpu_train_batch_size": 4,
                                    "optim": "adamw_8bit", "torch_compile": True, "lora_rank": 8}, "old.json")
    assert body["training"]["seq_len"] == 512 and body["training"]["micro_batch_size"] == 4
    assert body["training"]["optim"] == "adamw_bnb_8bit"  # transformers' alias
    by_key = {n.key: n for n in notes if n.field != "training.attn_implementation"}
    assert by_key["max_seq_length"].message == "the older name of max_length"
    assert by_key["lora_rank"].kind == "unknown"
    # switches with a request field of their own (TrainingArguments.torch_compile, SFTConfig.padding_free)
    assert body["training"]["torch_compile"] is True and body["training"]["padding_free"] is True
    assert body["training"]["framework"] == "trl"  # an SFTConfig
    assert "worst case" in by_key["padding_free"].message
    # no kernel named: padding-free rows on FlashAttention-2's variable-length kernel, noted as assumed
    assert body["training"]["attn_implementation"] == "flash_attention_2"
    assert [n.kind for n in notes if n.field == "training.attn_implementation"] == ["assumed"]
    # SFTConfig's activation checkpointing default (on) is assumed, named as such
    assert by_key["activation_checkpointing"].kind == "assumed" and body["training"]["gradient_checkpointing"]


def test_quantization_config_in_model_init_kwargs() -> None:
    body, notes = from_hf_training({"max_length": 1024, "model_init_kwargs": {
        "dtype": "bfloat16", "attn_implementation": "sdpa",
        "quantization_config": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "bfloat16"}}}, "s.json")
    assert body["method"] == "qlora" and body["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert body["training"]["precision"] == "bf16" and body["training"]["attn_implementation"] == "sdpa"
    assert not [n for n in notes if n.kind in ("unknown", "assumed") and n.key.startswith("model_init_kwargs")]


def test_gradient_accumulation_steps() -> None:
    """TrainingArguments.gradient_accumulation_steps → training.gradient_accumulation_steps; absent: the dataclass
    default 1, noted as assumed; anything but a positive integer is refused naming the key."""
    body, notes = from_hf_training({"per_device_train_batch_size": 2, "gradient_accumulation_steps": 16}, "t.json")
    assert body["training"]["gradient_accumulation_steps"] == 16
    assert not [n for n in notes if n.key == "gradient_accumulation_steps"]
    body, notes = from_hf_training({"per_device_train_batch_size": 2}, "t.json")
    assert body["training"]["gradient_accumulation_steps"] == 1
    assert [(n.kind, n.value) for n in notes if n.field == "training.gradient_accumulation_steps"] == [("assumed", 1)]
    for bad in (0, -4, 2.5, "8", True):
        with pytest.raises(ConfigImportError) as err:
            from_hf_training({"per_device_train_batch_size": 2, "gradient_accumulation_steps": bad}, "t.json")
        assert err.value.key == "gradient_accumulation_steps", bad
