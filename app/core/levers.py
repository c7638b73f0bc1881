""""Make it fit": the levers that change a plan's memory answer, each with its resulting total and its price.

For one request and a per-GPU budget (default: ``hardware.gpu``'s VRAM), every lever is a small change of
the request, and its ``total_bytes`` is ``estimate(lever.request).memory.total``: the same number the fit
verdict compares with the card (tests/test_levers.py checks that for every lever). The searches for the
largest seq_len, micro-batch and r, and the smallest ZeRO-3 group, are :mod:`app.core.fit`'s own.

Levers, from the cheapest in fidelity and speed to the most expensive:

- ``no_fp32_upcast``: ``quantization.prepare_kbit = false`` (QLoRA/QDoRA): PEFT's
  ``prepare_model_for_kbit_training`` casts every non-quantized fp16/bf16 parameter (embeddings, norms,
  an untied lm_head, fused MoE experts) to fp32 (peft/utils/other.py); without it they stay 16-bit.
- ``use_liger_kernel``: Liger-Kernel's fused linear cross-entropy (no logits), RMSNorm and SwiGLU/GeGLU kernels
  (``app.core.switches``); offered under the HF-Trainer-based frameworks, whose ``use_liger_kernel`` /
  ``enable_liger_kernel`` / ``liger_kernel`` settings apply them (Unsloth has its own kernels). It is dropped
  where it saves nothing (a model type Liger has no kernels for).
- ``gradient_checkpointing``: on: keeps each decoder layer's input and recomputes the rest in the backward.
- ``activation_offloading``: TRL's ``SFTConfig.activation_offloading`` (``trl/models/activation_offloading.py``):
  saved activations go to host RAM in the forward and come back per layer in the backward.
- ``offload_optimizer`` / ``offload_param``: DeepSpeed ZeRO-Offload / ZeRO-Infinity (``zero_optimization``
  ``offload_optimizer`` / ``offload_param``) or FSDP ``CPUOffload(offload_params=True)`` on a run that already
  shards; the optimizer step runs on the CPU.
- ``optim_8bit`` / ``optim_paged_8bit``: bitsandbytes ``adamw_bnb_8bit`` / ``paged_adamw_8bit``
  (8-bit blockwise states, Dettmers et al. 2022; paged states live in CUDA unified memory).
- ``seq_len``, ``micro_batch_size`` (a divisor of the current one, ``gradient_accumulation_steps`` multiplied to
  keep the batch), ``r``: the largest value that fits, from :func:`app.core.fit.max_seq_len` and friends.
- ``method``: LoRA instead of full fine-tuning; QLoRA (QDoRA for DoRA) instead of a 16-bit base.
- ``zero3`` / ``fsdp``: the fewest cards of the same GPU (2, 4, …, 64) whose per-GPU total fits with ZeRO-3
  (:func:`app.core.fit.smallest_group`), and FSDP at that count when it fits there too.
- ``gpu``: the cheapest catalog card (rental price, else VRAM) on which the plan fits as it is.
- ``combined``: when no single lever fits, the cheap switches above applied together (then the
  largest seq_len of the combination).

A lever that moves bytes to host memory says how much more host RAM the run then needs (``memory.host_ram``).

Each lever's ``time_factor`` is the modelled wall-clock ratio (``app.core.throughput``: FLOPs, MFU, the
QLoRA/DoRA slowdown, cards) of the changed plan over the current one on their GPUs.

Pure Python: imports neither torch nor FastAPI.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.core.catalog import gpu as catalog_gpu
from app.core.catalog import gpus
from app.core.errors import PlanError
from app.core.estimate import estimate
from app.core.fit import max_lora_r, max_micro_batch_size, max_seq_len, smallest_group
from app.core.request import PlanRequest
from app.core.result import EstimateResult
from app.core.throughput import throughput
from app.core.units import format_bytes

CostKind = Literal["speed", "fidelity", "money", "memory"]


class Lever(BaseModel):
    """One change of the plan and what it gives and costs. Bytes are per GPU."""

    id: str = Field(description="e.g. 'no_fp32_upcast', 'seq_len', 'zero3', 'gpu', 'combined'")
    title: str = Field(description="what to do, in words")
    changes: dict[str, Any] = Field(description="request paths → new values, e.g. {'training.seq_len': 2048}")
    request: PlanRequest = Field(description="the plan with the changes applied")
    total_bytes: int = Field(description="estimate(request).memory.total, bytes per GPU")
    budget_bytes: int = Field(description="what total_bytes is compared with (the lever's GPU's VRAM or the budget)")
    fits: bool = Field(description="total_bytes <= budget_bytes")
    saves_bytes: int = Field(description="current total - total_bytes (per GPU)")
    paged_optimizer_bytes: int = Field(0, description="paged optimizer state in CUDA unified memory, bytes")
    cost_kind: CostKind = Field(description="what the lever costs: speed, fidelity, money or (paged) memory")
    cost: str = Field(description="the cost in words, with figures")
    time_factor: float | None = Field(
        None, description="modelled wall-clock time of the changed plan ÷ the current one; null when not modelled")


class LeversResult(BaseModel):
    """GET/POST /api/v1/levers' response."""

    current_total_bytes: int
    budget_bytes: int
    current_fits: bool
    levers: list[Lever] = Field(description="levers that lower the total (or move the run to a card that holds "
                                "it), those that fit first")


def _set(req: PlanRequest, changes: dict[str, Any]) -> PlanRequest:
    """``req`` with dotted paths replaced ('method', 'training.seq_len', ...), validated again."""
    body = req.model_dump(mode="json")
    for path, value in changes.items():
        node = body
        *parents, last = path.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    if isinstance(req.model, str):
        return PlanRequest.model_validate(body)
    return PlanRequest.model_validate({**body, "model": req.model})


def _hours(req: PlanRequest) -> float | None:
    try:
        rows = throughput(req, [req.hardware.gpu]).gpus
    except (PlanError, ValueError):
        return None
    return rows[0].hours if rows else None


def _percent(factor: float) -> str:
    return f"{(factor - 1) * 100:+.0f} % time"


class _Builder:
    def __init__(self, req: PlanRequest, current: EstimateResult, budget: int) -> None:
        self.req, self.current, self.budget = req, current, budget
        self.hours = _hours(req)
        self.levers: list[Lever] = []

    def lever(self, lever_id: str, title: str, changes: dict[str, Any], cost_kind: CostKind, cost: str,
              budget: int | None = None) -> Lever | None:
        try:
            new = _set(self.req, changes)
            result = estimate(new)
        except (PlanError, ValueError):
            return None
        total = result.memory.total
        limit = self.budget if budget is None else budget
        if total >= self.current.memory.total and budget is None:
            return None  # changes nothing for the better
        hours = _hours(new)
        factor = hours / self.hours if hours is not None and self.hours else None
        if factor is not None and cost_kind == "speed" and "%" not in cost:
            cost = f"{cost} ({_percent(factor)})"
        host = result.memory.host_ram - self.current.memory.host_ram
        if host > 0:
            cost = f"{cost}; {format_bytes(host)} more host RAM (memory.host_ram)"
        out = Lever(id=lever_id, title=title, changes=changes, request=new, total_bytes=total, budget_bytes=limit,
                    fits=total <= limit, saves_bytes=self.current.memory.total - total,
                    paged_optimizer_bytes=result.memory.paged_optimizer_states, cost_kind=cost_kind, cost=cost,
                    time_factor=None if factor is None else round(factor, 4))
        self.levers.append(out)
        return out


def _switches(req: PlanRequest) -> list[tuple[str, str, dict[str, Any], CostKind, str]]:
    """The on/off levers that apply to ``req``: (id, title, changes, cost kind, cost)."""
    out: list[tuple[str, str, dict[str, Any], CostKind, str]] = []
    t = req.training
    if req.quantized and req.quantization.prepare_kbit:
        out.append(("no_fp32_upcast", "Skip the fp32 upcast of prepare_model_for_kbit_training",
                    {"quantization.prepare_kbit": False}, "fidelity",
                    "the weights bitsandbytes leaves unquantized (embeddings, norms, lm_head, fused MoE experts) "
                    "stay 16-bit instead of fp32: PEFT upcasts them for numerical stability"))
    if not t.use_liger_kernel and t.framework != "unsloth":
        out.append(("use_liger_kernel", "Turn on Liger kernels (use_liger_kernel)",
                    {"training.use_liger_kernel": True}, "speed",
                    "the liger-kernel package's Triton kernels (CUDA) replace the loss, RMSNorm and SwiGLU/GeGLU: "
                    "the same math in other kernels; their speed is not in the time model"))
    if not t.gradient_checkpointing:
        out.append(("gradient_checkpointing", "Turn on gradient checkpointing",
                    {"training.gradient_checkpointing": True}, "speed",
                    "each decoder layer's forward runs again in the backward"))
    if not t.activation_offloading and t.framework == "trl":
        out.append(("activation_offloading", "Offload saved activations to CPU (SFTConfig.activation_offloading)",
                    {"training.activation_offloading": True}, "speed",
                    "saved activations cross PCIe twice per step on a side stream (not in the time model)"))
    if t.optim in ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit", "lion_32bit", "adafactor"):
        out.append(("optim_8bit", "Use the 8-bit AdamW of bitsandbytes (optim=adamw_bnb_8bit)",
                    {"training.optim": "adamw_bnb_8bit"}, "fidelity",
                    "optimizer moments stored in 8 bits per block of 256 (Dettmers et al. 2022 report parity "
                    "with 32-bit Adam)"))
    hw = req.hardware
    if hw.sharding in ("zero1", "zero2", "zero3") and hw.offload_optimizer == "none":
        out.append(("offload_optimizer", "Offload the optimizer to CPU (DeepSpeed ZeRO-Offload)",
                    {"hardware.offload_optimizer": "cpu"}, "speed",
                    "DeepSpeedCPUAdam steps on the CPU and gradients cross PCIe every step (not in the time model)"))
    if (hw.sharding == "zero3" and hw.offload_param == "none") or (hw.sharding == "fsdp"
                                                                  and hw.offload_optimizer == "none"):
        name = "DeepSpeed ZeRO-Infinity" if hw.sharding == "zero3" else "FSDP CPUOffload"
        out.append(("offload_param", f"Offload parameters and optimizer to CPU ({name})",
                    {"hardware.offload_param": "cpu", "hardware.offload_optimizer": "cpu"}, "speed",
                    "every layer's parameters cross PCIe in each forward and backward and the optimizer steps on "
                    "the CPU (not in the time model)"))
    if t.optim != "paged_adamw_8bit":
        out.append(("optim_paged_8bit", "Use paged 8-bit AdamW (optim=paged_adamw_8bit)",
                    {"training.optim": "paged_adamw_8bit"}, "memory",
                    "large optimizer states move to CUDA unified memory: on the GPU while there is room, in host "
                    "RAM otherwise, and slow when evicted"))
    if req.method == "full":
        out.append(("method_lora", "Train LoRA adapters instead of every weight", {"method": "lora"}, "fidelity",
                    f"trains r = {req.lora.r} adapters on the targeted modules instead of all parameters"))
    if req.method in ("full", "lora", "dora"):
        target, label = ("qdora", "QDoRA") if req.method == "dora" else ("qlora", "QLoRA")
        out.append((f"method_{target}", f"Quantize the base to 4-bit NF4 ({label})",
                    {"method": target}, "speed",
                    "4-bit base weights dequantized for every matmul (slower) and a small quantization error"))
    return out


def _searched(search: Callable[[], int | None]) -> int | None:
    """A fit search's answer, or None where the planner refuses a probe (that lever is then left out)."""
    try:
        return search()
    except PlanError:
        return None


def levers(req: PlanRequest, budget_bytes: int | None = None) -> LeversResult:
    """Every lever for ``req`` against ``budget_bytes`` per GPU (default: hardware.gpu's VRAM).

    Raises :class:`PlanError` when ``req`` itself is refused (as ``estimate`` does).
    """
    current = estimate(req)
    budget = catalog_gpu(req.hardware.gpu).vram_bytes if budget_bytes is None else budget_bytes
    b = _Builder(req, current, budget)
    t = req.training
    switches = _switches(req)
    for lever_id, title, changes, kind, cost in switches:
        b.lever(lever_id, title, changes, kind, cost)

    short = current.memory.total > budget  # the searches can only find smaller values when the plan is short
    seq = _searched(lambda: max_seq_len(req, budget).value) if short else None
    if seq is not None and seq < t.seq_len:
        nice = max(seq - seq % 128, 1) if seq >= 256 else seq
        for value in dict.fromkeys((nice, seq)):
            if b.lever("seq_len", f"Shorten sequences to {value:,} tokens (seq_len)", {"training.seq_len": value},
                       "fidelity", f"sequences longer than {value:,} tokens must be truncated or split"):
                break
    # a smaller micro-batch accumulates: searched with accumulation on (its bytes do not depend on the step count)
    accumulating = _set(req, {"training.gradient_accumulation_steps": max(t.gradient_accumulation_steps, 2)})
    mbs = (_searched(lambda: max_micro_batch_size(accumulating, budget).value) if short and t.micro_batch_size > 1
           else None)
    if mbs is not None and mbs < t.micro_batch_size:
        d = max(k for k in range(1, mbs + 1) if t.micro_batch_size % k == 0)
        steps = t.micro_batch_size // d
        b.lever("micro_batch_size", f"Micro-batch {d} with gradient_accumulation_steps × {steps}",
                {"training.micro_batch_size": d,
                 "training.gradient_accumulation_steps": t.gradient_accumulation_steps * steps}, "speed",
                f"the same {t.micro_batch_size} sequences per optimizer step in {steps} smaller passes (smaller "
                "matmuls use the GPU less well; not in the time model)")
    if req.uses_adapter and short:
        r = _searched(lambda: max_lora_r(req, budget).value)
        if r is not None and r < req.lora.r:
            p2 = 1 << (r.bit_length() - 1)
            for value in dict.fromkeys((p2, r)):
                if b.lever("r", f"Lower the LoRA rank to r = {value}", {"lora.r": value}, "fidelity",
                           f"{value} instead of {req.lora.r} ranks per adapted matrix: less capacity"):
                    break

    if short:
        # the fewest ZeRO-3 cards (fit's search); FSDP, which shards the same states, at that count
        n = _searched(lambda: smallest_group(req, "zero3", budget)[0])
        if n is not None and n > req.hardware.num_gpus:
            g = catalog_gpu(req.hardware.gpu)
            price = f" at ${g.price_usd_per_hour:g}/GPU-h each" if g.price_usd_per_hour is not None else ""
            for sharding, name in (("zero3", "DeepSpeed ZeRO-3"), ("fsdp", "FSDP full shard")):
                changes: dict[str, Any] = {"hardware.num_gpus": n, "hardware.sharding": sharding}
                if sharding == "fsdp":  # DeepSpeed's bucket sizes do not apply to FSDP
                    buckets = ("reduce_bucket_size", "stage3_prefetch_bucket_size")
                    changes.update({f"hardware.{k}": "auto" for k in buckets if getattr(req.hardware, k) != "auto"})
                lv = b.lever(sharding, f"{n} × {g.name} with {name}", changes, "money",
                             f"{n} cards{price} and inter-GPU traffic for the sharded states")
                if sharding == "fsdp" and lv is not None and not lv.fits:
                    b.levers.remove(lv)  # FSDP needs more cards than ZeRO-3 here: the ZeRO-3 lever says enough

    fitting = [f for f in current.fits if f.fits]
    if fitting and not any(f.fits and f.gpu == req.hardware.gpu for f in current.fits):
        table = gpus()
        priced = [f for f in fitting if table[f.gpu].price_usd_per_hour is not None]
        pick = (min(priced, key=lambda f: (table[f.gpu].price_usd_per_hour, f.vram_bytes)) if priced
                else min(fitting, key=lambda f: f.vram_bytes))
        g = table[pick.gpu]
        what = (f"${g.price_usd_per_hour:g}/GPU-h to rent" if g.price_usd_per_hour is not None
                else "no rental price in the catalog")
        b.lever("gpu", f"Use {'the cheapest' if priced else 'the smallest'} card that holds it: {g.name}",
                {"hardware.gpu": g.id}, "money", what, budget=g.vram_bytes)

    if short and not any(lv.fits for lv in b.levers):
        _combined(b, switches)
    b.levers.sort(key=lambda lv: not lv.fits)
    return LeversResult(current_total_bytes=current.memory.total, budget_bytes=budget,
                        current_fits=current.memory.total <= budget, levers=b.levers)


def _combined(b: _Builder, switches: list[tuple[str, str, dict[str, Any], CostKind, str]]) -> None:
    """The switches applied one after another until the plan fits: first the ones that keep the method
    (no upcast, checkpointing, 8-bit optimizer), then the method changes (each replacing the previous one);
    if it still does not fit, the largest seq_len of that combination (a multiple of 128 where one fits)."""
    changes: dict[str, Any] = {}
    names: list[str] = []
    keep = [s for s in switches if not s[0].startswith(("method", "optim_paged"))]
    method = [s for s in switches if s[0].startswith("method")]

    def fits(ch: dict[str, Any]) -> bool | None:
        try:
            return estimate(_set(b.req, ch)).memory.total <= b.budget
        except PlanError:
            return None

    done = False
    for _, title, change, _, _ in keep:
        changes |= change
        names.append(title[0].lower() + title[1:])
        if (done := bool(fits(changes))):
            break
    before = len(names)
    for _, title, change, _, _ in [] if done else method:
        changes |= change
        del names[before:]
        names.append(title[0].lower() + title[1:])
        if (done := bool(fits(changes))):
            break
    if not done:
        try:
            seq = max_seq_len(_set(b.req, changes), b.budget).value
        except PlanError:
            return
        if seq is None or seq >= b.req.training.seq_len:
            return
        nice = seq - seq % 128 if seq >= 256 else seq
        changes["training.seq_len"] = nice
        names.append(f"seq_len {nice:,}")
    if len(names) < 2:
        return
    b.lever("combined", "Together: " + "; ".join(names), changes, "fidelity",
            "the costs of each change together (see them above)")


__all__ = ["Lever", "LeversResult", "levers"]
