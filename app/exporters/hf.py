"""The plan as the HF ecosystem's own calls: ``POST /api/v1/estimate`` as curl, and the PEFT ``LoraConfig`` +
transformers ``BitsAndBytesConfig`` + HF ``TrainingArguments`` that set up the same run (what the page's "Copy as
curl" / "Copy as Python" give). For a plan of another ``training.framework`` the Python snippet says it is the HF
Trainer equivalent; the framework's own config is :func:`app.exporters.framework_config`'s."""

from __future__ import annotations

import json
import shlex
from typing import Any

from app.core.request import PlanRequest


def request_json(req: PlanRequest) -> dict[str, Any]:
    """The request as POST /api/v1/estimate's JSON body (nulls left out: they are the defaults)."""
    return req.model_dump(mode="json", exclude_none=True)


def curl_snippet(req: PlanRequest, base_url: str) -> str:
    body = json.dumps(request_json(req), indent=2)
    return (f"curl -s -X POST {shlex.quote(base_url.rstrip('/') + '/api/v1/estimate')} \\\n"
            f"  -H 'Content-Type: application/json' \\\n  -d {shlex.quote(body)}")


_TORCH_DTYPE = {"bfloat16": "torch.bfloat16", "float16": "torch.float16", "float32": "torch.float32"}


def python_snippet(req: PlanRequest) -> str:
    """PEFT LoraConfig + transformers BitsAndBytesConfig + TrainingArguments that match the plan."""
    t, q, lo, hw = req.training, req.quantization, req.lora, req.hardware
    head = [] if t.framework == "hf-trainer" else [
        f"# The HF Trainer equivalent of this plan. The plan models {t.framework}'s own run (its preparation of the "
        "model, its loss)", "# and may differ from what these lines allocate: run it with the framework's own "
        "config."]
    lines = [*head, "import torch",
             "from transformers import AutoModelForCausalLM, TrainingArguments"]
    if req.quantized:
        lines[-1] = "from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainingArguments"
    if req.uses_adapter:
        imports = "LoraConfig, get_peft_model" + (", prepare_model_for_kbit_training" if req.quantized else "")
        lines.append(f"from peft import {imports}")
    lines.append("")
    load_dtype = "torch.bfloat16" if t.precision == "bf16" else "torch.float32"
    kwargs = [f"    {req.model!r}," if isinstance(req.model, str)
              else "    'path/to/your-model',  # the model of the pasted config.json"]
    if req.quantized:
        if q.load_in_8bit:
            lines += ["bnb_config = BitsAndBytesConfig(load_in_8bit=True)"]
        else:
            lines += ["bnb_config = BitsAndBytesConfig(",
                      "    load_in_4bit=True,",
                      f"    bnb_4bit_quant_type={q.bnb_4bit_quant_type!r},",
                      f"    bnb_4bit_use_double_quant={q.bnb_4bit_use_double_quant},",
                      f"    bnb_4bit_compute_dtype={_TORCH_DTYPE[q.bnb_4bit_compute_dtype]},",
                      ")"]
        kwargs.append("    quantization_config=bnb_config,")
    kwargs.append(f"    dtype={load_dtype},")
    if t.attn_implementation:
        kwargs.append(f"    attn_implementation={t.attn_implementation!r},")
    lines += ["model = AutoModelForCausalLM.from_pretrained(", *kwargs, ")"]
    if req.quantized and q.prepare_kbit:
        lines.append(f"model = prepare_model_for_kbit_training(model, use_gradient_checkpointing="
                     f"{t.gradient_checkpointing})")
    if req.uses_adapter:
        cfg = [f"    r={lo.r},", f"    lora_alpha={lo.lora_alpha:g},", f"    lora_dropout={lo.lora_dropout:g},",
               f"    target_modules={lo.target_modules!r},"]
        if lo.target_parameters:
            cfg.append(f"    target_parameters={lo.target_parameters!r},")
        if lo.layers_to_transform:
            cfg.append(f"    layers_to_transform={lo.layers_to_transform!r},")
        cfg.append(f"    bias={lo.bias!r},")
        if lo.modules_to_save:
            cfg.append(f"    modules_to_save={lo.modules_to_save!r},")
        if lo.use_rslora:
            cfg.append("    use_rslora=True,")
        cfg += [f"    use_dora={req.uses_dora},", "    task_type='CAUSAL_LM',"]
        lines += ["lora_config = LoraConfig(", *cfg, ")",
                  "model = get_peft_model(model, lora_config)",
                  "model.print_trainable_parameters()"]
    args = ["    output_dir='out',", f"    per_device_train_batch_size={t.micro_batch_size},",
            f"    gradient_checkpointing={t.gradient_checkpointing},", f"    optim={t.optim!r},"]
    if t.gradient_accumulation_steps > 1:
        args.insert(2, f"    gradient_accumulation_steps={t.gradient_accumulation_steps},")
    if t.precision in ("bf16", "bf16-mixed"):
        args.append("    bf16=True,")
    elif t.precision == "fp16-mixed":
        args.append("    fp16=True,")
    reentrant = t.gradient_checkpointing_kwargs.use_reentrant
    if t.gradient_checkpointing and reentrant is not None:
        args.append(f"    gradient_checkpointing_kwargs={{'use_reentrant': {reentrant}}},")
    if t.use_liger_kernel:
        args.append("    use_liger_kernel=True,")
    offload = hw.offload_optimizer == "cpu" or hw.offload_param == "cpu"
    if hw.sharding == "fsdp":
        args.append("    fsdp='full_shard offload'," if offload else "    fsdp='full_shard',")
    elif hw.sharding.startswith("zero"):
        args.append(f"    deepspeed='ds_{hw.sharding}.json',  # a DeepSpeed ZeRO stage-{hw.sharding[-1]} config"
                    + (f" with offload_optimizer {hw.offload_optimizer}, offload_param {hw.offload_param}"
                       if offload else ""))
    lines += ["", f"# sequences of {t.seq_len} tokens: tokenize/pack to this length (e.g. TRL SFTConfig(max_length="
                  f"{t.seq_len}))", "args = TrainingArguments(", *args, ")"]
    if hw.num_gpus > 1:
        lines.append(f"# launch on {hw.num_gpus} GPUs: torchrun --nproc_per_node {hw.num_gpus} train.py")
    return "\n".join(lines) + "\n"
