"""Read a Hugging Face ``config.json`` into the few numbers that fix a model's tensor shapes.

Defaults per ``model_type`` are those of the transformers 5.24 config classes
(``transformers/models/<family>/configuration_<family>.py``); ``tests/test_architectures.py``
checks every one of them against ``AutoConfig.for_model(model_type)``. Shapes follow the
modeling files (``modeling_<family>.py``) of the same release.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from app.core.errors import PlanError

ALIASES_PATH = Path(__file__).with_name("data") / "config_aliases.json"

SUPPORTED_MODEL_TYPES: tuple[str, ...] = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
)

# Bounds that keep one request's work small: no config may make the server allocate or loop without limit.
# The work of an estimate grows with num_hidden_layers (modules per layer) and num_experts; at 256 layers and
# 512 experts POST /api/v1/fit on a pasted config takes at most ~20 s of one CPU (docs/limits.md, measured with
# bench/load.py). The largest real models stay below: Llama-3.1-405B has 126 layers, DeepSeek-V3 256 experts.
LIMITS: dict[str, int] = {
    "vocab_size": 4_194_304,
    "hidden_size": 131_072,
    "intermediate_size": 1_048_576,
    "num_hidden_layers": 256,
    "num_attention_heads": 1_024,
    "num_key_value_heads": 1_024,
    "head_dim": 4_096,
    "num_experts": 512,
    "num_local_experts": 512,
    "max_position_embeddings": 16_777_216,
}
# GPT-2's config names for the same sizes
LIMITS.update(n_embd=LIMITS["hidden_size"], n_layer=LIMITS["num_hidden_layers"], n_head=LIMITS["num_attention_heads"],
              n_positions=LIMITS["max_position_embeddings"], n_inner=LIMITS["intermediate_size"],
              moe_intermediate_size=LIMITS["intermediate_size"], num_experts_per_tok=LIMITS["num_experts"],
              decoder_sparse_step=LIMITS["num_hidden_layers"])

# transformers 5.24 config-class defaults for the keys that decide shapes.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=None, head_dim=None, attention_bias=False,
                  mlp_bias=False, tie_word_embeddings=False),
    "mistral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=None, tie_word_embeddings=False),
    "mixtral": dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, head_dim=None, num_local_experts=8,
                    num_experts_per_tok=2, tie_word_embeddings=False),
    "qwen2": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=None, tie_word_embeddings=False),
    "qwen3": dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
                  num_attention_heads=32, num_key_value_heads=32, head_dim=128, attention_bias=False,
                  tie_word_embeddings=False),
    "qwen3_moe": dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                      num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=4, head_dim=None,
                      attention_bias=False, num_local_experts=128, num_experts_per_tok=8, decoder_sparse_step=1,
                      mlp_only_layers=[], tie_word_embeddings=False),
    "gemma": dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, head_dim=256, attention_bias=False,
                  tie_word_embeddings=True),
    "gemma2": dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, attention_bias=False,
                   tie_word_embeddings=True, final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "gemma3_text": dict(vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                        num_attention_heads=8, num_key_value_heads=4, head_dim=256, attention_bias=False,
                        tie_word_embeddings=True, final_logit_softcapping=None, attn_logit_softcapping=None),
    "phi3": dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, head_dim=None, tie_word_embeddings=False),
    "gpt2": dict(vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_inner=None, n_positions=1024,
                 tie_word_embeddings=True),
}

# PEFT 0.21.2 TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING (peft/utils/constants.py) for these
# families; None means PEFT has no default and asks for target_modules.
PEFT_DEFAULT_TARGET_MODULES: dict[str, list[str] | None] = {
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "mixtral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "qwen3_moe": None,
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "gemma3_text": ["q_proj", "v_proj"],
    "phi3": None,
    "gpt2": ["c_attn"],
}


# transformers 5.24 model classes with ``_supports_sdpa = False``, and why; their default is eager (gpt-oss:
# ``GptOssPreTrainedModel``, whose attention adds learned sinks to the softmax).
NO_SDPA: dict[str, str] = {"gemma2": "attention softcapping", "gpt_oss": "attention sinks"}


def attention_for(model_type: str, requested: str | None) -> str:
    """The attention implementation a run uses: the requested one, or transformers' default for the model.

    Raises :class:`PlanError` when transformers refuses the combination.
    """
    if requested is None:
        return "eager" if model_type in NO_SDPA else "sdpa"
    if requested == "sdpa" and model_type in NO_SDPA:
        raise PlanError(("training", "attn_implementation"),
                        f"transformers' {model_type} does not support sdpa ({NO_SDPA[model_type]}); "
                        "use eager or flash_attention_2")
    return requested


@dataclass(frozen=True)
class ArchSpec:
    """The shape-deciding numbers of one causal LM (all counts, no bytes)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    attention_bias: bool = False  # bias on q/k/v/o (llama-style attention_bias)
    qkv_bias: bool = False  # bias on q/k/v only (qwen2)
    mlp_bias: bool = False
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    sparse_layers: tuple[int, ...] = ()  # layer indices whose MLP is a mixture of experts
    n_positions: int = 0  # learned absolute positions (gpt2)
    max_position_embeddings: int = 0
    final_logit_softcapping: bool = False  # gemma2: logits = tanh(logits / cap) · cap (tanh output saved)
    attn_logit_softcapping: bool = False  # gemma2 eager attention: the same on the scores
    rope_type: str = ""  # config.json rope_scaling / rope_parameters "rope_type" ("llama3": Llama-3.1/3.2)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim


def _int_field(cfg: dict[str, Any], key: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(("model", "config", key), f"must be an integer, got {value!r}")
    limit = LIMITS.get(key)
    if value < minimum or (limit is not None and value > limit):
        bound = f"between {minimum} and {limit}" if limit is not None else f"at least {minimum}"
        raise PlanError(("model", "config", key), f"must be {bound}, got {value}")
    return value


@cache
def config_aliases() -> dict[str, dict[str, dict[str, Any]]]:
    """transformers 5.24's ``attribute_map`` of each supported config class: ``{model_type: {alias: {"key":
    attribute, "alias_wins": bool}}}`` (read from the classes by ``app/models/aliases.py``)."""
    return json.loads(ALIASES_PATH.read_text())


def resolve_aliases(model_type: str, cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``cfg`` with every alias the config class accepts written under its attribute, as transformers sets it
    (where both names are given, the one the class lets win); and attribute → the key the config used."""
    out = dict(cfg)
    given: dict[str, str] = {}
    for alias, rule in config_aliases().get(model_type, {}).items():
        key = rule["key"]
        if alias in cfg and (key not in cfg or rule["alias_wins"]):
            out[key] = cfg[alias]
            given[key] = alias
    return out, given


def parse_config(cfg: dict[str, Any]) -> ArchSpec:
    """Turn a ``config.json`` dict into an :class:`ArchSpec`, filling transformers' defaults.

    Raises :class:`PlanError` (→ 422) for an unsupported ``model_type`` or out-of-range sizes.
    """
    if not isinstance(cfg, dict):
        raise PlanError(("model", "config"), "must be a JSON object (the model's config.json)")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in _DEFAULTS:
        raise PlanError(
            ("model", "config", "model_type"),
            f"unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}",
        )
    cfg, given = resolve_aliases(model_type, cfg)
    merged = dict(_DEFAULTS[model_type])
    merged.update({k: v for k, v in cfg.items() if k in merged or k in _EXTRA_KEYS})

    def get_int(key: str, value: Any = _UNSET, minimum: int = 1) -> int:
        value = merged.get(key) if value is _UNSET else value
        try:
            return _int_field(cfg, key, value, minimum=minimum)
        except PlanError as exc:  # name the key the config used (an alias of the attribute)
            raise PlanError(("model", "config", given.get(key, key)), exc.message) from None

    def get_bool(key: str) -> bool:
        value = merged.get(key, False)
        if not isinstance(value, bool):
            raise PlanError(("model", "config", key), f"must be true or false, got {value!r}")
        return value

    if model_type == "gpt2":
        hidden = get_int("n_embd")
        heads = get_int("n_head")
        inner = merged["n_inner"]
        return ArchSpec(
            model_type=model_type,
            vocab_size=get_int("vocab_size"),
            hidden_size=hidden,
            intermediate_size=get_int("n_inner", inner if inner is not None else 4 * hidden),
            num_hidden_layers=get_int("n_layer"),
            num_attention_heads=heads,
            num_key_value_heads=heads,
            head_dim=hidden // heads,
            tie_word_embeddings=get_bool("tie_word_embeddings"),
            attention_bias=True,
            mlp_bias=True,
            n_positions=get_int("n_positions"),
            max_position_embeddings=merged["n_positions"],
        )

    hidden = get_int("hidden_size")
    heads = get_int("num_attention_heads")
    kv = merged["num_key_value_heads"]
    kv_heads = get_int("num_key_value_heads", heads if kv is None else kv)
    head_dim_raw = merged.get("head_dim")
    head_dim = get_int("head_dim", head_dim_raw if head_dim_raw else hidden // heads)
    layers = get_int("num_hidden_layers")
    num_experts = 0
    sparse: tuple[int, ...] = ()
    moe_inter = 0
    top_k = 0
    if model_type == "mixtral":
        num_experts = get_int("num_local_experts")
        top_k = get_int("num_experts_per_tok", merged["num_experts_per_tok"])
        moe_inter = get_int("intermediate_size")
        sparse = tuple(range(layers))
    elif model_type == "qwen3_moe":
        num_experts = get_int("num_local_experts", minimum=0)
        top_k = get_int("num_experts_per_tok", minimum=0)
        moe_inter = get_int("moe_intermediate_size")
        step = get_int("decoder_sparse_step")
        mlp_only = merged.get("mlp_only_layers") or []
        if not isinstance(mlp_only, list) or not all(isinstance(i, int) for i in mlp_only):
            raise PlanError(("model", "config", "mlp_only_layers"), "must be a list of layer indices")
        # modeling_qwen3_moe.py: Qwen3MoeDecoderLayer picks the sparse block under this condition.
        dense = set(mlp_only)
        sparse = tuple(
            i for i in range(layers) if i not in dense and num_experts > 0 and (i + 1) % step == 0
        )
    return ArchSpec(
        model_type=model_type,
        vocab_size=get_int("vocab_size"),
        hidden_size=hidden,
        intermediate_size=get_int("intermediate_size"),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        tie_word_embeddings=get_bool("tie_word_embeddings"),
        attention_bias=get_bool("attention_bias"),
        qkv_bias=model_type == "qwen2",
        mlp_bias=get_bool("mlp_bias"),
        num_experts=num_experts,
        num_experts_per_tok=top_k,
        moe_intermediate_size=moe_inter,
        sparse_layers=sparse,
        max_position_embeddings=(0 if cfg.get("max_position_embeddings") is None
                                 else get_int("max_position_embeddings", cfg["max_position_embeddings"])),
        final_logit_softcapping=bool(merged.get("final_logit_softcapping")),
        attn_logit_softcapping=bool(merged.get("attn_logit_softcapping")),
        rope_type=_rope_type(cfg),
    )


def _rope_type(cfg: dict[str, Any]) -> str:
    """The config's RoPE variant: ``rope_scaling`` (transformers 4.x) or ``rope_parameters`` (5.x) ``rope_type``
    (older configs: ``type``); "" when unscaled."""
    for key in ("rope_scaling", "rope_parameters"):
        value = cfg.get(key)
        if isinstance(value, dict):
            kind = value.get("rope_type", value.get("type"))
            if isinstance(kind, str):
                return kind if kind != "default" else ""
    return ""


_UNSET = object()

# Keys read from a config although their family's defaults table does not list them.
_EXTRA_KEYS = frozenset({"max_position_embeddings"})
