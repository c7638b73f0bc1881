"""A plan as a litgpt fine-tuning config (``litgpt finetune_lora --config config.yaml``, or ``finetune_full``), litgpt
0.4.13.dev1 (commit 00af8b0d) — the inverse of :func:`app.importers.litgpt.from_litgpt`.

- Model: ``checkpoint_dir: checkpoints/<org>/<name>`` (where ``litgpt download <org>/<name>`` puts the converted
  checkpoint).
- Precision: ``precision`` 'bf16-true' (every parameter bf16), 'bf16-mixed' or '32-true'; litgpt has no fp16-mixed
  run the planner models.
- Method: LoRA flags ``lora_query`` / ``lora_key`` / ``lora_value`` / ``lora_projection`` / ``lora_mlp`` /
  ``lora_head`` from the target modules (q/k/v_proj — a fused q/k/v linear's parts from ``lora.enable_lora`` —,
  o_proj, all three MLP projections together, lm_head;
  'all-linear' is every flag but the head), ``lora_r``, ``lora_alpha``, ``lora_dropout``; QLoRA ``quantize``
  'bnb.nf4' / 'bnb.fp4' (+ '-dq' for double quantization). Full fine-tuning writes no ``lora_*`` key (what the
  importer reads as ``finetune_full``'s config).
- Step: ``train.micro_batch_size``, ``train.max_seq_length``, and ``train.global_batch_size`` = micro-batch ×
  accumulation (``TrainArgs.gradient_accumulation_iters``: ``global_batch_size // devices // micro_batch_size``,
  one device); ``optimizer: torch.optim.AdamW`` (QLoRA: litgpt builds ``bnb.optim.PagedAdamW`` itself).

litgpt's own loop has no gradient checkpointing, no DoRA, no 8-bit base, no sharding the planner models (its
FSDPStrategy) and none of the transformers/TRL switches: a plan that uses them gets them listed, not written.
"""

from __future__ import annotations

from typing import Any

from app.core.catalog import model_config
from app.core.litgpt import llama_names
from app.core.request import PlanRequest
from app.exporters.base import Export, model_name, unsupported_switches
from app.exporters.trl import version_notes

PRECISION = {"bf16": "bf16-true", "bf16-mixed": "bf16-mixed", "fp32": "32-true"}
"""``training.precision`` → Fabric's precision string (the importer's ``PRECISIONS``, reversed)."""
FLAGS: tuple[tuple[str, frozenset[str]], ...] = (
    ("lora_query", frozenset({"q_proj"})), ("lora_key", frozenset({"k_proj"})), ("lora_value", frozenset({"v_proj"})),
    ("lora_projection", frozenset({"o_proj"})), ("lora_mlp", frozenset({"gate_proj", "up_proj", "down_proj"})),
    ("lora_head", frozenset({"lm_head"})))
"""litgpt's LoRA flags and the HF module names each stands for (``lora_mlp`` adapts fc_1, fc_2 and proj at once)."""


def _flags(targets: list[str] | str | None, unexpressed: list[str]) -> dict[str, bool]:
    """The six ``lora_*`` flags for the plan's target modules; names no flag covers exactly are listed."""
    if targets == "all-linear":  # PEFT's all-linear leaves the output layer out
        return {flag: flag != "lora_head" for flag, _ in FLAGS}
    if not isinstance(targets, list):
        unexpressed.append(f"lora.target_modules {targets!r} (litgpt takes lora_query … lora_head flags): "
                           "written as its defaults q and v")
        return {flag: flag in ("lora_query", "lora_value") for flag, _ in FLAGS}
    names = set(targets)
    flags = {flag: bool(names & mods) for flag, mods in FLAGS}
    partial = [m for _, mods in FLAGS if names & mods and not mods <= names for m in sorted(mods - names)]
    unknown = sorted(names - frozenset().union(*(mods for _, mods in FLAGS)))
    if partial:
        unexpressed.append(f"lora.target_modules without {', '.join(partial)} (lora_mlp adapts all three MLP "
                           "projections): written with lora_mlp true")
    if unknown:
        unexpressed.append(f"lora.target_modules {', '.join(unknown)} (no litgpt flag)")
    return flags


def _as_llama_names(req: PlanRequest, targets: list[str] | str | None) -> list[str] | str | None:
    """A phi / GPT-NeoX / Falcon / Phi-3 plan's own module names as the llama names :data:`FLAGS` reads; a fused
    q/k/v linear as the parts ``lora.enable_lora`` enables."""
    if not isinstance(targets, list):
        return targets
    cfg = req.model.config if not isinstance(req.model, str) else model_config(req.model)
    names = llama_names(str(cfg.get("model_type", "")), targets)
    enable = req.lora.enable_lora
    if enable is None:
        return names
    off = {n for n, on in zip(("q_proj", "k_proj", "v_proj"), enable, strict=True) if not on}
    return [n for n in names if n not in off]


def litgpt_config(req: PlanRequest) -> Export:
    """The plan as a litgpt finetune config (module docstring); settings litgpt has no key for are listed."""
    tr, lo, q, hw = req.training, req.lora, req.quantization, req.hardware
    unexpressed: list[str] = []
    precision = PRECISION.get(tr.precision)
    if precision is None:
        unexpressed.append(f"precision {tr.precision!r} (litgpt's modelled precisions: bf16-true, bf16-mixed, "
                           "32-true): written as bf16-true")
        precision = "bf16-true"
    data: dict[str, Any] = {"checkpoint_dir": f"checkpoints/{model_name(req)}", "precision": precision,
                            "devices": 1}
    if req.method != "full":
        if req.uses_dora:
            unexpressed.append(f"method {req.method!r} (litgpt has no DoRA): written as "
                               f"{'qlora' if req.quantized else 'lora'}")
        if q.load_in_8bit:
            unexpressed.append("quantization.load_in_8bit (litgpt's quantize is bitsandbytes 4-bit here): written "
                               "as bnb.nf4-dq")
            data["quantize"] = "bnb.nf4-dq"
        elif req.quantized:
            data["quantize"] = f"bnb.{q.bnb_4bit_quant_type}" + ("-dq" if q.bnb_4bit_use_double_quant else "")
            if q.bnb_4bit_compute_dtype != "bfloat16" or q.bnb_4bit_quant_storage != "uint8":
                unexpressed.append("bnb_4bit_compute_dtype / bnb_4bit_quant_storage (Fabric's BitsandbytesPrecision "
                                   "computes in bf16 and packs in uint8)")
        alpha = round(lo.lora_alpha)  # litgpt's lora_alpha is an int (finetune/lora.py setup())
        if alpha != lo.lora_alpha:
            unexpressed.append(f"lora.lora_alpha {lo.lora_alpha:g} (litgpt takes an integer): written as {alpha}")
        data |= {"lora_r": lo.r, "lora_alpha": alpha, "lora_dropout": lo.lora_dropout,
                 **_flags(_as_llama_names(req, lo.target_modules), unexpressed)}
        for name in ("use_rslora", "modules_to_save", "target_parameters", "layers_to_transform"):
            if getattr(lo, name):
                unexpressed.append(f"lora.{name} (no litgpt argument)")
        if lo.bias != "none":
            unexpressed.append(f"lora.bias {lo.bias!r} (litgpt's LoRA layers have no trainable bias)")
    data["train"] = {"micro_batch_size": tr.micro_batch_size,
                     "global_batch_size": tr.micro_batch_size * tr.gradient_accumulation_steps,
                     "max_seq_length": tr.seq_len}
    data["optimizer"] = {"class_path": "torch.optim.AdamW"}
    if tr.optim != "adamw_torch":
        unexpressed.append(f"optim {tr.optim!r} (litgpt's config names a torch optimizer class; QLoRA always uses "
                           "bnb PagedAdamW): written as torch.optim.AdamW")
    if tr.gradient_checkpointing:
        unexpressed.append("training.gradient_checkpointing (litgpt's finetune scripts have none): written without")
    if tr.attn_implementation not in (None, "sdpa"):
        unexpressed.append(f"attn_implementation {tr.attn_implementation!r} (litgpt's GPT calls torch SDPA)")
    unexpressed += unsupported_switches(req, ("use_liger_kernel", "activation_offloading", "packing", "padding_free",
                                              "torch_compile", "optimizer_in_bwd"), "a litgpt")
    if hw.num_gpus > 1 or hw.sharding != "none":
        unexpressed.append(f"{hw.num_gpus} GPUs, sharding {hw.sharding!r} (litgpt's FSDPStrategy is not modelled): "
                           "written for one device")
    unexpressed += version_notes(req)
    command = "litgpt finetune_full" if req.method == "full" else "litgpt finetune_lora"
    return Export(f"litgpt config: {command} --config config.yaml", "config.yaml", data, unexpressed)
