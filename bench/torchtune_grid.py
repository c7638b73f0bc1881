"""torchtune: the trace of torchtune's own model and step against the analytic estimate (docs/frameworks.md).

    .venv/bin/python bench/torchtune_grid.py            # compare the analytic model with the cached traces
    .venv-torchtune/bin/python bench/torchtune_grid.py --regen    # re-run every trace (minutes), rewrite the cache

Each case builds torchtune 0.4.0's Llama decoder (llama2 builders: MHA, untied output; llama3_2 builders: GQA, tied
output) with LoRA / QLoRA (torchao NF4) / full fine-tuning and the recipe's loss, checkpointing and
``optimizer_in_bwd`` (app/trace/torchtune.py), and runs two steps on real CPU tensors under the live-bytes counter
(needs the ``torchtune`` extra, which lives in ``.venv-torchtune``: ``make torchtune-venv``). The cache
(tests/data/torchtune_grid.json) stores each case's request and traced peak (bytes); the analytic figure is the
estimate's peak without the cuBLAS workspace.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from app.trace.torchtune import TorchtuneCase  # noqa: E402
from bench.trace_grid import analytic_tensor_peak  # noqa: E402

CACHE = ROOT / "tests" / "data" / "torchtune_grid.json"

GQA_TIED = {"model_type": "llama", "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 2,
            "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 4096, "tie_word_embeddings": True,
            "max_position_embeddings": 2048, "rope_scaling": {"rope_type": "llama3", "factor": 32.0}}
"""A Llama-3.2-shaped decoder (GQA 4:1, tied output: torchtune's llama3_2 builders), small enough for CPU."""
MHA = {"model_type": "llama", "hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 2,
       "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 2048, "tie_word_embeddings": False,
       "max_position_embeddings": 1024}
"""A Llama-2-shaped decoder (MHA, untied output: torchtune's llama2 builders)."""
QWEN2_TIED = {"model_type": "qwen2", "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 2,
              "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 4096, "tie_word_embeddings": True,
              "max_position_embeddings": 2048}
"""A Qwen2.5-0.5B–3B-shaped decoder (torchtune's qwen2 builders: q/k/v biases, its own RoPE, tied output)."""
MISTRAL = {"model_type": "mistral", "hidden_size": 512, "intermediate_size": 1792, "num_hidden_layers": 2,
           "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 2048, "tie_word_embeddings": False,
           "max_position_embeddings": 2048}
"""A Mistral-7B-shaped decoder (torchtune's mistral builders: GQA, untied, cloned layers)."""
GEMMA = {"model_type": "gemma", "hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 2,
         "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 64, "vocab_size": 4096,
         "tie_word_embeddings": True, "max_position_embeddings": 2048}
"""A Gemma-2B-shaped decoder (torchtune's gemma builders: MQA, GELU-tanh MLP, (1 + scale) norms, scaled and tied
embeddings)."""
MHA_WIDE_VOCAB = {**MHA, "vocab_size": 8192}
"""The same with embedding and output four times a layer's largest linear: their steps under ``optimizer_in_bwd``
come outside the layers' backward."""
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# models × methods × switches (checkpointing, loss chunks, optimizer_in_bwd, rank, batch, length)
# fmt: off
CASES: list[TorchtuneCase] = [
    TorchtuneCase(GQA_TIED, "lora"),
    TorchtuneCase(GQA_TIED, "lora", gradient_checkpointing=False, num_output_chunks=0),
    TorchtuneCase(GQA_TIED, "qlora", ALL),
    TorchtuneCase(GQA_TIED, "full"),
    TorchtuneCase(GQA_TIED, "full", optimizer_in_bwd=True),
    TorchtuneCase(GQA_TIED, "lora", ALL, r=64, micro_batch_size=1, seq_len=512, gradient_checkpointing=False),
    TorchtuneCase(GQA_TIED, "qlora", gradient_checkpointing=False, num_output_chunks=0),
    TorchtuneCase(GQA_TIED, "full", micro_batch_size=1, seq_len=512, gradient_checkpointing=False, num_output_chunks=0),
    TorchtuneCase(MHA, "lora", seq_len=512, num_output_chunks=0),
    TorchtuneCase(MHA, "lora", ALL, r=16, seq_len=512, gradient_checkpointing=False),
    TorchtuneCase(MHA, "qlora", ALL, micro_batch_size=1, seq_len=1024),
    TorchtuneCase(MHA, "qlora", ("q_proj", "k_proj", "v_proj", "o_proj"), gradient_checkpointing=False),
    TorchtuneCase(MHA, "full", micro_batch_size=1, seq_len=512, gradient_checkpointing=False, num_output_chunks=0),
    TorchtuneCase(MHA, "full", optimizer_in_bwd=True),
    TorchtuneCase(GQA_TIED, "full", gradient_accumulation_steps=4),
    TorchtuneCase(MHA, "lora", seq_len=512, num_output_chunks=0, gradient_accumulation_steps=8),
    TorchtuneCase(MHA, "lora", ALL, r=16, seq_len=512),
    TorchtuneCase(MHA_WIDE_VOCAB, "full", optimizer_in_bwd=True),
    TorchtuneCase(MHA_WIDE_VOCAB, "full"),
    TorchtuneCase(MHA_WIDE_VOCAB, "full", micro_batch_size=1, seq_len=64, num_output_chunks=0, optimizer_in_bwd=True),
    TorchtuneCase(MHA, "qlora", ALL, gradient_checkpointing=False),
    TorchtuneCase(QWEN2_TIED, "lora"),
    TorchtuneCase(QWEN2_TIED, "qlora", ALL, gradient_checkpointing=False),
    TorchtuneCase(QWEN2_TIED, "full"),
    TorchtuneCase(QWEN2_TIED, "lora", ALL, r=16, seq_len=512, gradient_checkpointing=False, num_output_chunks=0),
    TorchtuneCase(MISTRAL, "lora", ALL),
    TorchtuneCase(MISTRAL, "qlora", ALL, seq_len=512),
    TorchtuneCase(GEMMA, "lora"),
    TorchtuneCase(GEMMA, "full"),
    TorchtuneCase(GEMMA, "qlora", ALL, gradient_checkpointing=False),
]
# fmt: on


def regenerate() -> list[dict[str, Any]]:
    from app.trace.torchtune import trace

    rows = []
    for case in CASES:
        result = trace(case)
        rows.append({"case": asdict(case), "trace_peak_bytes": result.peak_bytes, "trace_phase": result.peak_phase})
        print(f"traced {case.method} {case.config['hidden_size']}: {result.peak_bytes} B ({result.peak_phase})",
              file=sys.stderr)
    CACHE.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def label(case: TorchtuneCase) -> str:
    shape = "gqa-tied" if case.config.get("tie_word_embeddings") else "mha"
    if case.config.get("model_type") in ("qwen2", "mistral", "gemma"):
        shape = case.config["model_type"]
    targets = "all" if len(case.target_modules) == len(ALL) else ",".join(m.removesuffix("_proj")
                                                                           for m in case.target_modules)
    switches = [f"r{case.r} {targets}" if case.method != "full" else "",
                "gc" if case.gradient_checkpointing else "no-gc",
                f"chunks={case.num_output_chunks}", "in_bwd" if case.optimizer_in_bwd else "",
                f"ga={case.gradient_accumulation_steps}" if case.gradient_accumulation_steps > 1 else ""]
    reference = {"gqa-tied": GQA_TIED, "mha": MHA}.get(shape)
    if reference and case.config["vocab_size"] != reference["vocab_size"]:
        shape += f"-v{case.config['vocab_size'] // 1024}k"
    head = f"{shape:<12} {case.method:<6} b{case.micro_batch_size} s{case.seq_len:<5} "
    return head + " ".join(s for s in switches if s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regen", action="store_true", help="re-run the traces (needs the torchtune extra)")
    args = ap.parse_args()
    rows = regenerate() if args.regen else json.loads(CACHE.read_text())
    errors = []
    print(f"{'case':<61} {'trace MiB':>10} {'analytic MiB':>12} {'err %':>7}  phase")
    for row in rows:
        case = TorchtuneCase(**{**row["case"], "target_modules": tuple(row["case"]["target_modules"])})
        analytic = analytic_tensor_peak(case.request())
        err = 100 * (analytic - row["trace_peak_bytes"]) / row["trace_peak_bytes"]
        errors.append(err)
        print(f"{label(case):<61} {row['trace_peak_bytes'] / 2**20:10.2f} {analytic / 2**20:12.2f} {err:+7.2f}  "
              f"{row['trace_phase']}")
    print(f"\n{len(errors)} cases: median |error| {statistics.median(abs(e) for e in errors):.2f}%, "
          f"max |error| {max(abs(e) for e in errors):.2f}%, within 2%: {sum(abs(e) <= 2 for e in errors)}")


if __name__ == "__main__":
    main()
