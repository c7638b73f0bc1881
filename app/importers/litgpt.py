"""litgpt fine-tuning configs (``litgpt finetune_lora --config config_hub/finetune/<model>/lora.yaml``, ``qlora.yaml``,
``full.yaml``) → a full PlanRequest body, framework 'litgpt'.

Keys and defaults as litgpt 0.4.13.dev1 (commit 00af8b0d) reads them: ``litgpt/finetune/lora.py`` ``setup()``
(``precision``, ``quantize``, ``devices``, ``lora_r`` 8, ``lora_alpha`` 16, ``lora_dropout`` 0.05, ``lora_query``
true, ``lora_key`` false, ``lora_value`` true, ``lora_projection`` / ``lora_mlp`` / ``lora_head`` false,
``optimizer`` 'AdamW'), ``litgpt/args.py`` ``TrainArgs`` (``micro_batch_size``, ``max_seq_length``):

- ``checkpoint_dir`` 'checkpoints/<org>/<name>' (``litgpt download`` lays Hub checkpoints out so) → the Hub id;
- ``precision`` 'bf16-true' → bf16 (every parameter bf16), 'bf16-mixed' → bf16-mixed, '32-true' → fp32 (litgpt's
  default: bf16-true where the GPU supports it, ``get_default_supported_precision``);
- ``quantize`` 'bnb.nf4' / 'bnb.nf4-dq' / 'bnb.fp4' / 'bnb.fp4-dq' → qlora (bitsandbytes quant type, double quant);
  litgpt then trains with ``bnb.optim.PagedAdamW`` whatever ``optimizer`` says;
- the six ``lora_*`` flags → HF target modules (q/k/v_proj, o_proj, gate/up/down_proj, lm_head, in the model's
  own names); where the model fuses q, k, v into one linear and not all three flags are on, ``lora.enable_lora``
  says which parts ``LoRAQKVLinear`` adapts; a file without any ``lora_*`` key is ``finetune_full``'s → full
  fine-tuning;
- ``train.micro_batch_size``; ``train.max_seq_length`` → ``seq_len`` (batches are padded to their longest sample,
  truncated at max_seq_length);
- ``gradient_accumulation_steps`` is derived, as ``TrainArgs.gradient_accumulation_iters(devices)`` does
  (``litgpt/args.py``): ``global_batch_size // devices // micro_batch_size``, each quotient asserted positive;
  ``devices`` 1 when the file leaves it out (the ``setup()`` default; ``parse_devices`` turns 'auto' / -1 into the
  machine's GPU count), and the finetune scripts' ``TrainArgs`` default ``global_batch_size`` 16, ``micro_batch_size``
  1. (litgpt 0.5 divides by ``devices * num_nodes``; this commit ignores ``num_nodes``.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.core.litgpt import lora_targets
from app.importers.common import ConfigImportError, ImportNote, NoteKind, positive_int, resolve_model

LORA_DEFAULTS: dict[str, Any] = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "lora_query": True,
                                 "lora_key": False, "lora_value": True, "lora_projection": False, "lora_mlp": False,
                                 "lora_head": False}
TARGETS = {"lora_query": ("q_proj",), "lora_key": ("k_proj",), "lora_value": ("v_proj",),
           "lora_projection": ("o_proj",), "lora_mlp": ("gate_proj", "up_proj", "down_proj"),
           "lora_head": ("lm_head",)}
# Keys only litgpt's finetune configs spell (detect.py reads a file with any of them as litgpt).
LITGPT_MARKERS = frozenset({"checkpoint_dir", "lora_query", "lora_key", "lora_value", "lora_projection",
                            "lora_mlp", "lora_head", "logger_name"})
PRECISIONS = {"bf16-true": "bf16", "bf16-mixed": "bf16-mixed", "32-true": "fp32"}
QUANTIZE = {"bnb.nf4": ("nf4", False), "bnb.nf4-dq": ("nf4", True), "bnb.fp4": ("fp4", False),
            "bnb.fp4-dq": ("fp4", True)}
IGNORED = frozenset({"out_dir", "num_nodes", "data", "eval", "logger_name", "seed", "access_token", "resume"})
TRAIN_IGNORED = frozenset({"save_interval", "log_interval", "lr_warmup_steps",
                           "lr_warmup_fraction", "epochs", "max_tokens", "max_steps", "max_norm", "min_lr",
                           "learning_rate", "weight_decay", "beta1", "beta2"})


def _model_type(model: str | dict[str, Any]) -> str:
    from app.core.catalog import model_config  # lazy: keeps `--help` light

    cfg = model.get("config", {}) if isinstance(model, dict) else model_config(model)
    return str(cfg.get("model_type", ""))


GLOBAL_BATCH_SIZE = 16
"""``TrainArgs(global_batch_size=16, micro_batch_size=1, …)``: the default ``train`` of litgpt's finetune scripts
(``litgpt/finetune/lora.py``, ``full.py``, ``adapter.py``, ``adapter_v2.py`` ``setup()``, commit 00af8b0d)."""


def _accumulation(train: Mapping[str, Any], devices: Any, source: str, training: dict[str, Any],
                  notes: list[ImportNote]) -> None:
    """``training.gradient_accumulation_steps`` = ``TrainArgs.gradient_accumulation_iters(devices)``:
    ``global_batch_size // devices // micro_batch_size`` (litgpt/args.py, commit 00af8b0d); litgpt asserts both
    quotients positive, so a global batch smaller than one micro-batch per device is refused naming the key.
    ``devices`` 'auto' / -1 (``parse_devices``: the machine's GPU count) counts as one device, the estimate's."""
    micro = positive_int(training["micro_batch_size"], source, "train.micro_batch_size")
    given = train.get("global_batch_size")
    global_batch = GLOBAL_BATCH_SIZE if given is None else positive_int(given, source, "train.global_batch_size")
    ranks = int(devices) if isinstance(devices, str) and devices.isdigit() else devices
    if ranks in ("auto", -1):
        ranks = 1  # every GPU of the machine, unknown here: one, as the estimate (the 'devices' note says so)
    elif isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ConfigImportError(source, "devices", f"{devices!r}: litgpt's parse_devices takes 'auto' or a positive "
                                "integer")
    steps = global_batch // ranks // micro
    if steps < 1:
        raise ConfigImportError(source, "train.global_batch_size", f"{global_batch} // devices {ranks} // "
                                f"micro_batch_size {micro} is 0: litgpt asserts at least one micro-batch per step")
    training["gradient_accumulation_steps"] = steps
    formula = (f"global_batch_size // devices // micro_batch_size = {global_batch} // {ranks} // {micro} = {steps} "
               "(litgpt TrainArgs.gradient_accumulation_iters)")
    if given is None:
        notes.append(ImportNote(source, "train.global_batch_size", "assumed", f"the finetune scripts' default "
                                f"{GLOBAL_BATCH_SIZE}: {formula}", field="training.gradient_accumulation_steps",
                                value=steps))
    else:
        notes.append(ImportNote(source, "train.global_batch_size", "note", formula))


def from_litgpt(data: Mapping[str, Any], source: str = "litgpt config",
                base_dir: Path | None = None) -> tuple[dict[str, Any], list[ImportNote]]:
    notes: list[ImportNote] = []

    def note(key: str, kind: NoteKind, message: str, **kw: Any) -> None:
        notes.append(ImportNote(source, key, kind, message, **kw))

    body: dict[str, Any] = {}
    training: dict[str, Any] = {"framework": "litgpt", "gradient_checkpointing": False}
    ckpt = data.get("checkpoint_dir")
    if isinstance(ckpt, str) and ckpt.strip():
        hub = re.sub(r"^(\./)?checkpoints/", "", ckpt.strip().rstrip("/"))
        model, model_notes = resolve_model(hub, source, "checkpoint_dir", base_dir)
        notes += model_notes
        if model is not None:
            body["model"] = model
    precision = data.get("precision")
    if precision is None:
        note("precision", "assumed", "litgpt's default on a bf16-capable GPU: bf16-true", field="training.precision",
             value="bf16")
        precision = "bf16-true"
    if precision not in PRECISIONS:
        raise ConfigImportError(source, "precision", f"{precision!r} is not one of {', '.join(PRECISIONS)} "
                                "(16-bit float precisions are not modelled for litgpt)")
    training["precision"] = PRECISIONS[precision]

    quantize = data.get("quantize")
    if quantize is not None and quantize not in QUANTIZE:
        raise ConfigImportError(source, "quantize", f"{quantize!r} is not one of {', '.join(QUANTIZE)}")
    lora_keys = [k for k in LORA_DEFAULTS if k in data]
    if not lora_keys:
        if quantize is not None:
            raise ConfigImportError(source, "quantize", "a quantized model cannot be fully fine-tuned (no lora_* "
                                    "keys: this reads as finetune_full's config)")
        body["method"] = "full"
        note("lora_r", "note", "no lora_* keys: litgpt finetune_full (full fine-tuning)")
    else:
        body["method"] = "qlora" if quantize else "lora"
        values = {k: data.get(k, v) for k, v in LORA_DEFAULTS.items()}
        targets = [m for k, mods in TARGETS.items() if values[k] for m in mods]
        enable = None
        if isinstance(body.get("model"), str | dict):  # the model's own names for fused or renamed linears
            targets, enable = lora_targets(_model_type(body["model"]), targets)
        if not targets:
            raise ConfigImportError(source, "lora_query", "every lora_* target flag is false")
        body["lora"] = {"r": values["lora_r"], "lora_alpha": values["lora_alpha"],
                        "lora_dropout": values["lora_dropout"], "target_modules": targets}
        if enable is not None:  # LoRAQKVLinear's enable_lora on a fused q/k/v linear
            body["lora"]["enable_lora"] = enable
        for key in LORA_DEFAULTS:
            if key not in data:
                note(key, "assumed", f"finetune_lora's default {key} {LORA_DEFAULTS[key]!r}")
    if quantize:
        qt, dq = QUANTIZE[quantize]
        body["quantization"] = {"bnb_4bit_quant_type": qt, "bnb_4bit_use_double_quant": dq,
                                "bnb_4bit_compute_dtype": "bfloat16"}
        note("quantize", "note", "litgpt trains a quantized model with bnb.optim.PagedAdamW (32-bit)")

    devices = data.get("devices", 1)
    if devices not in (1, "1"):
        note("devices", "unsupported", f"devices {devices!r}: litgpt's FSDP strategy is not modelled; one GPU is "
             "estimated")
    train = data.get("train") or {}
    if not isinstance(train, Mapping):
        raise ConfigImportError(source, "train", f"expected a mapping, got {type(train).__name__}")
    for key, value in train.items():
        if key == "micro_batch_size":
            training["micro_batch_size"] = value
        elif key == "global_batch_size":
            continue  # read by _accumulation
        elif key == "max_seq_length":
            if value is None:
                note("train.max_seq_length", "assumed", "not set: the longest sample decides; the planner's "
                     "default seq_len is used")
            else:
                training["seq_len"] = value
        elif key == "tie_embeddings" and value:
            note("train.tie_embeddings", "unsupported", "finetune scripts refuse tie_embeddings")
        elif key not in TRAIN_IGNORED and key != "tie_embeddings":
            note(f"train.{key}", "unknown", "not a litgpt TrainArgs field")
    if "micro_batch_size" not in train:
        note("train.micro_batch_size", "assumed", "finetune_lora's default 1", field="training.micro_batch_size",
             value=1)
        training["micro_batch_size"] = 1
    _accumulation(train, devices, source, training, notes)
    optimizer = data.get("optimizer", "AdamW")
    name = optimizer.get("class_path", "") if isinstance(optimizer, Mapping) else str(optimizer)
    if name.rsplit(".", 1)[-1] != "AdamW":
        note("optimizer", "unsupported", f"{name!r}: torch AdamW is estimated")
    training["optim"] = "adamw_torch"
    for key in data:
        if key in IGNORED:
            note(key, "ignored", "does not change per-GPU training memory")
        elif key not in LORA_DEFAULTS and key not in {"checkpoint_dir", "precision", "quantize", "devices", "train",
                                                       "optimizer"}:
            note(key, "unknown", "not a litgpt finetune argument")
    body["training"] = training
    return body, notes
