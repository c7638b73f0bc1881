"""A plan as an Unsloth training script (``python train.py``; Unsloth 2026.8 with TRL's ``SFTTrainer``) — the inverse
of :func:`app.importers.unsloth.from_unsloth`, which reads the script back without running it.

- ``FastLanguageModel.from_pretrained``: ``model_name``, ``max_seq_length``, ``dtype`` (``torch.bfloat16`` for
  'bf16', ``torch.float32`` for 'fp32'), ``load_in_4bit`` (bitsandbytes NF4 + double quantization, computed in the
  model's dtype) / ``load_in_8bit``, ``full_finetuning`` (and, for it, ``use_gradient_checkpointing``).
- ``FastLanguageModel.get_peft_model``: ``r``, ``lora_alpha``, ``lora_dropout``, ``bias``, ``target_modules``
  ('all-linear' as the seven projection names, the ones ``unsloth/models/llama.py get_peft_model`` accepts),
  ``use_rslora``, ``modules_to_save``, ``use_gradient_checkpointing`` ('unsloth' = checkpointing with each layer's
  input offloaded to host RAM, as the planner models Unsloth's; False).
- TRL ``SFTConfig``: ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``max_length``, ``optim``,
  ``packing``, ``padding_free``.

Unsloth trains on one GPU here, picks its own attention kernels and has no DoRA argument the planner reads; what a
plan sets beyond these is listed.
"""

from __future__ import annotations

from app.core.request import PlanRequest
from app.exporters.base import Export, fixed_nf4, model_name, unsupported_switches
from app.exporters.trl import version_notes
from app.importers.unsloth import SEVEN

DTYPE = {"bf16": "torch.bfloat16", "fp32": "torch.float32"}


def _targets(req: PlanRequest, unexpressed: list[str]) -> list[str]:
    targets = req.lora.target_modules
    if targets == "all-linear":
        return list(SEVEN)
    if not isinstance(targets, list):
        unexpressed.append(f"lora.target_modules {targets!r} (Unsloth takes projection names): written as its "
                           "default, the seven projections")
        return list(SEVEN)
    other = [t for t in targets if t not in SEVEN]
    if other:
        unexpressed.append(f"lora.target_modules {', '.join(other)} (Unsloth adapts only the seven projections; it "
                           "trains lm_head / embed_tokens whole, as modules_to_save): written without")
    return [t for t in targets if t in SEVEN] or list(SEVEN)


def unsloth_script(req: PlanRequest) -> Export:
    """The plan as an Unsloth script (module docstring); settings it has no argument for are listed."""
    tr, lo, q, hw = req.training, req.lora, req.quantization, req.hardware
    unexpressed: list[str] = []
    dtype = DTYPE.get(tr.precision)
    if dtype is None:
        unexpressed.append(f"precision {tr.precision!r} (Unsloth trains the model in its dtype): written as bf16")
        dtype = DTYPE["bf16"]
    full = req.method == "full"
    eight = req.quantized and q.load_in_8bit
    checkpointing = '"unsloth"' if tr.gradient_checkpointing else "False"
    load = [f"    model_name={model_name(req)!r},", "    max_seq_length=max_seq_length,", f"    dtype={dtype},",
            f"    load_in_4bit={req.quantized and not eight},", f"    load_in_8bit={eight},",
            f"    full_finetuning={full},"]
    if full:
        load.append(f"    use_gradient_checkpointing={checkpointing},")
    if req.quantized and not eight:
        unexpressed += fixed_nf4(req, tr.precision, "Unsloth")
    lines = ["from unsloth import FastLanguageModel  # first: Unsloth patches transformers and TRL", "import torch",
             "from datasets import load_dataset", "from trl import SFTConfig, SFTTrainer", "",
             f"max_seq_length = {tr.seq_len}", "",
             "model, tokenizer = FastLanguageModel.from_pretrained(", *load, ")"]
    if not full:
        if req.uses_dora:
            unexpressed.append(f"method {req.method!r} (no DoRA argument in Unsloth's get_peft_model): written as "
                               f"{'qlora' if req.quantized else 'lora'}")
        peft = ["    model,", f"    r={lo.r},", f"    target_modules={_targets(req, unexpressed)!r},",
                f"    lora_alpha={lo.lora_alpha:g},", f"    lora_dropout={lo.lora_dropout:g},",
                f"    bias={lo.bias!r},",
                f"    use_gradient_checkpointing={checkpointing},", f"    use_rslora={lo.use_rslora},"]
        if lo.modules_to_save:
            peft.append(f"    modules_to_save={list(lo.modules_to_save)!r},")
        for name in ("target_parameters", "layers_to_transform"):
            if getattr(lo, name):
                unexpressed.append(f"lora.{name} (not an argument the planner reads back from Unsloth's "
                                   "get_peft_model)")
        lines += ["model = FastLanguageModel.get_peft_model(", *peft, ")"]
    args = [f"        per_device_train_batch_size={tr.micro_batch_size},",
            f"        gradient_accumulation_steps={tr.gradient_accumulation_steps},",
            "        max_length=max_seq_length,", f"        optim={tr.optim!r},", f"        packing={tr.packing},"]
    if tr.padding_free:
        args.append("        padding_free=True,")
    lines += ["trainer = SFTTrainer(", "    model=model,", "    processing_class=tokenizer,",
              '    train_dataset=load_dataset("your/dataset", split="train"),', "    args=SFTConfig(", *args,
              '        output_dir="outputs",', "    ),", ")", "trainer.train()"]
    if tr.attn_implementation is not None:
        unexpressed.append(f"attn_implementation {tr.attn_implementation!r} (Unsloth picks its own attention "
                           "kernels)")
    unexpressed += unsupported_switches(req, ("use_liger_kernel", "activation_offloading", "torch_compile",
                                              "optimizer_in_bwd"), "an Unsloth")
    if hw.num_gpus > 1 or hw.sharding != "none":
        unexpressed.append(f"{hw.num_gpus} GPUs, sharding {hw.sharding!r} (Unsloth is modelled on one GPU): "
                           "written for one")
    unexpressed += version_notes(req)
    return Export("Unsloth script: python train.py", "train.py", {}, unexpressed, script="\n".join(lines) + "\n")
