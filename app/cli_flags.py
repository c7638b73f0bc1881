"""The flags every ``peft-planner`` command shares (inputs, LoRA, training, hardware, output), as an argparse
parent parser. The request's choices are spelled here so that ``--help`` needs no import; tests/test_cli.py checks
them against ``app.core.request``'s Literals."""

from __future__ import annotations

import argparse

METHODS = ("full", "lora", "qlora", "dora", "qdora")
PRECISIONS = ("bf16", "bf16-mixed", "fp16-mixed", "fp32")
OPTIMS = ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit",
          "adafactor", "sgd", "lion_32bit", "lion_8bit")
SHARDINGS = ("none", "ddp", "zero1", "zero2", "zero3", "fsdp")
ATTN_IMPLS = ("flash_attention_2", "sdpa", "eager")
FRAMEWORKS = ("hf-trainer", "trl", "axolotl", "llama-factory", "ms-swift", "unsloth", "torchtune", "litgpt",
              "lit-gpt")


def _bucket_size(text: str) -> int | str:
    """A DeepSpeed bucket size flag: 'auto' or an element count, written as DeepSpeed configs do (5e8 allowed);
    the range is the request's to check."""
    if text.strip() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an element count or 'auto', got {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"expected a whole element count, got {text!r}")
    return int(value)


def input_flags() -> argparse.ArgumentParser:
    """The shared flags, as a parent parser (``add_help=False``) for each command's subparser."""
    inputs = argparse.ArgumentParser(add_help=False)
    files = inputs.add_argument_group("inputs (files are merged in order; flags override them)")
    files.add_argument("files", nargs="*", metavar="FILE",
                       help="PlanRequest JSON/YAML, PEFT adapter_config.json or adapter dir, BitsAndBytesConfig, "
                            "axolotl YAML, or a model config.json; '-' reads stdin")
    files.add_argument("--model", help="catalog id (e.g. meta-llama/Llama-3.1-8B), any Hub id org/name[@revision] "
                                        "(its config.json is fetched; HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE apply), "
                                        "or a config.json path/dir")
    files.add_argument("--method", choices=METHODS)
    files.add_argument("--transformers-version", choices=("5.24", "4.57"),
                       help="module tree to model: 4.57 builds MoE experts as one nn.Linear each (docs/accuracy.md)")
    files.add_argument("--torch-version", choices=("2.13", "2.0"),
                       help="optimizer step to model: 2.0 keeps two foreach AdamW intermediates (docs/accuracy.md)")
    lora = inputs.add_argument_group("LoRA (PEFT LoraConfig)")
    lora.add_argument("--r", type=int, help="LoRA rank")
    lora.add_argument("--lora-alpha", type=float)
    lora.add_argument("--lora-dropout", type=float)
    lora.add_argument("--target-modules", help="'all-linear', a regex, or comma-separated names (q_proj,v_proj)")
    training = inputs.add_argument_group("training")
    training.add_argument("--seq-len", type=int)
    training.add_argument("--micro-batch-size", type=int)
    training.add_argument("--gradient-accumulation-steps", type=int, metavar="N",
                          help="HF TrainingArguments.gradient_accumulation_steps: micro-batches per optimizer step "
                               "(default 1; docs/frameworks.md)")
    training.add_argument("--optim", choices=OPTIMS, help="HF TrainingArguments.optim")
    training.add_argument("--precision", choices=PRECISIONS)
    training.add_argument("--attn", choices=ATTN_IMPLS, dest="attn_implementation", help="attn_implementation")
    training.add_argument("--framework", choices=FRAMEWORKS,
                          help="the trainer modelled (docs/frameworks.md); default hf-trainer")
    training.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                          help="default: on (or as the files say)")
    for flag, text in (("use-liger-kernel", "Liger kernels (fused linear cross-entropy, RMSNorm, SwiGLU)"),
                       ("activation-offloading", "TRL: saved activations in host RAM"),
                       ("packing", "TRL: packed, padding-free rows (needs --attn flash_attention_2)"),
                       ("padding-free", "TRL: one flattened row per batch (needs --attn flash_attention_2)"),
                       ("optimizer-in-bwd", "torchtune: optimizer step fused into backward")):
        training.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None,
                              help=f"{text}; docs/switches.md")
    training.add_argument("--num-output-chunks", type=int,
                          help="torchtune CEWithChunkedOutputLoss chunks (0: CrossEntropyLoss); docs/frameworks.md")
    hardware = inputs.add_argument_group("hardware")
    hardware.add_argument("--gpu", help="catalog GPU id (GET /api/v1/gpus), e.g. nvidia-rtx-4090")
    hardware.add_argument("--num-gpus", type=int)
    hardware.add_argument("--sharding", choices=SHARDINGS)
    hardware.add_argument("--offload-optimizer", choices=("none", "cpu"),
                          help="ZeRO-Offload / FSDP cpu_offload: optimizer states in host RAM (docs/switches.md)")
    hardware.add_argument("--offload-param", choices=("none", "cpu"),
                          help="ZeRO-3 offload_param / FSDP cpu_offload: parameters in host RAM")
    for flag, text in (("reduce-bucket-size", "DeepSpeed zero_optimization.reduce_bucket_size"),
                       ("stage3-prefetch-bucket-size", "DeepSpeed zero_optimization.stage3_prefetch_bucket_size")):
        hardware.add_argument(f"--{flag}", type=_bucket_size, metavar="ELEMENTS|auto",
                              help=f"{text} (default auto: the HF Trainer's fill; DeepSpeed's own default when a "
                              "DeepSpeed config leaves it out)")
    hardware.add_argument("--alloc-conf", metavar="PYTORCH_CUDA_ALLOC_CONF",
                          help="the run's PYTORCH_CUDA_ALLOC_CONF, e.g. expandable_segments:True (default: torch's)")
    other = inputs.add_argument_group("output and server")
    other.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                       help="any request field, e.g. --set quantization.load_in_8bit=true (VALUE is JSON or text)")
    other.add_argument("--json", action="store_true", help="print the API's JSON response instead of a table")
    other.add_argument("--url", help="ask a running server (e.g. http://127.0.0.1:8000) instead of computing here")
    other.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for --url (default 120)")
    other.add_argument("-q", "--quiet", action="store_true",
                       help="on stderr, only warnings (unknown/unsupported keys), not notes and ignored keys")
    other.add_argument("--strict", action="store_true",
                       help="exit 2 when a memory-relevant setting (seq_len, micro_batch_size, "
                            "gradient_accumulation_steps, optim, precision, "
                            "gradient checkpointing, r, target_modules, the GPU, ...) was given by no file or flag, "
                            "instead of assuming a default")
    return inputs
