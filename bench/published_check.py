"""Benchmark (not a test): the planner against published peak-memory figures of the Hugging Face recipe.

Reads ``/work/shared/data/published_peak_memory.csv`` (see that folder's README) and keeps the rows that

- come from the Hugging Face recipe (``framework`` in :data:`HF_FRAMEWORKS`: HF Trainer, PEFT +
  Accelerate, TRL SFTTrainer, transformers + bitsandbytes, Qwen's finetune.py, PEFT's benchmark loop);
  torchtune and litgpt rows are a different recipe and are skipped;
- report a measured value (``outcome == measured``);
- use a catalog model, or one whose architecture is shape-for-shape a catalog model
  (:data:`EQUIVALENTS`; a Qwen1.5/Qwen2 row would qualify only through an exact-size Qwen2.5 entry, and
  the file has none);
- use a setup the planner can express (bitsandbytes quantization, no CPU offload, a known ZeRO stage).

Each kept row becomes a :class:`PlanRequest` (method, r, targets, micro batch, seq len -- the upper bound
where the row gives one --, gradient checkpointing, precision, optimizer, GPU, num_gpus + sharding) and is
compared on the quantity the row measured:

- ``allocated`` (torch.cuda.max_memory_allocated)  vs ``memory.peak``;
- ``reserved`` (torch.cuda.max_memory_reserved)     vs ``memory.total - CUDA context`` (= peak + allocator
  reserve: reserved memory never contains the context);
- ``nvidia-smi`` (NVML / monitor screenshots)         vs ``memory.total``;
- ``weights`` (model.get_memory_footprint())          vs ``memory.weights`` (packed data, no absmax/SCB:
  they are not parameters or buffers);
- ``unstated`` (the source does not say)             vs ``memory.total`` (peak ratio shown too).

``value_gib`` is already GiB; values the source gives as a total over N GPUs are divided by N.

Supplement (``--no-supplement`` turns it off): the Qwen (v1) rows of Qwen's README (QWenLMHeadModel, not
in the catalog and with no exact Qwen2.5 equivalent) are run through a pasted ``config.json``: Qwen-1 is
Qwen2's layout with multi-head attention (qkv bias, SwiGLU, RMSNorm, untied embeddings), so a ``qwen2``
config with num_key_value_heads = num_attention_heads and intermediate_size = Qwen-1's ffn/2 has the same
tensors, except that PEFT sees q/k/v as one fused ``c_attn`` (LoRA A is r x h once instead of three times).
They are tabulated separately and kept out of the main medians; their seq-len sweeps (256..8192) isolate
the activation slope from the static terms.

Deterministic, CPU only, imports only ``app.core``:

    .venv/bin/python bench/published_check.py [--csv PATH] [--no-supplement]
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

from app.core import EstimateResult, PlanError, PlanRequest, estimate, model_configs  # noqa: E402

DEFAULT_CSV = Path("/work/shared/data/published_peak_memory.csv")
GIB = 2**30

HF_FRAMEWORKS = (
    "HF Trainer",
    "PEFT + Accelerate",
    "TRL SFTTrainer + PEFT + Accelerate",
    "transformers + bitsandbytes",
    "HF Trainer + PEFT",
    "Qwen finetune.py (HF Trainer + PEFT; DeepSpeed for multi-GPU)",
    "PEFT benchmark (plain PyTorch loop)",
)

# CSV model name -> (catalog id, why it is the same architecture).
EQUIVALENTS: dict[str, tuple[str, str]] = {
    "HuggingFaceTB/SmolLM-135M": (
        "HuggingFaceTB/SmolLM2-135M",
        "SmolLM-135M = SmolLM2-135M shapes (llama, 30L, h576, 9/3 heads, ffn 1536, vocab 49152, tied; "
        "134,515,008 params)",
    ),
}

# Qwen (v1) config.json values (hub Qwen/Qwen-*/config.json) as a qwen2 config: MHA, ffn = intermediate/2.
QWEN1: dict[str, dict[str, Any]] = {
    "Qwen-1.8B": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                      vocab_size=151936),
    "Qwen-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    vocab_size=151936),
    "Qwen-14B": dict(hidden_size=5120, intermediate_size=13696, num_hidden_layers=40, num_attention_heads=40,
                     vocab_size=152064),
    "Qwen-72B": dict(hidden_size=8192, intermediate_size=24576, num_hidden_layers=80, num_attention_heads=64,
                     vocab_size=152064),
}
QWEN1_NOTE = ("Qwen (v1) as a qwen2 config (MHA); PEFT's fused c_attn LoRA has 2·r·h fewer params per layer "
              "than our separate q/k/v; adapters were bf16 (PEFT 0.5 era) where we assume fp32")
NOT_IN_CATALOG_QWEN1 = ("Qwen (v1) QWenLMHeadModel: no exact Qwen2.5 equivalent (e.g. Qwen-7B 32L/h4096/MHA/ffn "
                        "11008 vs Qwen2.5-7B 28L/h3584/GQA-4/ffn 18944); mapped via config in the supplement")

TARGET_TOKENS = {
    "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "output_proj": "o_proj",
    "up": "up_proj", "gate": "gate_proj", "down": "down_proj",
}

# (substring of the CSV's gpu column, catalog id), first match wins.
GPU_MAP = (
    ("L40S", "nvidia-l40s"),
    ("H100", "nvidia-h100-sxm-80gb"),
    ("A100-SXM4 80GB", "nvidia-a100-80gb"),
    ("A100 80GB", "nvidia-a100-80gb"),
    ("A100 40GB", "nvidia-a100-40gb"),
    ("40GB-class", "nvidia-a100-40gb"),
    ("24GB-class", "nvidia-rtx-4090"),
    ("A6000", "nvidia-rtx-a6000"),
    ("V100 16GB", "nvidia-v100-16gb"),
    ("RTX 4090", "nvidia-rtx-4090"),
)
ASSUMED_GPU = "nvidia-a100-80gb"

MATCH_LABEL = {
    "allocated": "peak",
    "reserved": "peak+rsv",
    "nvidia-smi": "total",
    "unstated": "total",
    "weights": "weights",
}
KIND_ORDER = ("allocated", "reserved", "nvidia-smi", "unstated", "weights")


class Skip(Exception):
    """A row the check leaves out; ``reason`` groups the skip list."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Mapped:
    row: dict[str, str]
    req: PlanRequest
    model_label: str
    kind: str
    published_gib: float
    notes: list[str] = field(default_factory=list)
    supplement: bool = False
    result: EstimateResult | None = None

    # filled by run()
    ours: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.ours["match"] / self.published_gib


# ----------------------------------------------------------------------------------------------- parsing


def _first_int(text: str, what: str) -> int:
    m = re.search(r"\d+", text)
    if not m:
        raise Skip("setting missing or unparsable", f"{what}={text!r}")
    return int(m.group())


def _seq_len(text: str) -> int:
    nums = [int(x) for x in re.findall(r"\d+", text)]
    if not nums:
        raise Skip("setting missing or unparsable", f"seq_len={text!r}")
    return max(nums)  # '<=768' -> 768: the longest batch decides the peak


def _resolve_model(name: str) -> tuple[str, str]:
    """(catalog id, equivalence note) or raise Skip."""
    base = re.sub(r"\s*\(.*\)\s*$", "", name).strip()
    ids = model_configs()
    if base in ids:
        return base, ""
    by_name = {i.split("/")[-1].lower(): i for i in ids}
    if base.split("/")[-1].lower() in by_name:
        return by_name[base.split("/")[-1].lower()], ""
    if base in EQUIVALENTS:
        return EQUIVALENTS[base]
    if base in QWEN1:
        raise Skip(NOT_IN_CATALOG_QWEN1)
    family = base.split("/")[-1].split("-")[0].split("_")[0]
    raise Skip("model not in the catalog and no equivalent architecture (T5/mT0, BLOOM, BERT, StarCoder)",
               family)


def _measure_kind(text: str) -> str:
    t = text.lower()
    if "get_memory_footprint" in t:
        return "weights"
    if "max_memory_reserved" in t:
        return "reserved"
    if "max_memory_allocated" in t:
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
    out = []
    for tok in re.split(r"[,\s]+", re.sub(r"\(.*?\)", "", t)):
        if not tok:
            continue
        if tok not in TARGET_TOKENS:
            raise Skip("LoRA targets not mappable", t)
        out.append(TARGET_TOKENS[tok])
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


def _sharding(row: dict[str, str]) -> tuple[str, int]:
    par = row["parallelism"]
    low = par.lower()
    n = int(row["n_gpus"] or 1)
    if "offload" in low and "no offload" not in low:
        raise Skip("CPU offload (DeepSpeed/FSDP) is not modelled", par)
    if "stage not stated" in low or low.startswith("single (script uses deepspeed"):
        raise Skip("DeepSpeed stage not stated (Qwen's script versions use ZeRO-2 or ZeRO-3)", par)
    if low.startswith("single") or not low:
        return "none", 1
    for key, mode in (("zero-3", "zero3"), ("zero-2", "zero2"), ("zero-1", "zero1"), ("fsdp", "fsdp"),
                      ("ddp", "ddp")):
        if key in low:
            return mode, n
    raise Skip("parallelism not mappable", par)


def _other_blockers(row: dict[str, str]) -> str:
    """For a non-HF-recipe framework outside torchtune/litgpt: what else would keep the row out."""
    if row["framework"].startswith(("torchtune", "litgpt", "lit-gpt")):
        return ""
    out = [] if row["outcome"] == "measured" else [f"outcome {row['outcome']}"]
    try:
        _resolve_model(row["model"])
    except Skip:
        out.append("model not in the catalog")
    return "not in the requested list" + (f"; also {', '.join(out)}" if out else "")


def map_row(row: dict[str, str]) -> Mapped:
    """PlanRequest for one CSV row, or raise Skip with the reason."""
    if row["framework"] not in HF_FRAMEWORKS:
        raise Skip("framework is not the Hugging Face recipe (torchtune, litgpt, paper claims, ...)",
                   _other_blockers(row))
    if row["outcome"] != "measured":
        raise Skip(f"no measured value (outcome {row['outcome']})")
    notes: list[str] = []
    supplement = False
    base = re.sub(r"\s*\(.*\)\s*$", "", row["model"]).strip()
    model: str | dict[str, Any]
    if base in QWEN1:
        supplement = True
        cfg = {"model_type": "qwen2", "num_key_value_heads": QWEN1[base]["num_attention_heads"],
               "tie_word_embeddings": False, **QWEN1[base]}
        model, label = {"config": cfg}, f"{base} (cfg)"
        notes.append(QWEN1_NOTE)
    else:
        model, equiv = _resolve_model(row["model"])
        label = model
        if equiv:
            notes.append(equiv)

    method_text = row["method"]
    kind = _measure_kind(row["measures"])
    quant = row["quant"]
    if "gptq" in quant.lower():
        raise Skip("GPTQ int4 base weights: the planner models bitsandbytes only", quant)

    gpu_id = _gpu(row["gpu"], notes)
    lora: dict[str, Any] = {}
    qspec: dict[str, Any] = {}
    training: dict[str, Any] = {}

    if method_text.startswith("weights only"):
        if kind != "weights":
            raise Skip("weights-only figure that is not a footprint", row["measures"])
        if "int8" in quant or "8bit" in quant:
            method, qspec = "qlora", {"load_in_8bit": True, "prepare_kbit": False}
        elif "4-bit" in quant or "4bit" in quant:
            qt = "nf4" if "nf4" in quant.lower() else "fp4"  # BitsAndBytesConfig default: fp4, no double quant
            method = "qlora"
            qspec = {"bnb_4bit_quant_type": qt, "bnb_4bit_use_double_quant": "double" in quant.lower(),
                     "prepare_kbit": False}
        else:
            method = "full"
        training = {"precision": "bf16"}
        notes.append("weights-only row: peak/total columns are a default training step, not compared")
        req = PlanRequest(model=model, method=method, quantization=qspec, training=training,
                          hardware={"gpu": gpu_id})
        return Mapped(row, req, label, kind, float(row["value_gib"]), notes, supplement)

    if method_text.startswith("FFT"):
        method = "full"
    elif method_text.startswith("QLoRA"):
        method = "qlora"
    elif method_text.startswith("DoRA"):
        method = "dora"
    elif method_text.startswith("LoRA"):
        method = "lora"
    else:
        raise Skip("method not mappable", method_text)

    sharding, n_gpus = _sharding(row)

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
        qspec = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": "double" in q,
                 "bnb_4bit_compute_dtype": "bfloat16"}
        if "quant_storage bf16" in q:
            qspec["bnb_4bit_quant_storage"] = "bfloat16"
        if sharding in ("zero3", "fsdp"):
            # TRL SFTTrainer skips prepare_model_for_kbit_training for sharded QLoRA (Params4bit on cpu/meta)
            qspec["prepare_kbit"] = False
            notes.append("sharded QLoRA: TRL skips prepare_model_for_kbit_training (no fp32 upcast)")

    wd = row["weight_dtype"].lower()
    if "fp16 amp" in wd:
        precision = "fp16-mixed"
    elif wd.startswith("fp32"):
        precision = "fp32"
    else:
        precision = "bf16"
    if row["source_id"] == "PEFT-docs-70B" and method != "qlora" and sharding == "fsdp":
        # peft examples/sft/utils.py loads torch_dtype=float32 unless a quant storage dtype is set; FSDP
        # mixed precision keeps fp32 shards (ZeRO-3 instead casts the module to bf16).
        precision = "bf16-mixed"
        notes.append("peft examples/sft loads fp32 without quantization; FSDP keeps fp32 shards -> bf16-mixed")

    attn = row["attn"].lower()
    attn_impl = "flash_attention_2" if "flash" in attn else "eager" if "eager" in attn else "sdpa"
    if not row["grad_ckpt"]:
        notes.append("gradient checkpointing not given: off assumed")
    training = {
        "precision": precision,
        "optim": _optim(row["optimizer"]),
        "micro_batch_size": _first_int(row["micro_batch"], "micro_batch"),
        "seq_len": _seq_len(row["seq_len"]),
        "gradient_checkpointing": row["grad_ckpt"] == "on",
        "attn_implementation": attn_impl,
    }
    if not row["seq_len"].strip().isdigit():
        notes.append(f"seq_len {row['seq_len']!r}: upper bound used ({row['seq_note']})")

    published = float(row["value_gib"])
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

    req = PlanRequest(model=model, method=method, lora=lora, quantization=qspec, training=training,
                      hardware={"gpu": gpu_id, "num_gpus": n_gpus, "sharding": sharding})
    return Mapped(row, req, label, kind, published, notes, supplement)


# ----------------------------------------------------------------------------------------------- running


def run(mp: Mapped) -> None:
    res = estimate(mp.req)
    mp.result = res
    mem = res.memory
    by_key = {b.key: b.bytes for b in res.breakdown}
    ctx = by_key.get("overhead/cuda_context", 0)
    rsv = by_key.get("overhead/allocator_reserve", 0)
    match = {
        "allocated": mem.peak,
        "reserved": mem.peak + rsv,
        "nvidia-smi": mem.total,
        "unstated": mem.total,
        "weights": mem.weights,
    }[mp.kind]
    mp.ours = {
        "peak": mem.peak / GIB,
        "total": mem.total / GIB,
        "match": match / GIB,
        "static": (mem.weights + mem.quantization_constants + mem.adapter_weights) / GIB,
        "grads": mem.gradients / GIB,
        "optim": mem.optimizer_states / GIB,
        "acts": mem.activations / GIB,
        "ctx": ctx / GIB,
        "rsv": rsv / GIB,
    }
    grads_at_peak = mem.gradients if res.peak.phase == "optimizer" else 0
    # ZeRO-3/FSDP gathered layers + cuBLAS workspace: the rest of the peak
    mp.ours["other"] = (mem.peak - mem.weights - mem.quantization_constants - mem.adapter_weights
                        - mem.optimizer_states - mem.activations - grads_at_peak) / GIB
    if mp.supplement:
        csv_b = float(mp.row["params_b"] or 0)
        mp.notes.append(f"{mp.model_label}: our parameter count {res.parameters.total / 1e9:.2f}B "
                        f"(CSV params_b {csv_b:.2f}B)")


def settings(req: PlanRequest) -> str:
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
    parts.append({"flash_attention_2": "fa2", "sdpa": "sdpa", "eager": "eager"}[t.attn_implementation])
    parts.append(t.precision)
    parts.append(t.optim.replace("adamw_", "aw_"))
    gpu_short = h.gpu.removeprefix("nvidia-").replace("-sxm", "").replace("-80gb", "80").replace("-40gb", "40")
    parts.append(gpu_short + (f" {h.num_gpus}x{h.sharding}" if h.num_gpus > 1 or h.sharding != "none" else ""))
    return " ".join(parts)


def weights_settings(req: PlanRequest) -> str:
    if not req.quantized:
        return "weights only, 16-bit"
    q = req.quantization
    return "weights only, " + ("int8" if q.load_in_8bit else f"4-bit {q.bnb_4bit_quant_type}")


def method_label(mp: Mapped) -> str:
    if mp.kind == "weights":
        return "weights"
    m = mp.req.method
    return m + ("+emb" if mp.req.lora.modules_to_save else "")


# ----------------------------------------------------------------------------------------------- printing


def print_table(title: str, rows: list[Mapped]) -> None:
    print(f"\n{title}")
    print("ratio = ours(match)/published; match: allocated->peak, reserved->peak+allocator reserve "
          "(total - CUDA context), nvidia-smi/unstated->total, weights->memory.weights")
    hdr = (f"{'row':>4} {'model':<28} {'method':<9} {'settings':<62} {'pub GiB':>8} {'measures':<10} "
           f"{'peak':>7} {'total':>7} {'match':>8} {'ratio':>6}")
    print(hdr)
    print("-" * len(hdr))
    for mp in rows:
        st = weights_settings(mp.req) if mp.kind == "weights" else settings(mp.req)
        print(f"{mp.row['row_id']:>4} {mp.model_label[:28]:<28} {method_label(mp):<9} {st[:62]:<62} "
              f"{mp.published_gib:8.3f} {mp.kind:<10} {mp.ours['peak']:7.2f} {mp.ours['total']:7.2f} "
              f"{mp.ours['match']:8.3f} {mp.ratio:6.3f}")
    notes = [(mp.row["row_id"], n) for mp in rows for n in mp.notes]
    if notes:
        print("notes:")
        seen: dict[str, list[str]] = defaultdict(list)
        for rid, n in notes:
            seen[n].append(rid)
        for n, rids in seen.items():
            print(f"  rows {_ranges(rids)}: {n}")


def print_terms(title: str, rows: list[Mapped]) -> None:
    print(f"\n{title} (GiB per GPU). static = weights + quant constants + adapters; acts* = memory.activations "
          "(everything above the resident bytes at the peak phase: in backward it includes the gradients built "
          "so far); other = gathered ZeRO-3/FSDP layers + cuBLAS workspace; pub-match = what we miss")
    hdr = (f"{'row':>4} {'phase':<9} {'static':>7} {'optim':>6} {'grads':>6} {'acts*':>7} {'other':>6} "
           f"{'peak':>7} {'ctx':>5} {'rsv':>5} {'total':>7} {'pub':>7} {'pub-match':>9}")
    print(hdr)
    print("-" * len(hdr))
    for mp in rows:
        o = mp.ours
        phase = mp.result.peak.phase if mp.result else "?"
        print(f"{mp.row['row_id']:>4} {phase:<9} {o['static']:7.2f} {o['optim']:6.2f} {o['grads']:6.2f} "
              f"{o['acts']:7.2f} {o['other']:6.2f} {o['peak']:7.2f} {o['ctx']:5.2f} {o['rsv']:5.2f} "
              f"{o['total']:7.2f} {mp.published_gib:7.2f} {mp.published_gib - o['match']:9.2f}")


def print_summary(title: str, rows: list[Mapped]) -> None:
    print(f"\n{title}")
    by_kind: dict[str, list[Mapped]] = defaultdict(list)
    for mp in rows:
        by_kind[mp.kind].append(mp)
    for kind in KIND_ORDER:
        group = by_kind.get(kind)
        if not group:
            continue
        r = sorted(mp.ratio for mp in group)
        iqr = ""
        if len(r) >= 4:
            q = statistics.quantiles(r, n=4, method="inclusive")
            iqr = f", IQR {q[0]:.3f}-{q[2]:.3f}"
        d = [mp.published_gib - mp.ours["match"] for mp in group]
        print(f"  {kind:<10} ({MATCH_LABEL[kind]:<8}) n={len(r):>2}  median ratio {statistics.median(r):.3f}{iqr}, "
              f"range {r[0]:.3f}-{r[-1]:.3f}; published - ours: median {statistics.median(d):+.2f} GiB "
              f"(range {min(d):+.2f} to {max(d):+.2f})")
        ambiguous = [mp for mp in group if "ambiguous" in mp.row["unit"]]
        if ambiguous:
            alt = sorted(mp.ours["match"] / (mp.published_gib * 1e9 / GIB) for mp in ambiguous)
            print(f"  {'':<10} {'':<10} n={len(alt):>2}  unit ambiguous in the source: if it meant 1e9 B "
                  f"(GB), median ratio {statistics.median(alt):.3f}, range {alt[0]:.3f}-{alt[-1]:.3f}")
        if kind == "reserved":
            t = sorted(mp.ours["total"] / mp.published_gib for mp in group)
            print(f"  {'':<10} (total   ) n={len(t):>2}  median ratio {statistics.median(t):.3f}, "
                  f"range {t[0]:.3f}-{t[-1]:.3f} (total adds the CUDA context, which reserved never holds)")
        if kind == "unstated":
            p = sorted(mp.ours["peak"] / mp.published_gib for mp in group)
            print(f"  {'':<10} (peak    ) n={len(p):>2}  median ratio {statistics.median(p):.3f}, "
                  f"range {p[0]:.3f}-{p[-1]:.3f}")


def print_sweeps(rows: list[Mapped]) -> None:
    """Series that differ only in seq_len: published vs predicted growth (isolates the activation slope)."""
    series: dict[tuple, list[Mapped]] = defaultdict(list)
    for mp in rows:
        if mp.kind == "weights":
            continue
        t = mp.req.training
        key = (mp.model_label, method_label(mp), mp.req.lora.r, t.micro_batch_size, t.precision,
               mp.req.hardware.gpu, mp.req.hardware.num_gpus, mp.kind)
        series[key].append(mp)
    series = {k: sorted(v, key=lambda m: m.req.training.seq_len) for k, v in series.items() if len(v) >= 3}
    if not series:
        return
    print("\nseq-len sweeps: growth from the shortest sequence (GiB); ours = Δ match quantity, "
          "Δacts = our activation term's share")
    for (label, meth, *_rest), group in series.items():
        base = group[0]
        cells = []
        for mp in group[1:]:
            dp = mp.published_gib - base.published_gib
            do = mp.ours["match"] - base.ours["match"]
            cells.append(f"s{mp.req.training.seq_len}: pub {dp:+5.1f} ours {do:+5.1f}")
        first_last = group[-1]
        dp = first_last.published_gib - base.published_gib
        do = first_last.ours["match"] - base.ours["match"]
        da = first_last.ours["acts"] - base.ours["acts"]
        slope = f"ours/pub {do / dp:.2f}" if dp > 0.05 else "pub flat"
        print(f"  {label[:22]:<22} {meth:<8} s{base.req.training.seq_len}->s{first_last.req.training.seq_len}: "
              f"pub {dp:+5.1f}, ours {do:+5.1f} (Δacts {da:+5.1f}) {slope}")
        print(f"      {'; '.join(cells)}")


def _ranges(ids: list[str]) -> str:
    nums = sorted({int(i) for i in ids})
    out: list[str] = []
    start = prev = nums[0]
    for n in [*nums[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(out)


def print_skipped(skipped: list[tuple[dict[str, str], Skip]]) -> None:
    print(f"\nskipped rows ({len(skipped)}), grouped by reason:")
    groups: dict[str, list[tuple[dict[str, str], Skip]]] = defaultdict(list)
    for row, sk in skipped:
        groups[sk.reason].append((row, sk))
    for reason, items in groups.items():
        print(f"  [{reason}] ({len(items)})")
        for row, sk in items:
            detail = f" -- {sk.detail}" if sk.detail else ""
            print(f"    row {row['row_id']:>3} {row['model'][:34]:<34} {row['method'][:24]:<24} "
                  f"{row['framework'][:30]}{detail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--no-supplement", action="store_true", help="leave out the Qwen (v1) config-mapped rows")
    args = ap.parse_args()

    with args.csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))

    main_rows: list[Mapped] = []
    supp_rows: list[Mapped] = []
    skipped: list[tuple[dict[str, str], Skip]] = []
    for row in rows:
        try:
            mp = map_row(row)
            run(mp)
        except Skip as sk:
            skipped.append((row, sk))
            continue
        except PlanError as exc:
            skipped.append((row, Skip("planner rejected the request", str(exc))))
            continue
        if mp.supplement:
            if args.no_supplement:
                skipped.append((row, Skip(NOT_IN_CATALOG_QWEN1)))
            else:
                supp_rows.append(mp)
        else:
            main_rows.append(mp)

    print(f"published_peak_memory.csv: {len(rows)} rows; compared {len(main_rows)} (catalog models)"
          + (f" + {len(supp_rows)} (supplement, Qwen v1 via config)" if supp_rows else "")
          + f"; skipped {len(skipped)}")
    print_table("== Hugging Face recipe rows, catalog models ==", main_rows)
    print_terms("terms", main_rows)
    print_summary("ratios per measure kind (catalog rows):", main_rows)
    if supp_rows:
        print_table("== supplement: Qwen (v1) README rows via a qwen2-shaped config (not in the medians above) ==",
                    supp_rows)
        print_terms("terms (supplement)", supp_rows)
        print_summary("ratios per measure kind (supplement):", supp_rows)
        print_sweeps(supp_rows)
    print_sweeps(main_rows)
    print_skipped(skipped)


if __name__ == "__main__":
    main()
