"""transformers 4.57 MoE layout (``transformers_version: "4.57"``): one nn.Linear per expert projection.

transformers 4.x cannot be installed beside the pinned 5.24, so the expected figures below are derived by
hand from the 4.57 module trees (read in huggingface/transformers ``models/mixtral/modeling_mixtral.py`` and
``models/qwen3_moe/modeling_qwen3_moe.py`` of the 4.57 line):

- Mixtral: ``MixtralDecoderLayer.block_sparse_moe = MixtralSparseMoeBlock``: ``gate = nn.Linear(H, E,
  bias=False)``, ``experts = nn.ModuleList(MixtralBlockSparseTop2MLP)`` with ``w1 = nn.Linear(H, I)``,
  ``w2 = nn.Linear(I, H)``, ``w3 = nn.Linear(H, I)`` (no bias).
- Qwen3-MoE: ``Qwen3MoeDecoderLayer.mlp = Qwen3MoeSparseMoeBlock``: ``gate = nn.Linear(H, E, bias=False)``
  then ``experts = nn.ModuleList(Qwen3MoeMLP(intermediate_size=moe_intermediate_size))`` with
  ``gate_proj``/``up_proj`` (H→I) and ``down_proj`` (I→H).

Mixtral-8x7B: H=4096, I=14336, E=8, 32 layers, heads 32/8 × 128, vocab 32000, untied.
Qwen3-30B-A3B: H=2048, moe I=768, E=128, 48 layers, heads 32/4 × 128 (q_norm/k_norm 128), vocab 151936.
"""

from __future__ import annotations

import pytest

from app.core import PlanError, PlanRequest, estimate
from app.core.estimate import resolve_inventory

MIXTRAL = "mistralai/Mixtral-8x7B-v0.1"
QWEN3_MOE = "Qwen/Qwen3-30B-A3B"
ALL_LINEAR = {"r": 16, "target_modules": "all-linear"}

# Mixtral per layer: attention q,o 4096², k,v 4096·1024; router 8·4096; experts 8·3·4096·14336; norms 2·4096
MIXTRAL_ATTN = 2 * 4096 * 4096 + 2 * 4096 * 1024  # 41,943,040
MIXTRAL_QUANTIZED_PER_LAYER = MIXTRAL_ATTN + 8 * 4096 + 8 * 3 * 4096 * 14336  # every nn.Linear of a layer
MIXTRAL_TOTAL = 2 * 32000 * 4096 + 32 * (MIXTRAL_QUANTIZED_PER_LAYER + 2 * 4096) + 4096
# LoRA r=16 on every linear of a layer: r·(in + out) each
MIXTRAL_LORA_PER_LAYER = 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + (4096 + 8) + 8 * 3 * (4096 + 14336))


def test_mixtral_4_57_expert_linears_match_the_module_tree() -> None:
    _, inv = resolve_inventory(PlanRequest(model=MIXTRAL, transformers_version="4.57"))
    shapes = {t.name: t.shape for t in inv.tensors}
    block = "model.layers.0.block_sparse_moe"
    assert shapes[f"{block}.gate.weight"] == (8, 4096)  # nn.Linear(hidden, num_local_experts)
    assert shapes[f"{block}.experts.7.w1.weight"] == (14336, 4096)  # nn.Linear(hidden, ffn): (out, in)
    assert shapes[f"{block}.experts.7.w2.weight"] == (4096, 14336)
    assert shapes[f"{block}.experts.7.w3.weight"] == (14336, 4096)
    assert f"{block}.experts.8.w1.weight" not in shapes
    assert not any(".mlp." in n for n in shapes)  # 4.57 Mixtral has no `mlp` attribute


def test_mixtral_4_57_qlora_quantizes_experts() -> None:
    r = estimate(PlanRequest(model=MIXTRAL, method="qlora", transformers_version="4.57", lora=ALL_LINEAR))
    assert r.parameters.total == MIXTRAL_TOTAL == 46_702_792_704
    assert r.parameters.trainable == 32 * MIXTRAL_LORA_PER_LAYER == 242_225_152
    # bitsandbytes packs two 4-bit values per byte; embeddings, lm_head and norms are fp32 after
    # prepare_model_for_kbit_training
    packed = 32 * MIXTRAL_QUANTIZED_PER_LAYER // 2
    unquantized = 4 * (2 * 32000 * 4096 + 32 * 2 * 4096 + 4096)
    assert r.memory.weights == packed + unquantized == 24_269_832_192
    assert r.versions["models_transformers"] == "4.57"
    # transformers 5 keeps the fused 3-D experts in 16/32 bits: 7.5× the bytes
    v5 = estimate(PlanRequest(model=MIXTRAL, method="qlora", lora=ALL_LINEAR))
    assert v5.memory.weights > 7 * r.memory.weights
    assert v5.versions["models_transformers"] == "5.24.0"


def test_mixtral_4_57_allows_dora_on_experts() -> None:
    with pytest.raises(PlanError) as info:  # 5.x: fused experts are only reachable as target_parameters
        estimate(PlanRequest(model=MIXTRAL, method="qdora", lora=ALL_LINEAR))
    assert info.value.loc == ("lora", "target_parameters")
    r = estimate(PlanRequest(model=MIXTRAL, method="qdora", transformers_version="4.57", lora=ALL_LINEAR))
    # + one magnitude per output feature of each adapted linear: q,o 4096, k,v 1024, gate 8, experts
    # 8·(14336 + 4096 + 14336)
    magnitudes = 32 * (2 * 4096 + 2 * 1024 + 8 + 8 * (14336 + 4096 + 14336))
    assert r.parameters.trainable == 32 * MIXTRAL_LORA_PER_LAYER + magnitudes == 250_941_696


def test_qwen3_moe_4_57_counts() -> None:
    _, inv = resolve_inventory(PlanRequest(model=QWEN3_MOE, transformers_version="4.57"))
    shapes = {t.name: t.shape for t in inv.tensors}
    assert shapes["model.layers.47.mlp.gate.weight"] == (128, 2048)
    assert shapes["model.layers.47.mlp.experts.127.gate_proj.weight"] == (768, 2048)
    assert shapes["model.layers.47.mlp.experts.127.down_proj.weight"] == (2048, 768)
    r = estimate(PlanRequest(model=QWEN3_MOE, method="qlora", transformers_version="4.57", lora=ALL_LINEAR))
    linears = 2048 * 4096 * 2 + 2048 * 512 * 2 + 128 * 2048 + 128 * 3 * 2048 * 768  # q,o,k,v, router, experts
    norms = 2 * 2048 + 2 * 128  # input/post-attention norms, q_norm/k_norm
    assert r.parameters.total == 2 * 151936 * 2048 + 48 * (linears + norms) + 2048 == 30_532_122_624
    lora = 16 * (2 * (2048 + 4096) + 2 * (2048 + 512) + (2048 + 128) + 128 * 3 * (2048 + 768))
    assert r.parameters.trainable == 48 * lora == 845_512_704
    assert r.memory.weights == 48 * linears // 2 + 4 * (2 * 151936 * 2048 + 48 * norms + 2048)


def test_trace_engine_refuses_4_57() -> None:
    from app.trace.engine import UnsupportedStep, run_trace

    with pytest.raises(UnsupportedStep, match=r"4\.57"):
        run_trace(PlanRequest(model=MIXTRAL, method="qlora", transformers_version="4.57"))


def test_unknown_version_is_a_422_field() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        PlanRequest(model=MIXTRAL, transformers_version="4.40")
    assert info.value.errors()[0]["loc"] == ("transformers_version",)


def test_cli_flag() -> None:
    """``peft-planner estimate --transformers-version 4.57``: the JSON answer is the 4.57 layout's."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "estimate", "--model", MIXTRAL, "--method", "qdora", "--r", "16",
         "--target-modules", "all-linear", "--transformers-version", "4.57", "--json"],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["parameters"]["trainable"] == 250_941_696  # as test_mixtral_4_57_allows_dora_on_experts
    assert answer["versions"]["models_transformers"] == "4.57"
