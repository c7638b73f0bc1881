"""Benchmark (not a test): one GPU's share of an FSDP step, traced on CPU, against the analytic estimate.

torch's FSDP1 runs on CPU against a fake process group (``torch.testing._internal.distributed.fake_pg``: world size
2, this process rank 0; collectives produce their outputs without communicating), so its own sharding, all-gathers,
resharding and the wrapping accelerate and PEFT use (``FULL_SHARD``, PEFT's ``fsdp_auto_wrap_policy``: decoder layers
plus each trainable LoRA leaf, ``use_orig_params=False``, bf16 ``MixedPrecision``, ``BACKWARD_PRE`` prefetch,
``limit_all_gathers``; with gradient accumulation accelerate's ``no_sync`` on all micro-batches but the last) can be
counted by the trace engine on fake tensors of a small Llama (the same bytes as real CPU tensors, in seconds instead
of minutes; QLoRA's FSDP step runs on real tensors: bitsandbytes' ``fix_4bit_weight_quant_state_from_module`` re-wraps
a flat parameter's view as ``Params4bit``, which a fake tensor refuses). FSDP frees and
re-allocates an unsharded flat parameter by resizing its storage (``torch.distributed.utils._free_storage`` /
``_alloc_storage``), which the engine's counter (it sees tensors, not storage resizes) is told of here. The 4-bit
weights are packed in bf16 (``bnb_4bit_quant_storage``), as FSDP-QLoRA needs: one dtype per flat parameter.

    .venv/bin/python bench/fsdp_trace.py            # QLoRA, LoRA and full fine-tuning, eight cases, ~3 min

Written to test whether FSDP's own allocations explain PEFT's 70B FSDP-QLoRA screenshots, 3.4-5.2 GiB per GPU above
the estimate (bench/published_check.py rows 56-58): they do not (docs/accuracy.md).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORLD = 2
CONFIG = {"model_type": "llama", "vocab_size": 4000, "hidden_size": 512, "intermediate_size": 1408,
          "num_hidden_layers": 6, "num_attention_heads": 8, "num_key_value_heads": 2, "tie_word_embeddings": False,
          "max_position_embeddings": 4096}
CASES: list[dict[str, Any]] = [
    {"method": "qlora", "quantization": {"prepare_kbit": False, "bnb_4bit_quant_storage": "bfloat16"},
     "training": {"gradient_checkpointing_kwargs": {"use_reentrant": True}}},
    {"method": "lora", "training": {}},
    {"method": "full", "training": {"precision": "bf16-mixed"}},
    {"method": "lora", "training": {"gradient_checkpointing": False}},
    {"method": "full", "training": {"precision": "bf16"}},
    {"method": "lora", "training": {"precision": "bf16-mixed"}},
    {"method": "lora", "training": {"gradient_accumulation_steps": 2}},
    {"method": "full", "training": {"precision": "bf16", "gradient_accumulation_steps": 2}},
]


def _body(case: dict[str, Any], num_gpus: int) -> dict[str, Any]:
    return {"model": {"config": CONFIG}, "method": case["method"], "quantization": case.get("quantization", {}),
            "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
            "training": {"micro_batch_size": 2, "seq_len": 256, "gradient_checkpointing": True, **case["training"]},
            "hardware": {"num_gpus": num_gpus, "sharding": "fsdp" if num_gpus > 1 else "none"}}


@contextmanager
def fsdp_wrapped() -> Iterator[None]:
    """The trace engine's HF recipe with FSDP1 around the adapted model, its storage resizes counted, and 4-bit
    weights packed in bf16."""
    import bitsandbytes as bnb
    import torch
    import torch.distributed as dist
    import torch.distributed.fsdp._flat_param as flat_param
    from torch.distributed.fsdp import BackwardPrefetch, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.testing._internal.distributed.fake_pg import FakeStore

    import app.trace.counter as counter_mod
    import app.trace.frameworks as frameworks

    counters: list[Any] = []
    saved = (counter_mod.LiveBytesCounter.__init__, frameworks.RECIPES["hf-trainer"], flat_param._free_storage,
             flat_param._alloc_storage, bnb.functional.quantize_4bit)
    init, recipe, free, alloc, quantize = saved

    def counter_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        counters.append(self)

    def resized(tensor: torch.Tensor, before: int) -> None:
        delta = tensor.untyped_storage().nbytes() - before
        if delta and counters:
            c = counters[-1]
            info = c._info.get(tensor)
            if info is not None:
                info.nbytes += delta
            c.live += delta
            c.live_rounded += counter_mod._round(abs(delta)) * (1 if delta > 0 else -1)
            c._observe(c.live, c.live_rounded)

    def free_storage(tensor: torch.Tensor) -> Any:
        before = tensor.untyped_storage().nbytes()
        out = free(tensor)
        resized(tensor, before)
        return out

    def alloc_storage(tensor: torch.Tensor, size: torch.Size) -> Any:
        before = tensor.untyped_storage().nbytes()
        out = alloc(tensor, size)
        resized(tensor, before)
        return out

    def adapt(model: Any, req: Any, lora_config: Any) -> Any:
        from peft.utils.other import fsdp_auto_wrap_policy
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        model = recipe.adapt(model, req, lora_config)
        if lora_config is None:  # accelerate's TRANSFORMER_BASED_WRAP: the model's _no_split_modules
            layers = {type(m) for m in model.modules() if type(m).__name__ in model._no_split_modules}
            policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layers)
        else:  # transformers Trainer hands a PEFT model PEFT's policy (_fsdp_qlora_plugin_updates)
            policy = fsdp_auto_wrap_policy(model)
        bf16 = torch.bfloat16
        return FSDP(model, auto_wrap_policy=policy, use_orig_params=False,
                    sharding_strategy=ShardingStrategy.FULL_SHARD, device_id=torch.device("cpu"),
                    mixed_precision=MixedPrecision(param_dtype=bf16, reduce_dtype=bf16, buffer_dtype=bf16),
                    backward_prefetch=BackwardPrefetch.BACKWARD_PRE, limit_all_gathers=True)

    micro_batches = [0]

    def loss(model: Any, inputs: dict[str, torch.Tensor], req: Any) -> torch.Tensor:
        # accelerate's accumulate(): every micro-batch of the window but the last runs under FSDP's no_sync, which
        # sets each FSDP state's _sync_gradients to False for its forward and backward (the engine runs two
        # micro-batches a step for any gradient_accumulation_steps > 1)
        window = min(req.training.gradient_accumulation_steps, 2)
        sync = micro_batches[0] % window == window - 1
        micro_batches[0] += 1
        for state in FSDP.fsdp_modules(model):
            state._sync_gradients = sync
        return recipe.loss(model, inputs, req)

    def quantize_bf16(w: torch.Tensor, **kwargs: Any) -> Any:
        return quantize(w, **{**kwargs, "quant_storage": torch.bfloat16})

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialized: the fake one would not be this bench's")
    dist.init_process_group("fake", rank=0, world_size=WORLD, store=FakeStore())
    counter_mod.LiveBytesCounter.__init__ = counter_init  # type: ignore[method-assign]
    frameworks.RECIPES["hf-trainer"] = frameworks.Recipe(recipe.before_adapters, adapt, loss)
    flat_param._free_storage, flat_param._alloc_storage = free_storage, alloc_storage
    bnb.functional.quantize_4bit = quantize_bf16
    try:
        yield
    finally:
        counter_mod.LiveBytesCounter.__init__ = init  # type: ignore[method-assign]
        frameworks.RECIPES["hf-trainer"] = recipe
        flat_param._free_storage, flat_param._alloc_storage = free, alloc
        bnb.functional.quantize_4bit = quantize
        dist.destroy_process_group()  # nothing after this sees a distributed run


def compare(case: dict[str, Any]) -> dict[str, Any]:
    """The case traced on one GPU and, under FSDP, as one of ``WORLD`` GPUs, beside the analytic peaks (bytes of
    tensors: the estimate's cuBLAS workspaces are left out, as the trace counts tensors only)."""
    from app.core import PlanRequest, estimate
    from app.core.catalog import gpu
    from app.core.overhead import cublas_workspace_bytes
    from app.trace.engine import run_trace

    def analytic(body: dict[str, Any]) -> int:
        req = PlanRequest.model_validate(body)
        return estimate(req).memory.peak - cublas_workspace_bytes(gpu(req.hardware.gpu).arch)

    one, sharded = _body(case, 1), _body(case, WORLD)
    single = run_trace(PlanRequest.model_validate(one), fake=True)
    with fsdp_wrapped():
        per_gpu = run_trace(PlanRequest.model_validate(sharded), fake=case["method"] != "qlora")
    return {"method": case["method"], "trace_1gpu": single.peak_bytes, "analytic_1gpu": analytic(one),
            "trace_fsdp": per_gpu.peak_bytes, "trace_fsdp_phase": per_gpu.peak_phase,
            "analytic_fsdp": analytic(sharded)}


def main() -> None:
    rows = [compare(case) for case in CASES]
    if "--json" in sys.argv:
        print(json.dumps(rows, indent=1))
        return
    print(f"tiny Llama ({json.dumps(CONFIG)}), b2 s256 (checkpointing unless switched off); "
          f"FSDP over {WORLD} GPUs (fake process group)")
    print(f"{'method':7} {'switches':34} {'1 GPU trace':>12} {'analytic':>10} {'err %':>6}   {'FSDP trace':>11} "
          f"{'analytic':>10} {'err %':>6}  peak phase")
    for case, r in zip(CASES, rows, strict=True):
        e1 = 100 * (r["analytic_1gpu"] - r["trace_1gpu"]) / r["trace_1gpu"]
        e2 = 100 * (r["analytic_fsdp"] - r["trace_fsdp"]) / r["trace_fsdp"]
        switches = json.dumps(case["training"])[1:-1].replace('"', "")
        print(f"{r['method']:7} {switches[:34]:34} {r['trace_1gpu']:12,} {r['analytic_1gpu']:10,} {e1:+6.2f}   "
              f"{r['trace_fsdp']:11,} {r['analytic_fsdp']:10,} {e2:+6.2f}  {r['trace_fsdp_phase']}")


if __name__ == "__main__":
    main()
