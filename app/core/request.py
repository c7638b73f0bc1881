"""The planner's input: one fine-tuning run, with the ecosystem's own field names.

Field names follow PEFT ``LoraConfig`` (``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``,
``target_parameters``, ``layers_to_transform``, ``bias``, ``modules_to_save``, ``use_rslora``),
transformers ``BitsAndBytesConfig`` (``bnb_4bit_*``, ``load_in_8bit``) and HF
``TrainingArguments.optim``. These models are the stable v1 API contract.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, field_validator

from app.core.alloc_conf import MAX_CONF_CHARS, AllocConfError, parse_alloc_conf
from app.core.architectures import LIMITS as CONFIG_LIMITS
from app.core.patterns import MAX_PATTERN_CHARS, PatternError, compile_target_regex

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
Framework = Literal["hf-trainer", "trl", "axolotl", "llama-factory", "ms-swift", "unsloth", "torchtune", "litgpt",
                    "lit-gpt"]
OffloadDevice = Literal["none", "cpu"]

MAX_CONFIG_KEYS = 512
"""Most keys in a pasted config.json (real ones have under 100)."""
MAX_CONFIG_VALUES = 20_000
"""Most JSON values (strings, numbers, list items, …) in a pasted config.json, nested ones included."""
MAX_NAMES = 64
"""Most entries in ``target_modules`` / ``target_parameters`` / ``modules_to_save`` (PEFT configs name ≤ ~10)."""
MAX_NAME_CHARS = 128
"""Longest module or parameter name in those lists."""
MAX_LAYERS = CONFIG_LIMITS["num_hidden_layers"]
"""Most ``layers_to_transform`` entries, and largest index + 1 (the config limit on num_hidden_layers)."""
MAX_ID_CHARS = 256
"""Longest catalog model or GPU id."""
MAX_BUCKET_ELEMENTS = 10**12
"""Largest DeepSpeed bucket size accepted (elements): 2 TB of 16-bit buffer, beyond any GPU."""


def _valid_unicode(text: str) -> str:
    """Text that encodes as UTF-8: JSON allows lone surrogates (``"\\ud800"``) that no response can echo."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (a lone surrogate such as \\ud800 is not)") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS), AfterValidator(_valid_unicode)]
Names = Annotated[list[Name], Field(max_length=MAX_NAMES)]


def _walk_config(value: Any) -> None:
    """Reject a config.json with lone surrogates or more than :data:`MAX_CONFIG_VALUES` values (iterative: no
    recursion on deep nesting)."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_CONFIG_VALUES:
            raise ValueError(f"a config.json has at most {MAX_CONFIG_VALUES:,} values, nested ones included")
        if isinstance(item, str):
            _valid_unicode(item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                _valid_unicode(str(key))
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


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
    """Strict JSON types: integers are JSON integers (not "8", not true), numbers are finite, no unknown keys.
    The page's query strings are validated with ``strict=False`` (app/forms.py), which converts "8" → 8."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    """A model given by its Hugging Face ``config.json`` instead of a catalog id."""

    config: dict[str, Any] = Field(description="The model's config.json, as a JSON object")

    @field_validator("config")
    @classmethod
    def _bounded(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > MAX_CONFIG_KEYS:
            raise ValueError(f"a config.json has at most {MAX_CONFIG_KEYS} keys")
        _walk_config(v)
        return v


class LoraSpec(_Strict):
    """PEFT ``LoraConfig`` fields that decide parameters and memory (PEFT 0.21 defaults)."""

    r: int = Field(8, ge=1, le=4096, description="LoRA rank")
    lora_alpha: float = Field(8, gt=0, le=1e9, description="scaling numerator: ΔW is scaled by lora_alpha / r")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str | None = Field(
        None,
        description="module names (suffix match), a regex (full match; RE2 syntax subset, see docs/limits.md), "
        "'all-linear', or null for PEFT's default for the architecture (training.framework litgpt / lit-gpt: "
        "litgpt finetune_lora's default lora_query and lora_value)",
    )
    target_parameters: Names | None = Field(
        None, description="nn.Parameter names to adapt directly, e.g. fused MoE experts 'mlp.experts.gate_up_proj'"
    )
    layers_to_transform: Annotated[list[Annotated[int, Field(ge=0, lt=MAX_LAYERS)]],
                                   Field(max_length=MAX_LAYERS)] | None = None
    bias: Literal["none", "all", "lora_only"] = "none"
    modules_to_save: Names | None = None
    use_rslora: bool = False
    enable_lora: Annotated[list[bool], Field(min_length=3, max_length=3)] | None = Field(
        None, description="training.framework litgpt / lit-gpt only: which of q, k, v the LoRA of a fused q/k/v "
        "linear (target_modules query_key_value or qkv_proj) adapts, as litgpt's LoRAQKVLinear enable_lora "
        "(its lora_query, lora_key, lora_value flags); null: all three. PEFT adapts a linear whole"
    )

    @field_validator("target_modules")
    @classmethod
    def _bounded_targets(cls, v: list[str] | str | None) -> list[str] | str | None:
        """A list: at most MAX_NAMES names of 1..MAX_NAME_CHARS characters; a regex: at most MAX_PATTERN_CHARS
        characters that RE2 compiles (app/core/patterns.py). Checked here, not in the type, so that an error's
        loc is ["lora", "target_modules"] whichever form was sent."""
        if isinstance(v, list):
            if len(v) > MAX_NAMES or any(not 1 <= len(name) <= MAX_NAME_CHARS for name in v):
                raise ValueError(f"at most {MAX_NAMES} non-empty names of at most {MAX_NAME_CHARS} characters")
            for name in v:
                _valid_unicode(name)
            return v
        if isinstance(v, str) and len(v) > MAX_PATTERN_CHARS:
            raise ValueError(f"a target_modules regex has at most {MAX_PATTERN_CHARS} characters")
        if isinstance(v, str) and v.lower() != "all-linear":
            _valid_unicode(v)
            try:
                compile_target_regex(v)
            except PatternError as exc:
                raise ValueError(str(exc)) from None
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


class CheckpointingKwargs(_Strict):
    """HF TrainingArguments.gradient_checkpointing_kwargs (passed to torch.utils.checkpoint)."""

    use_reentrant: bool | None = Field(
        None, description="torch.utils.checkpoint's use_reentrant; null: what transformers passes by default"
    )


class TrainingSpec(_Strict):
    precision: Precision = Field(
        "bf16",
        description="bf16: model loaded in bf16 (params, grads, torch optimizer states bf16); "
        "bf16-mixed / fp16-mixed: fp32 weights + autocast; fp32",
    )
    optim: Optim = "adamw_torch"
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD momentum (optim='sgd' only)")
    micro_batch_size: int = Field(1, ge=1, le=4096)
    gradient_accumulation_steps: int = Field(
        1, ge=1, le=65_536, description="HF TrainingArguments.gradient_accumulation_steps: micro-batches per optimizer "
        "step; from the second one on, the gradients of the earlier ones stay allocated through forward and backward"
    )
    seq_len: int = Field(2048, ge=1, le=1_048_576)
    gradient_checkpointing: bool = True
    attn_implementation: AttnImpl | None = Field(
        None, description="null: transformers' default for the model (sdpa; eager for gemma2)"
    )
    framework: Framework = Field(
        "hf-trainer", description="the trainer whose model preparation and step are replayed (docs/frameworks.md)"
    )
    gradient_checkpointing_kwargs: CheckpointingKwargs = Field(default_factory=lambda: CheckpointingKwargs())
    use_liger_kernel: bool = Field(
        False, description="HF TrainingArguments.use_liger_kernel: Liger's fused linear cross-entropy, RMSNorm, "
        "SwiGLU and RoPE kernels"
    )
    activation_offloading: bool = Field(
        False, description="TRL SFTConfig.activation_offloading: saved activations are moved to CPU memory"
    )
    packing: bool = Field(False, description="TRL SFTConfig.packing: sequences packed into seq_len-token rows")
    padding_free: bool = Field(
        False, description="TRL SFTConfig.padding_free: one flattened row per batch (variable-length attention)"
    )
    torch_compile: bool = Field(False, description="HF TrainingArguments.torch_compile")
    # torchtune recipe config keys (framework 'torchtune' only; docs/frameworks.md)
    optimizer_in_bwd: bool = Field(
        False, description="torchtune optimizer_in_bwd: each parameter's optimizer step runs in backward as soon as "
        "its gradient is ready, so no full set of gradients exists (framework 'torchtune', full fine-tuning)"
    )
    num_output_chunks: int | None = Field(
        None, ge=0, le=1024, description="torchtune CEWithChunkedOutputLoss num_output_chunks; 0: torch "
        "CrossEntropyLoss over the full fp32 logits; null: torchtune's default (8) (framework 'torchtune' only)"
    )
    custom_sharded_layers: list[Literal["tok_embeddings", "output"]] | None = Field(
        None, max_length=2, description="torchtune custom_sharded_layers: modules FSDP shards as their own units, "
        "gathered only while they run, instead of keeping them with the root (framework 'torchtune', sharding fsdp)"
    )


def _bucket_size(value: Any, least: int) -> int | str:
    """A DeepSpeed bucket size: 'auto' or a JSON integer count of elements in [least, MAX_BUCKET_ELEMENTS]."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be 'auto' or a whole number of elements (a JSON integer), got {value!r}")
    if not least <= value <= MAX_BUCKET_ELEMENTS:
        raise ValueError(f"must be 'auto' or between {least} and {MAX_BUCKET_ELEMENTS} elements, got {value}")
    return value


# DeepSpeed's pp_int fields: reduce_bucket_size must hold a gradient (≥ 1), a prefetch bucket may be empty (≥ 0)
BucketSize = Annotated[int | Literal["auto"], PlainValidator(lambda v: _bucket_size(v, 1),
                                                             json_schema_input_type=int | Literal["auto"])]
PrefetchSize = Annotated[int | Literal["auto"], PlainValidator(lambda v: _bucket_size(v, 0),
                                                               json_schema_input_type=int | Literal["auto"])]


class HardwareSpec(_Strict):
    gpu: Annotated[Text, Field(max_length=MAX_ID_CHARS)] = Field("nvidia-a100-80gb",
                                                                 description="id from GET /api/v1/gpus")
    num_gpus: int = Field(1, ge=1, le=4096)
    sharding: Sharding = "none"
    offload_optimizer: OffloadDevice = Field(
        "none", description="DeepSpeed zero_optimization.offload_optimizer.device (ZeRO-Offload), or FSDP "
        "cpu_offload: optimizer states and the optimizer step in host RAM"
    )
    offload_param: OffloadDevice = Field(
        "none", description="DeepSpeed zero_optimization.offload_param.device (ZeRO-Infinity, zero3 only), or "
        "FSDP cpu_offload(offload_params=True): parameters held in host RAM between uses"
    )
    reduce_bucket_size: BucketSize = Field(
        "auto", description="DeepSpeed zero_optimization.reduce_bucket_size (elements, ZeRO only): the gradient "
        "bucket (16-bit), kept for the whole run under ZeRO-3. 'auto' is the HF Trainer's fill, hidden_size²; a "
        "DeepSpeed config without the key (accelerate's deepspeed_config YAML without a JSON file) runs with "
        "DeepSpeed's default 500000000"
    )
    stage3_prefetch_bucket_size: PrefetchSize = Field(
        "auto", description="DeepSpeed zero_optimization.stage3_prefetch_bucket_size (elements, zero3 only): "
        "parameters gathered ahead of use. 'auto' is the HF Trainer's fill, int(0.9·hidden_size²); without the key "
        "DeepSpeed's default 50000000"
    )
    pytorch_cuda_alloc_conf: str | None = Field(
        None, max_length=MAX_CONF_CHARS,
        description="PYTORCH_CUDA_ALLOC_CONF of the run, e.g. 'expandable_segments:True' or "
        "'max_split_size_mb:128'; null: torch's default caching allocator",
    )

    @field_validator("pytorch_cuda_alloc_conf")
    @classmethod
    def _valid_alloc_conf(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_alloc_conf(v)
            except AllocConfError as exc:
                raise ValueError(str(exc)) from None
            return v.strip() or None
        return v


class PlanRequest(_Strict):
    """One fine-tuning run: POST /api/v1/estimate's body."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"model": "meta-llama/Llama-3.1-8B", "method": "qlora",
         "lora": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
         "training": {"optim": "paged_adamw_8bit", "micro_batch_size": 1, "seq_len": 2048},
         "hardware": {"gpu": "nvidia-rtx-4090"}},
        {"model": "Qwen/Qwen3-8B", "method": "full", "training": {"seq_len": 4096},
         "hardware": {"gpu": "nvidia-h100-sxm-80gb", "num_gpus": 4, "sharding": "zero3"}},
        {"model": {"config": {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
                              "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
                              "vocab_size": 128256, "tie_word_embeddings": True}},
         "method": "lora"},
    ]})

    model: str | ModelConfig = Field(description="catalog id, any Hub id 'org/name[@revision]' (its config.json is "
                                     "fetched, see docs/hub.md), or {'config': {...config.json...}}")

    @field_validator("model")
    @classmethod
    def _bounded_id(cls, v: str | ModelConfig) -> str | ModelConfig:
        if isinstance(v, str):
            if len(v) > MAX_ID_CHARS:
                raise ValueError(f"a model id has at most {MAX_ID_CHARS} characters")
            _valid_unicode(v)
        return v
    transformers_version: Literal["5.24", "4.57"] = Field(
        "5.24",
        description="transformers release whose module tree is modelled: '4.57' builds MoE experts "
        "(Mixtral, Qwen3-MoE) as one nn.Linear per expert (quantized by bitsandbytes, adaptable by "
        "LoRA/DoRA by name); '5.24' fuses them into 3-D parameters",
    )
    torch_version: Literal["2.13", "2.0"] = Field(
        "2.13",
        description="torch release whose optimizer step is modelled: '2.0' (and older): the foreach Adam/AdamW step "
        "keeps two full-size intermediates (exp_avg_sq.sqrt() and the denominator with eps) where 2.1+ keeps one "
        "(pytorch/pytorch#104898); everything else is modelled as torch 2.13",
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
