"""The published rows' recipe settings of the trainers with their own model code (torchtune, litgpt / lit-gpt),
read from each source's config at the commit it names: :func:`app.accuracy.rows.map_row` calls these for rows of
those frameworks. Pure Python."""

from __future__ import annotations

from typing import Any

from app.accuracy.skip import Skip
from app.core.deepspeed import DEEPSPEED_BUCKET_DEFAULTS
from app.core.litgpt import lora_targets


def torchtune_kind(measures: str, notes: list[str]) -> str:
    """The counter of a torchtune figure. torchtune's memory log (``training.get_memory_stats``: peak active, alloc
    and reserved bytes of torch's allocator) never includes the CUDA context, so an unnamed one is compared with
    ``peak`` (active ≈ allocated), not ``total``."""
    t = measures.lower()
    if "not specified" not in t and "not stated" not in t:
        if "reserved" in t:
            return "reserved"
        if "active" in t or "alloc" in t:
            return "allocated"
    notes.append("torchtune memory log, counter not named: a torch allocator peak (no CUDA context), compared with "
                 "peak (active ≈ allocated)")
    return "allocated"


def _torchtune_optim(text: str) -> str:
    """torchtune config optimizers (``_component_``) → training.optim."""
    t = text.lower().replace(" ", "")
    if "pagedadamw8bit" in t:
        return "paged_adamw_8bit"  # bitsandbytes.optim.PagedAdamW8bit
    if "pagedadamw" in t:
        return "paged_adamw_32bit"  # bitsandbytes.optim.PagedAdamW (32-bit states)
    if "8-bitadamw" in t or "adamw8bit" in t:
        return "adamw_bnb_8bit"  # bitsandbytes.optim.AdamW8bit
    return "adamw_torch"  # torch.optim.AdamW


def torchtune_training(row: dict[str, str], training: dict[str, Any], hardware: dict[str, Any], init_only: bool,
                        notes: list[str]) -> None:
    """A torchtune row's recipe settings (its config yaml at the commit the source names): optimizer and
    ``optimizer_in_bwd``, the loss (``num_output_chunks``), activation checkpointing / offloading, packing,
    ``fsdp_cpu_offload``."""
    opt = row["optimizer"]
    if not init_only and (not opt.strip() or "not stated" in opt):
        raise Skip("optimizer not stated", row["notes"][:70])
    training["optim"] = _torchtune_optim(opt)
    fused = row["source_id"] in TORCHTUNE_FUSED_ADAMW and not row["method"].startswith("FFT")
    if training["optim"] == "adamw_torch" and (fused or row["source_id"] in TORCHTUNE_FLAGS_STEP_WITHOUT_TEMPORARY):
        training["optim"] = "adamw_torch_fused"
    training["optimizer_in_bwd"] = "optimizer_in_bwd" in opt and "no optimizer_in_bwd" not in opt
    ckpt = row["grad_ckpt"]
    if "not stated" in ckpt and not ckpt.startswith("on"):
        raise Skip("activation checkpointing not stated", row["notes"][:70])
    training["gradient_checkpointing"] = ckpt.startswith("on")
    training["activation_offloading"] = "activation offloading" in ckpt
    note = row["seq_note"].lower()
    if "must be forced" in note or row["source_id"] in TORCHTUNE_UNFORCED_LENGTHS:
        raise Skip("sequence length unknown (a README table setting; PR #961: the runs' alpaca samples were shorter, "
                   "inputs must be forced to that length to reproduce)", row["seq_note"][:70])
    if "unpacked" in note and not row["seq_len"].startswith("<="):
        raise Skip("sequence length unknown (unpacked samples padded to the batch's longest; only the cap is given)",
                   row["seq_note"][:70])
    training["packing"] = "packed" in note and "unpacked" not in note
    training["num_output_chunks"] = _torchtune_output_chunks(row)
    if not row["grad_accum"].strip():
        training["gradient_accumulation_steps"] = _torchtune_grad_accum(row)
    if row["source_id"] in TORCHTUNE_CUSTOM_SHARDED and hardware.get("sharding") == "fsdp" and "70B" in row["model"] \
            and row["method"].startswith("FFT"):
        training["custom_sharded_layers"] = ["tok_embeddings", "output"]
    if "cpu offload" in row["parallelism"].lower() and hardware.get("sharding") == "fsdp":
        # fsdp_cpu_offload: FSDP CPUOffload(offload_params=True): parameters, gradients and the optimizer on the CPU
        hardware["offload_param"] = hardware["offload_optimizer"] = "cpu"
    if "<=" in row["seq_len"]:
        notes.append("torchtune pads each batch to its longest sample: the bound is an upper estimate")


TORCHTUNE_UNFORCED_LENGTHS = ("TT-README-2024-05",)
"""The README table @0217d44c2 gives 'Seq Length = 2048/4096' as a setting, but its runs took alpaca samples padded to
the batch's longest (PR #961: inputs must be forced to that length to reproduce; row 6's 70B LoRA at 4×4096 tokens
would hold 20 GiB of checkpointed layer inputs per GPU alone, above the 24.6 GiB published)."""
TORCHTUNE_CUSTOM_SHARDED = ("TT-README-2024-09",)
"""llama3_1/70B_full.yaml @30b8519e8: ``custom_sharded_layers: ['tok_embeddings', 'output']`` (70B_lora.yaml and
405B_qlora.yaml set none)."""
TORCHTUNE_FUSED_ADAMW = ("TT-README-2024-09", "TT-README-2024-11-flags")
"""Sources whose LoRA/QLoRA configs give ``torch.optim.AdamW`` ``fused: True`` (llama3_1/{8B_lora,8B_qlora,70B_lora,
405B_qlora}.yaml @30b8519e8, llama3_2/3B_{lora,qlora}_single_device.yaml @1814feb17, whose README command overrides
only ``optimizer._component_``); their full fine-tuning configs name bitsandbytes optimizers (overridden to
``torch.optim.AdamW`` without ``fused`` in the flags table) or no ``fused`` (70B_full)."""
TORCHTUNE_FLAGS_STEP_WITHOUT_TEMPORARY = ("TT-README-2024-11-flags",)
"""The flags table's full fine-tunes (Llama-3.2-3B, ``torch.optim.AdamW``; the README gives no command for them, only
for its QLoRA row) ran a step without a full-size temporary (fused, or the single-tensor loop): its '+ Activation
Checkpointing' row peaks at 24.9 GiB, while its bf16 weights, gradients and AdamW's two bf16 states alone hold 8
bytes per parameter (3,212,749,824 parameters: 23.94 GiB) and the foreach step's ``_foreach_sqrt`` of the second
moments would add 2 bytes per parameter (5.98 GiB) at once: 29.9 GiB, above what was measured. Mapped as fused."""
TORCHTUNE_CHUNKED_SOURCES = ("TT-README-2024-09",)
"""Sources whose configs name ``torchtune.modules.loss.CEWithChunkedOutputLoss`` (recipes/configs/llama3_1/{8B,70B}_*
.yaml @30b8519e8; its 405B_qlora.yaml names ``torch.nn.CrossEntropyLoss``); the 2024-04/05 configs name
``torch.nn.CrossEntropyLoss``, and the 2024-11 flags table adds the chunked loss from its row '+ Chunked Cross
Entropy' on (the row's notes name it)."""


TORCHTUNE_ADAPTER_GRAD_ACCUM = {
    ("TT-README-2024-09", "Llama-3.1-8B", "LoRA"): 64,  # llama3_1/8B_lora_single_device.yaml @30b8519e8
    ("TT-README-2024-09", "Llama-3.1-8B", "QLoRA"): 16,  # llama3_1/8B_qlora_single_device.yaml
    ("TT-README-2024-09", "Llama-3.1-70B", "LoRA"): 1,  # llama3_1/70B_lora.yaml
    ("TT-README-2024-09", "Llama-3.1-405B", "QLoRA"): 16,  # llama3_1/405B_qlora.yaml
    ("TT-QLoRA-tutorial", "Llama-2-7b", "LoRA"): 64,  # llama2/7B_lora_single_device.yaml @0914d5cfb
    ("TT-QLoRA-tutorial", "Llama-2-7b", "QLoRA"): 16,  # llama2/7B_qlora_single_device.yaml @0914d5cfb
    ("TT-LoRA-tutorial", "Llama-2-7b", "LoRA"): 64,  # llama2/7B_lora_single_device.yaml @0914d5cfb
    ("TT-Llama3-tutorial", "Meta-Llama-3-8B", "LoRA"): 64,  # llama3/8B_lora_single_device.yaml @20747cd87
    ("TT-README-2024-05-02", "Llama-2-7b", "QLoRA"): 16,  # llama2/7B_qlora_single_device.yaml @7d05579fe
}
"""``gradient_accumulation_steps`` of the LoRA/QLoRA configs the torchtune rows name, at the commit each source names.
Every full fine-tuning config there (llama2/7B_full, 7B_full_low_memory, llama3_1/8B_full_single_device, 70B_full)
sets 1 (``optimizer_in_bwd`` requires it)."""


def _torchtune_grad_accum(row: dict[str, str]) -> int:
    if row["method"].startswith("FFT"):
        return 1
    model = row["model"].split("/")[-1]
    method = "QLoRA" if row["method"].startswith("QLoRA") else "LoRA"
    return next((v for (src, m, meth), v in TORCHTUNE_ADAPTER_GRAD_ACCUM.items()
                 if src == row["source_id"] and model.startswith(m) and meth == method), 1)


def _torchtune_output_chunks(row: dict[str, str]) -> int:
    if "CEWithChunkedOutputLoss" in row["notes"] or "chunked ce" in row["notes"].lower():
        return 8
    if row["source_id"] in TORCHTUNE_CHUNKED_SOURCES and "405B" not in row["model"]:
        return 8
    return 0


def litgpt_settings(row: dict[str, str], method: str, lora: dict[str, Any], training: dict[str, Any],
                     notes: list[str], model_type: str) -> None:
    """The settings of litgpt's scripts the CSV states in its own words (lit-gpt 8641822 ``finetune/lora.py``;
    litgpt 00af8b0d ``config_hub/finetune/*/*.yaml``): Fabric precision, bnb PagedAdamW for QLoRA, checkpointing
    under FSDP (``activation_checkpointing_policy={Block}``), LoRA dropout > 0 (0.05; Gemma's configs 0.1: the
    same bytes, a mask and the dropout output per adapted input)."""
    if "fsdp" in row["parallelism"].lower():
        raise Skip("lit-gpt FSDP (Fabric FSDPStrategy, Block wrap) is not modelled: its published per-GPU peaks "
                   "(7B over 2 GPUs 20.7 GiB, about the unsharded 1-GPU run) do not follow the planner's FSDP "
                   "sharding", row["parallelism"])
    wd = row["weight_dtype"].lower()
    training["precision"] = "bf16-mixed" if "bf16-mixed" in wd else "bf16"  # bf16-true: everything bf16
    training["attn_implementation"] = None  # litgpt's own attention (SDPA; eager for soft-capping), not HF's
    if "pagedadamw" in row["optimizer"].lower().replace(" ", ""):
        training["optim"] = "paged_adamw_32bit"
    training["gradient_checkpointing"] = row["grad_ckpt"].startswith("on")
    if method != "full":
        lora["lora_dropout"] = 0.05
        tm = lora.get("target_modules")
        if isinstance(tm, list):  # litgpt's flags as the model's own module names (phi3, phi, GPT-NeoX, Falcon)
            lora["target_modules"], enable = lora_targets(model_type, tm)
            if enable is not None:
                lora["enable_lora"] = enable
    notes.append("litgpt: LoRA dropout 0.05 (litgpt default; Gemma configs 0.1, same bytes)")
    if row["source_id"] == "LITGPT-config-hub":
        # litgpt/args.py TrainArgs.gradient_accumulation_iters: global_batch_size // devices // micro_batch_size,
        # on the table's one GPU
        gbs = LITGPT_GLOBAL_BATCH_SIZE.get((row["model"].split(" ")[0], method))
        if gbs is None:
            gbs = 6 if row["model"].lower().startswith("gemma") else 8
        training["gradient_accumulation_steps"] = max(gbs // training["micro_batch_size"], 1)


LITGPT_GLOBAL_BATCH_SIZE = {
    ("Llama-3.1-8B", "full"): 64, ("Llama-3.2-1B", "full"): 64, ("Llama-3.2-3B", "full"): 64,
    ("Phi-3-mini-4k-instruct", "full"): 8, ("TinyLlama-1.1B", "full"): 32,
}
"""``train.global_batch_size`` of litgpt 00af8b0d ``config_hub/finetune/*/full.yaml`` (llama-3.1-8b, llama-3.2-1B,
llama-3.2-3B, phi-3, tiny-llama); every lora.yaml / qlora.yaml there sets 8, the Gemma ones 6."""


# huggingface/peft examples/sft: run_peft_{deepspeed,fsdp,qlora_deepspeed_stage3,qlora_fsdp}.sh at 1715e06 / 1948110
PEFT_EXAMPLES_LORA_DROPOUT = 0.1


def peft_examples_settings(method: str, lora: dict[str, Any], training: dict[str, Any], hardware: dict[str, Any],
                           notes: list[str]) -> None:
    """The settings PEFT's ``examples/sft`` launch scripts pass beside those in the CSV: ``--lora_dropout 0.1``;
    ``--use_reentrant True`` for the QLoRA scripts and ``False`` for the LoRA ones; under ZeRO-3 DeepSpeed's own
    bucket sizes (accelerate YAML only, no DeepSpeed JSON with "auto")."""
    lora["lora_dropout"] = PEFT_EXAMPLES_LORA_DROPOUT
    training["gradient_checkpointing_kwargs"] = {"use_reentrant": method == "qlora"}
    notes.append(f"peft examples/sft scripts: lora_dropout {PEFT_EXAMPLES_LORA_DROPOUT}, use_reentrant "
                 f"{method == 'qlora'}")
    if hardware.get("sharding") == "zero3":
        # the examples' accelerate YAMLs (configs/deepspeed_config*.yaml) name no DeepSpeed JSON: accelerate's
        # DeepSpeedPlugin builds a config without bucket sizes, so DeepSpeed's defaults apply
        hardware.update(DEEPSPEED_BUCKET_DEFAULTS)
        notes.append("accelerate deepspeed_config YAML without a JSON: DeepSpeed's default reduce_bucket_size 5e8 and "
                     "stage3_prefetch_bucket_size 5e7")


PEFT_README_CLM_SCRIPT = "examples/causal_language_modeling/peft_lora_clm_accelerate_ds_zero3_offload.py"
PEFT_README_MAX_LENGTH = 64
"""The causal-LM script behind the bloomz-7b1 rows of PEFT's README table (:data:`PEFT_README_CLM_SCRIPT`, first
as ``pet_lora_clm_accelerate_ds_zero3_offload.py``): ``preprocess_function`` left-pads every sample with the pad
token, or truncates it, to ``max_length = 64`` tokens, so every batch is 8 × 64 whatever the tweets' lengths."""
PEFT_README_LORA_DROPOUT = 0.1
"""The same script's ``LoraConfig(task_type=CAUSAL_LM, r=8, lora_alpha=32, lora_dropout=0.1)`` (PEFT's default
targets: ``query_key_value`` for bloom); ``torch.optim.AdamW``, no gradient checkpointing, the model loaded by
``AutoModelForCausalLM.from_pretrained`` without ``torch_dtype`` (fp32), and TorchTracemalloc's 'GPU Total Peak'
is ``torch.cuda.max_memory_allocated``."""


def peft_readme_seq_len(row: dict[str, str], notes: list[str]) -> int | None:
    """The sequence length of a causal-LM row of PEFT's README table (the CSV leaves it empty: 'short tweets'), from
    the script that produced it; None for every other row."""
    if row["source_id"] != "PEFT-README" or "bloom" not in row["model"].lower():
        return None
    notes.append(f"PEFT README bloomz rows: {PEFT_README_CLM_SCRIPT} pads/truncates every sample to max_length "
                 f"{PEFT_README_MAX_LENGTH} (8 × {PEFT_README_MAX_LENGTH} tokens a batch), lora_dropout "
                 f"{PEFT_README_LORA_DROPOUT}, fp32 weights, no gradient checkpointing")
    return PEFT_README_MAX_LENGTH


PERSONAL_COPILOT_SOURCE = "HF-blog-personal-copilot"
PERSONAL_COPILOT_SCRIPT = "pacman100/DHS-LLM-Workshop personal_copilot/training/train.py @797a0af"
"""The script behind the blog's StarCoder figures (run_peft.sh and run_fsdp.sh at the same commit, 2023-10-20; the
blog's 'monkey patch of Flash Attention V2' is the earlier 0ac1fef, which loads and casts the model the same way)."""


def personal_copilot_settings(method: str, training: dict[str, Any], notes: list[str]) -> None:
    """The settings of the personal-copilot ``train.py`` beside those in the CSV. It loads the model without
    ``torch_dtype`` (fp32; ``torch_dtype`` came in 973b448, 2023-11-06), so its FSDP full fine-tune keeps fp32
    shards under accelerate's ``mixed_precision: 'bf16'`` (bf16-mixed), and its QLoRA run's non-quantized
    parameters are fp32 before and after ``prepare_model_for_kbit_training``. After building the Trainer it casts
    every ``LoraLayer`` and the ``wte`` / ``wpe`` embeddings to bf16, which no request field expresses: the estimate
    keeps them fp32, about 1.5 GiB more for StarCoder's 110M adapter parameters (their gradients and AdamW states)
    and 352M embedding parameters. accelerate's FSDP plugin of the time (before 0.26, huggingface/accelerate#2288) left
    ``limit_all_gathers`` False (its dataclass default, no config key), with ``fsdp_forward_prefetch: true``."""
    if method == "full":
        training["precision"] = "bf16-mixed"
        notes.append(f"{PERSONAL_COPILOT_SCRIPT}: fp32 load (no torch_dtype) under FSDP mixed_precision bf16 -> "
                     "bf16-mixed; accelerate's FSDP plugin then: limit_all_gathers False, forward_prefetch true")
    else:
        notes.append(f"{PERSONAL_COPILOT_SCRIPT}: fp32 load, prepare_model_for_kbit_training, then LoRA layers and "
                     "wte/wpe cast to bf16 after Trainer init (kept fp32 here: about 1.5 GiB more)")
