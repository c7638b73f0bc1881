"""What is known about each published training-step row the planner misses by more than 10%: the cause where a
trace or the source's own code showed it, and otherwise what was ruled out and what measurement would settle it.

Shown beside the row on /accuracy and in GET /api/v1/accuracy (``ComparedRow.residual``). tests/test_accuracy.py
fails when a compared row is more than 10% off without an entry here, or an entry's row is no longer that far off,
so the list always matches the table. The longer accounts are in docs/accuracy.md and docs/frameworks.md.
"""

from __future__ import annotations

_TORCHAO_INIT = (
    "Memory from model initialization, which the planner does not model: torchtune then loaded each weight with "
    "to_nf4(weight.to(device)), and torchao 0.1's quantize_tensor_nearest built (value − nf4).abs() unchunked, two "
    "(n, 16) bf16 tensors, about 2.9 GB for one Llama-2-7B MLP weight, which the caching allocator kept into "
    "training (its init row, 29, reads 8.5 GiB after model init against 3.6 GiB of NF4 weights and adapters). "
    "torchao 0.10 quantizes in 1M-element chunks. docs/frameworks.md, torchtune."
)
_PEFT_70B = (
    "An nvidia-smi screenshot on 2 GPUs: it holds NCCL's communicator buffers and the {streams} streams' cached "
    "blocks, which no single-process step shows. The same QLoRA step traced on one device, sharding stripped, peaks "
    "0.44% below the estimate (bench/row_trace.py 58){more}; NVIDIA/nccl#964 reports 544 MB per two-GPU "
    "communicator, beside the 1 GiB allowed here. A 2-GPU run with torch.cuda.max_memory_reserved() beside "
    "nvidia-smi would settle it. docs/accuracy.md."
)
_QWEN_1_8B = (
    "Not explained. The Qwen README states neither the counter nor the unit. The 7B and 14B rows of the same table "
    "are within 5%; the 1.8B LoRA rows are 0.6–2.1 GiB low from 256 to 4096 tokens and +5.7% at 8192, and its "
    "'LoRA + embeddings' rows are within 9%. Qwen (v1) is replayed through a qwen2-shaped config.json; its remote "
    "code computes the loss on bf16 logits (no fp32 upcast), which would lower the estimate, not raise it."
)
_QWEN_72B = (
    "Not explained. Counter and unit unstated; 4 GPUs under DeepSpeed ZeRO-3 with Qwen's ds_config_zero3.json. "
    "The gap is about 6.9 GiB per GPU at 256 tokens and shrinks with length (−7.5% at 2048, +2.4% at 8192), so it "
    "is a fixed per-GPU cost: ZeRO-3's gathered layers (here the 1.25e9-element lm_head, gathered whole), prefetch "
    "and reduce buckets and 16-bit gradient partitions are modelled from partitioned_param_coordinator.py; NCCL and "
    "DeepSpeed's own allocations on 4 GPUs are not."
)

_FSDP_RUN_AHEAD = (
    "Likely FSDP all-gathers run ahead of compute: accelerate before 0.26 left limit_all_gathers False (its FSDP "
    "plugin's default, no config key; True since huggingface/accelerate#2288) and the run set "
    "fsdp_forward_prefetch, so the CPU thread could issue "
    "the all-gathers of many layers (0.71 GiB of bf16 each) before their compute freed the earlier ones. Blocks "
    "freed across streams wait for their events, so reserved memory grows toward the card (80 GB) with cudaMalloc "
    "retries: the published 70–77.6 GB is near capacity. The planner models the rate-limited default of later "
    "releases (analytic peak 54.4 GiB, fp32 shards, 28.9 GiB of unsharded bf16 gradients under no_sync); against the "
    "range's lower end 70 the estimate is −14%. A run with limit_all_gathers on and off would settle it."
)

RESIDUALS: dict[int, str] = {
    15: "torchtune's 405B_qlora config sets batch_size 1; the README's table says 2, which this row uses. With batch "
        "1 the estimate is 47.39 GiB, +5.8%. docs/frameworks.md, torchtune.",
    28: _TORCHAO_INIT,
    35: _TORCHAO_INIT,
    37: "Not explained: FSDP1 full fine-tune on 4 × RTX 4090 (torchtune 7B_full; README of 2024-05-02, 'Peak "
        "Memory per GPU, averaged over multiple runs'), alpaca padded to each batch's longest sample, which the row "
        "maps at its stated ≤ 512 tokens. The same table's single-device full fine-tune (row 36) is −4.8%.",
    56: _PEFT_70B.format(streams="DeepSpeed ZeRO-3 gather and reduce", more=""),
    57: _PEFT_70B.format(streams="FSDP all-gather and reduce-scatter",
                         more=", and FSDP1 over a fake process group 1.3% below (bench/fsdp_trace.py)")
        + " This run also offloads the parameters to the CPU (FSDP cpu_offload), with 107 GB of host RAM.",
    149: _QWEN_1_8B,
    150: _QWEN_1_8B,
    151: _QWEN_1_8B,
    152: _QWEN_1_8B,
    211: _QWEN_72B,
    212: _QWEN_72B,
    213: _QWEN_72B,
    344: _FSDP_RUN_AHEAD,
}
"""Published row id → what is known about its difference from the planner (rows off by more than 10%)."""
