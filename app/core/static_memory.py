"""Static memory of a run: weights, quantization constants, adapters, gradients, optimizer states (bytes).

Every figure is exact tensor bytes (``numel · itemsize``, or bitsandbytes' storage from
:mod:`app.core.quantization`), grouped for the breakdown as ``component/group``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

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
    largest_quantized_weight: tuple[int, int] = (0, 0)  # (out, in) of the largest 4/8-bit layer


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


def static_memory(inv: Inventory, plan: AdapterPlan, req: PlanRequest, dt: Dtypes) -> StaticMemory:
    sm = StaticMemory()
    q = req.quantization
    quantized = set(quantized_modules(inv, req)) if req.quantized else set()
    largest = 0
    for t in inv.unique_tensors():
        if t.module in quantized and t.is_bias and not q.load_in_8bit:
            # Linear4bit.forward: `bias.data = bias.data.to(x.dtype)` after x is cast to the compute dtype,
            # so from the first step on the bias is stored in bnb_4bit_compute_dtype.
            sm.weights.add(t.group, t.numel * DTYPE_BYTES[dt.bnb_compute], t.numel, dt.bnb_compute)
        elif t.module in quantized and not t.is_bias:
            mod = inv.module_by_name[t.module]
            if q.load_in_8bit:
                qb = int8_bytes(mod.out_features, mod.in_features)
                kind = "int8"
            else:
                qb = nf4_bytes(t.numel, blocksize=q.blocksize, double_quant=q.bnb_4bit_use_double_quant)
                kind = q.bnb_4bit_quant_type
            sm.weights.add(t.group, qb.data, t.numel, kind)
            sm.constants.add(t.group, qb.constants, 0, "fp32/uint8")
            sm.quantized_params += t.numel
            if t.numel > largest:
                largest = t.numel
                sm.largest_quantized_weight = (mod.out_features, mod.in_features)
        else:
            dtype = dt.unquantized_for(t.name) if req.quantized else dt.weights
            sm.weights.add(t.group, t.numel * DTYPE_BYTES[dtype], t.numel, dtype)

    # HF Trainer.create_optimizer: with an 8-bit bitsandbytes optimizer every nn.Embedding weight (and a
    # modules_to_save copy of one) keeps 32-bit state (GlobalOptimManager.register_module_override).
    optim = litgpt_optim(req)
    eight_bit = optim in BNB_8BIT
    decay: list[tuple[tuple[int, ...], int]] = []
    no_decay: list[tuple[tuple[int, ...], int]] = []
    decay32: list[tuple[tuple[int, ...], int]] = []
    no_decay32: list[tuple[tuple[int, ...], int]] = []
    for t in plan.trainable:
        dtype = _trainable_dtype(t, dt, set() if q.load_in_8bit else quantized)
        size = DTYPE_BYTES[dtype]
        nbytes = t.numel * size
        if t.new:
            key = {"lora": t.group, "dora_magnitude": "dora_magnitude", "modules_to_save": "modules_to_save"}
            sm.adapters.add(key.get(t.kind, t.group), nbytes, t.numel, dtype)
        sm.gradients.add(t.group, nbytes, t.numel, dtype)
        force_32bit = eight_bit and t.group == "embedding" and t.kind in ("base", "modules_to_save")
        st = state_bytes(optim, t.shape, size, momentum=req.training.momentum, force_32bit=force_32bit)
        sm.optimizer.add(t.group, st.device, t.numel)
        sm.paged_optimizer_bytes += st.paged
        master = state_bytes(optim, t.shape, 4, momentum=req.training.momentum, force_32bit=force_32bit)
        sm.optimizer_fp32_master_bytes += master.device + master.paged
        if not t.new:
            sm.trainable_base_bytes += nbytes
        # HF Trainer's two parameter groups: no weight decay for biases and norm weights.
        (no_decay if t.name.endswith("bias") or t.group == "norms" else decay).append((t.shape, size))
        (no_decay32 if t.name.endswith("bias") or t.group == "norms" else decay32).append((t.shape, 4))
    # bitsandbytes moves its 8-bit maps to the GPU only when some tensor gets 8-bit state (init_state).
    fixed = fixed_state_bytes(optim)
    if fixed and any(t.numel >= BNB_MIN_8BIT_SIZE and not (t.group == "embedding" and t.kind != "lora")
                     for t in plan.trainable):
        sm.optimizer.add("quantization_maps", fixed)
    if is_litgpt(req):  # finetune/*.py: one parameter group of every trainable parameter
        decay, no_decay, decay32, no_decay32 = decay + no_decay, [], decay32 + no_decay32, []
    sm.optimizer_step_transient = step_transient_bytes(optim, [decay, no_decay])
    sm.optimizer_step_transient_fp32 = step_transient_bytes(optim, [decay32, no_decay32])
    return sm
