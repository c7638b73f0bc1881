"""The planner's input: one fine-tuning run, with the ecosystem's own field names.

Field names follow PEFT ``LoraConfig`` (``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``,
``target_parameters``, ``layers_to_transform``, ``bias``, ``modules_to_save``, ``use_rslora``),
transformers ``BitsAndBytesConfig`` (``bnb_4bit_*``, ``load_in_8bit``) and HF
``TrainingArguments.optim``. These models are the stable v1 API contract.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Method = Literal["full", "lora", "qlora", "dora", "qdora"]
Precision = Literal["bf16", "bf16-mixed", "fp16-mixed", "fp32"]
Optim = Literal[
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_bnb_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
    "lion_32bit",
    "lion_8bit",
]
Sharding = Literal["none", "ddp", "zero1", "zero2", "zero3", "fsdp"]
AttnImpl = Literal["flash_attention_2", "sdpa", "eager"]

MAX_CONFIG_KEYS = 512


def parse_target_modules(text: str) -> list[str] | str | None:
    """A typed ``target_modules`` value: '' → None (PEFT's default), 'all-linear' or a regex → str,
    comma-separated names → list."""
    text = text.strip()
    if not text:
        return None
    if text.lower() == "all-linear" or any(ch in text for ch in "*()[]\\|^$+?"):
        return text
    return [t.strip() for t in text.split(",") if t.strip()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    """A model given by its Hugging Face ``config.json`` instead of a catalog id."""

    config: dict[str, Any] = Field(description="The model's config.json, as a JSON object")

    @field_validator("config")
    @classmethod
    def _bounded(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > MAX_CONFIG_KEYS:
            raise ValueError(f"a config.json has at most {MAX_CONFIG_KEYS} keys")
        return v


class LoraSpec(_Strict):
    """PEFT ``LoraConfig`` fields that decide parameters and memory (PEFT 0.21 defaults)."""

    r: int = Field(8, ge=1, le=4096, description="LoRA rank")
    lora_alpha: float = Field(8, gt=0, description="scaling numerator: ΔW is scaled by lora_alpha / r")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str | None = Field(
        None,
        description="module names (suffix match), a regex (full match), 'all-linear', "
        "or null for PEFT's default for the architecture",
    )
    target_parameters: list[str] | None = Field(
        None, description="nn.Parameter names to adapt directly, e.g. fused MoE experts 'mlp.experts.gate_up_proj'"
    )
    layers_to_transform: list[int] | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: list[str] | None = None
    use_rslora: bool = False

    @field_validator("target_modules")
    @classmethod
    def _bounded_targets(cls, v: list[str] | str | None) -> list[str] | str | None:
        if isinstance(v, str) and len(v) > 256:
            raise ValueError("a target_modules regex has at most 256 characters")
        if isinstance(v, list) and (len(v) > 64 or any(len(s) > 128 or not s for s in v)):
            raise ValueError("at most 64 non-empty names of at most 128 characters")
        return v


class QuantizationSpec(_Strict):
    """transformers ``BitsAndBytesConfig`` fields, plus PEFT's ``prepare_model_for_kbit_training`` switch."""

    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    bnb_4bit_quant_storage: Literal["uint8", "float16", "bfloat16", "float32"] = Field(
        "uint8",
        description="dtype holding the packed 4-bit weights (same bytes); FSDP-QLoRA needs a float dtype, "
        "e.g. 'bfloat16', so that FSDP can flatten and shard them with the layer's other parameters",
    )
    blocksize: int = Field(64, description="bitsandbytes 4-bit block size (transformers always uses 64)")
    load_in_8bit: bool = Field(False, description="LLM.int8 base weights instead of 4-bit (qlora/qdora)")
    prepare_kbit: bool = Field(
        True, description="prepare_model_for_kbit_training: upcast non-quantized fp16/bf16 params to fp32"
    )

    @field_validator("blocksize")
    @classmethod
    def _valid_blocksize(cls, v: int) -> int:
        allowed = (32, 64, 128, 256, 512, 1024, 2048, 4096)
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(map(str, allowed))}")
        return v


class TrainingSpec(_Strict):
    precision: Precision = Field(
        "bf16",
        description="bf16: model loaded in bf16 (params, grads, torch optimizer states bf16); "
        "bf16-mixed / fp16-mixed: fp32 weights + autocast; fp32",
    )
    optim: Optim = "adamw_torch"
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum (optim='sgd' only)")
    micro_batch_size: int = Field(1, ge=1, le=4096)
    seq_len: int = Field(2048, ge=1, le=1_048_576)
    gradient_checkpointing: bool = True
    attn_implementation: AttnImpl | None = Field(
        None, description="null: transformers' default for the model (sdpa; eager for gemma2)"
    )


class HardwareSpec(_Strict):
    gpu: str = Field("nvidia-a100-80gb", description="id from GET /api/v1/gpus")
    num_gpus: int = Field(1, ge=1, le=4096)
    sharding: Sharding = "none"


class PlanRequest(_Strict):
    """One fine-tuning run: POST /api/v1/estimate's body."""

    model: str | ModelConfig = Field(description="catalog hub id, or {'config': {...config.json...}}")
    transformers_version: Literal["5.24", "4.57"] = Field(
        "5.24",
        description="transformers release whose module tree is modelled: '4.57' builds MoE experts "
        "(Mixtral, Qwen3-MoE) as one nn.Linear per expert (quantized by bitsandbytes, adaptable by "
        "LoRA/DoRA by name); '5.24' fuses them into 3-D parameters",
    )
    method: Method = "lora"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    hardware: HardwareSpec = Field(default_factory=HardwareSpec)

    @property
    def quantized(self) -> bool:
        return self.method in ("qlora", "qdora")

    @property
    def uses_dora(self) -> bool:
        return self.method in ("dora", "qdora")

    @property
    def uses_adapter(self) -> bool:
        return self.method != "full"
