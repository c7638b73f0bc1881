"""training.framework='torchtune': the analytic model against torchtune's own step, torchao's NF4 storage and what
torch.compile keeps, plus hand-derived figures, the 422s and the published rows' mapping (docs/frameworks.md)."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from app.accuracy.rows import Skip, map_row, read_rows
from app.core import PlanRequest, estimate
from app.core.errors import PlanError
from app.core.torchtune import compiled_layer_saving, loss_path, nf4_bytes
from bench.torchtune_grid import CACHE, CASES
from bench.trace_grid import analytic_tensor_peak

needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="torch.compile on CPU (Inductor) needs a C++ compiler")
# torch.compile traces torch's and torchao's own code, which raise deprecations of their own (torch.jit.script_method
# in torch/nn/utils/_mkldnn, an autograd.Function instantiated by dynamo): not this project's
compile_import = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LLAMA_1B = "meta-llama/Llama-3.2-1B"
OVERLAY = ("torchtune 0.4.0 and torchao 0.10.0 live in .venv-torchtune (PEFT 0.21.2 refuses torchao < 0.16 in .venv): "
           "`make test` runs this file there too")


def _tt(**training: Any) -> dict[str, Any]:
    return {"framework": "torchtune", "micro_batch_size": 2, "seq_len": 1024, **training}


# --- torchao NF4 storage -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2048, 2048), (512, 2048), (8192, 2048), (64, 256)])
def test_nf4_bytes_equal_torchao_storage(shape: tuple[int, int]) -> None:
    torch = pytest.importorskip("torch")
    nf4 = pytest.importorskip("torchao.dtypes.nf4tensor", reason=OVERLAY)
    w = nf4.to_nf4(torch.randn(*shape, dtype=torch.bfloat16))  # what LoRALinear(quantize_base=True) stores
    parts = (w.quantized_data, w.quantized_scalers, w.quantization_factor, w.scaler_mean, w.nf4)
    q = nf4_bytes(shape[0] * shape[1])
    assert q.data == w.quantized_data.untyped_storage().nbytes()
    assert q.total == sum(p.untyped_storage().nbytes() for p in parts)


def test_nf4_bytes_by_hand() -> None:
    # a 4096×4096 weight: 8,388,608 packed bytes; 262,144 int8 block scalers (one per 64); 1,024 bf16 factors (one per
    # 256 scalers) = 2,048 B; a bf16 scaler mean (2 B); the 16-entry bf16 NF4 table (32 B)
    q = nf4_bytes(4096 * 4096)
    assert (q.data, q.constants) == (8_388_608, 262_144 + 2_048 + 2 + 32)


def _peak_transient(fn: Any, *args: Any) -> int:
    """Peak bytes the CPU allocator hands out while ``fn`` runs (torch.profiler memory events, compiled kernels
    included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(*args)
    live = peak = 0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    for e in sorted(events, key=lambda e: e.start_ns()):
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def test_nf4_dequantization_peak_eager() -> None:
    torch = pytest.importorskip("torch")
    nf4 = pytest.importorskip("torchao.dtypes.nf4tensor", reason=OVERLAY)
    w = nf4.to_nf4(torch.randn(3072, 1024, dtype=torch.bfloat16))
    x = torch.randn(16, 1024, dtype=torch.bfloat16)
    peak = _peak_transient(nf4.linear_nf4, x, w)
    # NF4_DEQUANT_BYTES_PER_ELEMENT = 14 (get_original_weight's int64 indices, lookups, scaled halves, stack) plus the
    # 16×3072 bf16 output
    assert peak == 14 * w.numel() + 2 * 16 * 3072


@pytest.mark.slow
@needs_compiler
@compile_import
def test_nf4_dequantization_fused_when_compiled() -> None:
    torch = pytest.importorskip("torch")
    nf4 = pytest.importorskip("torchao.dtypes.nf4tensor", reason=OVERLAY)
    w = nf4.to_nf4(torch.randn(3072, 1024, dtype=torch.bfloat16))
    x = torch.randn(16, 1024, dtype=torch.bfloat16)
    compiled = torch.compile(lambda x: nf4.linear_nf4(x, w))
    compiled(x)  # compile outside the measurement
    peak = _peak_transient(compiled, x)
    # only the bf16 weight (2n) and small buffers: NF4_DEQUANT_COMPILED_BYTES_PER_ELEMENT = 2
    assert 2 * w.numel() <= peak < 2.3 * w.numel()


# --- what torch.compile keeps --------------------------------------------------------------------------------------


def _saved_bytes(fn: Any, x: Any, exclude: set[int]) -> tuple[int, list[tuple[tuple[int, ...], str]]]:
    import torch

    saved: dict[int, tuple[tuple[int, ...], str, int]] = {}

    def pack(t: Any) -> Any:
        st = t.untyped_storage()
        if st.data_ptr() not in exclude:
            saved[st.data_ptr()] = (tuple(t.shape), str(t.dtype), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x)
    out.float().sum().backward()
    return sum(v[2] for v in saved.values()), [(v[0], v[1]) for v in saved.values()]


@pytest.mark.slow
@needs_compiler
@compile_import
def test_compiled_cross_entropy_saves_its_input_and_row_statistics() -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    labels = torch.randint(0, 1024, (128,))

    def ce(logits: Any) -> Any:  # CEWithChunkedOutputLoss.compute_cross_entropy
        return F.cross_entropy(logits.float(), labels, reduction="sum")

    x = torch.randn(128, 1024, dtype=torch.bfloat16, requires_grad=True)
    eager, _ = _saved_bytes(ce, x, set())
    compiled, shapes = _saved_bytes(torch.compile(ce), x, set())
    # log_softmax's fp32 output, the int64 labels and nll_loss's 0-d fp32 total_weight
    assert eager == 4 * 128 * 1024 + 8 * 128 + 4
    # the bf16 chunk itself (already alive) and fp32 row statistics: loss_path's compiled branch
    assert ((128, 1024), "torch.bfloat16") in shapes
    assert compiled - 2 * 128 * 1024 < 40 * 128


@pytest.mark.slow
@needs_compiler
@compile_import
@pytest.mark.parametrize("full", [False, True])
def test_compiled_layer_saves_what_compiled_layer_saving_says(full: bool) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchtune", reason=OVERLAY)
    from torchtune import training
    from torchtune.models.llama3_2._component_builders import llama3_2, lora_llama3_2
    from torchtune.modules.peft import get_adapter_params, set_trainable_params

    shape = dict(vocab_size=256, num_layers=1, num_heads=8, num_kv_heads=2, embed_dim=512, max_seq_len=512,
                 intermediate_dim=1536)
    torch.manual_seed(0)
    with training.set_default_dtype(torch.bfloat16):
        model = llama3_2(**shape) if full else lora_llama3_2(lora_attn_modules=["q_proj", "v_proj"], lora_rank=8,
                                                                  lora_alpha=16, **shape)
    if not full:
        set_trainable_params(model, get_adapter_params(model))
    layer = model.layers[0]
    x = torch.randn(2, 256, 512, dtype=torch.bfloat16, requires_grad=True)
    exclude = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.buffers(), x]}
    eager, _ = _saved_bytes(layer, x, exclude)
    compiled, _ = _saved_bytes(torch.compile(layer), x, exclude)
    assert eager - compiled == compiled_layer_saving(512, 512, 1536, 2, full)


# --- torchtune's own step against the analytic model ---------------------------------------------------------------


@pytest.mark.slow
# lora+gc+chunked, qlora all, full+in_bwd (tied), qlora q,v without checkpointing (first norm), mha lora,
# mha full+in_bwd (a layer's step), full+GA, full+in_bwd with a wide vocabulary (the output's accumulation; its
# step with the plain loss), qlora all without checkpointing (forward), qwen2 lora and full, mistral qlora, gemma
# lora and qlora (MQA: no k/v expansion copy)
@pytest.mark.parametrize("index", [0, 2, 4, 6, 8, 13, 14, 17, 19, 20, 21, 23, 26, 27, 29])
def test_trace_of_torchtune_step_matches_analytic(index: int) -> None:
    pytest.importorskip("torchtune", reason=OVERLAY)
    from app.trace.torchtune import trace

    case = CASES[index]
    traced = trace(case).peak_bytes
    assert abs(analytic_tensor_peak(case.request()) - traced) <= 0.02 * traced


def test_grid_cache_agrees_with_analytic() -> None:
    rows = json.loads(CACHE.read_text())
    assert len(rows) == len(CASES) >= 12
    errors = []
    for row, case in zip(rows, CASES, strict=True):
        assert row["case"]["method"] == case.method and row["case"]["seq_len"] == case.seq_len
        errors.append(abs(analytic_tensor_peak(case.request()) - row["trace_peak_bytes"]) / row["trace_peak_bytes"])
    assert max(errors) <= 0.02


# --- hand-derived analytic figures ---------------------------------------------------------------------------------


def test_lora_weights_grads_and_adamw_states_are_bf16() -> None:
    res = estimate(PlanRequest(model=LLAMA_1B, method="lora", lora={"r": 8, "target_modules": ["q_proj", "v_proj"]},
                               training=_tt()))
    # Llama-3.2-1B, 16 layers: q 2048→2048 and v 2048→512 adapters, r 8: 8·(2048+2048) + 8·(2048+512) per layer
    params = 16 * (8 * 4096 + 8 * 2560)
    assert res.parameters.adapter_params == params
    # built under set_default_dtype(bf16): adapters, their gradients and AdamW's two states all 2 bytes
    assert res.memory.adapter_weights == res.memory.gradients == 2 * params
    assert res.memory.optimizer_states == 2 * 2 * params
    assert any("torchtune" in a for a in res.assumptions)


def test_qlora_weights_are_torchao_nf4() -> None:
    res = estimate(PlanRequest(model=LLAMA_1B, method="qlora", lora={"r": 8, "target_modules": "all-linear"},
                               training=_tt()))
    # every attention and MLP linear NF4: per layer q, o 2048×2048; k, v 2048×512; gate, up, down 2048×8192
    sizes = [2048 * 2048] * 2 + [2048 * 512] * 2 + [2048 * 8192] * 3
    packed = 16 * sum(n // 2 for n in sizes)
    embedding = 128256 * 2048 * 2  # bf16, tied with the output; norms 2·16+1 vectors of 2048 in bf16
    assert res.memory.weights == packed + embedding + (2 * 16 + 1) * 2048 * 2
    assert res.memory.quantization_constants == 16 * sum(nf4_bytes(n).constants for n in sizes)
    assert res.quantization is None  # the bitsandbytes double-quant report does not apply


def test_optimizer_in_bwd_keeps_only_the_tied_embedding_gradient() -> None:
    base = dict(model=LLAMA_1B, method="full")
    off = estimate(PlanRequest(**base, training=_tt()))
    on = estimate(PlanRequest(**base, training=_tt(optimizer_in_bwd=True)))
    assert off.memory.gradients == 2 * off.parameters.trainable  # bf16 gradients of every parameter
    # Llama-3.2-1B ties the output to the embedding: that gradient waits for the embedding's backward
    assert on.memory.gradients == 128256 * 2048 * 2
    assert on.memory.peak < off.memory.peak


@pytest.mark.parametrize(("model", "expected"), [
    # Qwen2.5-7B (qwen2 builder: 28 cloned layers, each with a (131072, 2·128) fp32 cache)
    ("Qwen/Qwen2.5-7B", 28 * 4 * 131072 * 2 * 128),
    # Llama-3.1-8B (llama3_1 builder: one Llama3ScaledRoPE shared by the layers, (131072, 64, 2) fp32)
    ("meta-llama/Llama-3.1-8B", 4 * 131072 * 64 * 2),
    # Llama-2-7B (llama2 builder: 32 cloned layers, each (4096, 64, 2) fp32)
    ("meta-llama/Llama-2-7b-hf", 32 * 4 * 4096 * 64 * 2),
])
def test_rope_cache_bytes_by_hand(model: str, expected: int) -> None:
    from app.core.generic import model_inventory
    from app.core.torchtune import rope_cache_bytes

    arch = model_inventory(model)[1].arch
    assert rope_cache_bytes(arch, arch.max_position_embeddings) == expected


def test_code_llama2_builder_rope_caches_by_hand() -> None:
    """torchtune's code_llama2_7b is the llama2 builder (32 cloned layers) with max_seq_len 16384: each layer keeps a
    (16384, 64, 2) fp32 cache, 32 · 8 MiB = 256 MiB, where Llama-2-7B's 4096 rows give 64 MiB."""
    from app.core.architectures import parse_config
    from app.core.torchtune import rope_cache_bytes
    from app.importers.torchtune import code_llama2_config

    arch = parse_config(code_llama2_config("code_llama2_7b"))
    assert rope_cache_bytes(arch, arch.max_position_embeddings) == 32 * 4 * 16384 * 64 * 2 == 256 * 2**20


@pytest.mark.parametrize("config", ["QWEN2_TIED", "GQA_TIED", "MHA", "MISTRAL", "GEMMA"])
def test_rope_cache_bytes_equal_torchtune_buffers(config: str) -> None:
    """The RoPE cache buffers torchtune's own builders register, counted by storage (a shared module once)."""
    pytest.importorskip("torchtune", reason=OVERLAY)
    import bench.torchtune_grid as grid
    from app.core.architectures import parse_config
    from app.core.torchtune import rope_cache_bytes
    from app.trace.torchtune import TorchtuneCase, _build

    cfg = getattr(grid, config)
    model = _build(TorchtuneCase(cfg, "full"))
    caches = {b.untyped_storage().data_ptr(): b.untyped_storage().nbytes()
              for name, b in model.named_buffers(remove_duplicate=False) if name.endswith("cache")}
    assert sum(caches.values()) == rope_cache_bytes(parse_config(cfg), cfg["max_position_embeddings"])


def test_optimizer_in_bwd_moments_by_hand() -> None:
    """The moments a parameter's step adds under optimizer_in_bwd (app/core/torchtune.py), derived by hand for
    Llama-3.2-1B full fine-tuning, 2×1024 tokens, bf16, torch AdamW (foreach: one ``_foreach_sqrt`` of the second
    moment, the parameter's size)."""
    from app.core.adapters import plan_adapters
    from app.core.generic import model_inventory
    from app.core.precision import dtypes_for
    from app.core.torchtune import in_bwd_last_step_bytes, in_bwd_step_bytes

    req = PlanRequest(model=LLAMA_1B, method="full", training=_tt(optimizer_in_bwd=True))
    _, inv = model_inventory(LLAMA_1B)
    plan, dt = plan_adapters(inv, req.lora, method="full"), dtypes_for(req)
    t, inter = 2 * 1024, 8192
    # the down projection (2048×8192) steps in its hook after its node freed the saved SwiGLU product (T×I bf16,
    # 2·2048·8192 = 33,554,432 B): its gradient (2·2048·8192 B) stays, the sqrt temporary (as large) replaces the
    # freed product
    assert in_bwd_step_bytes(req, plan, dt, t, inter, 2) == 33_554_432
    # the tied embedding (128256×2048) steps last, alone: its gradient is counted as kept, its sqrt temporary
    # (2·128256·2048 B) added
    assert in_bwd_last_step_bytes(req, plan, dt, tied=True) == 525_336_576
    off = req.model_copy(update={"training": req.training.model_copy(update={"optimizer_in_bwd": False})})
    assert in_bwd_step_bytes(off, plan, dt, t, inter, 2) == in_bwd_last_step_bytes(off, plan, dt, tied=True) == 0


def test_untied_output_accumulation_by_hand() -> None:
    """Full fine-tuning with the chunked loss and an untied output (Llama-3.1-8B, 1×1024 tokens, 8 chunks): the
    output's weight-gradient contributions are summed out of place (buffer, contribution and sum: 3·V×h) beside the
    logit gradients of the 6 chunks still waiting; under optimizer_in_bwd no lm_head gradient is counted elsewhere."""
    from app.core.torchtune import output_backward_bytes

    t, v, h = 1024, 128256, 4096
    # V×h bf16 = 1,050,673,152 B; the 6 waiting chunks' bf16 logit gradients 6/8 · 2·T·V = 197,001,216 B; the loss's
    # own moment (4·T·V + 2·4·T·V/8 = 656,670,720 B) is smaller
    for in_bwd, expected in ((True, 3 * 1_050_673_152 + 197_001_216), (False, 2 * 1_050_673_152 + 197_001_216)):
        req = PlanRequest(model="meta-llama/Llama-3.1-8B", method="full",
                          training=_tt(micro_batch_size=1, optimizer_in_bwd=in_bwd))
        tl = loss_path(req, v, 2)
        assert tl.backward == 656_670_720
        assert output_backward_bytes(req, tl, 2 * v * h, 2 * t * v, tied=False) == expected


def test_chunked_loss_by_hand() -> None:
    req = PlanRequest(model=LLAMA_1B, method="lora", training=_tt(micro_batch_size=1, seq_len=1024))
    t, v = 1024, 128256
    chunked = loss_path(req, v, 2)
    # 8 chunks of bf16 logits (2·T·V), their fp32 log-softmax outputs (4·T·V) and one chunk's fp32 upcast
    assert chunked.forward == 2 * t * v + 4 * t * v + 4 * (t // 8) * v
    assert chunked.backward == 4 * t * v + 2 * 4 * (t // 8) * v
    plain = loss_path(req.model_copy(update={"training": req.training.model_copy(update={"num_output_chunks": 0})}),
                      v, 2)
    assert (plain.forward, plain.backward) == (8 * t * v, 12 * t * v)


@pytest.mark.parametrize(("training", "loc"), [
    ({"framework": "trl", "optimizer_in_bwd": True}, ["training", "optimizer_in_bwd"]),
    ({"framework": "hf-trainer", "num_output_chunks": 8}, ["training", "num_output_chunks"]),
    ({"framework": "torchtune", "precision": "bf16-mixed"}, ["training", "precision"]),
    ({"framework": "torchtune", "optimizer_in_bwd": True}, ["training", "optimizer_in_bwd"]),
    ({"framework": "torchtune", "attn_implementation": "eager"}, ["training", "attn_implementation"]),
    ({"framework": "torchtune", "custom_sharded_layers": ["output"]}, ["training", "custom_sharded_layers"]),
    ({"framework": "torchtune", "hardware": {"num_gpus": 2, "sharding": "zero3"}}, ["hardware", "sharding"]),
])
def test_settings_torchtune_does_not_have_are_refused(training: dict[str, Any], loc: list[str]) -> None:
    spec = {k: v for k, v in training.items() if k != "hardware"}
    with pytest.raises(PlanError) as exc:
        estimate(PlanRequest(model=LLAMA_1B, method="lora", training=spec, hardware=training.get("hardware", {})))
    assert list(exc.value.loc) == loc


def test_custom_sharded_layers_gather_embeddings_and_output_only_while_they_run() -> None:
    hw = {"num_gpus": 8, "sharding": "fsdp"}
    root = estimate(PlanRequest(model="meta-llama/Llama-3.1-8B", method="full", training=_tt(), hardware=hw))
    own = estimate(PlanRequest(model="meta-llama/Llama-3.1-8B", method="full", hardware=hw,
                               training=_tt(custom_sharded_layers=["tok_embeddings", "output"])))
    # FSDP2 keeps the root's embedding and output (128256×4096 bf16 each) gathered; as their own units one of them
    # is gathered at a time, in place of the prefetched layer: the peak drops by one of them minus nothing else
    # (a layer is smaller than the 1,050,673,152-byte output): root + 2 layers → output + layer
    v_h = 128256 * 4096 * 2
    per_layer = (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336) * 2 + 2 * 4096 * 2  # linears + 2 norms
    layer = (32 * per_layer + 4096 * 2) // 32  # the planner's layer share: non-embedding weights (final norm too) / 32
    assert root.memory.peak - own.memory.peak == (2 * v_h + 2 * layer) - (v_h + layer)


def test_api_estimate_with_torchtune() -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    client = TestClient(create_app())
    body = {"model": LLAMA_1B, "method": "qlora", "training": _tt(num_output_chunks=0)}
    res = client.post("/api/v1/estimate", json=body)
    assert res.status_code == 200, res.text
    assert res.json()["versions"]["models_framework"].startswith("torchtune: torchtune 0.4.0")
    bad = client.post("/api/v1/estimate", json={**body, "quantization": {"load_in_8bit": True}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "load_in_8bit"


# --- published rows ------------------------------------------------------------------------------------------------


def _row(row_id: int) -> dict[str, str]:
    return next(r for r in read_rows() if r["row_id"] == str(row_id))


def test_published_rows_map_to_their_recipe() -> None:
    fused_bwd = map_row(_row(21)).req.training  # '+ Fuse optimizer step into backward' (flags table)
    assert (fused_bwd.optimizer_in_bwd, fused_bwd.num_output_chunks, fused_bwd.gradient_checkpointing,
            fused_bwd.packing, fused_bwd.torch_compile, fused_bwd.optim) == (True, 8, True, True, True,
                                                                             "adamw_torch_fused")
    # the flags table's '+ Activation Checkpointing' row (24.9 GiB) is below 8 bytes per parameter (bf16 weights,
    # gradients, two AdamW states: 3,212,749,824 · 8 B = 23.94 GiB) plus a foreach sqrt of every second moment
    # (2 B per parameter, 5.98 GiB): its step had no full-size temporary, and the estimate's optimizer phase none
    ac = map_row(_row(20))
    assert ac.req.training.optim == "adamw_torch_fused"
    phases = {p.name: p.bytes for p in estimate(ac.req).peak.phases}
    assert phases["optimizer"] < ac.published_gib * 2**30 < 3_212_749_824 * 10
    lora = map_row(_row(24))  # 3B_lora_single_device: torch.optim.AdamW fused=True, offloading
    assert lora.req.training.optim == "adamw_torch_fused" and lora.req.training.activation_offloading
    assert map_row(_row(15)).req.training.num_output_chunks == 0  # 405B_qlora.yaml: torch.nn.CrossEntropyLoss
    assert map_row(_row(13)).req.training.custom_sharded_layers == ["tok_embeddings", "output"]  # 70B_full.yaml
    assert map_row(_row(38)).kind == "init"  # memory after model init: static bytes, not in the medians
    with pytest.raises(Skip, match="PR #961"):
        map_row(_row(3))
