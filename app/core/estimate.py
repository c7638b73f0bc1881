"""Assemble a full estimate: parameters, static memory, phases of a step, overhead, and what fits."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from functools import lru_cache
from typing import NamedTuple

from app.core.activations import ActivationModel, activation_model
from app.core.adapters import AdapterPlan, plan_adapters
from app.core.alloc_conf import parse_alloc_conf
from app.core.architectures import ArchSpec, attention_for
from app.core.catalog import gpu, gpus
from app.core.deepspeed import check as deepspeed_check
from app.core.deepspeed import zero3_buffers
from app.core.errors import PlanError
from app.core.fitted_activations import PeakFit, fit_note, fitted_phases, usable_fit
from app.core.frameworks import assumption as framework_assumption
from app.core.frameworks import framework
from app.core.generic import generic_key, model_inventory
from app.core.inventory import Inventory, build_inventory
from app.core.litgpt import check as litgpt_check
from app.core.litgpt import is_litgpt, litgpt_plan, with_default_targets
from app.core.overhead import cublas_workspace_bytes, outside_allocator_bytes
from app.core.precision import Dtypes, compute_dtypes, dtypes_for, fsdp_mixed_precision, fsdp_param_dtype
from app.core.quantization import constants_bits_per_param, nf4_bytes
from app.core.request import HardwareSpec, PlanRequest
from app.core.reserved import allocator_reserve, expandable_variant, reserve_features
from app.core.result import (
    AllocatorInfo,
    BreakdownItem,
    EstimateResult,
    GpuFit,
    Memory,
    ModelSummary,
    Parameters,
    PeakInfo,
    Phase,
    QuantizationReport,
)
from app.core.sharding import NO_ACCUMULATION, Accumulated, Gathered, accumulated_bytes, gathered_bytes, shard_static
from app.core.static_memory import StaticMemory, quantized_modules, static_memory
from app.core.switches import (
    activation_offload,
    check_switches,
    liger_activations,
    offload_static,
    switch_assumptions,
)
from app.core.torchtune import check_request as torchtune_check
from app.core.torchtune import in_bwd_last_step_bytes
from app.core.units import format_bytes
from app.core.versions import MODELLED_VERSIONS

PLANNER_VERSION = "0.1.0"


LITGPT_FIT = "activations from litgpt's own GPT and loop (app/core/litgpt.py), not a fit of the HF model"
"""What prices a litgpt run's activations when its weights come from the generic path (phi, GPT-NeoX, Falcon)."""
# transformers releases whose module trees the planner builds (PlanRequest.transformers_version)
TRANSFORMERS_RELEASES = {"5.24": "5.24.0", "4.57": "4.57"}
# torch releases whose optimizer step the planner models (PlanRequest.torch_version)
TORCH_RELEASES = {"2.13": "2.13.0", "2.0": "2.0 (foreach AdamW intermediates; the rest as 2.13.0)"}


def resolve_inventory(req: PlanRequest) -> tuple[str | None, Inventory]:
    """The hand-written rules' inventory (catalog ones cached; with the transformers 4.57 MoE layout when asked),
    or the registered one built from the real model for other model types (:mod:`app.core.generic`).

    litgpt's GPT never ties lm_head to the embedding: its ``scripts/convert_hf_checkpoint.py`` copies
    ``transformer.wte.weight`` into ``lm_head.weight`` when a checkpoint has none (Gemma, Llama 3.2), so both are
    separate tensors in training."""
    model_id, inv = model_inventory(req.model, legacy_moe=req.transformers_version == "4.57")
    if is_litgpt(req) and inv.arch.tie_word_embeddings:
        untied = replace(inv.arch, tie_word_embeddings=False)
        if inv.quantizable is None:
            return model_id, build_inventory(untied)
        # an inventory built from the real model: its tied lm_head weight becomes a tensor of its own
        inv = replace(inv, arch=untied, tensors=[replace(t, tied=False) if t.module in ("lm_head", "embed_out")
                                                 else t for t in inv.tensors])
    return model_id, inv


def _check_request(req: PlanRequest, arch: ArchSpec) -> None:
    hw = req.hardware
    if hw.sharding == "none" and hw.num_gpus > 1:
        raise PlanError(("hardware", "sharding"), "num_gpus > 1 needs a sharding: ddp, zero1, zero2, zero3 or fsdp")
    torchtune_check(req)
    deepspeed_check(req)
    # torchtune's NF4Tensor is itself an FSDP2-shardable parameter: no storage dtype to choose
    if (hw.sharding == "fsdp" and hw.num_gpus > 1 and req.quantized and req.training.framework != "torchtune"
            and not req.quantization.load_in_8bit
            and req.quantization.bnb_4bit_quant_storage == "uint8"):
        # torch fsdp/_flat_param.py _validate_tensors_to_flatten: "Must flatten tensors with uniform dtype"
        raise PlanError(("quantization", "bnb_4bit_quant_storage"),
                        "FSDP flattens each layer's parameters into one tensor of one dtype, so 4-bit weights "
                        "stored as uint8 cannot be sharded: set bnb_4bit_quant_storage to the model's dtype "
                        "(bfloat16, float16 or float32)")
    litgpt_check(req, arch)
    if not is_litgpt(req):  # litgpt runs its own attention
        attention_for(arch.model_type, req.training.attn_implementation)  # 422 where transformers refuses
    if arch.model_type == "gpt2" and req.training.seq_len > arch.n_positions:
        raise PlanError(
            ("training", "seq_len"),
            f"gpt2 has learned positions for at most {arch.n_positions} tokens, got {req.training.seq_len}",
        )


def _phases(static: dict[str, int], sm: StaticMemory, act: ActivationModel, workspace: int,
            gathered: Gathered, accumulated: Accumulated = NO_ACCUMULATION) -> list[Phase]:
    """Allocated bytes at each phase's high-water mark (steady step: optimizer states resident).

    forward: saved activations + the largest in-layer temporary; loss: + logits and loss buffers;
    backward: the start (gradient buffers of the loss) or a layer's backward with all gradients;
    optimizer: gradients + the optimizer's step temporary. With gradient accumulation the forward, loss and
    backward phases are those of a later micro-batch: ``accumulated`` gradients alive throughout.
    """
    resident = static["weights"] + static["constants"] + static["adapters"] + static["optimizer"] + workspace
    resident += static["zero3_buffers"]
    saved = act.saved_layers + act.saved_head
    acc, acc_new, acc_partition, acc_unsharded = accumulated
    comm = 0 if acc_unsharded else static["comm_buffers"]
    fwd = resident + gathered.forward + saved + act.cast_cache + act.forward_transient + acc
    loss = resident + gathered.loss + saved + act.cast_cache + act.loss_forward + acc
    # lm_head's weight gradient (full fine-tuning, a modules_to_save copy): made in lm_head's backward, beside what
    # is alive then (act.head_backward; the loss buffers when that is not modelled), kept through the layers'
    head_grads = sm.gradients.by_group.get("lm_head", 0) if static["gradients"] and act.head_grad_at_loss else 0
    # Without checkpointing, saved activations are freed layer by layer while gradients accumulate, so the
    # backward peak is at its start or at its end; with checkpointing a recomputed layer adds to either. With
    # accumulated gradients every gradient exists from the start, and a new one waits beside its accumulated one
    # (lm_head's at the start; at the end the embedding's, beside a tied embedding's two parts and their sum).
    at_head = act.loss_backward if act.head_backward is None else act.head_backward
    layer = act.backward_layer + act.backward_transient - act.head_weight_cast
    start = saved + acc + max(max(act.loss_backward, head_grads + at_head) + gathered.backward_edge,
                              layer + (0 if acc else head_grads) + gathered.backward)
    embedding_new = sm.gradients.by_group.get("embedding", 0) if acc_new else 0
    end = max(static["gradients"], acc) + acc_partition + max(act.backward_layer + act.backward_transient,
                                                              act.tied_embedding_grad + embedding_new, acc_new)
    bwd = resident + comm + max(start, end + gathered.backward_edge)
    opt = (resident + gathered.optimizer + static["gradients"] + static["step_comm_buffers"]
           + static["step_transient"] + act.at_step)
    bwd_grads = max(static["gradients"], acc) if end > start else acc + head_grads
    return [Phase(name="forward", bytes=fwd, gradient_bytes=acc), Phase(name="loss", bytes=loss, gradient_bytes=acc),
            Phase(name="backward", bytes=bwd, gradient_bytes=bwd_grads),
            Phase(name="optimizer", bytes=opt, gradient_bytes=static["gradients"])]


def _breakdown(sm: StaticMemory, act: ActivationModel, peak_phase: str, activations: int,
               context: int, reserve: AllocatorInfo, workspace: int, gathered: int,
               zero3: int) -> list[BreakdownItem]:
    items: list[BreakdownItem] = []
    for component, bucket in (("weights", sm.weights), ("quantization_constants", sm.constants),
                              ("adapter", sm.adapters), ("gradients", sm.gradients),
                              ("optimizer", sm.optimizer)):
        for group, nbytes in bucket.by_group.items():
            if nbytes or bucket.params[group]:
                items.append(BreakdownItem(key=f"{component}/{group}", bytes=nbytes,
                                           params=bucket.params[group] or None, dtype=bucket.dtype.get(group)))
    if sm.paged_optimizer_bytes:
        items.append(BreakdownItem(key="optimizer/paged", bytes=sm.paged_optimizer_bytes,
                                   note="CUDA unified memory (cudaMallocManaged): outside the allocator and peak"))
    items.append(BreakdownItem(key=f"activations/{peak_phase}", bytes=activations,
                               note="optimizer.step() temporaries at the peak (activations are freed by then)"
                               if peak_phase == "optimizer" else "activations and temporaries at the peak"))
    if gathered:
        items.append(BreakdownItem(key="sharding/gathered_parameters", bytes=gathered,
                                   note="inside peak: ZeRO-3/FSDP parameters gathered at the peak (unsharded)"))
    if zero3:
        items.append(BreakdownItem(key="sharding/zero3_buffers", bytes=zero3,
                                   note="inside peak: DeepSpeed ZeRO-3's reduce bucket and 16-bit gradient "
                                   "partitions, allocated for the whole run"))
    items.append(BreakdownItem(key="overhead/cublas_workspace", bytes=workspace, note="inside peak"))
    items.append(BreakdownItem(key="overhead/cuda_context", bytes=context,
                               note="outside peak (CUDA context; NCCL buffers when num_gpus > 1)"))
    items.append(BreakdownItem(key="overhead/allocator_reserve", bytes=reserve.reserve_bytes,
                               note=f"outside peak, inside reserved: {reserve.rule}"))
    return items


def _quant_report(inv: Inventory, req: PlanRequest, sm: StaticMemory) -> QuantizationReport | None:
    """bitsandbytes' double-quantization report (None for torchtune, whose NF4 is torchao's)."""
    if not req.quantized or req.quantization.load_in_8bit or req.training.framework == "torchtune":
        return None
    bs = req.quantization.blocksize
    no_dq = dq = data = 0
    names = set(quantized_modules(inv, req))
    for t in inv.unique_tensors():
        if t.module in names and not t.is_bias:
            no_dq += nf4_bytes(t.numel, blocksize=bs, double_quant=False).constants
            q = nf4_bytes(t.numel, blocksize=bs, double_quant=True)
            dq += q.constants
            data += q.data
    storage = data + (dq if req.quantization.bnb_4bit_use_double_quant else no_dq)
    return QuantizationReport(
        quantized_params=sm.quantized_params,
        bits_per_param_no_double_quant=constants_bits_per_param(blocksize=bs, double_quant=False),
        bits_per_param_double_quant=round(constants_bits_per_param(blocksize=bs, double_quant=True), 6),
        constants_bytes_no_double_quant=no_dq,
        constants_bytes_double_quant=dq,
        storage_bytes_4bit=storage,
        seed_claim=(
            "The article says double quantization cuts the constants 'from ~4GB to ~0.1GB'. The QLoRA paper's "
            f"figures are 32/{bs} = {32 / bs:.3f} → 8/{bs} + 32/({bs}·256) = "
            f"{constants_bits_per_param(blocksize=bs, double_quant=True):.3f} bits per parameter: for this model "
            f"{format_bytes(no_dq)} → {format_bytes(dq)} (about 4× less, not 40×)."
        ),
    )


def _assumptions(req: PlanRequest, dt: Dtypes, plan: AdapterPlan, inv: Inventory,
                 fit_note: str) -> list[str]:
    out = [
        "All memory figures are bytes per GPU; 'peak' predicts torch.cuda.max_memory_allocated() of a steady "
        "step (step ≥ 2, optimizer states resident, zero_grad(set_to_none=True)).",
        f"Weights loaded in {dt.weights}; compute in {dt.compute}"
        + (" under autocast." if dt.compute != dt.weights else "."),
        "Activation, loss and transient terms follow the tensors the real step keeps (checked against the trace "
        "engine: 50 cases within 2%, bench/trace_grid.py); attention is modelled as the CUDA kernels allocate.",
    ]
    if inv.generic_key is not None:
        out.append(f"{inv.arch.model_type} is outside the hand-written rules: its inventory, bitsandbytes modules "
                   f"and PEFT targets come from transformers' {inv.model_class} on the meta device and PEFT's "
                   f"get_peft_model (exact parameters and static bytes); {fit_note} (docs/generic-models.md).")
    if req.uses_adapter:
        out.append("PEFT adapters (LoRA A/B, DoRA magnitude) are fp32 (autocast_adapter_dtype=True, PEFT ≥ 0.12)."
                   if dt.adapters == "fp32" else
                   f"LoRA A/B are {dt.adapters} (cast by the framework), DoRA's magnitude {dt.magnitude}.")
        out.append(f"Adapted: {len(plan.targets)} modules, {len(plan.param_targets)} parameters (target_parameters).")
    if req.quantized:
        q = req.quantization
        if q.load_in_8bit:
            out.append("LLM.int8 base: int8 weights + fp32 row scales; lm_head, embeddings and norms unquantized.")
        else:
            out.append(
                f"bitsandbytes 4-bit {q.bnb_4bit_quant_type}, blocksize {q.blocksize}, double quant "
                f"{'on' if q.bnb_4bit_use_double_quant else 'off'}; every nn.Linear/Conv1D except lm_head is "
                + ("quantized, MoE experts and routers included (nn.Linear in transformers 4.57)."
                   if inv.legacy_moe
                   else "quantized; MoE experts (3-D parameters in transformers 5) and routers are not.")
            )
        out.append(
            "prepare_model_for_kbit_training upcasts non-quantized fp16/bf16 parameters to fp32."
            if dt.unquantized == "fp32" else "Non-quantized parameters stay in the load dtype (no fp32 upcast)."
        )
    if req.torch_version != "2.13":
        out.append(f"torch {req.torch_version}: the foreach AdamW step keeps two full-size intermediates per dtype "
                   "group (one since torch 2.1, pytorch/pytorch#104898); the rest of the step is modelled as torch "
                   "2.13.")
    if req.training.optim.startswith("paged_"):
        out.append("Paged optimizer states of tensors with ≥1e5 elements live in CUDA unified memory and are "
                   "not counted in peak or total (they can page out to host RAM).")
    out.append(framework_assumption(req))
    steps = req.training.gradient_accumulation_steps
    if steps > 1:
        fsdp_sync = (req.hardware.sharding == "fsdp" and req.hardware.num_gpus > 1
                     and req.training.framework != "torchtune")
        out.append(f"gradient_accumulation_steps {steps}: forward, loss and backward are those of a micro-batch after "
                   "the first, with the earlier micro-batches' gradients allocated"
                   + (" — unsharded on every GPU: the trainer runs FSDP's no_sync until the last micro-batch "
                      "(accelerate's sync_each_batch would keep them sharded)." if fsdp_sync else "."))
    if req.hardware.sharding != "none":
        out.append(f"{req.hardware.sharding} over {req.hardware.num_gpus} GPUs: static state partitioned as "
                   "DeepSpeed/FSDP do; activations are per GPU for the micro-batch.")
    if fsdp_mixed_precision(req):
        out.append(f"FSDP mixed precision (accelerate: MixedPrecision(param_dtype={dt.compute}, reduce_dtype="
                   f"{dt.compute})): forward and backward run on {dt.compute} copies of the fp32 shards.")
    elif fsdp_param_dtype(req):
        out.append(f"FSDP (accelerate: MixedPrecision(param_dtype={dt.compute})): fp32 adapters and fp32 "
                   f"non-quantized parameters are gathered and computed as {dt.compute} copies.")
    return out + switch_assumptions(req, inv.arch)


def _static_key(req: PlanRequest) -> str:
    """The request without the fields static memory does not depend on (batch, length, attention, GPUs)."""
    training = req.training.model_copy(update={"micro_batch_size": 1, "seq_len": 1, "gradient_checkpointing": True,
                                               "attn_implementation": None})
    return req.model_copy(update={"training": training, "hardware": HardwareSpec()}).model_dump_json()


class _Static(NamedTuple):
    """What an estimate needs that does not depend on batch, length, attention or GPUs."""

    model_id: str | None
    inv: Inventory
    plan: AdapterPlan
    sm: StaticMemory
    quant_report: QuantizationReport | None


def _static_parts_uncached(req: PlanRequest) -> _Static:
    model_id, inv = resolve_inventory(req)
    plan = plan_adapters(inv, req.lora, method=req.method)
    if is_litgpt(req):
        plan = litgpt_plan(plan, inv.arch, req)
    sm = static_memory(inv, plan, req, dtypes_for(req))
    return _Static(model_id, inv, plan, sm, _quant_report(inv, req, sm))


@lru_cache(maxsize=1024)
def _static_parts_cached(key: str) -> _Static:
    """Inventory, adapter plan and static bytes, shared by catalog requests that differ only in activation
    settings (the fit search varies micro_batch_size and seq_len). Cached values are never mutated."""
    return _static_parts_uncached(PlanRequest.model_validate_json(key))


_GENERIC_STATIC: OrderedDict[tuple[str, str], _Static] = OrderedDict()


def _static_parts(req: PlanRequest) -> _Static:
    if isinstance(req.model, str):
        return _static_parts_cached(_static_key(req))
    key = generic_key(req.model.config)
    if key is None:  # pasted configs of the rules are not cached: their keys could be a 1 MiB body each
        return _static_parts_uncached(req)
    # a generic model is cached under its config hash, like a catalog model under its id
    skey = (key, _static_key(req.model_copy(update={"model": "generic"})))
    if skey not in _GENERIC_STATIC:
        _GENERIC_STATIC[skey] = _static_parts_uncached(req)
        while len(_GENERIC_STATIC) > 1024:
            _GENERIC_STATIC.popitem(last=False)
    return _GENERIC_STATIC[skey]


def _allocator_info(req: PlanRequest, vocab_size: int, act: ActivationModel, activations: int, peak: int,
                    context: int) -> AllocatorInfo:
    """The caching allocator's reserve by the fitted rule (app/core/reserved.py), and with expandable segments."""
    config = parse_alloc_conf(req.hardware.pytorch_cuda_alloc_conf)
    features = reserve_features(req, vocab_size, act, activations, peak)
    checkpointed = req.training.gradient_checkpointing
    reserve = allocator_reserve(features, config, checkpointed)
    variant = expandable_variant(config)
    expandable = allocator_reserve(features, variant, checkpointed) if variant else reserve
    return AllocatorInfo(
        pytorch_cuda_alloc_conf=req.hardware.pytorch_cuda_alloc_conf, reserve_bytes=reserve.bytes,
        rule=reserve.rule, outside_allocator_bytes=context, expandable_segments_reserve_bytes=expandable.bytes,
        expandable_segments_saves_bytes=reserve.bytes - expandable.bytes,
    )


def estimate(req: PlanRequest) -> EstimateResult:
    """The full answer for one run. Raises :class:`PlanError` for input the planner cannot answer."""
    req = with_default_targets(req)  # litgpt's own default targets where none are given
    model_id, inv, plan, sm, quant_report = _static_parts(req)
    arch = inv.arch
    _check_request(req, arch)
    check_switches(req, arch)
    target_gpu = gpu(req.hardware.gpu)
    dt = dtypes_for(req)
    in_bwd_last = in_bwd_last_step_bytes(req, plan, dt, arch.tie_word_embeddings)
    static, host_states = offload_static(shard_static(sm, req, plan.trainable_params, arch.hidden_size,
                                                arch.num_hidden_layers, in_bwd_last), sm, req, plan.trainable_params)
    host_states += zero3_buffers(req, plan.trainable_params, arch.hidden_size).host * req.hardware.num_gpus
    run_dt = compute_dtypes(req, dt)  # FSDP mixed precision computes on 16-bit copies of the fp32 shards
    act = activation_model(inv, plan, req, run_dt, sum(static[k] for k in ("weights", "constants", "adapters",
                                                                           "optimizer")))
    act = liger_activations(act, inv, req, run_dt, plan.targets)
    act, host_activations = activation_offload(act, req, arch, run_dt)
    workspace = cublas_workspace_bytes(target_gpu.arch)
    gathered = gathered_bytes(inv, sm, req, dt)
    single = phases = _phases(static, sm, act, workspace, gathered)
    # litgpt trains its own GPT, modelled analytically whichever inventory gave the weights
    fit, own_bucket = (LITGPT_FIT, True) if is_litgpt(req) else usable_fit(inv.generic_key, req)
    if isinstance(fit, PeakFit):  # a model outside the rules whose activations were fitted from traces
        phases = fitted_phases(fit, req, static, workspace, gathered.at, single)
    accumulated = accumulated_bytes(static, sm, req)
    if accumulated.gradients:
        # a later micro-batch's phases: what the accumulated gradients add to each single-batch phase
        later = _phases(static, sm, act, workspace, gathered, accumulated)
        phases = [Phase(name=p.name, bytes=p.bytes + q.bytes - a.bytes, gradient_bytes=q.gradient_bytes)
                  for p, q, a in zip(phases, later, single, strict=True)]
    top = max(phases, key=lambda p: p.bytes)
    peak = top.bytes
    resident = sum(static[k] for k in ("weights", "constants", "adapters", "optimizer"))
    # everything else alive at the peak: activations, temporaries, cuBLAS workspaces, gathered ZeRO-3/FSDP
    # layers and communication buckets, so that the memory fields at the peak add up to peak and total
    activations = max(peak - resident - top.gradient_bytes, 0)
    context = outside_allocator_bytes(req.hardware.num_gpus)
    allocator = _allocator_info(req, arch.vocab_size, act, activations, peak, context)
    reserve = allocator.reserve_bytes
    total_params = inv.total_params
    all_params = total_params + plan.added_params
    if req.quantized and not req.quantization.load_in_8bit:
        # PEFT counts a Params4bit as numel·2 of its packed ((n+1)//2, 1) storage
        names = set(quantized_modules(inv, req))
        all_params += sum(1 for t in inv.unique_tensors() if t.module in names and not t.is_bias and t.numel % 2)
    trainable = plan.trainable_params
    fits = []
    for g in gpus().values():
        # each card has its own cuBLAS workspace size (32 MiB per handle on Hopper/Blackwell)
        card_total = peak - workspace + cublas_workspace_bytes(g.arch) + context + reserve
        headroom = g.vram_bytes - card_total
        fits.append(GpuFit(gpu=g.id, name=g.name, vram_bytes=g.vram_bytes, fits=headroom >= 0, headroom_bytes=headroom,
                           paged_on_gpu=headroom >= static["paged_optimizer"] if static["paged_optimizer"] else None))
    return EstimateResult(
        model=ModelSummary(id=model_id, model_type=arch.model_type, num_hidden_layers=arch.num_hidden_layers,
                           hidden_size=arch.hidden_size, vocab_size=arch.vocab_size, num_experts=arch.num_experts),
        parameters=Parameters(
            total=total_params,
            trainable=trainable,
            trainable_percent=round(100 * trainable / all_params, 6) if all_params else 0.0,
            all_params=all_params,
            adapter_params=plan.added_params,
            targeted_modules=len(plan.targets) + len(plan.param_targets),
        ),
        memory=Memory(
            weights=static["weights"],
            quantization_constants=static["constants"],
            adapter_weights=static["adapters"],
            gradients=static["gradients"],
            optimizer_states=static["optimizer"],
            paged_optimizer_states=static["paged_optimizer"],
            host_ram=host_states + host_activations,
            activations=activations,
            peak=peak,
            reserved=peak + reserve,
            overhead=context + reserve,
            total=peak + context + reserve,
        ),
        peak=PeakInfo(phase=top.name, phases=phases,
                      provisional=inv.generic_key is not None and not (isinstance(fit, PeakFit) and own_bucket)
                      and fit != LITGPT_FIT),
        breakdown=_breakdown(sm, act, top.name,
                             activations - workspace - gathered.at(top.name) - static["zero3_buffers"],
                             context, allocator, workspace, gathered.at(top.name), static["zero3_buffers"]),
        quantization=quant_report,
        fits=fits,
        allocator=allocator,
        assumptions=_assumptions(req, dt, plan, inv, LITGPT_FIT if fit == LITGPT_FIT else fit_note(fit, own_bucket)),
        versions={"planner": PLANNER_VERSION, **{f"models_{k}": v for k, v in MODELLED_VERSIONS.items()},
                  "models_transformers": TRANSFORMERS_RELEASES[req.transformers_version],
                  "models_torch": TORCH_RELEASES[req.torch_version],
                  "models_framework": f"{req.training.framework}: {framework(req).release}"},
    )
