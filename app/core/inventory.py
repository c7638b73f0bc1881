"""Every parameter tensor and module of a causal LM, built from its :class:`ArchSpec`.

Names and shapes are those of ``AutoModelForCausalLM.from_config(cfg)`` in transformers 5.24
(module tree of ``modeling_<family>.py``), so PEFT's name matching can be replayed on them.
Notable 5.x layouts: MoE experts are fused 3-D ``nn.Parameter``s (``mlp.experts.gate_up_proj``
of shape (E, 2·I, H) and ``mlp.experts.down_proj`` of (E, H, I)), the router ``mlp.gate`` is a
``TopKRouter`` holding an (E, H) parameter (not an ``nn.Linear``), and GPT-2 uses ``Conv1D`` whose
weight is stored (in_features, out_features).

With ``legacy_moe`` the MoE blocks are built as transformers 4.57 did (``modeling_mixtral.py``:
``MixtralSparseMoeBlock`` under ``block_sparse_moe`` with an ``nn.Linear`` router ``gate`` (H→E) and an
``nn.ModuleList`` of ``MixtralBlockSparseTop2MLP`` experts ``w1`` (H→I), ``w2`` (I→H), ``w3`` (H→I);
``modeling_qwen3_moe.py``: ``Qwen3MoeSparseMoeBlock`` under ``mlp`` with the router ``gate`` first, then
``Qwen3MoeMLP`` experts ``gate_proj``/``up_proj`` (H→I) and ``down_proj`` (I→H)): every expert is a
plain ``nn.Linear``, so bitsandbytes quantizes it and PEFT adapts it (DoRA included) by module name.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from math import prod

from app.core.architectures import ArchSpec

# Module kinds. Only "linear", "conv1d" and "embedding" can carry a LoRA adapter in PEFT.
LINEAR = "linear"
CONV1D = "conv1d"
EMBEDDING = "embedding"
NORM = "norm"
EXPERTS = "experts"
ROUTER = "router"
OTHER = "other"


@dataclass(frozen=True)
class Module:
    """One entry of ``model.named_modules()``.

    ``in_features``/``out_features`` are set for linear and Conv1D layers (for an embedding:
    num_embeddings/embedding_dim). ``group`` is the breakdown group ("attention", "mlp", ...).
    """

    name: str
    kind: str
    group: str
    in_features: int = 0
    out_features: int = 0
    has_bias: bool = False
    layer: int | None = None

    @property
    def leaf(self) -> str:
        return self.name.rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Tensor:
    """One parameter tensor: ``name`` as in ``named_parameters()``, ``shape`` in elements."""

    name: str
    shape: tuple[int, ...]
    module: str
    group: str
    tied: bool = False  # a second name for a tensor listed earlier (counted once)

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def is_bias(self) -> bool:
        return self.name.endswith(".bias")


@dataclass
class Inventory:
    """Modules and parameter tensors of one model, in ``named_modules()`` order."""

    arch: ArchSpec
    modules: list[Module] = field(default_factory=list)
    tensors: list[Tensor] = field(default_factory=list)
    # Built from the real model (app/models/generic.py) rather than the rules: the modules transformers'
    # replace_with_bnb_linear converts, the registry key of PEFT's target resolutions, the loaded class.
    quantizable: tuple[str, ...] | None = None
    generic_key: str | None = None
    model_class: str | None = None
    legacy_moe: bool = False  # transformers 4.x MoE layout: one nn.Linear per expert projection

    @cached_property
    def module_by_name(self) -> dict[str, Module]:
        return {m.name: m for m in self.modules}

    @cached_property
    def total_params(self) -> int:
        """Parameters counted once (tied weights once), as ``model.num_parameters()`` reports."""
        return sum(t.numel for t in self.tensors if not t.tied)

    def unique_tensors(self) -> Iterator[Tensor]:
        return (t for t in self.tensors if not t.tied)

    def params_by_group(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.unique_tensors():
            out[t.group] = out.get(t.group, 0) + t.numel
        return out


class _Builder:
    def __init__(self, arch: ArchSpec) -> None:
        self.inv = Inventory(arch=arch)

    def module(self, name: str, kind: str, group: str, **kw: object) -> None:
        self.inv.modules.append(Module(name=name, kind=kind, group=group, **kw))  # type: ignore[arg-type]

    def param(self, name: str, shape: tuple[int, ...], group: str, *, tied: bool = False) -> None:
        module = name.rsplit(".", 1)[0]
        self.inv.tensors.append(Tensor(name=name, shape=shape, module=module, group=group, tied=tied))

    def linear(self, name: str, in_f: int, out_f: int, group: str, bias: bool, layer: int | None) -> None:
        self.module(name, LINEAR, group, in_features=in_f, out_features=out_f, has_bias=bias, layer=layer)
        self.param(f"{name}.weight", (out_f, in_f), group)
        if bias:
            self.param(f"{name}.bias", (out_f,), group)

    def conv1d(self, name: str, in_f: int, out_f: int, group: str, layer: int) -> None:
        self.module(name, CONV1D, group, in_features=in_f, out_features=out_f, has_bias=True, layer=layer)
        self.param(f"{name}.weight", (in_f, out_f), group)
        self.param(f"{name}.bias", (out_f,), group)

    def norm(self, name: str, dim: int, layer: int | None, bias: bool = False) -> None:
        self.module(name, NORM, "norms", in_features=dim, out_features=dim, has_bias=bias, layer=layer)
        self.param(f"{name}.weight", (dim,), "norms")
        if bias:
            self.param(f"{name}.bias", (dim,), "norms")


def build_inventory(arch: ArchSpec, *, legacy_moe: bool = False) -> Inventory:
    """All modules and parameters of ``AutoModelForCausalLM.from_config`` for ``arch`` (transformers 5.24, or
    with ``legacy_moe`` the per-expert ``nn.Linear`` MoE blocks of transformers 4.57)."""
    if arch.model_type == "gpt2":
        return _build_gpt2(arch)
    return _build_decoder(arch, legacy_moe and bool(arch.sparse_layers))


def _build_decoder(a: ArchSpec, legacy_moe: bool = False) -> Inventory:
    b = _Builder(a)
    b.inv.legacy_moe = legacy_moe
    h = a.hidden_size
    b.module("model", OTHER, "model")
    b.module("model.embed_tokens", EMBEDDING, "embedding", in_features=a.vocab_size, out_features=h)
    b.param("model.embed_tokens.weight", (a.vocab_size, h), "embedding")
    b.module("model.layers", OTHER, "model")
    fused = a.model_type == "phi3"
    gemma_norms = a.model_type in ("gemma2", "gemma3_text")
    qk_norm = a.model_type in ("qwen3", "qwen3_moe", "gemma3_text")
    for i in range(a.num_hidden_layers):
        p = f"model.layers.{i}"
        b.module(p, OTHER, "model", layer=i)
        b.module(f"{p}.self_attn", OTHER, "attention", layer=i)
        att = f"{p}.self_attn"
        if fused:
            # modeling_phi3.py: o_proj is created before qkv_proj.
            b.linear(f"{att}.o_proj", a.q_dim, h, "attention", False, i)
            b.linear(f"{att}.qkv_proj", h, a.q_dim + 2 * a.kv_dim, "attention", False, i)
        else:
            qkv_bias = a.attention_bias or a.qkv_bias
            b.linear(f"{att}.q_proj", h, a.q_dim, "attention", qkv_bias, i)
            b.linear(f"{att}.k_proj", h, a.kv_dim, "attention", qkv_bias, i)
            b.linear(f"{att}.v_proj", h, a.kv_dim, "attention", qkv_bias, i)
            b.linear(f"{att}.o_proj", a.q_dim, h, "attention", a.attention_bias, i)
        if qk_norm:
            b.norm(f"{att}.q_norm", a.head_dim, i)
            b.norm(f"{att}.k_norm", a.head_dim, i)
        mlp = f"{p}.mlp"
        if i in a.sparse_layers and legacy_moe:
            _moe_block_v4(b, a, f"{p}.block_sparse_moe" if a.model_type == "mixtral" else mlp, i)
        elif i in a.sparse_layers:
            _moe_block(b, a, mlp, i)
        else:
            b.module(mlp, OTHER, "mlp", layer=i)
            if fused:
                b.linear(f"{mlp}.gate_up_proj", h, 2 * a.intermediate_size, "mlp", False, i)
                b.linear(f"{mlp}.down_proj", a.intermediate_size, h, "mlp", False, i)
            else:
                b.linear(f"{mlp}.gate_proj", h, a.intermediate_size, "mlp", a.mlp_bias, i)
                b.linear(f"{mlp}.up_proj", h, a.intermediate_size, "mlp", a.mlp_bias, i)
                b.linear(f"{mlp}.down_proj", a.intermediate_size, h, "mlp", a.mlp_bias, i)
            b.module(f"{mlp}.activation_fn" if fused else f"{mlp}.act_fn", OTHER, "mlp", layer=i)
        b.norm(f"{p}.input_layernorm", h, i)
        b.norm(f"{p}.post_attention_layernorm", h, i)
        if fused:
            b.module(f"{p}.resid_attn_dropout", OTHER, "model", layer=i)
            b.module(f"{p}.resid_mlp_dropout", OTHER, "model", layer=i)
        if gemma_norms:
            b.norm(f"{p}.pre_feedforward_layernorm", h, i)
            b.norm(f"{p}.post_feedforward_layernorm", h, i)
    b.norm("model.norm", h, None)
    b.module("model.rotary_emb", OTHER, "model")
    _lm_head(b, a)
    return b.inv


def _moe_block(b: _Builder, a: ArchSpec, mlp: str, i: int) -> None:
    h, e, inter = a.hidden_size, a.num_experts, a.moe_intermediate_size
    b.module(mlp, OTHER, "experts", layer=i)
    router_first = a.model_type == "mixtral"  # Qwen3MoeSparseMoeBlock registers experts before gate
    if router_first:
        b.module(f"{mlp}.gate", ROUTER, "router", in_features=h, out_features=e, layer=i)
        b.param(f"{mlp}.gate.weight", (e, h), "router")
    b.module(f"{mlp}.experts", EXPERTS, "experts", in_features=h, out_features=inter, layer=i)
    b.param(f"{mlp}.experts.gate_up_proj", (e, 2 * inter, h), "experts")
    b.param(f"{mlp}.experts.down_proj", (e, h, inter), "experts")
    b.module(f"{mlp}.experts.act_fn", OTHER, "experts", layer=i)
    if not router_first:
        b.module(f"{mlp}.gate", ROUTER, "router", in_features=h, out_features=e, layer=i)
        b.param(f"{mlp}.gate.weight", (e, h), "router")


def _moe_block_v4(b: _Builder, a: ArchSpec, block: str, i: int) -> None:
    """transformers 4.57 ``MixtralSparseMoeBlock`` / ``Qwen3MoeSparseMoeBlock``: the router ``gate`` is an
    ``nn.Linear(H, E, bias=False)`` registered first, then ``experts`` = ``nn.ModuleList`` of E MLPs whose
    projections are ``nn.Linear(..., bias=False)``."""
    h, e, inter = a.hidden_size, a.num_experts, a.moe_intermediate_size
    b.module(block, OTHER, "experts", layer=i)
    b.linear(f"{block}.gate", h, e, "router", False, i)
    b.module(f"{block}.experts", OTHER, "experts", layer=i)
    names = ("w1", "w2", "w3") if a.model_type == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    for j in range(e):
        expert = f"{block}.experts.{j}"
        b.module(expert, OTHER, "experts", layer=i)
        for name in names:
            down = name in ("w2", "down_proj")
            b.linear(f"{expert}.{name}", inter if down else h, h if down else inter, "experts", False, i)
        b.module(f"{expert}.act_fn", OTHER, "experts", layer=i)


def _lm_head(b: _Builder, a: ArchSpec) -> None:
    b.module("lm_head", LINEAR, "lm_head", in_features=a.hidden_size, out_features=a.vocab_size)
    b.param("lm_head.weight", (a.vocab_size, a.hidden_size), "lm_head", tied=a.tie_word_embeddings)


def _build_gpt2(a: ArchSpec) -> Inventory:
    b = _Builder(a)
    h = a.hidden_size
    b.module("transformer", OTHER, "model")
    b.module("transformer.wte", EMBEDDING, "embedding", in_features=a.vocab_size, out_features=h)
    b.param("transformer.wte.weight", (a.vocab_size, h), "embedding")
    b.module("transformer.wpe", EMBEDDING, "embedding", in_features=a.n_positions, out_features=h)
    b.param("transformer.wpe.weight", (a.n_positions, h), "embedding")
    b.module("transformer.drop", OTHER, "model")
    b.module("transformer.h", OTHER, "model")
    for i in range(a.num_hidden_layers):
        p = f"transformer.h.{i}"
        b.module(p, OTHER, "model", layer=i)
        b.norm(f"{p}.ln_1", h, i, bias=True)
        b.module(f"{p}.attn", OTHER, "attention", layer=i)
        b.conv1d(f"{p}.attn.c_attn", h, 3 * h, "attention", i)
        b.conv1d(f"{p}.attn.c_proj", h, h, "attention", i)
        b.module(f"{p}.attn.attn_dropout", OTHER, "attention", layer=i)
        b.module(f"{p}.attn.resid_dropout", OTHER, "attention", layer=i)
        b.norm(f"{p}.ln_2", h, i, bias=True)
        b.module(f"{p}.mlp", OTHER, "mlp", layer=i)
        b.conv1d(f"{p}.mlp.c_fc", h, a.intermediate_size, "mlp", i)
        b.conv1d(f"{p}.mlp.c_proj", a.intermediate_size, h, "mlp", i)
        b.module(f"{p}.mlp.act", OTHER, "mlp", layer=i)
        b.module(f"{p}.mlp.dropout", OTHER, "mlp", layer=i)
    b.norm("transformer.ln_f", h, None, bias=True)
    _lm_head(b, a)
    return b.inv
