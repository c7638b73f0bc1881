"""Static memory of a run: weights, quantization constants, adapters, gradients, optimizer states (bytes).

Every figure is exact tensor bytes (``numel · itemsize``, or bitsandbytes' storage from
:mod:`app.core.quantization`), grouped for the breakdown as ``component/group``.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from math import prod

from app.core import torchtune
from app.core.adapters import AdapterPlan, TrainableTensor
from app.core.inventory import CONV1D, LINEAR, Inventory
from app.core.litgpt import is_litgpt, litgpt_optim
from app.core.optimizers import BNB_8BIT, BNB_MIN_8BIT_SIZE, fixed_state_bytes, state_bytes, step_transient_bytes
from app.core.precision import Dtypes
from app.core.quantization import int8_bytes, nf4_bytes
from app.core.request import PlanRequest
from app.core.units import DTYPE_BYTES


@dataclass
class Bucket:
    """Bytes of one component, per breakdown group, in insertion order."""

    by_group: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    params: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    dtype: dict[str, str] = field(default_factory=dict)

    def add(self, group: str, nbytes: int, params: int = 0, dtype: str | None = None) -> None:
        self.by_group[group] += nbytes
        self.params[group] += params
        if dtype is not None:
            prev = self.dtype.get(group)
            self.dtype[group] = dtype if prev in (None, dtype) else "mixed"

    @property
    def total(self) -> int:
        return sum(self.by_group.values())


@dataclass
class StaticMemory:
    weights: Bucket = field(default_factory=Bucket)
    constants: Bucket = field(default_factory=Bucket)
    adapters: Bucket = field(default_factory=Bucket)
    gradients: Bucket = field(default_factory=Bucket)
    optimizer: Bucket = field(default_factory=Bucket)
    paged_optimizer_bytes: int = 0
    optimizer_fp32_master_bytes: int = 0  # state bytes if every trainable tensor were fp32 (DeepSpeed master)
    trainable_base_bytes: int = 0  # bytes of base weights that are trained (full fine-tuning, bias)
    optimizer_step_transient: int = 0
    optimizer_step_transient_fp32: int = 0  # the same step on fp32 copies (DeepSpeed's fp32 partitions)
    quantized_params: int = 0
    tied_gradient: int = 0  # a trainable tied embedding's gradient bytes (alive from the loss to its own backward)
    largest_quantized_weight: tuple[int, int] = (0, 0)  # (out, in) of the largest 4/8-bit layer
    largest_gradient: int = 0  # bytes of the largest single trainable tensor's gradient


def quantized_modules(inv: Inventory, req: PlanRequest | None = None) -> list[str]:
    """Modules transformers' bitsandbytes integration replaces: every ``nn.Linear``/``Conv1D`` except the
    output embedding (``quantizers/base.py: get_keys_to_not_convert`` skips lm_head and tied keys); for an
    inventory built from the real model, the modules ``replace_with_bnb_linear`` converted there. Under litgpt
    (``req``), Fabric's ``BitsandbytesPrecision._convert_layers`` replaces every ``torch.nn.Linear``, lm_head too."""
    if req is not None and is_litgpt(req):
        return [m.name for m in inv.modules if m.kind == LINEAR]
    if inv.quantizable is not None:
        return list(inv.quantizable)
    return [m.name for m in inv.modules if m.kind in (LINEAR, CONV1D) and m.name != "lm_head"]


def _trainable_dtype(t: TrainableTensor, dt: Dtypes, four_bit: set[str]) -> str:
    if t.kind == "lora":
        return dt.adapters
    if t.kind == "dora_magnitude":
        return dt.magnitude
    if t.kind == "bias" and t.name.rsplit(".", 1)[0] in four_bit:
        return dt.bnb_compute
    if t.kind in ("modules_to_save", "bias"):
        return dt.unquantized_for(t.name)
    return dt.weights


_WEIGHTS_CACHE: dict[tuple[int, str], tuple[Inventory, tuple[Bucket, Bucket, int, tuple[int, int]]]] = {}
_WEIGHTS_CACHE_SIZE = 64
"""The base weights' buckets per (inventory, quantization and dtype settings): they do not depend on the rank,
targets, method within quantized/not or optimizer, so a later request for the same model skips the per-tensor
loop (thousands of tensors for a 27B model). The inventory is kept with its entry so its id stays its own."""
_WEIGHTS_LOCK = threading.Lock()
"""Guards the cache's eviction and insertion: the estimate and fit pools run estimates in several threads."""


def _weights_key(req: PlanRequest, dt: Dtypes) -> str:
    q = req.quantization
    return repr((req.quantized, req.training.framework, q.load_in_8bit, q.blocksize, q.bnb_4bit_use_double_quant,
                 q.bnb_4bit_quant_type, dt))


def _base_weights(inv: Inventory, req: PlanRequest, dt: Dtypes) -> tuple[Bucket, Bucket, int, tuple[int, int]]:
    """(weights, quantization constants, quantized parameters, (out, in) of the largest quantized weight)."""
    key = (id(inv), _weights_key(req, dt))
    hit = _WEIGHTS_CACHE.get(key)
    if hit is not None and hit[0] is inv:
        return hit[1]
    q = req.quantization
    tt = req.training.framework == "torchtune"
    quantized = set(quantized_modules(inv, req)) if req.quantized else set()
    weights, constants = Bucket(), Bucket()
    quantized_params, largest, largest_shape = 0, 0, (0, 0)
    for t in inv.unique_tensors():
        if t.module in quantized and t.is_bias and not q.load_in_8bit:
            # Linear4bit.forward: `bias.data = bias.data.to(x.dtype)` after x is cast to the compute dtype,
            # so from the first step on the bias is stored in bnb_4bit_compute_dtype.
            weights.add(t.group, t.numel * DTYPE_BYTES[dt.bnb_compute], t.numel, dt.bnb_compute)
        elif t.module in quantized and not t.is_bias:
            mod = inv.module_by_name[t.module]
            if q.load_in_8bit:
                qb = int8_bytes(mod.out_features, mod.in_features)
                kind = "int8"
            elif tt:  # torchtune's qlora builders: torchao NF4Tensor, quantized from the model dtype
                qb = torchtune.nf4_bytes(t.numel, DTYPE_BYTES[dt.weights])
                kind = "nf4 (torchao)"
            else:
                qb = nf4_bytes(t.numel, blocksize=q.blocksize, double_quant=q.bnb_4bit_use_double_quant)
                kind = q.bnb_4bit_quant_type
            weights.add(t.group, qb.data, t.numel, kind)
            constants.add(t.group, qb.constants, 0, "fp32/uint8")
            quantized_params += t.numel
            if t.numel > largest:
                largest = t.numel
                largest_shape = (mod.out_features, mod.in_features)
        else:
            dtype = dt.unquantized_for(t.name) if req.quantized else dt.weights
            weights.add(t.group, t.numel * DTYPE_BYTES[dtype], t.numel, dtype)
    out = (weights, constants, quantized_params, largest_shape)
    with _WEIGHTS_LOCK:
        while len(_WEIGHTS_CACHE) >= _WEIGHTS_CACHE_SIZE:
            _WEIGHTS_CACHE.pop(next(iter(_WEIGHTS_CACHE)))
        _WEIGHTS_CACHE[key] = (inv, out)
    return out


def _copy(bucket: Bucket) -> Bucket:
    out = Bucket()
    out.by_group.update(bucket.by_group)
    out.params.update(bucket.params)
    out.dtype.update(bucket.dtype)
    return out


def static_memory(inv: Inventory, plan: AdapterPlan, req: PlanRequest, dt: Dtypes) -> StaticMemory:
    sm = StaticMemory()
    q = req.quantization
    tt = req.training.framework == "torchtune"
    quantized = set(quantized_modules(inv, req)) if req.quantized else set()
    weights, constants, sm.quantized_params, sm.largest_quantized_weight = _base_weights(inv, req, dt)
    sm.weights, sm.constants = _copy(weights), _copy(constants)

    # HF Trainer.create_optimizer: with an 8-bit bitsandbytes optimizer every nn.Embedding weight (and a
    # modules_to_save copy of one) keeps 32-bit state (GlobalOptimManager.register_module_override); torchtune
    # instantiates the optimizer on model.parameters() with no override.
    optim = litgpt_optim(req)
    eight_bit = optim in BNB_8BIT and not tt
    decay: list[tuple[tuple[int, ...], int]] = []
    no_decay: list[tuple[tuple[int, ...], int]] = []
    decay32: list[tuple[tuple[int, ...], int]] = []
    no_decay32: list[tuple[tuple[int, ...], int]] = []
    # Trainable tensors of one kind, group, shape and dtype cost the same: count them once (a 27B all-linear
    # plan has thousands of identical adapter tensors).
    same: Counter[tuple[str, str, tuple[int, ...], bool, str, bool]] = Counter()
    four_bit = set() if q.load_in_8bit else quantized
    for t in plan.trainable:
        # HF Trainer's two parameter groups: no weight decay for biases and norm weights.
        no_wd = t.name.endswith("bias") or t.group == "norms"
        same[(t.kind, t.group, t.shape, t.new, _trainable_dtype(t, dt, four_bit), no_wd)] += 1
    for (kind, group, shape, new, dtype, no_wd), n in same.items():
        size = DTYPE_BYTES[dtype]
        numel = prod(shape)
        nbytes = numel * size
        if new:
            key = {"lora": group, "dora_magnitude": "dora_magnitude", "modules_to_save": "modules_to_save"}
            sm.adapters.add(key.get(kind, group), n * nbytes, n * numel, dtype)
        sm.gradients.add(group, n * nbytes, n * numel, dtype)
        sm.largest_gradient = max(sm.largest_gradient, nbytes)
        force_32bit = eight_bit and group == "embedding" and kind in ("base", "modules_to_save")
        st = state_bytes(optim, shape, size, momentum=req.training.momentum, force_32bit=force_32bit)
        sm.optimizer.add(group, n * st.device, n * numel)
        sm.paged_optimizer_bytes += n * st.paged
        master = state_bytes(optim, shape, 4, momentum=req.training.momentum, force_32bit=force_32bit)
        sm.optimizer_fp32_master_bytes += n * (master.device + master.paged)
        if not new:
            sm.trainable_base_bytes += n * nbytes
        if inv.arch.tie_word_embeddings and group == "embedding" and kind == "base":
            sm.tied_gradient += n * nbytes
        (no_decay if no_wd else decay).extend([(shape, size)] * n)
        (no_decay32 if no_wd else decay32).extend([(shape, 4)] * n)
    # bitsandbytes moves its 8-bit maps to the GPU only when some tensor gets 8-bit state (init_state).
    fixed = fixed_state_bytes(optim)
    if fixed and any(t.numel >= BNB_MIN_8BIT_SIZE and not (t.group == "embedding" and t.kind != "lora")
                     for t in plan.trainable):
        sm.optimizer.add("quantization_maps", fixed)
    if is_litgpt(req):  # finetune/*.py: one parameter group of every trainable parameter
        decay, no_decay, decay32, no_decay32 = decay + no_decay, [], decay32 + no_decay32, []
    sm.optimizer_step_transient = step_transient_bytes(optim, [decay, no_decay], req.torch_version)
    sm.optimizer_step_transient_fp32 = step_transient_bytes(optim, [decay32, no_decay32], req.torch_version)
    return sm
