"""One row of ``published_peak_memory.csv`` → the PlanRequest of that run, or the reason it cannot be one.

The CSV (``app/accuracy/data``, see its README) gives every setting its source states, per row. A row is mapped when
its settings can be known:

- its ``framework`` column names a trainer the planner has a ``training.framework`` value for
  (:data:`FRAMEWORKS`; a trainer with no value is skipped with that reason); the settings of torchtune's and
  litgpt's own recipes come from :mod:`app.accuracy.recipes`;
- a model the planner knows (:mod:`app.accuracy.models`: a catalog model, a shape-for-shape equal one, one given
  by its ``config.json`` — outside the hand-written rules through the generic path —, or Qwen (v1) through a
  qwen2-shaped ``config.json``);
- a setup the planner can express (bitsandbytes quantization, a known ZeRO stage or FSDP, CPU offload through
  ``hardware.offload_*``).

The published figure is compared on the counter its source read (:data:`COUNTER`): ``allocated``
(``torch.cuda.max_memory_allocated``) → ``memory.peak``; ``reserved`` (``max_memory_reserved``) → peak + the
allocator reserve (reserved memory never holds the CUDA context); ``nvidia-smi`` (NVML, monitors) and ``unstated`` →
``memory.total``; ``weights`` (``model.get_memory_footprint()``) → ``memory.weights``. ``OOM`` rows are checked
for the verdict only: the planner must say the run does not fit the card.

Pure Python (app.core only); deterministic.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from app.accuracy.models import row_model
from app.accuracy.recipes import (
    PEFT_README_LORA_DROPOUT,
    PERSONAL_COPILOT_SOURCE,
    litgpt_settings,
    peft_examples_settings,
    peft_readme_seq_len,
    personal_copilot_settings,
    torchtune_kind,
    torchtune_training,
)
from app.accuracy.skip import Skip
from app.core import EstimateResult, PlanRequest, estimate
from app.core.catalog import model_config
from app.core.litgpt import LITGPT_FRAMEWORKS
from app.core.request import Framework

CSV_PATH = Path(__file__).resolve().parent / "data" / "published_peak_memory.csv"
GIB = 2**30

# CSV framework column → training.framework, and why that trainer's recipe is the one replayed.
FRAMEWORKS: dict[str, tuple[str | None, str]] = {
    "HF Trainer": ("hf-trainer", ""),
    "HF Trainer + PEFT": ("hf-trainer", ""),
    "HF Trainer + Accelerate FSDP": ("hf-trainer", ""),
    "Qwen finetune.py (HF Trainer + PEFT; DeepSpeed for multi-GPU)": ("hf-trainer", "Qwen's finetune.py subclasses "
                                                                      "transformers.Trainer"),
    "artidoro/qlora (HF Trainer + PEFT + bnb)": ("hf-trainer", ""),
    "bitsandbytes + PEFT (artidoro/qlora)": ("hf-trainer", ""),
    "PEFT + Accelerate": ("hf-trainer", "a plain Accelerate loop over a PEFT model: the HF recipe's model and step"),
    "PEFT benchmark (plain PyTorch loop)": ("hf-trainer", "a plain PyTorch loop over a PEFT model: the HF recipe's "
                                           "model and step"),
    "transformers + bitsandbytes": ("hf-trainer", ""),
    "TRL SFTTrainer + PEFT + Accelerate": ("trl", ""),
    "torchtune": ("torchtune", ""),
    "litgpt": ("litgpt", ""),
    "lit-gpt": ("lit-gpt", ""),
    "lit-gpt (Lightning Fabric)": ("lit-gpt", ""),
    "OpenAI internal (model parallel, V100s)": (None, "closed code: its recipe cannot be known"),
    "OpenAI internal": (None, "closed code: its recipe cannot be known"),
}

# LoRA target words of the CSV (HF short names; torchtune's output_proj and MLP; litgpt's lora_projection,
# lora_mlp and lora_head) → HF module names.
TARGET_TOKENS: dict[str, tuple[str, ...]] = {
    "q": ("q_proj",), "k": ("k_proj",), "v": ("v_proj",), "o": ("o_proj",), "output_proj": ("o_proj",),
    "proj": ("o_proj",), "up": ("up_proj",), "gate": ("gate_proj",), "down": ("down_proj",),
    "mlp": ("gate_proj", "up_proj", "down_proj"), "head": ("lm_head",),
}

# (substring of the CSV's gpu column, catalog id), first match wins.
GPU_MAP = (
    ("L40S", "nvidia-l40s"),
    ("H100", "nvidia-h100-sxm-80gb"),
    ("A100-SXM4 80GB", "nvidia-a100-80gb"),
    ("A100-SXM4 40GB", "nvidia-a100-40gb"),
    ("A100 80GB", "nvidia-a100-80gb"),
    ("A100 (80GB", "nvidia-a100-80gb"),
    ("A100 40GB", "nvidia-a100-40gb"),
    ("A10G", "nvidia-a10g"),
    ("A6000-class", "nvidia-rtx-a6000"),
    ("40GB-class", "nvidia-a100-40gb"),
    ("24GB-class", "nvidia-rtx-4090"),
    ("A6000", "nvidia-rtx-a6000"),
    ("V100 16GB", "nvidia-v100-16gb"),
    ("RTX 4090", "nvidia-rtx-4090"),
)
ASSUMED_GPU = "nvidia-a100-80gb"

# The measured counter → the planner figure it is compared with.
COUNTER = {
    "allocated": "peak",
    "reserved": "peak + allocator reserve",
    "nvidia-smi": "total",
    "unstated": "total",
    "weights": "weights",
    "init": "weights + quant constants + adapters",
}
NOT_A_STEP = ("weights", "init")
"""Kinds compared on static memory, outside the training-step medians."""


@dataclass
class Mapped:
    """A mapped row: its request, the counter it is compared on and (after :func:`run`) the planner's figures."""

    row: dict[str, str]
    req: PlanRequest
    model_label: str
    kind: str
    published_gib: float | None  # None for an OOM row (only the verdict is compared)
    notes: list[str] = field(default_factory=list)
    via_config: bool = False
    result: EstimateResult | None = None
    ours: dict[str, float] = field(default_factory=dict)
    predicted_fits: bool | None = None

    @property
    def oom(self) -> bool:
        return self.row["outcome"] == "OOM"

    @property
    def error(self) -> float | None:
        """(ours − published) / published on the row's counter; None for OOM rows."""
        if self.published_gib is None or not self.ours:
            return None
        return (self.ours["match"] - self.published_gib) / self.published_gib


def read_rows(path: Path = CSV_PATH) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ----------------------------------------------------------------------------------------------- parsing


def _first_int(text: str, what: str) -> int:
    m = re.search(r"\d+", text)
    if not m:
        raise Skip("setting missing or unparsable", f"{what}={text!r}")
    return int(m.group())


def _seq_len(text: str) -> int:
    nums = [int(x) for x in re.findall(r"\d+", text)]
    if not nums:
        raise Skip("sequence length not stated", f"seq_len={text!r}")
    return max(nums)  # '<=768' -> 768: the longest batch decides the peak


def _grad_accum(row: dict[str, str], micro_batch: int) -> int:
    """The CSV's gradient accumulation: a count, or lit-gpt's ``batch_size // micro_batch_size`` ("128/micro_batch":
    lit-gpt 8641822 ``finetune/lora.py``: ``batch_size = 128``, ``gradient_accumulation_iters = batch_size //
    micro_batch_size``); 1 where the column is empty (litgpt and torchtune rows take their configs' values in
    :mod:`app.accuracy.recipes`)."""
    text = row["grad_accum"].strip()
    if m := re.fullmatch(r"(\d+)\s*/\s*micro_batch", text):
        return max(int(m.group(1)) // micro_batch, 1)
    return int(text) if text.isdigit() else 1


def _measure_kind(text: str) -> str:
    t = text.lower()
    if "get_memory_footprint" in t:
        return "weights"
    if "max_memory_reserved" in t:
        return "reserved"
    if "max_memory_allocated" in t or "active_bytes" in t:
        return "allocated"
    if any(s in t for s in ("nvidia-smi", "nvml", "screenshot", "monitor")):
        return "nvidia-smi"
    return "unstated"


def _targets(text: str) -> list[str] | str | None:
    t = text.strip()
    if not t or t.lower().startswith("peft default"):
        return None
    if "all-linear" in t or "all linear" in t or t.startswith("c_attn,c_proj,w1,w2"):
        # Qwen-1: c_attn (fused qkv) + attn/mlp c_proj + w1 + w2 = every linear layer except lm_head
        return "all-linear"
    out: list[str] = []
    for tok in re.split(r"[,\s+]+", re.sub(r"\(.*?\)", "", t).replace("output head", "head")):
        if not tok:
            continue
        if tok.lower() in TARGET_TOKENS:
            out += [name for name in TARGET_TOKENS[tok.lower()] if name not in out]
        elif "_" in tok:  # the model's own module name (gpt_bigcode's c_attn, c_fc), as PEFT's target_modules
            out += [tok] if tok not in out else []
        else:
            raise Skip("LoRA targets not mappable", t)
    return out


def _optim(text: str) -> str:
    t = text.lower()
    if "paged_adamw_32bit" in t:
        return "paged_adamw_32bit"
    if "8bit" in t:
        return "adamw_bnb_8bit"
    if "adafactor" in t:
        return "adafactor"
    return "adamw_torch"  # 'AdamW (torch)', 'AdamW (HF default)' (HF Trainer's default is adamw_torch)


def _gpu(text: str, notes: list[str]) -> str:
    for key, gid in GPU_MAP:
        if key in text:
            return gid
    notes.append(f"GPU {text or 'not given'!r}: {ASSUMED_GPU} assumed (only the cuBLAS workspace depends on it)")
    return ASSUMED_GPU


def _sharding(row: dict[str, str]) -> dict[str, Any]:
    """hardware fields (num_gpus, sharding, offload_*) of the row's parallelism column."""
    par = row["parallelism"]
    low = par.lower()
    n = int(row["n_gpus"] or 1)
    if "stage not stated" in low or low.startswith("single (script uses deepspeed"):
        raise Skip("DeepSpeed stage not stated (Qwen's script versions use ZeRO-2 or ZeRO-3)", par)
    hw: dict[str, Any] = {"num_gpus": n, "sharding": "none"}
    if low.startswith("single") or not low:
        hw["num_gpus"] = 1
    else:
        for key, mode in (("zero-3", "zero3"), ("zero-2", "zero2"), ("zero-1", "zero1"), ("fsdp", "fsdp"),
                          ("ddp", "ddp")):
            if key in low:
                hw["sharding"] = mode
                break
        else:
            raise Skip("parallelism not mappable", par)
    if "offload" in low and "no offload" not in low:
        if "optimizer" in low:
            hw["offload_optimizer"] = "cpu"
        if "param" in low:
            # FSDP CPUOffload(offload_params=True) also runs the optimizer step on the CPU
            hw["offload_param"] = "cpu"
            if hw["sharding"] == "fsdp":
                hw["offload_optimizer"] = "cpu"
    return hw


def _framework(row: dict[str, str], notes: list[str], stand_in: str | None) -> str:
    name = row["framework"]
    if name not in FRAMEWORKS:
        raise Skip("framework not in the mapping (app/accuracy/rows.py FRAMEWORKS)", name)
    value, why = FRAMEWORKS[name]
    if value is None:
        raise Skip("framework's recipe cannot be known", f"{name}: {why}")
    if value not in get_args(Framework):
        if stand_in is None:
            raise Skip(f"framework '{value}' has no training.framework value yet "
                       f"({', '.join(get_args(Framework))})", name)
        notes.append(f"{name}: no training.framework '{value}'; estimated with '{stand_in}' instead")
        return stand_in
    if why:
        notes.append(f"{name}: training.framework '{value}' ({why})")
    return value


def map_row(row: dict[str, str], stand_in: str | None = None) -> Mapped:
    """PlanRequest for one CSV row, or raise Skip with the reason. ``stand_in``: the training.framework to use for
    a trainer the planner has no value for (bench/published_check.py --stand-in; never in the served table)."""
    if row["outcome"] not in ("measured", "OOM"):
        raise Skip(f"no measured value (outcome {row['outcome']})")
    notes: list[str] = []
    framework = _framework(row, notes, stand_in)
    if row["method"].startswith("inference") or ("model init only" in row["method"] and framework != "torchtune"):
        raise Skip("not a training step (inference, or memory after model init)", row["method"])
    model, label, via_config = row_model(row["model"], notes)

    method_text = row["method"]
    kind = _measure_kind(row["measures"])
    quant = row["quant"]
    if "gptq" in quant.lower():
        raise Skip("GPTQ int4 base weights: the planner models bitsandbytes only", quant)
    init_only = framework == "torchtune" and "model init only" in method_text
    if framework == "torchtune":
        kind = "init" if init_only else torchtune_kind(row["measures"], notes)

    gpu_id = _gpu(row["gpu"], notes)
    published = None if row["outcome"] == "OOM" else float(row["value_gib"])
    if method_text.startswith("weights only"):
        if kind != "weights":
            raise Skip("weights-only figure that is not a footprint", row["measures"])
        return _weights_row(row, model, label, quant, gpu_id, framework, notes, published, via_config)

    method = ("full" if method_text.startswith("FFT") else "qlora" if method_text.startswith("QLoRA")
              else "dora" if method_text.startswith("DoRA") else "lora" if method_text.startswith("LoRA") else None)
    if method is None:
        raise Skip("method not mappable", method_text)
    hardware = {"gpu": gpu_id, **_sharding(row)}
    sharding = hardware["sharding"]

    lora: dict[str, Any] = {}
    qspec: dict[str, Any] = {}
    if method != "full":
        lora["r"] = _first_int(row["lora_r"], "lora_r")
        if row["lora_alpha"]:
            lora["lora_alpha"] = float(_first_int(row["lora_alpha"], "lora_alpha"))
        lora["target_modules"] = _targets(row["lora_targets"])
        if "modules_to_save" in method_text or "embeddings" in method_text:
            lora["modules_to_save"] = ["embed_tokens", "lm_head"]
    if method == "qlora":
        q = quant.lower()
        if "nf4" not in q:
            raise Skip("4-bit type not stated", quant)
        qspec = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": "double" in q and "no double" not in q,
                 "bnb_4bit_compute_dtype": "bfloat16"}
        if "quant_storage bf16" in q:
            qspec["bnb_4bit_quant_storage"] = "bfloat16"
        if sharding in ("zero3", "fsdp") and framework != "torchtune":
            # TRL SFTTrainer skips prepare_model_for_kbit_training for sharded QLoRA (Params4bit on cpu/meta)
            qspec["prepare_kbit"] = False
            notes.append("sharded QLoRA: TRL skips prepare_model_for_kbit_training (no fp32 upcast)")

    wd = row["weight_dtype"].lower()
    precision = "fp16-mixed" if "fp16 amp" in wd else "fp32" if wd.startswith("fp32") else "bf16"
    if row["source_id"] == "PEFT-docs-70B" and method != "qlora" and sharding == "fsdp":
        # peft examples/sft/utils.py loads torch_dtype=float32 unless a quant storage dtype is set; FSDP
        # mixed precision keeps fp32 shards (ZeRO-3 instead casts the module to bf16).
        precision = "bf16-mixed"
        notes.append("peft examples/sft loads fp32 without quantization; FSDP keeps fp32 shards -> bf16-mixed")

    attn = row["attn"].lower()  # not stated: transformers' default for the model (sdpa; eager for gemma2)
    if not row["grad_ckpt"]:
        notes.append("gradient checkpointing not given: off assumed")
    script_seq = peft_readme_seq_len(row, notes)
    if not row["seq_len"].strip() and not init_only and script_seq is None:
        raise Skip("sequence length not stated", row["seq_note"][:80])
    training: dict[str, Any] = {
        "framework": framework,
        "precision": precision,
        "optim": _optim(row["optimizer"]),
        # memory after model init does not depend on the batch (a placeholder batch of 1 × 2048 tokens)
        "micro_batch_size": 1 if init_only else _first_int(row["micro_batch"], "micro_batch"),
        "seq_len": 2048 if init_only else script_seq or _seq_len(row["seq_len"]),
        "gradient_checkpointing": row["grad_ckpt"] == "on",
        "attn_implementation": ("flash_attention_2" if "flash" in attn else "eager" if "eager" in attn
                                else "sdpa" if "sdpa" in attn else None),
    }
    if "packing=true" in row["seq_note"].lower().replace(" ", ""):
        training["packing"] = True
    if row["compile"] == "on":
        training["torch_compile"] = True
    training["gradient_accumulation_steps"] = _grad_accum(row, training["micro_batch_size"])
    if framework == "torchtune":
        torchtune_training(row, training, hardware, init_only, notes)
    if not row["seq_len"].strip().isdigit() and not init_only and script_seq is None:
        notes.append(f"seq_len {row['seq_len']!r}: upper bound used ({row['seq_note']})")

    if published is not None:
        m = re.search(r"total across (\d+) GPUs", row["scope"])
        if m:
            published /= int(m.group(1))
            notes.append(f"published value is a total over {m.group(1)} GPUs: divided by {m.group(1)}")
        if "upper" in row["unit_certainty"].lower() or re.match(r"^\s*[\d.]+\s*-\s*[\d.]+", row["value"]):
            notes.append(f"published range {row['value']!r}: value_gib is its upper end ({row['notes'][:70]})")
        if kind == "reserved" and "99th pct" in row["notes"]:
            pct = re.search(r"99th pct[^;]*?([\d.]+)\s*GiB", row["notes"])
            if pct:
                notes.append(f"99th-percentile step reserved {pct.group(1)} GiB (max includes eval generation)")

    if framework in LITGPT_FRAMEWORKS:
        model_type = (model["config"]["model_type"] if isinstance(model, dict)
                      else model_config(model)["model_type"])
        litgpt_settings(row, method, lora, training, notes, model_type)
    if row["source_id"] == "PEFT-docs-70B":
        peft_examples_settings(method, lora, training, hardware, notes)
    if row["source_id"] == PERSONAL_COPILOT_SOURCE:
        personal_copilot_settings(method, training, notes)
    if script_seq is not None and method != "full":
        lora["lora_dropout"] = PEFT_README_LORA_DROPOUT
    versions: dict[str, Any] = {}
    if row["source_id"] == "QWEN-README":
        # README 'Profiling of Memory and Speed': "we use CUDA 11.8 and Pytorch 2.0"; finetune.py LoraArguments:
        # lora_dropout 0.05 (the finetune/*.sh scripts do not set it)
        versions["torch_version"] = "2.0"
        if method != "full":
            lora["lora_dropout"] = 0.05
        notes.append("Qwen README: PyTorch 2.0 (torch_version '2.0': two foreach AdamW intermediates); "
                     "finetune.py lora_dropout 0.05")
    req = PlanRequest(model=model, method=method, lora=lora, quantization=qspec, training=training,
                      hardware=hardware, **versions)
    return Mapped(row, req, label, kind, published, notes, via_config)


def _weights_row(row: dict[str, str], model: Any, label: str, quant: str, gpu_id: str, framework: str,
                 notes: list[str], published: float | None, via_config: bool) -> Mapped:
    qspec: dict[str, Any] = {}
    if "int8" in quant or "8bit" in quant:
        method, qspec = "qlora", {"load_in_8bit": True, "prepare_kbit": False}
    elif "4-bit" in quant or "4bit" in quant:
        qt = "nf4" if "nf4" in quant.lower() else "fp4"  # BitsAndBytesConfig default: fp4, no double quant
        method = "qlora"
        qspec = {"bnb_4bit_quant_type": qt, "bnb_4bit_use_double_quant": "double" in quant.lower(),
                 "prepare_kbit": False}
    else:
        method = "full"
    notes.append("weights-only row: compared on memory.weights; not in the training-step medians")
    req = PlanRequest(model=model, method=method, quantization=qspec,
                      training={"precision": "bf16", "framework": framework}, hardware={"gpu": gpu_id})
    return Mapped(row, req, label, "weights", published, notes, via_config)


# ----------------------------------------------------------------------------------------------- running


STEP_COUNTERS = ("allocated", "reserved", "nvidia-smi", "unstated")
"""Counters read during training steps (not after model init, not a weights-only footprint)."""
BELOW_FLOOR = ("published figure below the stated settings' own weights, gradients and optimizer states (a run "
               "of these settings cannot have measured it)")


def persistent_bytes(res: EstimateResult) -> int:
    """Bytes alive together at every ``optimizer.step()`` of the stated run, whatever its activations: weights,
    quantization constants, adapters, gradients and optimizer states (per GPU, as the result reports them). Exact
    counts, so a published step figure below them is not of the stated settings: litgpt's config hub lists
    Llama-3.2-1B full fine-tuning on one A10G at 8.70 GB, but litgpt's untied 1,498,482,688 parameters in
    ``bf16-true`` with torch AdamW hold 2 + 2 + 2·2 = 8 bytes each, 11.99 GB, before any activation."""
    mem = res.memory
    return (mem.weights + mem.quantization_constants + mem.adapter_weights + mem.gradients
            + mem.optimizer_states)


def run(mp: Mapped) -> None:
    """Estimate the row's request; fill ``ours`` (GiB) and, for OOM rows, ``predicted_fits``."""
    res = estimate(mp.req)
    mp.result = res
    mem = res.memory
    if mp.kind in STEP_COUNTERS and mp.published_gib is not None:
        floor = persistent_bytes(res)
        if mp.published_gib * GIB < floor:
            raise Skip(BELOW_FLOOR, f"{mp.published_gib:.2f} GiB published < {floor / GIB:.2f} GiB of weights, "
                       "gradients and optimizer states for these settings")
    by_key = {b.key: b.bytes for b in res.breakdown}
    rsv = by_key.get("overhead/allocator_reserve", 0)
    match = {"allocated": mem.peak, "reserved": mem.peak + rsv, "nvidia-smi": mem.total, "unstated": mem.total,
             "weights": mem.weights,
             "init": mem.weights + mem.quantization_constants + mem.adapter_weights}[mp.kind]
    mp.ours = {
        "peak": mem.peak / GIB,
        "total": mem.total / GIB,
        "match": match / GIB,
        "static": (mem.weights + mem.quantization_constants + mem.adapter_weights) / GIB,
        "grads": mem.gradients / GIB,
        "optim": mem.optimizer_states / GIB,
        "acts": mem.activations / GIB,
        "ctx": by_key.get("overhead/cuda_context", 0) / GIB,
        "rsv": rsv / GIB,
    }
    grads_at_peak = mem.gradients if res.peak.phase == "optimizer" else 0
    # ZeRO-3/FSDP gathered layers + cuBLAS workspace: the rest of the peak
    mp.ours["other"] = (mem.peak - mem.weights - mem.quantization_constants - mem.adapter_weights
                        - mem.optimizer_states - mem.activations - grads_at_peak) / GIB
    if mp.oom:
        fit = next((f for f in res.fits if f.gpu == mp.req.hardware.gpu), None)
        mp.predicted_fits = fit.fits if fit is not None else None
    if res.peak.provisional:
        mp.notes.append("peak.provisional: no traced activation fit for this model and these settings (the generic "
                        "path's fit is off, failed or still running): its analytic peak is compared")
    if mp.via_config:
        mp.notes.append(f"{mp.model_label}: our parameter count {res.parameters.total / 1e9:.2f}B "
                        f"(CSV params_b {float(mp.row['params_b'] or 0):.2f}B)")


def settings_text(req: PlanRequest) -> str:
    """A one-line summary of a request ('r8 q,v nf4+dq mb4 s2048 gc+ sdpa bf16 aw_torch a100-80 2xzero3')."""
    t, h = req.training, req.hardware
    parts = []
    if req.method != "full":
        tm = req.lora.target_modules
        tgt = ("default" if tm is None else "all-lin" if tm == "all-linear"
               else ",".join(x.removesuffix("_proj") for x in tm) if isinstance(tm, list) else str(tm))
        if req.lora.modules_to_save:
            tgt += "+emb/head"
        parts.append(f"r{req.lora.r} {tgt}")
    if req.quantized:
        q = req.quantization
        dq = "+dq" if q.bnb_4bit_use_double_quant else ""
        parts.append("int8" if q.load_in_8bit else f"{q.bnb_4bit_quant_type}{dq}")
    parts.append(f"mb{t.micro_batch_size} s{t.seq_len} gc{'+' if t.gradient_checkpointing else '-'}")
    parts.append({"flash_attention_2": "fa2", "sdpa": "sdpa", "eager": "eager", None: "default"}[t.attn_implementation])
    parts.append(t.precision)
    parts.append(t.optim.replace("adamw_", "aw_"))
    switches = [name for name, on in (("packing", t.packing), ("compile", t.torch_compile),
                                      ("liger", t.use_liger_kernel)) if on]
    parts += switches
    gpu_short = h.gpu.removeprefix("nvidia-").replace("-sxm", "").replace("-80gb", "80").replace("-40gb", "40")
    offload = "+offload" if "cpu" in (h.offload_optimizer, h.offload_param) else ""
    parts.append(gpu_short + (f" {h.num_gpus}x{h.sharding}{offload}" if h.num_gpus > 1 or h.sharding != "none"
                              else ""))
    return " ".join(parts)
