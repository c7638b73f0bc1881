"""Training FLOPs, time and cost (app/core/throughput.py), checked against hand-derived numbers."""

from __future__ import annotations

import copy

import pytest

from app.core.catalog import gpus
from app.core.request import PlanRequest
from app.core.throughput import (
    DEFAULT_MFU,
    DEFAULT_TOKENS,
    FlopCounts,
    flop_counts,
    flops_per_token,
    gpu_cost,
    seconds_per_token,
    slowdown_for,
    throughput,
)

from .conftest import TINY_CONFIGS

ALL_LINEAR = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}


def counts(**kw: float) -> FlopCounts:
    base = dict(layer_params=0.0, head_params=0.0, adapter_params=0.0, trained_base_params=0.0,
                num_layers=1, q_dim=1, seq_len=0)
    return FlopCounts(**{**base, **kw})


def test_dense_full_fine_tuning_is_6n_without_attention() -> None:
    n = 1e9
    fl = flops_per_token(counts(layer_params=n, trained_base_params=n), gradient_checkpointing=False)
    assert fl.forward == 2 * n
    assert fl.backward == 4 * n
    assert fl.recompute == 0
    assert fl.total == 6 * n


def test_checkpointing_adds_one_forward_of_the_layers() -> None:
    n = 1e9
    plain = flops_per_token(counts(layer_params=n, trained_base_params=n), gradient_checkpointing=False)
    ckpt = flops_per_token(counts(layer_params=n, trained_base_params=n), gradient_checkpointing=True)
    assert ckpt.total - plain.total == 2 * n
    # lm_head sits outside the checkpointed decoder layers: it is not recomputed
    head = flops_per_token(counts(layer_params=n, head_params=5e8, trained_base_params=n + 5e8),
                           gradient_checkpointing=True)
    assert head.recompute == 2 * n


def test_causal_attention_term() -> None:
    # 2·L·seq_len·d_q forward (QKᵀ and A·V, 2·d_q each per pair, seq_len/2 keys per causal query), 2× backward
    fl = flops_per_token(counts(num_layers=32, q_dim=4096, seq_len=2048), gradient_checkpointing=False)
    assert fl.attention_forward == 2 * 32 * 2048 * 4096
    assert fl.total == 3 * 2 * 32 * 2048 * 4096
    ckpt = flops_per_token(counts(num_layers=32, q_dim=4096, seq_len=2048), gradient_checkpointing=True)
    assert ckpt.total == 4 * 2 * 32 * 2048 * 4096


def test_frozen_base_and_adapters() -> None:
    # frozen weights: forward 2N + activation gradients 2N; adapters 2A forward + 4A backward
    n, a = 1e9, 1e7
    fl = flops_per_token(counts(layer_params=n, adapter_params=a), gradient_checkpointing=False)
    assert fl.total == 4 * n + 6 * a
    full = flops_per_token(counts(layer_params=n, trained_base_params=n), gradient_checkpointing=False)
    assert fl.total < full.total


def test_tiny_dense_model_by_hand() -> None:
    # TINY llama: hidden 64, 4 heads × 16 (q 64), 2 kv heads (kv 32), intermediate 176, 3 layers, vocab 320, untied
    per_layer = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 176  # q, k, v, o, gate, up, down
    assert per_layer == 46_080
    n_layers, head = 3 * per_layer, 320 * 64  # the embedding lookup is not a matmul; lm_head is
    req = PlanRequest(model={"config": copy.deepcopy(TINY_CONFIGS["llama"])}, method="full",
                      training={"seq_len": 128, "gradient_checkpointing": False})
    c = flop_counts(req)
    assert (c.layer_params, c.head_params, c.trained_base_params) == (n_layers, head, n_layers + head)
    attn = 2 * 3 * 128 * 64
    report = throughput(req, [])
    assert report.flops_per_token.total == 6 * (n_layers + head) + 3 * attn == 1_099_776


def test_tied_head_still_costs_its_matmul() -> None:
    req = PlanRequest(model={"config": copy.deepcopy(TINY_CONFIGS["qwen2"])}, method="full")
    assert flop_counts(req).head_params == 400 * 64


def test_moe_counts_only_the_active_experts() -> None:
    # Mixtral 8x7B: 32 layers, hidden 4096, 8 experts of intermediate 14336, top-2, 8 kv heads × 128, vocab 32000
    attention = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024)
    experts = 32 * 8 * 3 * 4096 * 14336
    router = 32 * 8 * 4096
    req = PlanRequest(model="mistralai/Mixtral-8x7B-v0.1", method="full")
    c = flop_counts(req)
    assert c.layer_params == attention + router + experts * 2 / 8 == 12_617_515_008
    assert c.head_params == 32000 * 4096
    # far fewer than the 46.7B parameters: FLOPs follow the active parameters
    assert c.active_params < 0.3 * 46_702_792_704


def test_lora_is_cheaper_than_full_and_checkpointing_costs() -> None:
    def total(method: str, ckpt: bool) -> float:
        req = PlanRequest(model="meta-llama/Llama-3.1-8B", method=method, lora=ALL_LINEAR,
                          training={"gradient_checkpointing": ckpt})
        return throughput(req, []).flops_per_token.total

    assert total("lora", False) < total("full", False)
    assert total("lora", True) > total("lora", False)
    # QLoRA does the same arithmetic as LoRA; its extra time is the dequantization factor
    assert total("qlora", True) == total("lora", True)
    lora = PlanRequest(model="meta-llama/Llama-3.1-8B", method="lora", lora=ALL_LINEAR)
    c = flop_counts(lora)
    assert c.adapter_params == 41_943_040 and c.trained_base_params == 0


def test_modules_to_save_trains_its_weights() -> None:
    req = PlanRequest(model="meta-llama/Llama-3.1-8B", method="lora",
                      lora={"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]})
    c = flop_counts(req)
    assert c.trained_base_params == 128256 * 4096


def test_slowdown_factors() -> None:
    assert slowdown_for("full") == slowdown_for("lora") == 1.0
    assert slowdown_for("qlora") == 1.4
    assert slowdown_for("dora") == 1.2
    assert slowdown_for("qdora") == pytest.approx(1.68)
    assert slowdown_for("qlora", {"qlora": 1.3}) == 1.3
    assert slowdown_for("qdora", {"qlora": 1.5, "dora": 1.1}) == pytest.approx(1.65)
    assert slowdown_for("qdora", {"qdora": 1.9}) == 1.9  # a measured factor wins


def test_time_and_cost_arithmetic() -> None:
    g = gpus()["nvidia-h100-sxm-80gb"]
    flops = 60e9
    s = seconds_per_token(flops, g.bf16_tflops, mfu=0.4)
    assert s == pytest.approx(60e9 / (989e12 * 0.4))
    row = gpu_cost(g, flops, 100_000_000, mfu=0.4, num_gpus=1, slowdown=1.0)
    assert row.hours == pytest.approx(100_000_000 * s / 3600)
    assert row.cost_usd == pytest.approx(row.hours * g.price_usd_per_hour)
    assert (row.price_source, row.price_date) == ("catalog", g.price_date)
    # two cards in data parallel: half the time, the same GPU-hours and cost
    two = gpu_cost(g, flops, 100_000_000, mfu=0.4, num_gpus=2, slowdown=1.0)
    assert two.hours == pytest.approx(row.hours / 2)
    assert two.cost_usd == pytest.approx(row.cost_usd)
    slow = gpu_cost(g, flops, 100_000_000, mfu=0.4, num_gpus=1, slowdown=1.4)
    assert slow.hours == pytest.approx(1.4 * row.hours)
    mine = gpu_cost(g, flops, 100_000_000, mfu=0.4, num_gpus=1, slowdown=1.0, price_override=9.0)
    assert mine.cost_usd == pytest.approx(row.hours * 9.0) and mine.price_source == "override"
    consumer = gpu_cost(gpus()["nvidia-rtx-4090"], flops, 100_000_000, mfu=0.4, num_gpus=1, slowdown=1.0)
    assert consumer.cost_usd is None and consumer.price_source == "none"


def test_throughput_report() -> None:
    req = PlanRequest(model="meta-llama/Llama-3.1-8B", method="qlora", lora=ALL_LINEAR)
    ids = ["nvidia-l4", "nvidia-h100-sxm-80gb", "nvidia-rtx-4090", "not-a-gpu"]
    rep = throughput(req, ids, prices={"nvidia-rtx-4090": 0.5})
    assert (rep.tokens, rep.mfu, rep.slowdown) == (DEFAULT_TOKENS, None, 1.4)  # None: each GPU its class's MFU
    assert [r.gpu for r in rep.gpus] == ["nvidia-h100-sxm-80gb", "nvidia-rtx-4090", "nvidia-l4"]  # fastest first
    assert rep.total_flops == pytest.approx(rep.flops_per_token.total * DEFAULT_TOKENS)
    l4 = next(r for r in rep.gpus if r.gpu == "nvidia-l4")
    expected_h = DEFAULT_TOKENS * rep.flops_per_token.total / (121e12 * DEFAULT_MFU) * 1.4 / 3600
    assert l4.hours == pytest.approx(expected_h)
    assert l4.cost_usd == pytest.approx(expected_h * 0.7)
    rtx = next(r for r in rep.gpus if r.gpu == "nvidia-rtx-4090")
    assert rtx.cost_usd == pytest.approx(rtx.hours * 0.5)
    # MFU per GPU class: the L4 is a datacenter card (0.40), the RTX 4090 a consumer one (0.30)
    assert (l4.mfu, l4.mfu_source, rtx.mfu, rtx.mfu_source) == (0.40, "class", 0.30, "class")
    assert rtx.hours == pytest.approx(DEFAULT_TOKENS * rep.flops_per_token.total / (165.2e12 * 0.30) * 1.4 / 3600)
    # one MFU for every GPU when given, and a calibrated one per GPU otherwise
    given = throughput(req, ids, mfu=0.5)
    assert given.mfu == 0.5 and {r.mfu_source for r in given.gpus} == {"given"}
    measured = throughput(req, ids, measured_mfu={"nvidia-rtx-4090": 0.21})
    m = next(r for r in measured.gpus if r.gpu == "nvidia-rtx-4090")
    assert (m.mfu, m.mfu_source) == (0.21, "calibrated") and m.hours == pytest.approx(rtx.hours * 0.30 / 0.21)
    assert len(throughput(req).gpus) == len(gpus())  # None: every catalog GPU


@pytest.mark.parametrize(("kw", "needle"), [({"tokens": 0}, "tokens"), ({"mfu": 0}, "mfu"), ({"mfu": 1.5}, "mfu")])
def test_bad_arguments(kw: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        throughput(PlanRequest(model="openai-community/gpt2"), [], **kw)
