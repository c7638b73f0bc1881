"""Training time and cost of a run: FLOPs per token, seconds per token on a GPU, hours and dollars.

Units: FLOPs are floating-point operations (a multiply-add is 2), per *training token* (one token of
one sequence going through forward and backward); GPU speed is dense bf16 TFLOP/s (10^12 FLOP/s,
``app/core/data/gpus.json``: vendor datasheet figures without sparsity); time in seconds and hours;
prices in USD per GPU-hour with the catalog's ``price_date``.

The model (all per token; sources in brackets):

- **Forward, matmuls**: ``2·N_active`` — a weight matrix with n entries costs n multiply-adds per token
  [Kaplan et al. 2020, "Scaling Laws for Neural Language Models", §2.1: C_forward ≈ 2N].
  ``N_active`` counts the weights that touch a token: every 2-D/3-D weight except embedding lookups;
  the output projection (``lm_head``) counts even when tied to the embedding (its matmul still runs);
  MoE expert weights count with the share ``top_k / num_experts`` (each token visits top-k experts)
  [Fedus et al. 2021, Switch Transformer: FLOPs per token follow the active, not the total, parameters].
  Norms, biases and activation functions are element-wise and ignored (< 0.1 %).
- **Backward, matmuls**: each matmul has two gradients of its forward's size: the activation gradient
  ``dX = dY·Wᵀ`` and the weight gradient ``dW = Xᵀ·dY`` [Kaplan et al. §2.1: backward ≈ 2× forward].
  Full fine-tuning: ``4·N_active``, so ``6·N`` per token in total. Frozen weights (LoRA, QLoRA, DoRA,
  QDoRA) skip the weight gradient but still pass the activation gradient down to the adapters below:
  ``2·N_active``. Trainable weights inside the frozen model (``modules_to_save`` copies, e.g. a trained
  ``lm_head``) add their ``2·n`` weight gradient.
- **Adapters**: LoRA A (r×in) and B (out×r) on a layer add ``2·r·(in+out)`` = 2 × their parameters
  to the forward and 4 × to the backward (both gradients) [Hu et al. 2021, LoRA, §4.1]. Adapters on
  MoE experts (``target_parameters``) count with the same top-k share. DoRA's magnitude vector is
  element-wise; its weight-norm cost is in the DoRA slowdown factor below instead.
- **Attention** (causal): ``QKᵀ`` and ``A·V`` cost ``2·d_q`` FLOPs per (query, key) pair each, with
  ``d_q = num_attention_heads·head_dim``; a causal query sees ``seq_len/2`` keys on average, so the
  forward is ``2·L·seq_len·d_q`` per token and the backward twice that [Chowdhery et al. 2022, PaLM,
  Appendix B: 6N + 12·L·H·Q·T for a non-causal sequence, halved for causal masking as FlashAttention's
  benchmarks count it]. Attention's backward is all activation gradients, so frozen weights do not
  shrink it. Grouped-query attention does not change it (every query head still attends).
- **Gradient checkpointing** recomputes each decoder layer's forward during the backward (transformers'
  ``gradient_checkpointing_enable`` wraps the decoder layers, not the ``lm_head``): one more
  ``2·N_layers + 2·A + attention forward``.

Time: ``seconds/token = FLOPs/token ÷ (num_gpus · bf16_tflops·10^12 · MFU) × slowdown``. MFU (model
FLOPs utilisation) is the fraction of the datasheet peak a real step reaches; 0.40 is a typical value
for well-tuned bf16 training of billion-parameter decoders on datacenter GPUs [Chowdhery et al. 2022,
PaLM Table 3: 46 % for PaLM 540B; Korthikanti et al. 2022: ~40–55 % with Megatron], and lower for small
models, small batches and consumer cards. Without an MFU from the caller each GPU takes its class's
(:data:`CLASS_MFU`, by the catalog's ``form``), or the median MFU measured by this server's finished
calibrations of that GPU when there are some (``measured_mfu``, see :func:`achieved_mfu`).
The slowdown factors (:data:`DEFAULT_SLOWDOWN`) cover the work MFU cannot
see: QLoRA/QDoRA dequantize the NF4 base weights to bf16 for every matmul, forward and backward
("roughly 30 % to 50 % slower than standard LoRA", the article after the QLoRA paper, Dettmers et al.
2023 → 1.4); DoRA recomputes the column norm ``‖W + ΔW‖`` of every adapted weight in every forward
(PEFT's ``lora_variant_dora`` docs: DoRA costs more than plain LoRA in training and is faster with
``lora_dropout=0``; 1.2 is this planner's planning default, not a measurement). QDoRA multiplies both.
Callers with measured factors (e.g. from calibration runs) pass ``slowdown``.

Cost: ``hours × num_gpus × price_usd_per_hour`` (price per GPU-hour).

Pure Python: imports neither torch nor FastAPI.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, Field

from app.core.adapters import AdapterPlan, plan_adapters
from app.core.catalog import Gpu, gpus
from app.core.generic import model_inventory
from app.core.inventory import Inventory
from app.core.request import LoraSpec, Method, PlanRequest

DEFAULT_TOKENS = 100_000_000
"""Training tokens of the time/cost table when the caller gives none (100M: a mid-sized SFT run)."""

DEFAULT_MFU = 0.40
"""Model FLOPs utilisation: achieved ÷ datasheet dense bf16 FLOP/s (see the module docstring)."""

MIN_MFU = 0.001
"""Lowest MFU a caller may give (0.1%, far below any real training run): above it tokens/s stays a positive
float, so hours stay finite for any ``tokens`` up to 10^16 (an MFU of 5e-324 underflowed tokens/s to 0)."""

CLASS_MFU: dict[str, float] = {"datacenter": DEFAULT_MFU, "workstation": 0.35, "consumer": 0.30}
"""MFU by GPU class (the catalog's ``form``). datacenter: :data:`DEFAULT_MFU`. workstation and consumer cards
are planning defaults, not measurements: their datasheet figures are boost-clock peaks that power and
thermal limits (300–575 W boards, blower or open-air coolers) do not sustain through a long run, and they
train at small micro-batches; calibrations of this server replace them per GPU."""

DEFAULT_SLOWDOWN: dict[str, float] = {"qlora": 1.4, "dora": 1.2}
"""Wall-clock factors over plain LoRA at equal FLOPs. qlora: 4-bit dequantization (article / QLoRA:
1.3–1.5 → 1.4). dora: weight-norm recomputation per step (planning default 1.2). qdora = qlora × dora."""


# --------------------------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class FlopCounts:
    """What decides FLOPs per token; all counts are parameters (elements) touched by one token.

    - ``layer_params``: weights in the decoder layers (checkpointed blocks) that multiply a token,
      MoE experts at their top-k share;
    - ``head_params``: the output projection (``lm_head``; vocab × hidden, tied or not);
    - ``adapter_params``: adapter weights that multiply a token (LoRA A and B; top-k share on experts);
    - ``trained_base_params``: base weights among those above that get a weight gradient (all of them
      in full fine-tuning; ``modules_to_save`` copies otherwise);
    - attention: ``num_layers`` decoder layers of query width ``q_dim`` (heads × head_dim) over
      ``seq_len`` tokens.
    """

    layer_params: float
    head_params: float
    adapter_params: float
    trained_base_params: float
    num_layers: int
    q_dim: int
    seq_len: int

    @property
    def active_params(self) -> float:
        """N_active: base weights that multiply one token (layers + lm_head)."""
        return self.layer_params + self.head_params


class FlopsPerToken(BaseModel):
    """Training FLOPs per token, by pass (floating-point operations; a multiply-add is 2)."""

    active_params: float = Field(description="N_active: base weights that multiply a token (MoE: top-k share)")
    adapter_params: float = Field(description="adapter weights that multiply a token")
    attention_forward: float = Field(description="causal attention scores and mixing, forward: 2·L·seq_len·d_q")
    forward: float = Field(description="2·N_active + 2·adapters + attention_forward")
    backward: float = Field(description="activation gradients 2·N_active (+ 2·N weight gradients for trained "
                            "weights) + 4·adapters + 2·attention_forward")
    recompute: float = Field(description="gradient checkpointing: one more forward of the decoder layers; 0 without")
    total: float = Field(description="forward + backward + recompute")


def flops_per_token(counts: FlopCounts, *, gradient_checkpointing: bool) -> FlopsPerToken:
    """FLOPs of one training token (see the module docstring for each term and its source).

    >>> c = FlopCounts(layer_params=1e9, head_params=0, adapter_params=0, trained_base_params=1e9,
    ...                num_layers=1, q_dim=1, seq_len=0)
    >>> flops_per_token(c, gradient_checkpointing=False).total  # 6N for full fine-tuning
    6000000000.0
    """
    n = counts.active_params
    attn = 2.0 * counts.num_layers * counts.seq_len * counts.q_dim
    forward = 2.0 * n + 2.0 * counts.adapter_params + attn
    backward = 2.0 * n + 2.0 * counts.trained_base_params + 4.0 * counts.adapter_params + 2.0 * attn
    recompute = (2.0 * counts.layer_params + 2.0 * counts.adapter_params + attn) if gradient_checkpointing else 0.0
    return FlopsPerToken(active_params=n, adapter_params=counts.adapter_params, attention_forward=attn,
                         forward=forward, backward=backward, recompute=recompute,
                         total=forward + backward + recompute)


def inventory_of(req: PlanRequest) -> Inventory:
    """The request's model inventory (:func:`app.core.generic.model_inventory`)."""
    return model_inventory(req.model)[1]


@lru_cache(maxsize=256)
def _catalog_plan(model_id: str, lora_json: str, method: Method) -> AdapterPlan:
    """PEFT's adapter plan of a catalog model (cached: the page times five methods and every lever)."""
    return plan_adapters(model_inventory(model_id)[1], LoraSpec.model_validate_json(lora_json), method=method)


def _expert_share(inv: Inventory) -> float:
    a = inv.arch
    return a.num_experts_per_tok / a.num_experts if a.num_experts else 1.0


def flop_counts(req: PlanRequest, inv: Inventory | None = None, plan: AdapterPlan | None = None) -> FlopCounts:
    """:class:`FlopCounts` of a request from its model inventory and PEFT adapter plan.

    Raises :class:`~app.core.errors.PlanError` where the planner refuses the request (same rules as
    ``plan_adapters``, e.g. DoRA on fused MoE experts).
    """
    inv = inv or inventory_of(req)
    if plan is None:
        plan = (_catalog_plan(req.model, req.lora.model_dump_json(), req.method) if isinstance(req.model, str)
                else plan_adapters(inv, req.lora, method=req.method))
    share = _expert_share(inv)
    layer = head = 0.0
    for t in inv.tensors:  # tied lm_head included: the lookup is free, the output matmul is not
        if len(t.shape) < 2 or t.group == "embedding":
            continue
        n = t.numel * (share if t.group == "experts" else 1.0)
        if t.group == "lm_head":
            head += n
        else:
            layer += n
    adapters = trained_base = 0.0
    if req.method == "full":
        trained_base = layer + head
    else:
        for tt in plan.trainable:
            if tt.kind == "lora":
                adapters += tt.numel * (share if tt.group == "experts" else 1.0)
            elif tt.kind == "modules_to_save" and len(tt.shape) >= 2 and tt.group != "embedding":
                trained_base += tt.numel * (share if tt.group == "experts" else 1.0)
    a = inv.arch
    return FlopCounts(layer_params=layer, head_params=head, adapter_params=adapters,
                      trained_base_params=trained_base, num_layers=a.num_hidden_layers, q_dim=a.q_dim,
                      seq_len=req.training.seq_len)


def slowdown_for(method: Method, factors: Mapping[str, float] | None = None) -> float:
    """Wall-clock factor of ``method`` over plain LoRA at equal FLOPs (1.0 for full and lora).

    ``factors`` overrides :data:`DEFAULT_SLOWDOWN` per key (``qlora``, ``dora``, and optionally a
    measured ``qdora``; without it qdora = qlora × dora).
    """
    f = {**DEFAULT_SLOWDOWN, **(factors or {})}
    if method == "qlora":
        return f["qlora"]
    if method == "dora":
        return f["dora"]
    if method == "qdora":
        return f.get("qdora", f["qlora"] * f["dora"])
    return 1.0


# -------------------------------------------------------------------------------------- time and cost


def seconds_per_token(flops: float, bf16_tflops: float, *, mfu: float = DEFAULT_MFU, num_gpus: int = 1,
                      slowdown: float = 1.0) -> float:
    """Wall-clock seconds per training token: FLOPs ÷ (num_gpus · TFLOP/s · 10^12 · MFU) × slowdown."""
    if bf16_tflops <= 0 or mfu <= 0 or num_gpus < 1:
        raise ValueError("bf16_tflops and mfu must be positive and num_gpus at least 1")
    return flops / (num_gpus * bf16_tflops * 1e12 * mfu) * slowdown


MfuSource = Literal["given", "calibrated", "class"]


def mfu_for(g: Gpu, measured: Mapping[str, float] | None = None) -> tuple[float, MfuSource]:
    """The MFU a GPU gets without one from the caller: this server's measured one, else its class default."""
    if measured and g.id in measured:
        return measured[g.id], "calibrated"
    return CLASS_MFU.get(g.form, DEFAULT_MFU), "class"


def achieved_mfu(req: PlanRequest, tokens_per_second: float, g: Gpu) -> float:
    """MFU a measured run reached: FLOPs/token × tokens/s ÷ (num_gpus · bf16 TFLOP/s · 10^12), with the
    method's FLOPs (the QLoRA/DoRA slowdown then shows as a lower MFU; measure a 16-bit twin to avoid it)."""
    fl = flops_per_token(flop_counts(req), gradient_checkpointing=req.training.gradient_checkpointing)
    return fl.total * tokens_per_second / (req.hardware.num_gpus * g.bf16_tflops * 1e12)


class GpuCost(BaseModel):
    """Time and cost of the run on one catalog GPU type (``num_gpus`` cards of it)."""

    gpu: str = Field(description="catalog id")
    name: str
    num_gpus: int
    bf16_tflops: float = Field(description="datasheet dense bf16 TFLOP/s of one card")
    mfu: float = Field(DEFAULT_MFU, description="model FLOPs utilisation used for this GPU")
    mfu_source: MfuSource = Field("given", description="given (by the caller), calibrated (median of this "
                                  "server's calibrations of this GPU) or class (CLASS_MFU by the card's form)")
    tokens_per_second: float = Field(description="all cards together")
    hours: float = Field(description="wall-clock hours for `tokens`")
    gpu_hours: float = Field(description="hours × num_gpus")
    price_usd_per_hour: float | None = Field(description="per GPU-hour; null when the catalog has no price")
    price_date: str | None = Field(description="when the price was read (YYYY-MM); null for an override")
    price_source: str = Field(description="'catalog', 'override' or 'none'")
    cost_usd: float | None = Field(description="gpu_hours × price_usd_per_hour; null without a price")


class ThroughputReport(BaseModel):
    """Training time and cost of one run on the GPUs it fits."""

    method: Method
    tokens: int = Field(description="training tokens (all epochs)")
    mfu: float | None = Field(description="the MFU given for every GPU; null: each GPU's own (gpus[].mfu)")
    slowdown: float = Field(description="wall-clock factor applied for the method (1.0 for full/lora)")
    flops_per_token: FlopsPerToken
    total_flops: float = Field(description="flops_per_token.total × tokens")
    gpus: list[GpuCost] = Field(description="catalog GPUs the run fits on, fastest first")


def gpu_cost(g: Gpu, flops: float, tokens: int, *, mfu: float, num_gpus: int, slowdown: float,
             price_override: float | None = None, mfu_source: MfuSource = "given") -> GpuCost:
    """Hours and dollars for ``tokens`` on ``num_gpus`` cards of ``g`` (price per GPU-hour)."""
    s = seconds_per_token(flops, g.bf16_tflops, mfu=mfu, num_gpus=num_gpus, slowdown=slowdown)
    hours = tokens * s / 3600.0
    if price_override is not None:
        price, date, source = price_override, None, "override"
    elif g.price_usd_per_hour is not None:
        price, date, source = g.price_usd_per_hour, g.price_date, "catalog"
    else:
        price, date, source = None, None, "none"
    return GpuCost(gpu=g.id, name=g.name, num_gpus=num_gpus, bf16_tflops=g.bf16_tflops, mfu=mfu,
                   mfu_source=mfu_source, tokens_per_second=1.0 / s, hours=hours, gpu_hours=hours * num_gpus,
                   price_usd_per_hour=price, price_date=date, price_source=source,
                   cost_usd=None if price is None else hours * num_gpus * price)


def throughput(req: PlanRequest, fitting_gpus: Iterable[str] | None = None, *, tokens: int = DEFAULT_TOKENS,
               mfu: float | None = None, slowdown: Mapping[str, float] | None = None,
               prices: Mapping[str, float] | None = None,
               measured_mfu: Mapping[str, float] | None = None) -> ThroughputReport:
    """Time and cost of ``req`` for ``tokens`` training tokens on each GPU in ``fitting_gpus``.

    ``fitting_gpus``: catalog ids the run fits on (e.g. ``[f.gpu for f in result.fits if f.fits]``);
    None means every catalog GPU. The request's ``hardware.num_gpus`` cards work in data parallel
    (micro-batches side by side), so time divides by it and cost multiplies back. ``prices``
    overrides USD per GPU-hour by GPU id; ``slowdown`` overrides :data:`DEFAULT_SLOWDOWN`. ``mfu`` applies to
    every GPU; without it each GPU takes ``measured_mfu[gpu id]`` (this server's calibrations) or its class's.
    """
    if tokens < 1:
        raise ValueError("tokens must be at least 1")
    if mfu is not None and not MIN_MFU <= mfu <= 1:
        raise ValueError(f"mfu must be in [{MIN_MFU:g}, 1]")
    fl = flops_per_token(flop_counts(req), gradient_checkpointing=req.training.gradient_checkpointing)
    factor = slowdown_for(req.method, slowdown)
    table = gpus()
    ids = list(table) if fitting_gpus is None else [i for i in fitting_gpus if i in table]
    rows = []
    for i in ids:
        g_mfu, source = (mfu, "given") if mfu is not None else mfu_for(table[i], measured_mfu)
        rows.append(gpu_cost(table[i], fl.total, tokens, mfu=g_mfu, num_gpus=req.hardware.num_gpus,
                             slowdown=factor, price_override=(prices or {}).get(i), mfu_source=source))
    rows.sort(key=lambda r: r.hours)
    return ThroughputReport(method=req.method, tokens=tokens, mfu=mfu, slowdown=factor, flops_per_token=fl,
                            total_flops=fl.total * tokens, gpus=rows)


__all__ = [
    "CLASS_MFU",
    "DEFAULT_MFU",
    "DEFAULT_SLOWDOWN",
    "DEFAULT_TOKENS",
    "FlopCounts",
    "FlopsPerToken",
    "GpuCost",
    "ThroughputReport",
    "achieved_mfu",
    "flop_counts",
    "flops_per_token",
    "gpu_cost",
    "inventory_of",
    "mfu_for",
    "seconds_per_token",
    "slowdown_for",
    "throughput",
]
