"""Per-GPU bytes under data parallelism, DeepSpeed ZeRO and FSDP: the static state's shards, the parameters
gathered unsharded at each moment of the step, and what gradient accumulation keeps (pure Python).

Each rule names the source it follows (DeepSpeed ``runtime/zero/*.py`` at 38327e07f, torch ``distributed/fsdp``,
accelerate, torchtune); the FSDP terms were checked by running torch's FSDP on CPU against a fake process group
(bench/fsdp_trace.py). :func:`app.core.estimate.estimate` combines them into the step's phases.
"""

from __future__ import annotations

from typing import NamedTuple

from app.core.deepspeed import ZERO_PARAM_BYTES, reduce_bucket_elements, zero3_buffers, zero3_gathered
from app.core.inventory import Inventory
from app.core.precision import Dtypes, fsdp_mixed_precision
from app.core.request import PlanRequest
from app.core.static_memory import Bucket, StaticMemory
from app.core.torchtune import fsdp_gathered as torchtune_gathered


def shard_static(sm: StaticMemory, req: PlanRequest, trainable_params: int, hidden_size: int,
           num_layers: int, in_bwd_last: int = 0) -> dict[str, int]:
    """Per-GPU static bytes under data parallelism, DeepSpeed ZeRO and FSDP (full shard), N = num_gpus.

    - ddp: a full replica plus DDP's gradient buckets (``gradient_as_bucket_view=False``: one more copy
      of the gradients).
    - zero1/2/3 (DeepSpeed with bf16, ``runtime/zero/stage_1_and_2.py`` and ``stage3.py`` at 38327e07f): a
      trainable parameter keeps a bf16 copy (replicated in stages 1–2, partitioned in stage 3) and, partitioned,
      an fp32 master, an fp32 gradient and the optimizer's fp32 state; frozen weights are partitioned in stage 3
      only. Its bf16 gradient: stage 1 keeps every parameter's (replicated) and copies its partition's into
      ``grads_in_partition`` when it reduces; stage 2 (``partition_gradients``) copies each gradient into the
      reduce bucket, keeps only its partition's (``copy_grads_in_partition``) and drops the rest
      (``clear_grad_attribute``): 2Ψ/N; stage 3 keeps its 16-bit gradient partitions and its reduce bucket for
      the whole run (``zero3_buffers``, :func:`app.core.deepspeed.zero3_buffers`). Stages 1–2 add one reduce
      bucket in backward and the step (``reduce_bucket_size`` 16-bit elements). DeepSpeed's estimators
      (``estimate_zero2_model_states_mem_needs`` = 4Ψ + 16Ψ/N, ``estimate_zero3_…`` = 18Ψ/N) count stage 2's
      bf16 gradients whole, which its code does not keep.
    - fsdp (accelerate full shard, params kept in their loaded dtype): weights, adapters, gradients and
      optimizer states divided by N; quantization constants are not parameters and stay whole.

    Under FSDP and ZeRO the optimizer's step temporaries are those of the local shard (ZeRO: of the fp32
    partition); ``comm_buffers`` are gradient buckets alive in backward, and in the step too
    (``step_comm_buffers``) where they persist: DDP's buckets and ZeRO's reduce bucket do, FSDP's unsharded
    gradients are freed by their reduce-scatter.
    """
    n = req.hardware.num_gpus
    mode = req.hardware.sharding
    out = {"weights": sm.weights.total, "constants": sm.constants.total, "adapters": sm.adapters.total,
           "gradients": sm.gradients.total, "optimizer": sm.optimizer.total, "comm_buffers": 0, "zero3_buffers": 0,
           "paged_optimizer": sm.paged_optimizer_bytes, "step_transient": sm.optimizer_step_transient}

    def part(x: int) -> int:
        return -(-x // n)

    if req.training.optimizer_in_bwd:
        # torchtune register_optim_in_bwd_hooks (training/memory.py): one optimizer per parameter, stepped and
        # zeroed in the parameter's post-accumulate-grad hook. No gradient set and no step phase: what stays is a
        # tied embedding's gradient (the output projection's part waits for the embedding's); one parameter's
        # gradient and step temporary are a moment of a layer's backward (app/core/torchtune.py in_bwd_step_bytes);
        # the step phase is the embedding's step at the end of backward (in_bwd_last_step_bytes)
        out["gradients"] = sm.tied_gradient
        out["step_transient"] = in_bwd_last
    if mode == "ddp":
        out["comm_buffers"] = sm.gradients.total
    elif mode == "fsdp":
        # bitsandbytes' quantization constants live in each Params4bit's quant_state, not in a parameter:
        # FSDP flattens and shards parameters only, so every GPU keeps all constants. torchtune's NF4 weights are
        # torchao NF4Tensor parameters, which FSDP2's fully_shard splits with their scalers (nf4tensor.py
        # implements aten.split / new_zeros for it).
        keys = ["weights", "adapters", "gradients", "optimizer", "paged_optimizer"]
        if req.training.framework == "torchtune":
            keys.append("constants")
        for key in keys:
            out[key] = part(out[key])
        # the optimizer steps on the local shard: foreach temporaries are a shard's, not the model's
        out["step_transient"] = part(out["step_transient"])
        # a layer's unsharded gradients exist until its reduce-scatter (FlatParamHandle, FULL_SHARD), in the
        # mixed-precision reduce_dtype (16-bit) when the shards are fp32
        out["comm_buffers"] = layer_bytes(sm.gradients, num_layers)
        if fsdp_mixed_precision(req):
            out["comm_buffers"] = half_bytes(out["comm_buffers"])
        out["step_comm_buffers"] = 0
    elif mode.startswith("zero"):
        out["optimizer"] = part(8 * trainable_params + sm.optimizer_fp32_master_bytes)
        out["paged_optimizer"] = 0  # DeepSpeed keeps its own (fp32 master) optimizer states, counted above
        bf16_trainable = 2 * trainable_params
        out["adapters"] = 0
        out["weights"] = sm.weights.total - sm.trainable_base_bytes + bf16_trainable
        out["gradients"] = {"zero1": bf16_trainable, "zero2": part(bf16_trainable)}.get(mode, 0)
        if mode == "zero3":
            out["weights"] = part(out["weights"])  # quant_state constants are not partitioned (as FSDP)
        # the wrapped torch optimizer steps on this rank's flat fp32 partition of each parameter group
        out["step_transient"] = part(sm.optimizer_step_transient_fp32)
        if mode == "zero3":
            out["zero3_buffers"] = zero3_buffers(req, trainable_params, hidden_size).gpu
        else:
            out["comm_buffers"] = ZERO_PARAM_BYTES * reduce_bucket_elements(req, hidden_size)
            if mode == "zero1":  # the partition's copy in grads_in_partition, beside the replicated gradients
                out["comm_buffers"] += part(bf16_trainable)
    out.setdefault("step_comm_buffers", out["comm_buffers"])
    return out


def half_bytes(fp32_bytes: int) -> int:
    """Bytes of the 16-bit copies of fp32 tensors (FSDP mixed precision's all-gathered parameters and reduced
    gradients)."""
    return fp32_bytes // 2


def layer_bytes(bucket: Bucket, num_layers: int) -> int:
    """Bytes of one decoder layer in ``bucket``: everything but the embeddings and lm_head, over the layers."""
    outside = bucket.by_group.get("embedding", 0) + bucket.by_group.get("lm_head", 0)
    return (bucket.total - outside) // max(num_layers, 1)


class Gathered(NamedTuple):
    """Unsharded parameter bytes alive on a GPU (ZeRO-3 / FSDP, or parameters offloaded to the host) at each moment
    of the step (:func:`app.core.estimate._phases`)."""

    forward: int
    loss: int
    backward_edge: int  # the loss's gradient buffers and lm_head's backward; the first layer's, the last to run
    backward: int  # any other decoder layer's recompute and backward
    optimizer: int

    @classmethod
    def constant(cls, nbytes: int) -> Gathered:
        return cls(nbytes, nbytes, nbytes, nbytes, nbytes)

    def at(self, phase: str) -> int:
        """The bytes of ``phase`` (the backward phase: its layer moments, the most)."""
        return {"forward": self.forward, "loss": self.loss, "backward": max(self.backward_edge, self.backward),
                "optimizer": self.optimizer}[phase]


NONE_GATHERED = Gathered.constant(0)


def gathered_bytes(inv: Inventory, sm: StaticMemory, req: PlanRequest, dt: Dtypes) -> Gathered:
    """Unsharded parameter bytes alive at once on a GPU under ZeRO-3 or FSDP (num_gpus > 1).

    - FSDP (accelerate FULL_SHARD, transformer-layer auto wrap, BACKWARD_PRE prefetch, limit_all_gathers; torch
      ``fsdp/_runtime_utils.py``): the root unit (embeddings, lm_head, final norm) is unsharded in the root's
      pre-forward and not resharded after forward (the root keeps its parameters for backward); a decoder layer is
      unsharded for its forward and resharded after it (no forward prefetch); at the loss only the root is; the
      root's pre-backward hook prefetches the last layer, so the loss's gradients meet the root and one layer; from
      then on a layer's backward (and its recompute) runs beside the prefetched next one: two layers, except the
      first layer's, the last to run, with nothing left to prefetch; the final callback reshards everything before
      ``optimizer.step()``. Each unit's weights as stored and adapters;
      quantized layers gather their packed 4-bit storage (``bnb_4bit_quant_storage`` dtype, same bytes). Checked by
      running FSDP1 itself on CPU against a fake process group (bench/fsdp_trace.py).
    - torchtune's FSDP2 (:func:`app.core.torchtune.fsdp_gathered`) and ZeRO-3
      (:func:`app.core.deepspeed.zero3_gathered`: a layer or the largest module, plus the prefetch bucket): the same
      bytes throughout the step.
    """
    offloaded = req.hardware.offload_param == "cpu"  # parameters gathered from host memory, even on one GPU
    if (req.hardware.num_gpus < 2 and not offloaded) or req.hardware.sharding not in ("zero3", "fsdp"):
        return NONE_GATHERED
    arch = inv.arch
    if req.hardware.sharding == "fsdp":
        root = sm.weights.by_group.get("embedding", 0) + sm.weights.by_group.get("lm_head", 0)
        layer = layer_bytes(sm.weights, arch.num_hidden_layers) + sm.adapters.total // max(arch.num_hidden_layers, 1)
        if req.training.framework == "torchtune":
            return Gathered.constant(torchtune_gathered(req, sm.weights.by_group, layer))
        if fsdp_mixed_precision(req):  # all-gathered in param_dtype: 16-bit copies of the fp32 shards
            root, layer = half_bytes(root), half_bytes(layer)
        return Gathered(forward=root + layer, loss=root, backward_edge=root + layer, backward=root + 2 * layer,
                        optimizer=0)
    return Gathered.constant(zero3_gathered(inv, req))


class Accumulated(NamedTuple):
    """Gradient bytes per GPU that a micro-batch after the first of an accumulation window runs beside."""

    gradients: int  # the earlier micro-batches' gradients: alive through forward, loss and backward
    transient: int  # one tensor's new gradient, before it is added in place to the accumulated one
    partition: int = 0  # ZeRO-2: the micro-batch's own gradient partition, beside the accumulated one in backward
    # FSDP no_sync: the accumulated unsharded gradients are what each layer's reduce-scatter reads (then frees), so
    # the layer's unsharded-gradient buffer (``comm_buffers``) is not one more
    unsharded: bool = False


NO_ACCUMULATION = Accumulated(0, 0)


def accumulated_bytes(static: dict[str, int], sm: StaticMemory, req: PlanRequest) -> Accumulated:
    """What ``training.gradient_accumulation_steps`` > 1 keeps alive (bytes per GPU).

    The first micro-batch runs as a single-batch step (no gradients yet, ``zero_grad(set_to_none=True)``); every
    later one runs with the accumulated gradients, and its backward computes each tensor's new gradient beside the
    old one before ``AccumulateGrad`` adds it in place (torch ``csrc/autograd/functions/accumulate_grad.h``: the
    first gradient is stolen, later ones go through ``variable_grad += new_grad``): the largest trainable tensor's.

    - Under FSDP, HF Trainer (``_inner_training_loop``: ``accelerator.no_sync`` on every micro-batch but the last
      one, unless DeepSpeed or accelerate's ``sync_each_batch``) and litgpt (Fabric ``no_backward_sync``, which
      calls FSDP's ``no_sync``) skip the reduce-scatter, so the whole model's gradients accumulate unsharded on
      every GPU (torch ``FullyShardedDataParallel.no_sync``: "FSDP will accumulate the full model gradients
      (instead of gradient shards)"; FSDP2's ``set_requires_gradient_sync(False)`` likewise). torchtune's
      distributed recipes reduce-scatter every micro-batch: the sharded gradients. With FSDP mixed precision the
      unsharded gradients are those autograd computed on the 16-bit unsharded parameters (``_post_backward_hook``
      returns under ``no_sync`` before any cast to the shards' dtype): half the fp32 shards' bytes.
    - Otherwise the gradients the step keeps: a replica's (one GPU, DDP), DeepSpeed ZeRO-1/2's bf16 gradients;
      ZeRO-3 reduces each micro-batch into the fp32 partitions it keeps anyway, and ZeRO-Offload's live on the host.
    - ZeRO-2 (``stage_1_and_2.py`` at 38327e07f): ``independent_gradient_partition_epilogue`` keeps the first
      micro-batch's partition as views into its ``grads_in_partition`` buffer (``averaged_gradients``) and
      ``_release_ipg_buffers`` drops only the attribute, so a later micro-batch's first reduction
      (``copy_grads_in_partition``) allocates a whole new partition buffer (``torch.empty(total_size)``, bf16) that
      lives through its backward until the epilogue adds it into the accumulated one: two partitions in backward.
    """
    if req.training.gradient_accumulation_steps < 2:
        return NO_ACCUMULATION
    grads = static["gradients"]
    new = sm.largest_gradient
    unsharded = req.hardware.sharding == "fsdp" and req.hardware.num_gpus > 1 and req.training.framework != "torchtune"
    if unsharded:
        grads = sm.gradients.total
        if fsdp_mixed_precision(req):  # accumulated on the 16-bit unsharded parameters
            grads, new = half_bytes(grads), half_bytes(new)
    if req.hardware.sharding == "zero2":
        # the partition accumulates, not .grad: each later gradient is stolen by AccumulateGrad, none added in place
        return Accumulated(grads, 0, grads if req.hardware.offload_optimizer == "none" else 0)
    return Accumulated(grads, new if grads else 0, unsharded=unsharded)
