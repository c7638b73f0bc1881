"""DeepSpeed ZeRO's own GPU buffers and gathered parameters (bytes per GPU).

Sources (DeepSpeed at 38327e07f, transformers 5.24, accelerate 1.15):

- ``zero_optimization.reduce_bucket_size`` / ``stage3_prefetch_bucket_size`` (elements). DeepSpeed's defaults
  (``runtime/zero/config.py``) are 500,000,000 and 50,000,000. The HF Trainer fills a key written ``"auto"`` with
  hidden_size² and int(0.9·hidden_size²) (``integrations/deepspeed.py: trainer_config_finalize``); a DeepSpeed
  config without the key keeps DeepSpeed's default. accelerate's ``deepspeed_config`` YAML without a JSON file
  builds a config with neither key (``utils/dataclasses.py: DeepSpeedPlugin.__post_init__``): the defaults.
- ZeRO-3 (``runtime/zero/stage3.py``, ``DeepSpeedZeroOptimizer_Stage3.__init__``) allocates, for the whole run:
  ``__ipg_bucket_flat_buffer`` = ``torch.empty(reduce_bucket_size, dtype=self.dtype)`` (``contiguous_gradients``,
  on by default), and ``grad_partitions_flat_buffer`` = the trainable parameters' partitions in
  ``gradient_accumulation_dtype``, which is the model's 16-bit dtype under ZeRO (``engine.py: get_data_types``),
  on ``self.device`` (host memory with ``offload_optimizer``).
- ZeRO-1/2 (``runtime/zero/stage_1_and_2.py: backward``): one ``reduce_bucket_size`` buffer per backward
  (``overlap_comm`` is off by default below stage 3).
"""

from __future__ import annotations

from typing import NamedTuple

from app.core.errors import PlanError
from app.core.inventory import Inventory
from app.core.quantization import nf4_bytes
from app.core.request import PlanRequest
from app.core.static_memory import quantized_modules

# DeepSpeed runtime/zero/config.py DeepSpeedZeroConfig defaults (elements): what a config that leaves the keys out
# runs with (the HF Trainer fills "auto" keys only), keyed by the request's hardware field names
DEEPSPEED_BUCKET_DEFAULTS = {"reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 50_000_000}
DEEPSPEED_MAX_LIVE_PARAMETERS = 1_000_000_000  # stage3_max_live_parameters
# transformers trainer_config_finalize: "auto" prefetch bucket = int(0.9 · hidden_size²)
HF_AUTO_PREFETCH_FRACTION = 0.9
# ZeRO with bf16/fp16: gathered parameters, gradient buckets and gradient partitions are 16-bit
ZERO_PARAM_BYTES = 2


def reduce_bucket_elements(req: PlanRequest, hidden_size: int) -> int:
    """``zero_optimization.reduce_bucket_size`` in elements ("auto": hidden_size², the HF Trainer's fill)."""
    size = req.hardware.reduce_bucket_size
    return hidden_size * hidden_size if size == "auto" else size


def prefetch_bucket_elements(req: PlanRequest, hidden_size: int) -> int:
    """``zero_optimization.stage3_prefetch_bucket_size`` in elements ("auto": int(0.9·hidden_size²))."""
    size = req.hardware.stage3_prefetch_bucket_size
    return int(HF_AUTO_PREFETCH_FRACTION * hidden_size * hidden_size) if size == "auto" else size


def check(req: PlanRequest) -> None:
    """The DeepSpeed bucket sizes mean something only under DeepSpeed ZeRO (the prefetch bucket: stage 3); ZeRO is
    modelled in its bf16/fp16 modes only.

    Without a ``bf16``/``fp16`` section (HF ``TrainingArguments`` with neither ``bf16`` nor ``fp16``: precision
    'fp32') DeepSpeed trains fp32 parameters: 4-byte gathered modules, buckets and gradient partitions beside a
    cloned fp32 master partition (``stage_1_and_2.py`` ``single_partition_of_fp32_groups``, ``stage3.py``
    ``fp32_partitioned_groups_flat``). The rules here count those 16-bit, and the one published fp32 ZeRO-3 row
    (PEFT's README, bloomz-7b1 + ZeRO-3 CPU offload: 18.1 GiB) is far above them, so the planner refuses instead of
    answering low."""
    hw = req.hardware
    if hw.sharding.startswith("zero") and req.training.precision == "fp32":
        raise PlanError(("training", "precision"),
                        "DeepSpeed ZeRO is modelled in its bf16/fp16 modes (precision bf16, bf16-mixed or "
                        "fp16-mixed); 'fp32' (DeepSpeed without a bf16/fp16 section: fp32 parameters, buckets and "
                        "gathered modules) is not modelled")
    if hw.reduce_bucket_size != "auto" and not hw.sharding.startswith("zero"):
        raise PlanError(("hardware", "reduce_bucket_size"),
                        "is a DeepSpeed ZeRO setting: set hardware.sharding to zero1, zero2 or zero3, or leave it "
                        "'auto'")
    if hw.stage3_prefetch_bucket_size != "auto" and hw.sharding != "zero3":
        raise PlanError(("hardware", "stage3_prefetch_bucket_size"),
                        "is a DeepSpeed ZeRO-3 setting: set hardware.sharding to zero3, or leave it 'auto'")


class Zero3Buffers(NamedTuple):
    """ZeRO-3's buffers allocated once for the run (bytes per GPU): on the GPU, and in host memory."""

    gpu: int
    host: int


def zero3_buffers(req: PlanRequest, trainable_params: int, hidden_size: int) -> Zero3Buffers:
    """The IPG bucket (``reduce_bucket_size`` 16-bit elements) and the 16-bit gradient partitions
    (⌈trainable / num_gpus⌉ elements; in host memory with ``offload_optimizer``), ZeRO-3 only."""
    if req.hardware.sharding != "zero3":
        return Zero3Buffers(0, 0)
    ipg = ZERO_PARAM_BYTES * reduce_bucket_elements(req, hidden_size)
    partitions = ZERO_PARAM_BYTES * -(-trainable_params // req.hardware.num_gpus)
    if req.hardware.offload_optimizer == "cpu":
        return Zero3Buffers(ipg, partitions)
    return Zero3Buffers(ipg + partitions, 0)


def zero3_gathered(inv: Inventory, req: PlanRequest) -> int:
    """Unsharded parameter bytes alive at once under ZeRO-3 (``partitioned_param_coordinator.py``).

    ``fetch_sub_module`` gathers the running module's parameters plus a prefetch bucket
    (``stage3_prefetch_bucket_size`` elements); ``release_sub_module`` keeps parameters whose reuse distance is under
    ``stage3_max_reuse_distance`` (default 1e9 elements), so a checkpointed layer's parameters stay gathered from its
    recompute through its backward: one decoder layer (or the largest module, e.g. the embedding) plus the bucket,
    16-bit (4-bit weights as their packed storage). ``stage3_max_live_parameters`` (default 1e9) bounds only the
    prefetch (``max_params_to_prefetch = min(max_live − available, prefetch_bucket)``); the running module is gathered
    whatever its size, so a layer or an lm_head above 1e9 elements (Llama-3's 70B lm_head 1.05e9, Qwen-72B's 1.25e9,
    a 405B layer 3.2e9) is gathered whole, with no prefetch beside it."""
    arch = inv.arch
    names = set(quantized_modules(inv, req)) if req.quantized else set()
    by_module: dict[str, int] = {}
    by_layer: dict[int, int] = {}
    for t in inv.unique_tensors():
        if t.module in names and not t.is_bias:
            nbytes = t.numel if req.quantization.load_in_8bit else nf4_bytes(t.numel).data
        else:
            nbytes = ZERO_PARAM_BYTES * t.numel
        by_module[t.module] = by_module.get(t.module, 0) + nbytes
        layer_index = inv.module_by_name[t.module].layer
        if layer_index is not None:
            by_layer[layer_index] = by_layer.get(layer_index, 0) + nbytes
    largest = max((*by_module.values(), *by_layer.values()), default=0)
    prefetch = ZERO_PARAM_BYTES * prefetch_bucket_elements(req, arch.hidden_size)
    return max(largest, min(largest + prefetch, ZERO_PARAM_BYTES * DEEPSPEED_MAX_LIVE_PARAMETERS))
