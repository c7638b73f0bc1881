"""litgpt's own GPT model and training loop: activation and loss-path bytes (pure Python, analytic).

``training.framework`` ``litgpt`` is litgpt 0.4.13.dev1 (commit 00af8b0d, 2024-09-27: ``config_hub/finetune``),
``lit-gpt`` the project before its rename (commit 8641822, 2023-10-20: ``tutorials/resource-tables.md``). Both
train litgpt's ``GPT`` (``litgpt/model.py``, ``litgpt/lora.py``; ``lit_gpt/`` at 8641822), not a transformers
model, under Lightning Fabric. Sources read at those commits (docs/frameworks.md):

- Fabric ``bf16-true`` (``precision`` of ``finetune/lora.py`` / ``full.py``): the model is created in bf16
  (``fabric.init_module``) — base weights, LoRA A/B, their gradients and torch AdamW's ``zeros_like`` states are
  bf16; no fp32 master copy, no autocast. QLoRA: ``BitsandbytesPrecision`` (lightning
  ``fabric/plugins/precision/bitsandbytes.py`` ``_convert_layers``) replaces **every** ``torch.nn.Linear``,
  lm_head included, by a 4-bit layer; ``finetune/lora.py`` then builds ``bnb.optim.PagedAdamW`` (32-bit states;
  ``instantiate_bnb_optimizer`` at 00af8b0d). bitsandbytes ≤ 0.42 (the releases those commits pinned)
  ``MatMul4Bit.forward`` dequantizes the weight for every call and keeps its input ``A`` for backward
  (``ctx.tensors = (A, B)``).
- ``Block.forward``: ``x + attn(norm_1(x))``, then ``x + mlp(norm_2(x))``. ``CausalSelfAttention``: one fused
  ``attn`` linear (q, k, v per query group), ``qkv.view → permute → split``; under GQA the k/v ``expand`` and
  every ``reshape`` copy (each (b, heads, s, hs)); under MHA they are views that keep the fused qkv output alive.
  RoPE (``apply_rope``) builds new q and k (``torch.cat``); the fp32 rope cache promotes only temporaries.
  ``F.scaled_dot_product_attention(is_causal=True)`` runs the flash kernel for bf16 (saves q, k, v, its output
  and an fp32 logsumexp); with a sliding window (Mistral v0.1, Phi-3) each layer builds an (s, s) mask and the
  memory-efficient kernel saves it. Gemma-2's logit soft-capping takes the eager path: tanh scores, fp32
  softmax and its cast are saved ((2a + 4)·b·heads·s²).
- ``RMSNorm``: at 8641822 ``x * rsqrt(mean(x·x))`` on the input (input and rsqrt saved); at 00af8b0d on
  ``x.float()`` (an fp32 copy and the fp32 rsqrt saved). ``LLaMAMLP`` / ``GemmaMLP``: ``act(fc_1(x)) * fc_2(x)``
  saves fc_1's output, the activation's output and fc_2's output.
- LoRA (``LoRALinear``, ``LoRAQKVLinear``): ``lora_dropout`` (0.05 in both releases' defaults) keeps its output
  (lora_A's saved input) and a bool mask; ``after_A`` (T·r per enabled part) is saved by the grouped
  ``conv1d``; when not all of q, k, v are enabled ``zero_pad``'s ``index_copy`` keeps the conv output (its
  ``source``) for backward. Frozen base linears save nothing (their input is needed only for a weight gradient).
- Loss: ``model(input_ids, lm_head_chunk_size=128)`` returns a list of 128-position logits chunks; Fabric's
  ``_FabricModule.forward`` casts the output to the default dtype (``precision.convert_output``: fp32), and the
  loop's ``logits`` variable keeps the fp32 chunks through backward and ``optimizer.step()`` until the next step's
  forward has returned; ``chunked_cross_entropy`` (``utils.py``) keeps each chunk's fp32 ``log_softmax`` output.
  Full fine-tuning (``finetune/full.py``) computes the whole logits and chunks the loss over
  ``logits[..., :-1, :].reshape(-1, V)`` (a copy when b > 1). With bitsandbytes ≤ 0.42 the previous step's 4-bit
  inputs stay alive with its graph (:func:`previous_step_inputs`).

What is analytic: everything here; ``bench/litgpt_trace.py`` runs litgpt's real model and loop (the two commits'
source, fake tensors, the trace engine's counter) for comparison. The first layer's input needs no gradient
(a frozen embedding): its norm_1 and dropout mask keep nothing (modelled when q, k or v are adapted, as in
every published litgpt recipe).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from app.core.adapters import AdapterPlan, TrainableTensor
from app.core.architectures import ArchSpec
from app.core.catalog import model_config
from app.core.errors import PlanError
from app.core.request import ModelConfig, PlanRequest

LITGPT_FRAMEWORKS = ("litgpt", "lit-gpt")
LM_HEAD_CHUNK = 128
"""``finetune/lora.py``: ``model(input_ids, lm_head_chunk_size=128)`` (both commits)."""
SLIDING_WINDOW_TYPES = ("mistral", "phi3")
"""litgpt configs with ``sliding_window_size`` (Mistral-7B-v0.1: 4096; Phi-3-mini-4k: 2048, every layer);
HF configs of these types carry ``sliding_window``. Gemma-2 (every second layer) takes the soft-capping path."""


def is_litgpt(req: PlanRequest) -> bool:
    return req.training.framework in LITGPT_FRAMEWORKS


SUPPORTED_TYPES = ("llama", "mistral", "gemma", "gemma2", "phi3", "phi", "gpt_neox", "falcon")
"""HF model types whose litgpt configs use the blocks modelled here: ``RMSNorm`` + ``LLaMAMLP``/``GemmaMLP``, or
(:data:`NEOX_TYPES`) ``LayerNorm`` + ``GptNeoxMLP`` with a parallel residual."""
NEOX_TYPES = ("phi", "gpt_neox", "falcon")
"""litgpt configs of these checkpoints (``litgpt/config.py``: phi-1_5, phi-2, stablelm-base-alpha-*, pythia-*,
falcon-*) set ``norm_class_name="LayerNorm"``, ``mlp_class_name="GptNeoxMLP"`` and ``parallel_residual=True``;
``shared_attention_norm`` where the HF layer has one norm (phi, Falcon-7B) — Falcon-40B/180B and GPT-NeoX have
two."""


LLAMA_NAMES_AS: dict[str, dict[str, str]] = {
    "phi3": {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
             "up_proj": "gate_up_proj"},
    "phi": {"o_proj": "dense", "gate_proj": "fc1", "up_proj": "fc1", "down_proj": "fc2"},
    "gpt_neox": {"q_proj": "query_key_value", "k_proj": "query_key_value", "v_proj": "query_key_value",
                 "o_proj": "dense", "gate_proj": "dense_h_to_4h", "up_proj": "dense_h_to_4h",
                 "down_proj": "dense_4h_to_h", "lm_head": "embed_out"},
    "falcon": {"q_proj": "query_key_value", "k_proj": "query_key_value", "v_proj": "query_key_value",
               "o_proj": "dense", "gate_proj": "dense_h_to_4h", "up_proj": "dense_h_to_4h",
               "down_proj": "dense_4h_to_h"},
}
"""litgpt's LoRA flags spelled as llama module names (``lora_query`` → q_proj, ``lora_mlp`` → gate/up/down_proj,
``lora_head`` → lm_head) → the HF module names of models that name or fuse them otherwise. Which parts of a fused
q/k/v linear litgpt's ``LoRAQKVLinear`` adapts is ``lora.enable_lora`` (:func:`lora_targets`): PEFT's
``target_modules`` cannot name a part of a linear."""
FUSED_QKV = frozenset({"qkv_proj", "query_key_value"})
"""HF leaf names of a fused q/k/v linear (Phi-3; GPT-NeoX, Falcon). litgpt fuses q, k, v into one ``attn`` linear in
every model; where the HF model keeps them apart (llama, …) the adapted parts are the q/k/v_proj targets."""
FUSED_GATE_UP = "gate_up_proj"
"""Phi-3's fused MLP input linear, which litgpt's conversion splits into ``LLaMAMLP``'s fc_1 and fc_2."""


def hf_target_names(model_type: str, names: list[str]) -> list[str]:
    """``names`` (llama module names of litgpt's flags) as ``model_type``'s own, in order, without repeats."""
    renamed = LLAMA_NAMES_AS.get(model_type, {})
    return list(dict.fromkeys(renamed.get(n, n) for n in names))


def lora_targets(model_type: str, names: list[str]) -> tuple[list[str], list[bool] | None]:
    """litgpt's flags (``names``: their llama module names) as a request's ``(target_modules, enable_lora)``:
    the model's own names, and which of q, k, v are adapted where ``model_type`` fuses them into one linear and
    not all three are (else None: all three, or the model's separate q/k/v_proj name them)."""
    own = hf_target_names(model_type, names)
    qkv = [n in names for n in ("q_proj", "k_proj", "v_proj")]
    return own, (qkv if FUSED_QKV & set(own) and not all(qkv) else None)


FINETUNE_LORA_TARGETS = ["q_proj", "v_proj"]
"""``litgpt finetune_lora``'s default flags, ``lora_query`` and ``lora_value`` (``finetune/lora.py`` ``setup()`` at
both commits), as llama names."""


def with_default_targets(req: PlanRequest) -> PlanRequest:
    """A litgpt request without ``target_modules`` (nor ``target_parameters``) adapts what ``litgpt finetune_lora``
    adapts by default, :data:`FINETUNE_LORA_TARGETS` in the model's own names (:func:`lora_targets`), instead of
    PEFT's default for the architecture (the same q_proj, v_proj for llama, mistral and gemma; the whole fused
    query_key_value for GPT-NeoX and Falcon; none for Phi-3). Other requests are returned as they are."""
    lo = req.lora
    if not is_litgpt(req) or not req.uses_adapter or lo.target_modules is not None or lo.target_parameters:
        return req
    cfg = req.model.config if isinstance(req.model, ModelConfig) else model_config(req.model)
    names, enable = lora_targets(str(cfg.get("model_type", "")), FINETUNE_LORA_TARGETS)
    lora = lo.model_copy(update={"target_modules": names,
                                 "enable_lora": enable if lo.enable_lora is None else lo.enable_lora})
    return req.model_copy(update={"lora": lora})


def llama_names(model_type: str, names: list[str]) -> list[str]:
    """The inverse of :func:`hf_target_names`: ``model_type``'s module names as the llama names of litgpt's
    flags (a fused q/k/v linear stands for all three, phi's fc1 for fc_1 and fc_2)."""
    renamed = LLAMA_NAMES_AS.get(model_type, {})
    back: dict[str, list[str]] = {}
    for llama, own in renamed.items():
        back.setdefault(own, []).append(llama)
    return list(dict.fromkeys(m for n in names for m in back.get(n, [n])))


@dataclass(frozen=True)
class Block:
    """What a litgpt ``Block`` is made of (``litgpt/model.py`` ``Block``, ``GptNeoxMLP``; ``Config``'s
    ``norm_class_name``, ``mlp_class_name``, ``parallel_residual``, ``shared_attention_norm``)."""

    layer_norm: bool = False  # torch.nn.LayerNorm (else litgpt's RMSNorm)
    gelu_mlp: bool = False  # GptNeoxMLP: fc → gelu → proj (else LLaMAMLP/GemmaMLP: act(fc_1)·fc_2 → proj)
    parallel: bool = False  # x + attn(norm_1(x)) + mlp(norm_2(x) or norm_1's output)
    shared_norm: bool = False  # the MLP reads norm_1's output (no norm_2)
    kv_dim: int | None = None  # keys' width per token (None: the ArchSpec's); MQA Falcon-7B: one 64-wide group


LLAMA_BLOCK = Block()


def block_of(arch: ArchSpec, cfg: dict[str, object], norms_per_layer: int, kv_dim: int) -> Block:
    """The litgpt block of an HF config: :data:`NEOX_TYPES` are LayerNorm + GptNeoxMLP blocks, parallel unless
    the config says otherwise (GPT-NeoX ``use_parallel_residual``, Falcon ``parallel_attn``), sharing norm_1 when
    the HF layer has a single norm (``norms_per_layer``); ``kv_dim``: the keys' width from the model's own
    projections (Falcon-7B's config keeps ``num_kv_heads`` = 71 while its ``multi_query`` layer makes one)."""
    if arch.model_type not in NEOX_TYPES:
        return LLAMA_BLOCK
    parallel = bool({"gpt_neox": cfg.get("use_parallel_residual", True),
                     "falcon": cfg.get("parallel_attn", True)}.get(arch.model_type, True))
    return Block(layer_norm=True, gelu_mlp=True, parallel=parallel, shared_norm=parallel and norms_per_layer == 1,
                 kv_dim=kv_dim)


def check(req: PlanRequest, arch: ArchSpec) -> None:
    """422 for what the litgpt model here does not cover: other block types, DoRA, HF-Trainer switches, sharding;
    and for ``lora.enable_lora`` outside litgpt (PEFT adapts a linear whole) or enabling none of q, k, v."""
    enable = req.lora.enable_lora
    if enable is not None and req.uses_adapter:
        if not is_litgpt(req):
            raise PlanError(("lora", "enable_lora"), "is litgpt's LoRAQKVLinear argument (training.framework litgpt "
                            "or lit-gpt); PEFT adapts a linear whole: leave it null")
        if not any(enable):
            raise PlanError(("lora", "enable_lora"), "enables none of q, k, v: name the fused q/k/v linear's parts "
                            "to adapt ([q, k, v] booleans), or leave it out of target_modules")
    if not is_litgpt(req):
        return
    fw = req.training.framework
    if arch.model_type not in SUPPORTED_TYPES:
        raise PlanError(("training", "framework"), f"{fw} is modelled for {', '.join(SUPPORTED_TYPES)} models "
                        f"(RMSNorm + LLaMA/Gemma MLP blocks, LayerNorm + GPT-NeoX MLP blocks), not "
                        f"{arch.model_type!r}")
    if req.uses_dora or req.quantization.load_in_8bit:
        raise PlanError(("method",), f"{fw} is modelled for full, lora and qlora (bnb nf4/fp4), not DoRA or 8-bit")
    tr = req.training
    for name in ("use_liger_kernel", "activation_offloading", "packing", "padding_free", "torch_compile"):
        if getattr(tr, name):
            raise PlanError(("training", name), f"{name} is a transformers/TRL switch; {fw}'s own loop has none "
                            "(set it to false)")
    if req.hardware.num_gpus > 1 or req.hardware.sharding != "none":
        raise PlanError(("hardware", "sharding"), f"{fw} is modelled on one GPU (its FSDPStrategy is not)")


def litgpt_optim(req: PlanRequest) -> str:
    """The optimizer the run builds: litgpt's ``finetune/lora.py`` replaces any optimizer by
    ``bnb.optim.PagedAdamW`` (32-bit) under ``BitsandbytesPrecision`` (QLoRA); otherwise ``training.optim``."""
    return "paged_adamw_32bit" if is_litgpt(req) and req.quantized else req.training.optim


def old_norm(req: PlanRequest) -> bool:
    """lit-gpt 8641822's RMSNorm works in the input dtype; litgpt 00af8b0d's upcasts to fp32."""
    return req.training.framework == "lit-gpt"


@dataclass(frozen=True)
class Targets:
    """litgpt's LoRA flags (``lora_query`` ... ``lora_head``) from HF target module names."""

    query: bool
    key: bool
    value: bool
    projection: bool
    mlp: bool
    head: bool

    @classmethod
    def from_names(cls, names: set[str]) -> Targets:
        """HF leaf names of any modelled type, read back as litgpt's flags (:func:`llama_names`: a fused
        ``qkv_proj`` / ``query_key_value`` stands for all of q, k, v; ``dense`` is phi's, GPT-NeoX's and Falcon's
        attention output projection)."""
        llama = set(names).union(*(llama_names(t, sorted(names)) for t in LLAMA_NAMES_AS))
        return cls("q_proj" in llama, "k_proj" in llama, "v_proj" in llama, "o_proj" in llama,
                   bool(llama & {"gate_proj", "up_proj", "down_proj"}), "lm_head" in llama)

    @classmethod
    def of_request(cls, req: PlanRequest, leaves: set[str]) -> Targets:
        """The flags of a request whose adapted modules have these HF leaf names: :meth:`from_names`, with
        ``lora.enable_lora`` choosing the parts of a fused q/k/v linear."""
        tg = cls.from_names(leaves if req.uses_adapter else set())
        enable = req.lora.enable_lora
        if enable is None or not req.uses_adapter:
            return tg
        return replace(tg, query=enable[0], key=enable[1], value=enable[2])


def litgpt_plan(plan: AdapterPlan, arch: ArchSpec, req: PlanRequest) -> AdapterPlan:
    """The trainable tensors of litgpt's LoRA layers on the HF modules PEFT's rules matched (``litgpt/lora.py`` at
    both commits): a fused q/k/v linear is a ``LoRAQKVLinear`` — ``lora_A`` (r·n, in) and ``lora_B`` (Σ widths, r)
    over the n enabled parts (``lora.enable_lora``; query n_head·head_size wide, key and value
    n_query_groups·head_size each: the fused width less the query's, halved); Phi-3's ``gate_up_proj`` is
    ``LLaMAMLP``'s fc_1 and fc_2, a ``LoRALinear`` each. Every other target is one ``LoRALinear``, as PEFT's."""
    enable = req.lora.enable_lora if req.uses_adapter else None
    fused = [m for m in plan.targets if m.leaf in FUSED_QKV]
    if enable is not None and not fused:
        raise PlanError(("lora", "enable_lora"), "chooses parts of a fused q/k/v linear (query_key_value, qkv_proj) "
                        f"and this {arch.model_type} model's targets have none: name q_proj / k_proj / v_proj in "
                        "target_modules instead")
    parts = {m.name: [w for w, on in zip((arch.q_dim, *[(m.out_features - arch.q_dim) // 2] * 2),
                                         enable or (True,) * 3, strict=True) if on] for m in fused}
    halves = {m.name for m in plan.targets if m.leaf == FUSED_GATE_UP}
    trainable: list[TrainableTensor] = []
    for t in plan.trainable:
        module, _, kind = t.name.rpartition(".")
        if t.kind == "lora" and module in parts:
            rows = parts[module]
            shape = (t.shape[0] * len(rows), t.shape[1]) if kind == "lora_A" else (sum(rows), t.shape[1])
            trainable.append(replace(t, shape=shape))
        elif t.kind == "lora" and module in halves:
            shape = t.shape if kind == "lora_A" else (t.shape[0] // 2, t.shape[1])
            trainable += [replace(t, name=t.name.replace(FUSED_GATE_UP, fc), shape=shape) for fc in ("fc_1", "fc_2")]
        else:
            trainable.append(t)
    return replace(plan, trainable=trainable)


@dataclass(frozen=True)
class Shape:
    """One step's sizes: T = b·s tokens, ``a`` bytes per activation element (the weights' dtype under
    ``*-true`` precision, the autocast dtype under ``*-mixed``)."""

    b: int
    s: int
    a: int
    r: int
    dropout: bool
    quantized: bool  # bitsandbytes 4-bit base (MatMul4Bit keeps its input)
    full: bool  # every parameter trainable
    stream: int = 0  # bytes per element of the residual stream (0: ``a``); ``*-mixed``: fp32, as the fp32 embedding

    @property
    def t(self) -> int:
        return self.b * self.s


def _adapter(x: Shape, in_features: int, parts: int = 1) -> tuple[int, bool]:
    """(bytes a LoRA branch saves beyond its input, whether it saves the input tensor itself): with dropout the
    dropout output and its bool mask; the T×r product(s) of lora_A."""
    t, a = x.t, x.a
    own = (a * t * in_features + t * in_features) if x.dropout else 0
    return own + a * t * x.r * parts, not x.dropout


QKV_LEAVES = frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value"})
MLP_IN_LEAVES = frozenset({"gate_proj", "up_proj", "gate_up_proj", "fc1", "dense_h_to_4h"})
MLP_OUT_LEAVES = frozenset({"down_proj", "fc2", "dense_4h_to_h"})


def keeps_first_layer_input(leaf: str, block: Block, tg: Targets) -> bool:
    """Whether a frozen linear of the first layer gets an input that needs a gradient (so that its ``mm`` keeps
    the weight, or under autocast the weight's cast, for backward)."""
    if leaf in QKV_LEAVES:
        return False  # norm_1's output of the frozen embedding
    if block.parallel and leaf in MLP_IN_LEAVES:
        return False  # norm_1's (or norm_2's) output of the same block input
    if block.parallel and leaf in MLP_OUT_LEAVES:
        return tg.mlp  # gelu's output needs a gradient only through LoRA on fc
    return True


def _norm_saved(x: Shape, h: int, block: Block, *, old: bool) -> int:
    """Bytes one norm keeps for backward, its input included. ``LayerNorm`` (``native_layer_norm``): the input
    and fp32 mean and rstd per row, for the weight's gradient too. ``RMSNorm``: see the module docstring (plus
    ``x_normed`` for a trainable weight)."""
    t, a = x.t, x.stream or x.a  # a norm reads the residual stream (fp32 under autocast, which runs it in fp32)
    if block.layer_norm:
        return a * t * h + 8 * t
    norm = (a * t * h + a * t) if old else (4 * t * h + 4 * t)
    if x.full:  # weight * x_normed keeps x_normed for the weight's gradient
        norm += (a if old else 4) * t * h
    return norm


def layer_saved(arch: ArchSpec, x: Shape, tg: Targets, *, old: bool, layer: int, block: Block = LLAMA_BLOCK) -> int:
    """Bytes one litgpt ``Block`` keeps for backward (module docstring for the source of each term).

    A parallel block's norm_2 reads the block input that norm_1 already keeps (its fp32 mean and rstd are its own),
    or is norm_1 itself (``shared_attention_norm``); either way the first layer's MLP input, like its attention
    input, needs no gradient, so its LoRA dropouts keep no mask."""
    t, a, b, s = x.t, x.a, x.b, x.s
    h, inter, q, nh = arch.hidden_size, arch.intermediate_size, arch.q_dim, arch.num_attention_heads
    kv = arch.kv_dim if block.kv_dim is None else block.kv_dim
    norm = _norm_saved(x, h, block, old=old)
    # the first layer's input (a frozen embedding's output) needs no gradient: its norms keep nothing, and the
    # dropouts before lora_A have no backward (no mask); their outputs are still lora_A's saved inputs
    first = layer == 0 and not x.full
    if block.parallel:
        total = 0 if first else norm + (0 if block.shared_norm else 8 * t)
    else:
        norms = 4 if arch.model_type == "gemma2" else 2  # Gemma-2: post_attention_norm, post_mlp_norm
        total = norms * norm - (norm if first else 0)
    mlp_first = first and block.parallel  # the parallel MLP's input is norm_1's (or norm_2's) of the block input
    base_keeps_input = x.full or x.quantized
    # fused qkv linear
    parts = [q] * tg.query + [kv] * tg.key + [kv] * tg.value
    keep_n1 = base_keeps_input
    if parts:
        own, keeps = _adapter(x, h, len(parts))
        total += own - (t * h if first and x.dropout else 0)
        keep_n1 = keep_n1 or keeps
        if len(parts) < 3:
            total += a * t * sum(parts)  # the conv output, zero_pad's index_copy source
    # attention: q and k after RoPE (cat), v; MHA: the fused output kept by the v view
    gqa = kv != q
    total += 3 * a * t * q if gqa else a * t * (q + 2 * kv) + 2 * a * t * q
    eager = arch.attn_logit_softcapping
    if eager:
        total += (2 * a + 4) * b * nh * s * s  # tanh(scores), fp32 softmax, its cast (saved by probs @ v)
        keep_y = base_keeps_input
    else:
        total += a * t * q  # flash output (o_proj's input is a view of it)
        sliding = not old and arch.model_type in SLIDING_WINDOW_TYPES  # 8641822 has no sliding window
        total += 4 * b * nh * (-(-s // 32) * 32 if sliding else s)  # logsumexp (efficient kernel: rows of 32)
        if sliding:
            total += a * s * s  # the layer's (s, s) mask, saved by the memory-efficient kernel
        keep_y = False  # already counted
    if tg.projection:
        own, keeps = _adapter(x, q)
        total += own
        keep_y = keep_y or keeps
    total += a * t * q if keep_y and eager else 0
    if mlp_first and not tg.mlp:  # a frozen MLP on an input that needs no gradient: nothing to keep
        return total + a * t * h * keep_n1
    # MLP: LLaMAMLP's fc_1 and fc_2 (GptNeoxMLP's fc) read norm_2's output; proj reads the product (the gelu output)
    keep_n2, keep_prod = base_keeps_input, base_keeps_input
    if tg.mlp:
        own, keeps = _adapter(x, h)
        total += (1 if block.gelu_mlp else 2) * (own - (t * h if mlp_first and x.dropout else 0))
        keep_n2 = keep_n2 or keeps
        own, keeps = _adapter(x, inter)
        total += own
        keep_prod = keep_prod or keeps
    if block.shared_norm:  # one tensor read by qkv and fc
        total += a * t * h * (keep_n1 or keep_n2)
    else:
        total += a * t * h * keep_n1 + a * t * h * keep_n2
    total += a * t * inter * keep_prod
    # LLaMAMLP: fc_1 output, activation output, fc_2 output; GptNeoxMLP: fc's output (gelu's input)
    total += a * t * inter * (1 if block.gelu_mlp else 3)
    return total


def previous_step_inputs(arch: ArchSpec, x: Shape, tg: Targets, block: Block = LLAMA_BLOCK) -> int:
    """QLoRA with bitsandbytes ≤ 0.42: ``MatMul4Bit.forward`` keeps its input as a ctx attribute
    (``ctx.tensors = (A, B)``), which backward never releases, so the inputs live as long as the graph; litgpt's
    loop keeps the graph through its ``loss`` variable until the next step's ``chunked_cross_entropy`` returns.
    Through the next forward and loss, the previous step's 4-bit inputs that needed a gradient are alive: per layer
    norm_1's output, the attention output, norm_2's output and the MLP product; and the final norm's output
    (lm_head's input) — as many bytes as the first layer's norm_1 output, which needs no gradient and is not kept.
    A parallel block: norm_1's output (also the MLP's with a shared norm), the attention output, norm_2's output
    and gelu's; in the first layer the MLP's input needs no gradient, nor, without LoRA on the MLP, its output."""
    t, a, h, inter = x.t, x.a, arch.hidden_size, arch.intermediate_size
    n2 = 0 if block.shared_norm else h
    per_layer = a * t * (h + arch.q_dim + n2 + inter)
    first = a * t * ((n2 if block.parallel else 0) + (inter if block.parallel and not tg.mlp else 0))
    return arch.num_hidden_layers * per_layer - first


@dataclass(frozen=True)
class LitgptHead:
    """Bytes of the final norm, lm_head and loss (replacing the HF recipe's terms of ``ActivationModel``)."""

    saved: int  # final norm + lm_head inputs kept for backward
    loss_forward: int  # logits (this step's and the previous step's, or the full-FT copies) + saved CE outputs
    loss_backward: int  # at the start of backward: logits, the saved CE outputs and the first chunk's gradients
    block: int  # elements of the largest logits block (the allocator rule's feature)
    at_step: int  # the loop's ``logits`` variable, alive through ``optimizer.step()``


def head_terms(arch: ArchSpec, x: Shape, tg: Targets, *, old: bool, head_quantized: bool,
               block: Block = LLAMA_BLOCK) -> LitgptHead:
    """``ln_f`` → ``lm_head`` (per 128-position chunk for LoRA, whole for full fine-tuning) → Fabric's output
    conversion → ``chunked_cross_entropy``.

    Fabric's ``_FabricModule.forward`` (lightning ``fabric/wrappers.py``) passes the model's output through
    ``precision.convert_output`` — for ``bf16-true`` (``HalfPrecision``), ``*-mixed`` and ``BitsandbytesPrecision``
    a ``.to(torch.get_default_dtype())``: the loop receives **fp32** logits (L = 4·T·V) while the model made them
    in the compute dtype (a·T·V, alive during the conversion). The loop's ``logits`` variable holds them through
    backward and ``optimizer.step()`` and until the next step's forward has returned, so at the end of a forward
    the previous step's fp32 logits, this step's and their compute-dtype originals are alive together.

    LoRA: the cross-entropy runs per chunk on the fp32 logits and keeps each chunk's fp32 ``log_softmax`` output
    (L in total); backward starts with both plus one chunk's two gradients (NLL's and log_softmax's, fp32). A 4-bit
    lm_head (QLoRA) dequantizes its V×h weight for every chunk, forward and backward (bitsandbytes ≤ 0.42).
    Full fine-tuning: the ``[..., :-1, :]`` reshape copy (b > 1) and the saved log_softmax outputs beside the
    logits at the loss; in backward the chunk gradients, their concatenation and the slice's gradient (3·L), all
    before lm_head's backward, so lm_head's weight gradient does not exist yet (``head_grad_at_loss`` False).
    """
    t, a, b, h, v = x.t, x.a, x.b, arch.hidden_size, arch.vocab_size
    saved = _norm_saved(x, h, block, old=old)
    keep_input = x.full or head_quantized
    if tg.head:
        own, keeps = _adapter(x, h)
        saved += own
        keep_input = keep_input or keeps
    saved += a * t * h * keep_input
    made = a * t * v  # the model's logits, in the compute dtype
    logits = 4 * t * v  # after Fabric's conversion to fp32
    converting = made if a != 4 else 0  # the originals alive while the fp32 copies are made (none when fp32)
    if x.full:
        copy = 4 * b * (x.s - 1) * v if b > 1 else 0
        return LitgptHead(saved=saved, loss_forward=max(2 * logits + converting, 2 * logits + copy),
                          loss_backward=3 * logits, block=t * v, at_step=logits)
    chunk = 4 * b * min(LM_HEAD_CHUNK, x.s) * v
    dequant = a * v * h if head_quantized else 0
    # forward end: previous + this step's fp32 logits + the originals (or, at the last chunk, lm_head's dequantized
    # weight); during the loss: the fp32 logits and the saved log_softmax outputs. Backward runs in reverse creation
    # order: every chunk's cross-entropy backward first (a chunk's log_softmax gradient is built while its NLL
    # gradient and saved output are alive), then the conversions back to the compute dtype, then lm_head's chunks
    # (a 4-bit weight dequantized again) beside the fp32 logits and the compute-dtype gradients (a·T·V).
    return LitgptHead(saved=saved, loss_forward=logits + max(logits + converting, made + dequant, logits),
                      loss_backward=max(2 * logits + 2 * chunk, logits + made + dequant),
                      block=b * min(LM_HEAD_CHUNK, x.s) * v, at_step=logits)
