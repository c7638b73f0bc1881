"""A plan as a torchtune v0.4.0 recipe config (``tune run [--nproc_per_node N] <recipe> --config config.yaml``) — the
inverse of :func:`app.importers.torchtune.from_torchtune`.

- Recipe: ``lora_finetune_*`` (LoRA, QLoRA, DoRA, QDoRA) or ``full_finetune_*``; ``_single_device`` on one GPU,
  ``_distributed`` (FSDP2, ``fsdp_cpu_offload`` for the plan's CPU offload) for an FSDP plan over N GPUs.
- Model: the builder of the plan's model (``torchtune.models.<family>.<builder>``, ``lora_`` / ``qlora_`` variants;
  Qwen2.5 has no ``qlora_`` builders: ``quantize_base: true``), with ``lora_attn_modules`` (q/k/v_proj,
  output_proj), ``apply_lora_to_mlp`` (all three MLP projections), ``apply_lora_to_output`` (lm_head),
  ``lora_rank``, ``lora_alpha``, ``lora_dropout``, ``use_dora``. A model no builder has is refused.
- Step: ``dtype`` bf16 / fp32, ``batch_size``, ``gradient_accumulation_steps``, ``tokenizer.max_seq_len``,
  ``dataset.packed``, ``enable_activation_checkpointing``, ``enable_activation_offloading``, ``compile``,
  ``optimizer_in_bwd`` (full recipes), ``optimizer`` (torch AdamW / SGD, bitsandbytes 8-bit and paged AdamW), the
  loss (``CEWithChunkedOutputLoss`` with ``num_output_chunks``, or ``torch.nn.CrossEntropyLoss`` for 0).

torchtune's NF4 is torchao's (double-quantized scalers, dequantized to the training dtype), its attention torch SDPA;
what differs from these is listed, as are the transformers/TRL switches it has no key for. The tokenizer's ``path``
and the ``checkpointer`` are the user's files: the export names a placeholder path and leaves the checkpointer to
torchtune's own config of the model (``tune cp``), whose other keys do not change the memory modelled.
"""

from __future__ import annotations

import re
from typing import Any

from app.core.errors import PlanError
from app.core.request import PlanRequest
from app.core.torchtune import MLP_NAMES, TT_LORA_NAMES
from app.exporters.base import Export, fixed_nf4, unsupported_switches
from app.exporters.trl import version_notes
from app.importers.torchtune import (
    BUILDERS,
    CHUNKED_LOSS,
    CODE_LLAMA2,
    DEFAULT_CHUNKS,
    NO_DORA,
    OPTIMIZERS,
    PLAIN_LOSS,
    TIED,
    builder_config,
)

FAMILY = re.compile(r"^(code_llama2|llama3_2|llama3_1|llama3|llama2|qwen2_5|mistral|gemma)_")
"""A builder's ``torchtune.models`` package, from its name (``llama3_1_8b`` → ``llama3_1``)."""
TOKENIZERS = {"llama2": "llama2.llama2_tokenizer", "code_llama2": "llama2.llama2_tokenizer",
              "llama3": "llama3.llama3_tokenizer", "llama3_1": "llama3.llama3_tokenizer",
              "llama3_2": "llama3.llama3_tokenizer", "qwen2_5": "qwen2_5.qwen2_5_tokenizer",
              "mistral": "mistral.mistral_tokenizer", "gemma": "gemma.gemma_tokenizer"}
"""``torchtune.models.<…>`` tokenizer builder of each family (the Llama 3.x configs share ``llama3_tokenizer``)."""
OPTIMIZER_OF = {optim: component for component, optim in OPTIMIZERS.items() if component != "torch.optim.Adam"}
OPTIMIZER_OF["adamw_torch_fused"] = "torch.optim.AdamW"
"""``training.optim`` → ``optimizer._component_`` (the importer's table, reversed; fused AdamW is AdamW + fused)."""


def builder_of(req: PlanRequest) -> str | None:
    """The torchtune builder whose model the importer maps to the plan's (a Hub id, or a builder's config.json)."""
    for base in [*BUILDERS, *CODE_LLAMA2]:
        config = builder_config(base)
        if (config is None and req.model == BUILDERS[base]) or (
                config is not None and not isinstance(req.model, str) and req.model.config == config):
            return base
    return None


def _lora(req: PlanRequest, base: str, unexpressed: list[str]) -> dict[str, Any]:
    """The LoRA builder's arguments for the plan's adapters."""
    lo = req.lora
    targets = lo.target_modules
    if targets == "all-linear":  # PEFT leaves the output layer out
        names = {*TT_LORA_NAMES, *MLP_NAMES}
    elif isinstance(targets, list):
        names = set(targets)
    else:
        unexpressed.append(f"lora.target_modules {targets!r} (torchtune takes lora_attn_modules and the "
                           "apply_lora_to_* switches): written as q_proj and v_proj")
        names = {"q_proj", "v_proj"}
    attn = [tt for hf, tt in TT_LORA_NAMES.items() if hf in names]
    if not attn:
        unexpressed.append("LoRA on no attention projection (torchtune's lora_attn_modules must not be empty): "
                           "written with q_proj and v_proj")
        attn = ["q_proj", "v_proj"]
    mlp = bool(names & set(MLP_NAMES))
    if mlp and not set(MLP_NAMES) <= names:
        unexpressed.append(f"lora.target_modules without {', '.join(sorted(set(MLP_NAMES) - names))} "
                           "(apply_lora_to_mlp adapts all three MLP projections): written with all three")
    output = "lm_head" in names
    if output and base in TIED:
        unexpressed.append(f"lm_head (the output of {base} is tied to the embeddings: torchtune's builder refuses "
                           "apply_lora_to_output): written without")
        output = False
    unknown = sorted(names - {*TT_LORA_NAMES, *MLP_NAMES, "lm_head"})
    if unknown:
        unexpressed.append(f"lora.target_modules {', '.join(unknown)} (no torchtune switch)")
    args: dict[str, Any] = {"lora_attn_modules": attn, "apply_lora_to_mlp": mlp}
    if base not in TIED:
        args["apply_lora_to_output"] = output
    args |= {"lora_rank": lo.r, "lora_alpha": lo.lora_alpha, "lora_dropout": lo.lora_dropout}
    if req.uses_dora:
        if base in NO_DORA:
            unexpressed.append(f"DoRA ({base} takes no use_dora): written as LoRA")
        else:
            args["use_dora"] = True
    for name in ("use_rslora", "modules_to_save", "target_parameters", "layers_to_transform"):
        if getattr(lo, name):
            unexpressed.append(f"lora.{name} (no torchtune builder argument)")
    if lo.bias != "none":
        unexpressed.append(f"lora.bias {lo.bias!r} (torchtune's LoRALinear has no trainable bias)")
    return args


def _quantization(req: PlanRequest, unexpressed: list[str]) -> None:
    """What torchtune's NF4 (torchao ``to_nf4``: double-quantized scalers, computed in the training dtype) fixes."""
    q = req.quantization
    if q.load_in_8bit:
        unexpressed.append("quantization.load_in_8bit (torchtune quantizes to NF4 only): written as NF4")
        return
    unexpressed.extend(fixed_nf4(req, req.training.precision, "torchtune (torchao NF4)"))


def torchtune_config(req: PlanRequest) -> Export:
    """The plan as a torchtune recipe config (module docstring); settings torchtune has no key for are listed.
    Raises :class:`PlanError` (→ 422 naming ``model``) when no torchtune builder builds the plan's model."""
    tr, hw = req.training, req.hardware
    base = builder_of(req)
    if base is None:
        raise PlanError(("model",), "torchtune builds its own models: the export covers its Llama, Code Llama, "
                        "Qwen2.5, Mistral and Gemma builders, whose Hub ids are: "
                        + ", ".join(sorted(set(BUILDERS.values()))))
    family = FAMILY.match(base)
    assert family is not None  # every builder of BUILDERS and CODE_LLAMA2 matches
    unexpressed: list[str] = []
    full = req.method == "full"
    if full:
        model: dict[str, Any] = {"_component_": f"torchtune.models.{family[1]}.{base}"}
    else:
        quantized = req.quantized and family[1] != "qwen2_5"  # qwen2_5 has no qlora_ builders
        model = {"_component_": f"torchtune.models.{family[1]}.{'qlora' if quantized else 'lora'}_{base}",
                 **_lora(req, base, unexpressed)}
        if req.quantized and not quantized:
            model["quantize_base"] = True
        if req.quantized:
            _quantization(req, unexpressed)
    dtype = tr.precision if tr.precision in ("bf16", "fp32") else "bf16"
    if dtype != tr.precision:
        unexpressed.append(f"precision {tr.precision!r} (torchtune trains in bf16 or fp32, no autocast): written "
                           "as bf16")
    data: dict[str, Any] = {"model": model, "tokenizer": {
        "_component_": f"torchtune.models.{TOKENIZERS[family[1]]}", "path": "path/to/tokenizer",
        "max_seq_len": tr.seq_len}}
    data["dataset"] = {"_component_": "torchtune.datasets.alpaca_cleaned_dataset", "packed": tr.packing}
    data |= {"dtype": dtype, "batch_size": tr.micro_batch_size,
             "gradient_accumulation_steps": tr.gradient_accumulation_steps,
             "enable_activation_checkpointing": tr.gradient_checkpointing}
    if tr.activation_offloading and not tr.gradient_checkpointing:
        unexpressed.append("activation offloading without checkpointing (torchtune refuses it): written without")
    data["enable_activation_offloading"] = tr.activation_offloading and tr.gradient_checkpointing
    data["compile"] = tr.torch_compile
    if full:
        data["optimizer_in_bwd"] = tr.optimizer_in_bwd
    component = OPTIMIZER_OF.get(tr.optim)
    if component is None:
        unexpressed.append(f"optim {tr.optim!r} (not among the torchtune optimizers modelled): written as "
                           "torch.optim.AdamW")
        component = "torch.optim.AdamW"
    data["optimizer"] = {"_component_": component}
    if tr.optim == "adamw_torch_fused":
        data["optimizer"]["fused"] = True
    if tr.optim == "sgd":
        data["optimizer"]["momentum"] = tr.momentum
    data["loss"] = ({"_component_": PLAIN_LOSS} if tr.num_output_chunks == 0 else
                    {"_component_": CHUNKED_LOSS, "num_output_chunks": tr.num_output_chunks or DEFAULT_CHUNKS})
    if tr.attn_implementation not in (None, "sdpa"):
        unexpressed.append(f"attn_implementation {tr.attn_implementation!r} (torchtune's attention calls torch "
                           "SDPA)")
    unexpressed += unsupported_switches(req, ("use_liger_kernel", "padding_free"), "a torchtune")
    recipe = "full_finetune" if full else "lora_finetune"
    if hw.sharding == "fsdp":
        data["fsdp_cpu_offload"] = hw.offload_param == "cpu" or hw.offload_optimizer == "cpu"
        if hw.offload_param != hw.offload_optimizer:
            unexpressed.append("offload of only the parameters or only the optimizer (torchtune's fsdp_cpu_offload "
                               "moves both): written as both")
        if full and tr.custom_sharded_layers:
            data["custom_sharded_layers"] = list(tr.custom_sharded_layers)
        run = f"tune run --nproc_per_node {hw.num_gpus} {recipe}_distributed --config config.yaml"
    else:
        if hw.num_gpus > 1 or hw.sharding != "none":
            unexpressed.append(f"{hw.num_gpus} GPUs, sharding {hw.sharding!r} (torchtune's distributed recipes "
                               "shard with FSDP2): written for one device")
        run = f"tune run {recipe}_single_device --config config.yaml"
    unexpressed += version_notes(req)
    return Export(f"torchtune config: {run} (add the checkpointer and tokenizer.path of torchtune's config for "
                  f"{base}: tune cp)", "config.yaml", data, unexpressed)
