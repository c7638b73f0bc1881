"""A plan as an axolotl config (``axolotl train config.yml``) — the inverse of
:func:`app.importers.axolotl.from_axolotl` (the keys of axolotl's schema, ``src/axolotl/utils/schemas/``).

- Precision: axolotl loads the model in the training dtype, with no fp32 master copy: 'bf16' → ``bf16: true``,
  'fp32' → ``bf16: false``; the mixed precisions (fp32 weights + autocast) have no axolotl setting.
- Adapters: ``adapter: lora`` / ``qlora`` (+ ``load_in_4bit``; 8-bit: ``adapter: lora`` + ``load_in_8bit``),
  ``lora_r``, ``lora_alpha``, ``lora_dropout``, ``lora_target_linear`` (all-linear) or ``lora_target_modules``,
  ``peft_use_dora``, ``peft_use_rslora``, ``lora_modules_to_save``, ``peft_layers_to_transform``; axolotl's 4-bit is
  nf4 + double quantization computing in the load dtype, anything else goes in ``bnb_config_kwargs``;
  ``skip_prepare_model_for_kbit_training`` when the plan skips PEFT's k-bit preparation.
- Step: ``sequence_len``, ``micro_batch_size``, ``gradient_accumulation_steps``, ``gradient_checkpointing``
  (+ ``gradient_checkpointing_kwargs``), ``optimizer``, ``flash_attention`` / ``sdp_attention`` /
  ``eager_attention``, ``sample_packing``, ``activation_offloading``, ``torch_compile``, Liger through its plugin.
- Sharding: ``deepspeed`` as an inline config (as the TRL export), or ``fsdp: [full_shard, auto_wrap]`` with
  ``fsdp_config.fsdp_offload_params``; the GPU count is the launcher's.
"""

from __future__ import annotations

from typing import Any

from app.core.request import PlanRequest
from app.exporters.base import Export, model_name, set_given
from app.exporters.trl import deepspeed_inline, version_notes

ATTENTION_KEYS = {"flash_attention_2": "flash_attention", "sdpa": "sdp_attention", "eager": "eager_attention"}
LIGER_PLUGIN = "axolotl.integrations.liger.LigerPlugin"
LIGER_FLAGS = ("liger_rope", "liger_rms_norm", "liger_glu_activation", "liger_fused_linear_cross_entropy")
"""axolotl's Liger plugin options (``src/axolotl/integrations/liger/args.py``): every kernel transformers'
``use_liger_kernel`` applies."""


def axolotl_config(req: PlanRequest) -> Export:
    """The plan as an axolotl YAML (module docstring); settings axolotl has no key for are listed."""
    tr, lo, q, hw = req.training, req.lora, req.quantization, req.hardware
    unexpressed: list[str] = []
    data: dict[str, Any] = {"base_model": model_name(req)}
    if tr.precision in ("bf16-mixed", "fp16-mixed"):
        unexpressed.append(f"precision {tr.precision!r} (axolotl loads the weights in the training dtype, no fp32 "
                           "master copy): written as bf16")
    data["bf16"] = tr.precision != "fp32"
    if tr.precision == "fp32":
        data["fp16"] = False
    if req.uses_adapter:
        data["adapter"] = "qlora" if req.quantized and not q.load_in_8bit else "lora"
        if req.quantized:
            data["load_in_8bit" if q.load_in_8bit else "load_in_4bit"] = True
            if not q.load_in_8bit:
                kwargs = _bnb_kwargs(req, "bfloat16" if data["bf16"] else "float32")
                if kwargs:
                    data["bnb_config_kwargs"] = kwargs
            if not q.prepare_kbit:
                data["skip_prepare_model_for_kbit_training"] = True
        data |= {"lora_r": lo.r, "lora_alpha": lo.lora_alpha, "lora_dropout": lo.lora_dropout}
        if lo.target_modules == "all-linear":
            data["lora_target_linear"] = True
        else:
            set_given(data, [("lora_target_modules", lo.target_modules)])
        set_given(data, [("lora_target_parameters", lo.target_parameters), ("lora_modules_to_save", lo.modules_to_save),
                         ("peft_layers_to_transform", lo.layers_to_transform), ("peft_use_dora", req.uses_dora),
                         ("peft_use_rslora", lo.use_rslora)])
        if lo.bias != "none":
            unexpressed.append(f"lora.bias {lo.bias!r} (axolotl's LoraConfig has bias 'none')")
    data |= {"sequence_len": tr.seq_len, "micro_batch_size": tr.micro_batch_size,
             "gradient_accumulation_steps": tr.gradient_accumulation_steps,
             "gradient_checkpointing": tr.gradient_checkpointing, "optimizer": tr.optim}
    if tr.gradient_checkpointing and tr.gradient_checkpointing_kwargs.use_reentrant is not None:
        data["gradient_checkpointing_kwargs"] = {"use_reentrant": tr.gradient_checkpointing_kwargs.use_reentrant}
    if tr.attn_implementation:
        data[ATTENTION_KEYS[tr.attn_implementation]] = True
    if tr.packing:
        data["sample_packing"] = True
    if tr.padding_free:
        unexpressed.append("training.padding_free (axolotl packs with sample_packing instead)")
    for key in ("activation_offloading", "torch_compile"):
        if getattr(tr, key):
            data[key] = True
    if tr.use_liger_kernel:
        data["plugins"] = [LIGER_PLUGIN]
        data |= dict.fromkeys(LIGER_FLAGS, True)
    if hw.sharding.startswith("zero"):
        data["deepspeed"] = deepspeed_inline(req)
    elif hw.sharding == "fsdp":
        data["fsdp"] = ["full_shard", "auto_wrap"]
        if hw.offload_param == "cpu":
            data["fsdp_config"] = {"fsdp_offload_params": True}
    unexpressed += version_notes(req)
    n = hw.num_gpus
    run = (f"accelerate launch --num_processes {n} -m axolotl.cli.train config.yml" if n > 1
           else "axolotl train config.yml")
    return Export(f"axolotl config: {run}", "config.yml", data, unexpressed)


def _bnb_kwargs(req: PlanRequest, load_dtype: str) -> dict[str, Any]:
    """``bnb_config_kwargs`` for what differs from axolotl's 4-bit defaults (nf4, double quantization, compute in
    the load dtype, uint8 storage)."""
    q = req.quantization
    out: dict[str, Any] = {}
    if q.bnb_4bit_quant_type != "nf4":
        out["bnb_4bit_quant_type"] = q.bnb_4bit_quant_type
    if not q.bnb_4bit_use_double_quant:
        out["bnb_4bit_use_double_quant"] = False
    if q.bnb_4bit_compute_dtype != load_dtype:
        out["bnb_4bit_compute_dtype"] = q.bnb_4bit_compute_dtype
    if q.bnb_4bit_quant_storage != "uint8":
        out["bnb_4bit_quant_storage"] = q.bnb_4bit_quant_storage
    return out
