"""torchtune recipe configs (``tune run <recipe> --config <family>/<name>``: ``recipes/configs/*/*.yaml``) → a full
PlanRequest body, framework 'torchtune'.

Keys and defaults as torchtune v0.4.0 reads them (pytorch/torchtune @ tag v0.4.0, the release app/core/torchtune.py
models):

- the recipe: ``recipes/lora_finetune_single_device.py``, ``lora_finetune_distributed.py``,
  ``full_finetune_single_device.py``, ``full_finetune_distributed.py``. Each reads ``cfg.model``, ``cfg.batch_size``,
  ``cfg.gradient_accumulation_steps``, ``cfg.dtype``, ``cfg.optimizer`` and ``cfg.loss`` without a default (OmegaConf
  stops on a missing key: refused here naming it); ``enable_activation_checkpointing`` and
  ``enable_activation_offloading`` default to false (``cfg.get``), offloading without checkpointing is a
  RuntimeError; ``dataset.packed`` defaults to false (a list of datasets is never packed); ``compile`` (false);
  ``optimizer_in_bwd`` only in the full recipes; ``fsdp_cpu_offload`` (false) only in the distributed ones,
  ``custom_sharded_layers`` only in ``full_finetune_distributed``. ``training.get_dtype``
  (``training/precision.py``): ``dtype`` bf16 / fp32, null → fp32; fp16 is refused by every recipe.
- which recipe a file is for: torchtune names a single-device recipe's config ``*_single_device`` or
  ``*_low_memory``; ``<size>B_full`` / ``_lora`` / ``_qlora`` / ``_dora`` / ``_qat_full`` configs are the distributed
  recipes' (FSDP2, ``tune run --nproc_per_node N``), as are files with a key only those read (``fsdp_cpu_offload``,
  …). A file named otherwise is read as single-device, and said so.
- the model: ``torchtune/models/{llama2,llama3,llama3_1,llama3_2,qwen2_5,mistral,gemma}/_model_builders.py``:
  ``lora_<model>`` builders (``lora_attn_modules`` required, ``apply_lora_to_mlp`` / ``apply_lora_to_output``
  false, ``lora_rank`` 8, ``lora_alpha`` 16, ``lora_dropout`` 0.0, ``use_dora`` false, ``quantize_base`` false),
  ``qlora_<model>`` = ``partial(lora_<model>, quantize_base=True)`` (qwen2_5 has none: ``quantize_base: True``); the
  llama3_2 1B/3B and qwen2_5 0.5B–3B builders refuse ``apply_lora_to_output`` (tied output,
  ``_component_builders.py``), gemma's take no such argument, and ``lora_llama3_1_405b`` has no ``use_dora``.
- the loss: ``CEWithChunkedOutputLoss(num_output_chunks=8)`` (``modules/loss/ce_chunked_output_loss.py``; the recipe
  calls ``model.set_num_output_chunks`` with it) or ``torch.nn.CrossEntropyLoss`` (``num_output_chunks`` 0).
- the sequence: ``tokenizer.max_seq_len`` truncates each sample; packed datasets (``datasets/_packed.py``) fill rows
  of exactly ``max_seq_len`` and need it set (``PackedDataset requires a max_seq_len``); unpacked batches are padded
  to their longest sample (``padded_collate_sft``), so ``max_seq_len`` is the upper bound the estimate takes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.core.torchtune import MLP_NAMES, TT_LORA_NAMES
from app.importers.common import SET_GPU_COUNT, ConfigImportError, Draft, ImportNote, bool_key, positive_int
from app.importers.tune_run import TuneRun, load_config

BUILDERS: dict[str, str] = {
    "llama2_7b": "meta-llama/Llama-2-7b-hf", "llama2_13b": "meta-llama/Llama-2-13b-hf",
    "llama2_70b": "meta-llama/Llama-2-70b-hf", "llama3_8b": "meta-llama/Meta-Llama-3-8B",
    "llama3_70b": "meta-llama/Meta-Llama-3-70B", "llama3_1_8b": "meta-llama/Llama-3.1-8B",
    "llama3_1_70b": "meta-llama/Llama-3.1-70B", "llama3_1_405b": "meta-llama/Llama-3.1-405B",
    "llama3_2_1b": "meta-llama/Llama-3.2-1B", "llama3_2_3b": "meta-llama/Llama-3.2-3B",
    "qwen2_5_0_5b": "Qwen/Qwen2.5-0.5B", "qwen2_5_1_5b_base": "Qwen/Qwen2.5-1.5B",
    "qwen2_5_1_5b_instruct": "Qwen/Qwen2.5-1.5B", "qwen2_5_3b": "Qwen/Qwen2.5-3B",
    "qwen2_5_7b_base": "Qwen/Qwen2.5-7B", "qwen2_5_7b_instruct": "Qwen/Qwen2.5-7B-Instruct",
    "qwen2_5_14b_base": "Qwen/Qwen2.5-14B", "qwen2_5_14b_instruct": "Qwen/Qwen2.5-14B",
    "qwen2_5_32b_base": "Qwen/Qwen2.5-32B", "qwen2_5_32b_instruct": "Qwen/Qwen2.5-32B",
    "qwen2_5_72b_base": "Qwen/Qwen2.5-72B", "qwen2_5_72b_instruct": "Qwen/Qwen2.5-72B",
    "mistral_7b": "mistralai/Mistral-7B-v0.1", "gemma_2b": "google/gemma-2b", "gemma_7b": "google/gemma-7b",
}
"""torchtune's Llama, Qwen2.5, Mistral and Gemma builders (``torchtune.models.<family>.<builder>``) → the Hub id of the
same architecture (the Llama configs load the Instruct checkpoints, whose shapes are the base model's; ``mistral_7b``'s
32000-token vocabulary and 32768 positions are Mistral-7B-v0.1's). Code Llama's are in :data:`CODE_LLAMA2`. Other
families (qwen2, phi3, llama3_2_vision, …) are not mapped: their builders are not traced here
(bench/torchtune_grid.py); torchtune 0.4.0 has no gemma2 builders."""
CODE_LLAMA2: dict[str, tuple[str, int, int, int, int, int]] = {
    # builder: (Hub id of the same shapes, hidden, layers, heads, key/value heads, intermediate)
    "code_llama2_7b": ("codellama/CodeLlama-7b-hf", 4096, 32, 32, 32, 11008),
    "code_llama2_13b": ("codellama/CodeLlama-13b-hf", 5120, 40, 40, 40, 13824),
    "code_llama2_70b": ("codellama/CodeLlama-70b-hf", 8192, 80, 64, 8, 28672),
}
"""torchtune 0.4.0 ``models/code_llama2/_model_builders.py``: the ``llama2`` / ``lora_llama2`` component builders
with a 32,016-token vocabulary, ``max_seq_len`` 16384 (each of the cloned layers' RoPE caches has that many rows)
and the shapes above (the LoRA builders leave ``intermediate_dim`` to ``scale_hidden_dim_for_mlp``, which gives the
same 11008 for 7B). The planner gets a Llama ``config.json`` with these numbers (the catalog has no Code Llama)."""


def code_llama2_config(builder: str) -> dict[str, Any]:
    """The HF Llama ``config.json`` of a torchtune Code Llama builder (:data:`CODE_LLAMA2`)."""
    hub_id, hidden, layers, heads, kv_heads, intermediate = CODE_LLAMA2[builder]
    return {"_name_or_path": hub_id, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_act": "silu", "hidden_size": hidden, "intermediate_size": intermediate,
            "max_position_embeddings": 16384, "num_attention_heads": heads, "num_hidden_layers": layers,
            "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 32016}
MAX_SEQ_LEN: dict[str, int] = {
    "qwen2_5_1_5b_instruct": 32768, "qwen2_5_14b_instruct": 32768, "qwen2_5_32b_instruct": 32768,
    "qwen2_5_72b_instruct": 32768,
}
"""Builders whose ``max_seq_len`` (the rows of every layer's RoPE cache, app/core/torchtune.py rope_cache_bytes)
differs from the mapped Hub config's ``max_position_embeddings`` (131072 for the base checkpoints):
``torchtune/models/qwen2_5/_model_builders.py``. The body then carries that config with the builder's value."""
TIED = ("llama3_2_1b", "llama3_2_3b", "qwen2_5_0_5b", "qwen2_5_1_5b_base", "qwen2_5_1_5b_instruct", "qwen2_5_3b",
        "gemma_2b", "gemma_7b")
"""Builders with a tied output: the llama3_2 and qwen2_5 ones refuse ``apply_lora_to_output``, gemma's take no such
argument."""
NO_DORA = ("llama3_1_405b",)
ATTN_TARGETS = {tt: hf for hf, tt in TT_LORA_NAMES.items()}  # torchtune lora_attn_modules → HF module names
LORA_DEFAULTS: dict[str, Any] = {"apply_lora_to_mlp": False, "apply_lora_to_output": False, "lora_rank": 8,
                                 "lora_alpha": 16, "lora_dropout": 0.0, "use_dora": False}
OPTIMIZERS: dict[str, str] = {
    "torch.optim.AdamW": "adamw_torch", "torch.optim.Adam": "adamw_torch", "torch.optim.SGD": "sgd",
    "bitsandbytes.optim.AdamW8bit": "adamw_bnb_8bit", "bitsandbytes.optim.PagedAdamW8bit": "paged_adamw_8bit",
    "bitsandbytes.optim.PagedAdamW": "paged_adamw_32bit", "bitsandbytes.optim.PagedAdamW32bit": "paged_adamw_32bit",
}
"""``optimizer._component_`` → ``training.optim`` (same states: torch Adam keeps AdamW's two; ``fused: True`` on
torch AdamW → adamw_torch_fused). torchao's low-bit optimizers (``torchao.prototype.low_bit_optim.AdamW8bit``, …)
are not modelled."""
OPTIMIZER_IGNORED = frozenset({"_component_", "lr", "weight_decay", "betas", "eps", "foreach", "maximize",
                               "capturable", "differentiable", "nesterov", "dampening", "fused", "momentum",
                               "amsgrad", "min_8bit_size", "percentile_clipping", "block_wise", "is_paged"})
CHUNKED_LOSS = "torchtune.modules.loss.CEWithChunkedOutputLoss"
PLAIN_LOSS = "torch.nn.CrossEntropyLoss"
DEFAULT_CHUNKS = 8
"""``CEWithChunkedOutputLoss.__init__(num_output_chunks=8)`` (v0.4.0)."""
REQUIRED = ("model", "batch_size", "gradient_accumulation_steps", "dtype", "optimizer", "loss")
DISTRIBUTED_ONLY = frozenset({"fsdp_cpu_offload", "fsdp_reshard_after_forward", "custom_sharded_layers", "ac_mode",
                              "ac_option"})
# Keys only torchtune configs spell (detect.py reads a file with any of them, or a `model._component_`, as torchtune).
TORCHTUNE_MARKERS = frozenset({"checkpointer", "metric_logger", "enable_activation_checkpointing",
                               "enable_activation_offloading", "log_peak_memory_stats", "optimizer_in_bwd",
                               "max_steps_per_epoch", "save_adapter_weights_only", "fsdp_cpu_offload",
                               "custom_sharded_layers"})
IGNORED = frozenset({"checkpointer", "resume_from_checkpoint", "save_adapter_weights_only", "seed", "shuffle",
                     "lr_scheduler", "epochs", "max_steps_per_epoch", "output_dir", "metric_logger",
                     "log_every_n_steps", "log_peak_memory_stats", "device", "profiler", "clip_grad_norm",
                     "collate_fn", "low_cpu_ram"})
_KD = "knowledge distillation (knowledge_distillation_*: a frozen teacher model and its logits) is not modelled"
UNSUPPORTED = {
    "quantizer": "quantization-aware training (qat_distributed: fake-quantized weights and activations) is not "
                 "modelled",
    "teacher_model": _KD, "teacher_checkpointer": _KD, "kd_loss": _KD, "kd_ratio": _KD,
}
STALE = {"fsdp": "fsdp_cpu_offload", "memory_efficient_fsdp_wrap": "custom_sharded_layers"}
"""Keys older configs still carry that v0.4.0's recipes no longer read → the key that took their place."""
_HANDLED = frozenset({*REQUIRED, "tokenizer", "dataset", "enable_activation_checkpointing",
                      "enable_activation_offloading", "compile", "optimizer_in_bwd", "fsdp_cpu_offload",
                      "custom_sharded_layers"})
_CONFIG_NAME = re.compile(r"\d+(\.\d+)?B_(q?lora|q?dora|full|qat_full)(_[a-z0-9_]+)?$")


def builder_config(base: str) -> dict[str, Any] | None:
    """The ``config.json`` the planner gets for torchtune builder ``base`` when its Hub id alone does not carry the
    builder's shapes (Code Llama: :data:`CODE_LLAMA2`; a different ``max_seq_len``: :data:`MAX_SEQ_LEN`), else None
    (the Hub id of :data:`BUILDERS`)."""
    if base in CODE_LLAMA2:
        return code_llama2_config(base)
    if base in MAX_SEQ_LEN:
        from app.core.catalog import model_config  # lazy: keeps `--help` light

        return {**model_config(BUILDERS[base]), "max_position_embeddings": MAX_SEQ_LEN[base]}
    return None


def _component(data: Mapping[str, Any], key: str, source: str) -> str:
    section = data.get(key)
    name = section.get("_component_") if isinstance(section, Mapping) else None
    if not isinstance(name, str) or not name.strip():
        raise ConfigImportError(source, f"{key}._component_", f"expected the dotted path of a torchtune component, "
                                f"got {name!r}")
    return name.strip()


def _launched(run: TuneRun, draft: Draft) -> bool:
    """Whether a ``tune run`` command runs its recipe distributed: torchrun options (``--nproc_per_node`` ×
    ``--nnodes`` processes → ``hardware.num_gpus``); a ``*_single_device`` recipe under them is refused, as
    ``tune run`` does."""
    if not run.distributed:
        if run.recipe.endswith("_distributed"):
            draft.note("--nproc_per_node", "note", f"{run.recipe} without torchrun options runs in one process: "
                       "one GPU")
        return False
    if run.recipe.endswith("_single_device"):
        raise ConfigImportError(draft.source, "--nproc_per_node", f"torchtune: 'Recipe {run.recipe} does not support "
                                "distributed training.'")
    draft.hardware["num_gpus"] = (run.nproc_per_node or 1) * (run.nnodes or 1)
    draft.note("--nproc_per_node", "note", f"{draft.hardware['num_gpus']} processes (--nproc_per_node × --nnodes): "
               "hardware.num_gpus; FSDP2 (hardware.sharding 'fsdp')")
    return True


def _distributed(data: Mapping[str, Any], draft: Draft) -> bool:
    """Whether the file is a distributed recipe's config (see the module docstring); noted either way."""
    stem = Path(draft.source).stem
    if stem.endswith(("_single_device", "_low_memory")):
        return False
    given = sorted(DISTRIBUTED_ONLY & set(data))
    if given or _CONFIG_NAME.search(stem):
        why = f"{', '.join(given)} (read only by the distributed recipes)" if given else f"the config name {stem!r}"
        draft.note(given[0] if given else "recipe", "note", f"a *_distributed recipe's config, from {why}: FSDP2 "
                   "(hardware.sharding 'fsdp'); the GPU count comes from `tune run --nproc_per_node N`: "
                   f"{SET_GPU_COUNT}")
        return True
    draft.note("recipe", "note", "the file name does not say which recipe (torchtune names single-device configs "
               "*_single_device / *_low_memory): read as a single-device recipe's config; for a *_distributed recipe "
               "set hardware.sharding fsdp and hardware.num_gpus N (--sharding fsdp --num-gpus N)")
    return False


def _model(data: Mapping[str, Any], draft: Draft) -> None:
    """``model._component_`` and the LoRA builder arguments → model, method, lora (and quantization for qlora)."""
    component = _component(data, "model", draft.source)
    name = component.rsplit(".", 1)[-1]
    adapter, quantize = name.startswith(("lora_", "qlora_")), name.startswith("qlora_")
    base = name.split("_", 1)[1] if adapter else name
    if not component.startswith("torchtune.models.") or base not in {**BUILDERS, **CODE_LLAMA2}:
        raise ConfigImportError(draft.source, "model._component_", f"{component!r}: the planner models torchtune's "
                                f"Llama, Code Llama, Qwen2.5, Mistral and Gemma builders only "
                                f"({', '.join([*BUILDERS, *CODE_LLAMA2])}, and their lora_ / qlora_ variants)")
    model = data["model"]
    config = builder_config(base)
    if config is None:
        draft.model(BUILDERS[base], "model._component_", None)
    else:
        draft.body["model"] = {"config": config}
    if base in CODE_LLAMA2:
        draft.note("model._component_", "note", f"{name}: torchtune's llama2 builder with Code Llama's shapes "
                   f"({CODE_LLAMA2[base][0]}: 32,016-token vocabulary, max_seq_len 16384)")
    if base in MAX_SEQ_LEN:
        rows = MAX_SEQ_LEN[base]
        draft.note("model._component_", "note", f"{name} builds max_seq_len {rows}: {BUILDERS[base]}'s config with "
                   f"max_position_embeddings {rows} (every layer's RoPE cache has that many rows)")
    if not adapter:
        draft.body["method"] = "full"
        for key in model:
            if key != "_component_":
                draft.note(f"model.{key}", "unknown", f"{name} takes no arguments")
        return
    values = {k: model.get(k, v) for k, v in LORA_DEFAULTS.items()}
    quantize = bool_key(model, "quantize_base", draft.source) if "quantize_base" in model else quantize
    for key in ("apply_lora_to_mlp", "apply_lora_to_output", "use_dora"):
        if not isinstance(values[key], bool):
            raise ConfigImportError(draft.source, f"model.{key}", f"expected true or false, got {values[key]!r}")
    if values["apply_lora_to_output"] and base in TIED:
        raise ConfigImportError(draft.source, "model.apply_lora_to_output", f"{name}'s output is tied to the "
                                "embeddings: torchtune's builder refuses apply_lora_to_output")
    if values["use_dora"] and base in NO_DORA:
        raise ConfigImportError(draft.source, "model.use_dora", f"{name} takes no use_dora argument")
    attn = model.get("lora_attn_modules")
    if not isinstance(attn, list) or not attn or any(m not in ATTN_TARGETS for m in attn):
        raise ConfigImportError(draft.source, "model.lora_attn_modules", f"expected a non-empty list of "
                                f"{', '.join(ATTN_TARGETS)} (torchtune's LORA_ATTN_MODULES), got {attn!r}")
    rank = positive_int(values["lora_rank"], draft.source, "model.lora_rank")
    for key in ("lora_alpha", "lora_dropout"):
        if isinstance(values[key], bool) or not isinstance(values[key], (int, float)):
            raise ConfigImportError(draft.source, f"model.{key}", f"expected a number, got {values[key]!r}")
    targets = [ATTN_TARGETS[m] for m in ATTN_TARGETS if m in attn]  # the planner's order: q, k, v, o
    targets += list(MLP_NAMES) if values["apply_lora_to_mlp"] else []
    targets += ["lm_head"] if values["apply_lora_to_output"] else []
    method = ("qdora" if quantize else "dora") if values["use_dora"] else ("qlora" if quantize else "lora")
    draft.body["method"] = method
    draft.lora.update(r=rank, lora_alpha=values["lora_alpha"], lora_dropout=values["lora_dropout"],
                      target_modules=targets)
    fields = {"lora_rank": ("lora.r", rank), "lora_alpha": ("lora.lora_alpha", values["lora_alpha"]),
              "lora_dropout": ("lora.lora_dropout", values["lora_dropout"]), "use_dora": ("method", method),
              "apply_lora_to_mlp": ("lora.target_modules", targets),
              "apply_lora_to_output": ("lora.target_modules", targets)}
    for key, (field, value) in fields.items():
        if key not in model:
            draft.notes.append(ImportNote(draft.source, f"model.{key}", "assumed", f"{name}'s default "
                                          f"{key}={LORA_DEFAULTS[key]!r}", field=field, value=value))
    for key in model:
        if key not in LORA_DEFAULTS and key not in ("_component_", "lora_attn_modules", "quantize_base"):
            draft.note(f"model.{key}", "unknown", f"not an argument of {name}")


def _sequence(data: Mapping[str, Any], draft: Draft) -> None:
    """``tokenizer.max_seq_len`` → seq_len, ``dataset.packed`` → packing."""
    from app.core.request import TrainingSpec

    tokenizer = data.get("tokenizer") if isinstance(data.get("tokenizer"), Mapping) else {}
    dataset = data.get("dataset")
    packed = False
    if isinstance(dataset, list):
        draft.note("dataset", "note", "a list of datasets (ConcatDataset): torchtune never packs it")
    elif isinstance(dataset, Mapping):
        packed = bool(bool_key(dataset, "packed", draft.source))
    draft.training["packing"] = packed
    length = tokenizer.get("max_seq_len")
    if length is None:
        if packed:
            raise ConfigImportError(draft.source, "tokenizer.max_seq_len", "dataset.packed needs it (torchtune: "
                                    "'PackedDataset requires a max_seq_len to be set on the tokenizer')")
        default = TrainingSpec.model_fields["seq_len"].default
        draft.assumed("tokenizer.max_seq_len", "training.seq_len", default, "null: torchtune truncates no sample and "
                      "pads each batch to its longest (padded_collate_sft); the planner's default length is assumed: "
                      "set --seq-len to your longest tokenized sample")
        return
    draft.training["seq_len"] = positive_int(length, draft.source, "tokenizer.max_seq_len")
    if not packed:
        draft.note("tokenizer.max_seq_len", "note", "unpacked batches are padded to their longest sample, truncated "
                   "at max_seq_len: the estimate is for full-length batches (an upper bound)")


def _optimizer(data: Mapping[str, Any], draft: Draft) -> None:
    component = _component(data, "optimizer", draft.source)
    options = data["optimizer"]
    optim = OPTIMIZERS.get(component)
    if optim is None:
        draft.note("optimizer._component_", "unsupported", f"{component!r} is not modelled (modelled: "
                   f"{', '.join(OPTIMIZERS)}); training.optim left at the planner's default adamw_torch")
    else:
        fused = bool_key(options, "fused", draft.source)
        if optim == "adamw_torch" and fused:
            optim = "adamw_torch_fused"
        if component == "torch.optim.Adam":
            draft.note("optimizer._component_", "note", "torch.optim.Adam keeps AdamW's two states: adamw_torch")
        if optim == "sgd":
            momentum = options.get("momentum", 0)
            if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
                raise ConfigImportError(draft.source, "optimizer.momentum", f"expected a number in [0, 1), got "
                                        f"{momentum!r}")
            draft.training["momentum"] = momentum
        draft.training["optim"] = optim
    if options.get("amsgrad"):
        draft.note("optimizer.amsgrad", "unsupported", "amsgrad's third state (max_exp_avg_sq) is not modelled")
    for key in options:
        if key not in OPTIMIZER_IGNORED:
            draft.note(f"optimizer.{key}", "unknown", f"not an argument the planner knows of {component}")


def _loss(data: Mapping[str, Any], draft: Draft) -> None:
    component = _component(data, "loss", draft.source)
    if component == PLAIN_LOSS:
        draft.training["num_output_chunks"] = 0
    elif component == CHUNKED_LOSS:
        chunks = data["loss"].get("num_output_chunks", DEFAULT_CHUNKS)
        draft.training["num_output_chunks"] = positive_int(chunks, draft.source, "loss.num_output_chunks")
    else:
        raise ConfigImportError(draft.source, "loss._component_", f"{component!r}: the planner models {CHUNKED_LOSS} "
                                f"and {PLAIN_LOSS}")
    read = {"_component_", "ignore_index", "num_output_chunks" if component == CHUNKED_LOSS else "reduction"}
    for key in data["loss"]:
        if key not in read:
            draft.note(f"loss.{key}", "unknown", f"not an argument the planner knows of {component}")


def _fsdp(data: Mapping[str, Any], draft: Draft, full: bool) -> None:
    """A distributed recipe: FSDP2 (``training/_distributed.py shard_model``), ``fsdp_cpu_offload``,
    ``custom_sharded_layers`` (full_finetune_distributed only), and the sharding switches the planner does not model."""
    draft.hardware["sharding"] = "fsdp"
    if bool_key(data, "fsdp_cpu_offload", draft.source):
        # FSDP2 CPUOffloadPolicy (training/_distributed.py shard_model): parameters, gradients and the optimizer
        # step on the CPU
        draft.hardware.update(offload_param="cpu", offload_optimizer="cpu")
    layers = data.get("custom_sharded_layers")
    if layers and not full:
        draft.note("custom_sharded_layers", "ignored", "lora_finetune_distributed does not read it")
    elif layers:
        if not isinstance(layers, list) or any(m not in ("tok_embeddings", "output") for m in layers):
            raise ConfigImportError(draft.source, "custom_sharded_layers", f"the planner models 'tok_embeddings' and "
                                    f"'output' as FSDP units of their own, got {layers!r}")
        draft.training["custom_sharded_layers"] = list(dict.fromkeys(layers))
    if data.get("fsdp_reshard_after_forward") is False:
        draft.note("fsdp_reshard_after_forward", "unsupported", "layers kept gathered after forward are not "
                   "modelled (reshard_after_forward=True is)")
    for key in ("ac_mode", "ac_option"):
        if data.get(key) is not None:
            draft.note(key, "unsupported", f"selective activation checkpointing is not modelled (value "
                       f"{data[key]!r})")


def from_torchtune(data: Mapping[str, Any] | TuneRun, source: str = "torchtune config",
                   base_dir: Path | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    """A torchtune recipe config, or a ``tune run`` command naming one (:mod:`.tune_run`: the config read from
    ``base_dir``, the command's overrides applied, its recipe and torchrun options deciding distribution) → (body,
    notes); see the module docstring for each key."""
    run = data if isinstance(data, TuneRun) else None
    if run is not None:
        data, path = load_config(run, source, base_dir)
    # torchtune's MultiHeadAttention calls scaled_dot_product_attention itself (modules/attention_utils.py; flex
    # attention for packed batches): never transformers' eager attention
    draft = Draft(source, training={"framework": "torchtune", "attn_implementation": "sdpa"})
    for key in REQUIRED:
        if key not in data or (data[key] is None and key != "dtype"):
            raise ConfigImportError(source, key, f"torchtune's recipes read cfg.{key} without a default: the key "
                                    "is required")
    if run is not None:
        draft.note("--config", "note", f"{path} with the command's {len(run.overrides)} overrides")
    distributed = _launched(run, draft) if run is not None else _distributed(data, draft)
    _model(data, draft)
    full = draft.body["method"] == "full"
    tr = draft.training
    dtype = data["dtype"]
    if dtype not in (None, "bf16", "fp32"):
        raise ConfigImportError(source, "dtype", f"{dtype!r}: torchtune's recipes train in bf16 or fp32 (fp16 is "
                                "refused: 'full fp16 training is not supported with this recipe')")
    tr["precision"] = dtype or "fp32"
    if dtype is None:
        draft.note("dtype", "note", "null: training.get_dtype(None) is fp32")
    if draft.body["method"] in ("qlora", "qdora"):  # torchao NF4: double-quantized scalers, dequantized to the dtype
        draft.quant.update(load_in_8bit=False, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           prepare_kbit=False,
                           bnb_4bit_compute_dtype="bfloat16" if tr["precision"] == "bf16" else "float32")
    tr["micro_batch_size"] = positive_int(data["batch_size"], source, "batch_size")
    tr["gradient_accumulation_steps"] = positive_int(data["gradient_accumulation_steps"], source,
                                                     "gradient_accumulation_steps")
    _sequence(data, draft)
    checkpointing = bool_key(data, "enable_activation_checkpointing", source)
    if checkpointing is None:
        draft.assumed("enable_activation_checkpointing", "training.gradient_checkpointing", False,
                      "the recipes' default (cfg.get('enable_activation_checkpointing', False))")
    else:
        tr["gradient_checkpointing"] = checkpointing
    offloading = bool(bool_key(data, "enable_activation_offloading", source))
    if offloading and not checkpointing:
        raise ConfigImportError(source, "enable_activation_offloading", "torchtune raises 'enable_activation_"
                                "offloading should only be True when enable_activation_checkpointing is True'")
    tr["activation_offloading"] = offloading
    compiled = bool_key(data, "compile", source)
    if compiled is None:
        draft.assumed("compile", "training.torch_compile", False, "the distributed recipes' default "
                      "(cfg.get('compile', False)); the single-device recipes read cfg.compile and stop without it")
    else:
        tr["torch_compile"] = compiled
    in_bwd = bool_key(data, "optimizer_in_bwd", source)
    if full:
        # passed through: with gradient_accumulation_steps > 1 the estimate refuses it, as the recipes do
        tr["optimizer_in_bwd"] = bool(in_bwd)
    elif "optimizer_in_bwd" in data:
        draft.note("optimizer_in_bwd", "ignored", "the LoRA recipes do not read it")
    _optimizer(data, draft)
    _loss(data, draft)
    if distributed:
        _fsdp(data, draft, full)
    else:
        for key in sorted(DISTRIBUTED_ONLY & set(data)):
            draft.note(key, "ignored", "read only by the distributed recipes")
    for key in data:
        if key in IGNORED:
            draft.note(key, "ignored", "does not affect per-GPU training memory")
        elif key in UNSUPPORTED:
            draft.note(key, "unsupported", UNSUPPORTED[key])
        elif key in STALE:
            draft.note(key, "ignored", f"torchtune v0.4.0's recipes do not read it (they read {STALE[key]})")
        elif key not in _HANDLED and key not in DISTRIBUTED_ONLY:
            draft.note(key, "unknown", "not a key torchtune v0.4.0's recipes read")
    for name, section in (("lora", draft.lora), ("quantization", draft.quant), ("training", tr),
                          ("hardware", draft.hardware)):
        if section:
            draft.body[name] = section
    return draft.body, draft.notes
