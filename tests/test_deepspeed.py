"""DeepSpeed ZeRO's own buffers and bucket sizes, derived by hand from DeepSpeed's source (at 38327e07f).

- ``runtime/zero/stage3.py`` (``DeepSpeedZeroOptimizer_Stage3.__init__``): ``__ipg_bucket_flat_buffer =
  torch.empty(reduce_bucket_size, dtype=self.dtype)`` and ``grad_partitions_flat_buffer = torch.zeros(Σ partition
  numel, dtype=gradient_accumulation_dtype, device=self.device)``; under ZeRO the accumulation dtype is the model's
  (``engine.py: get_data_types``), bf16 here, and ``self.device`` is the CPU with ``offload_optimizer``.
- ``runtime/zero/stage_1_and_2.py: backward``: one ``reduce_bucket_size`` buffer per backward.
- ``runtime/zero/config.py``: defaults reduce_bucket_size 5e8, stage3_prefetch_bucket_size 5e7; transformers'
  ``trainer_config_finalize`` fills "auto" with hidden² and int(0.9·hidden²).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.accuracy.rows import map_row, read_rows
from app.core import PlanError, PlanRequest, estimate
from app.core.result import EstimateResult
from app.importers import ConfigImportError
from app.importers.axolotl import from_axolotl
from app.main import create_app

MODEL = "meta-llama/Llama-3.2-1B"
PSI = 1_235_814_400  # Llama-3.2-1B parameters (tied embeddings once): all trainable under full fine-tuning
HIDDEN = 2048
EMBEDDING_BYTES = 2 * 128256 * 2048  # the largest module, bf16: what ZeRO-3 gathers beside the prefetch bucket


def _run(hardware: dict[str, Any], method: str = "full") -> EstimateResult:
    return estimate(PlanRequest(model=MODEL, method=method, training={"optim": "adamw_torch"},
                                hardware={"num_gpus": 2, **hardware}))


def _items(res: EstimateResult) -> dict[str, int]:
    return {b.key: b.bytes for b in res.breakdown}


def _phases(res: EstimateResult) -> dict[str, int]:
    return {p.name: p.bytes for p in res.peak.phases}


def test_zero3_keeps_its_reduce_bucket_and_16_bit_gradient_partitions() -> None:
    res = _run({"sharding": "zero3"})
    # "auto": hidden² bf16 elements; gradient partitions: ⌈Ψ / 2⌉ bf16 elements per GPU
    assert _items(res)["sharding/zero3_buffers"] == 2 * HIDDEN * HIDDEN + 2 * (PSI // 2) == 1_244_203_008


def test_zero3_buffers_live_through_every_phase() -> None:
    """Allocated in the optimizer's __init__: a larger reduce bucket raises the forward as much as the step."""
    auto = _phases(_run({"sharding": "zero3"}))
    big = _phases(_run({"sharding": "zero3", "reduce_bucket_size": 500_000_000}))
    grow = 2 * (500_000_000 - HIDDEN * HIDDEN)
    assert {name: big[name] - auto[name] for name in auto} == {name: grow for name in auto}


def test_zero3_prefetch_bucket_size() -> None:
    auto = _items(_run({"sharding": "zero3"}))["sharding/gathered_parameters"]
    assert auto == EMBEDDING_BYTES + 2 * int(0.9 * HIDDEN * HIDDEN)
    none = _items(_run({"sharding": "zero3", "stage3_prefetch_bucket_size": 0}))["sharding/gathered_parameters"]
    ds_default = _items(_run({"sharding": "zero3", "stage3_prefetch_bucket_size": 50_000_000}))
    assert none == EMBEDDING_BYTES
    assert ds_default["sharding/gathered_parameters"] == EMBEDDING_BYTES + 100_000_000


def test_zero3_offloaded_optimizer_moves_the_gradient_partitions_to_host_memory() -> None:
    gpu_only = _run({"sharding": "zero3"})
    offload = _run({"sharding": "zero3", "offload_optimizer": "cpu"})
    assert _items(offload)["sharding/zero3_buffers"] == 2 * HIDDEN * HIDDEN
    # host RAM of both GPUs: each one's partitions (Ψ/2 elements, bf16) on top of the offloaded fp32 states
    states = (4 + 4 + 8) * PSI  # fp32 master + fp32 gradient + Adam's two fp32 states
    assert offload.memory.host_ram == states + 2 * 2 * (PSI // 2)
    assert gpu_only.memory.host_ram == 0


def test_zero2_reduce_bucket_lives_in_backward_and_the_step() -> None:
    auto = _phases(_run({"sharding": "zero2"}))
    swift = _phases(_run({"sharding": "zero2", "reduce_bucket_size": 200_000_000}))
    grow = 2 * (200_000_000 - HIDDEN * HIDDEN)
    assert {name: swift[name] - auto[name] for name in auto} == {
        "forward": 0, "loss": 0, "backward": grow, "optimizer": grow}


@pytest.mark.parametrize(("hardware", "field"), [
    ({"reduce_bucket_size": 500_000_000}, "reduce_bucket_size"),
    ({"num_gpus": 2, "sharding": "fsdp", "reduce_bucket_size": 500_000_000}, "reduce_bucket_size"),
    ({"num_gpus": 2, "sharding": "zero2", "stage3_prefetch_bucket_size": 0}, "stage3_prefetch_bucket_size"),
])
def test_bucket_sizes_outside_deepspeed_are_refused(hardware: dict[str, Any], field: str) -> None:
    with pytest.raises(PlanError) as info:
        estimate(PlanRequest(model=MODEL, method="lora", hardware=hardware))
    assert info.value.loc == ("hardware", field)


@pytest.mark.parametrize("sharding", ["zero1", "zero2", "zero3"])
def test_fp32_zero_is_refused_and_16_bit_modes_are_not(sharding: str) -> None:
    """DeepSpeed without a bf16/fp16 section trains fp32 parameters; the ZeRO rules count 16-bit ones, so fp32 is a
    422 on training.precision, while every 16-bit precision answers."""
    hw = {"num_gpus": 2, "sharding": sharding}
    with pytest.raises(PlanError) as info:
        estimate(PlanRequest(model=MODEL, method="lora", training={"precision": "fp32"}, hardware=hw))
    assert info.value.loc == ("training", "precision")
    for precision in ("bf16", "bf16-mixed", "fp16-mixed"):
        assert estimate(PlanRequest(model=MODEL, method="lora", training={"precision": precision}, hardware=hw))


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def test_fp32_zero_is_a_422_naming_the_field(client: TestClient) -> None:
    r = client.post("/api/v1/estimate", json={"model": MODEL, "training": {"precision": "fp32"},
                                              "hardware": {"num_gpus": 2, "sharding": "zero3"}})
    assert r.status_code == 422, r.text
    assert any(d["loc"][-2:] == ["training", "precision"] and "fp32" in d["msg"] for d in r.json()["detail"]), r.text


@pytest.mark.parametrize(("value", "field"), [
    (0, "reduce_bucket_size"), (-1, "reduce_bucket_size"), ("5e8", "reduce_bucket_size"),
    (5e8, "reduce_bucket_size"), (10**13, "reduce_bucket_size"), (-1, "stage3_prefetch_bucket_size"),
    ("big", "stage3_prefetch_bucket_size"),
])
def test_invalid_bucket_sizes_are_a_422_naming_the_field(client: TestClient, value: Any, field: str) -> None:
    body = {"model": MODEL, "method": "lora", "hardware": {"num_gpus": 2, "sharding": "zero3", field: value}}
    r = client.post("/api/v1/estimate", json=body)
    assert r.status_code == 422, r.text
    assert any(d["loc"][:3] == ["body", "hardware", field] for d in r.json()["detail"]), r.text


def test_bucket_size_without_zero_is_a_422_naming_the_field(client: TestClient) -> None:
    r = client.post("/api/v1/estimate", json={"model": MODEL, "hardware": {"reduce_bucket_size": 200_000_000}})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][-2:] == ["hardware", "reduce_bucket_size"] and "zero" in d["msg"] for d in detail), detail


def _ds_import(tmp_path: Path, zero: dict[str, Any]) -> dict[str, Any]:
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": zero}))
    body, _ = from_axolotl({"base_model": MODEL, "adapter": "lora", "deepspeed": "ds.json"}, "a.yml",
                           base_dir=tmp_path)
    return body["hardware"]


def test_importer_reads_the_bucket_sizes(tmp_path: Path) -> None:
    # JSON writes them as 5e8: a whole float is an element count
    assert _ds_import(tmp_path, {"stage": 3, "reduce_bucket_size": 5e8, "stage3_prefetch_bucket_size": 12845056}) == {
        "sharding": "zero3", "reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 12_845_056}
    # "auto" is the request's default: nothing to set
    assert _ds_import(tmp_path, {"stage": 3, "reduce_bucket_size": "auto",
                                 "stage3_prefetch_bucket_size": "auto"}) == {"sharding": "zero3"}
    # left out: DeepSpeed's defaults (the HF Trainer fills "auto" keys only); no prefetch bucket below stage 3
    assert _ds_import(tmp_path, {"stage": 3}) == {
        "sharding": "zero3", "reduce_bucket_size": 500_000_000, "stage3_prefetch_bucket_size": 50_000_000}
    assert _ds_import(tmp_path, {"stage": 1}) == {"sharding": "zero1", "reduce_bucket_size": 500_000_000}


@pytest.mark.parametrize("value", ["big", -5, 2.5, True])
def test_importer_refuses_a_bad_bucket_size_naming_the_key(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigImportError) as info:
        _ds_import(tmp_path, {"stage": 2, "reduce_bucket_size": value})
    assert info.value.key == "deepspeed.zero_optimization.reduce_bucket_size"


ROWS = {row["row_id"]: row for row in read_rows()}


@pytest.mark.parametrize(("row_id", "reentrant", "buckets"), [
    ("54", False, True), ("55", False, False), ("56", True, True), ("57", True, False), ("58", True, False)])
def test_peft_example_rows_take_their_scripts_settings(row_id: str, reentrant: bool, buckets: bool) -> None:
    """PEFT examples/sft run_peft_*.sh: --lora_dropout 0.1; --use_reentrant True for QLoRA, False for LoRA; the
    ZeRO-3 runs launch with an accelerate YAML and no DeepSpeed JSON, so DeepSpeed's bucket defaults."""
    req = map_row(ROWS[row_id]).req
    assert req.lora.lora_dropout == 0.1
    assert req.training.gradient_checkpointing_kwargs.use_reentrant is reentrant
    expected = (500_000_000, 50_000_000) if buckets else ("auto", "auto")
    assert (req.hardware.reduce_bucket_size, req.hardware.stage3_prefetch_bucket_size) == expected


def test_page_fields(client: TestClient) -> None:
    """The planner page's GPU(s) fields: a ZeRO-3 plan with DeepSpeed's default bucket shows ZeRO-3's buffers; a
    bucket without ZeRO is the page's 422 naming the field."""
    base = {"model": MODEL, "method": "qlora", "sharding": "zero3", "num_gpus": "2"}
    r = client.get("/", params={**base, "reduce_bucket_size": "500000000"})
    assert r.status_code == 200 and "sharding/zero3_buffers" in r.text
    assert 'name="reduce_bucket_size"' in r.text and 'value="500000000"' in r.text
    r = client.get("/", params={"model": MODEL, "method": "qlora", "reduce_bucket_size": "500000000"})
    assert r.status_code == 422 and "reduce_bucket_size" in r.text and "DeepSpeed ZeRO setting" in r.text


def test_the_fsdp_lever_leaves_deepspeeds_buckets_behind() -> None:
    """An 8B full fine-tune that does not fit 2 × A100 under ZeRO-2 with ms-swift's 2e8 bucket: the "more cards"
    levers keep the bucket for ZeRO-3 and reset it to "auto" for FSDP, where it would be a 422."""
    from app.core.levers import levers

    req = PlanRequest(model="meta-llama/Llama-3.1-8B", method="full", training={"optim": "adamw_torch"},
                      hardware={"num_gpus": 2, "sharding": "zero2", "reduce_bucket_size": 200_000_000})
    by_id = {lv.id: lv for lv in levers(req).levers}
    assert by_id["zero3"].changes == {"hardware.num_gpus": 4, "hardware.sharding": "zero3"}
    assert by_id["zero3"].request.hardware.reduce_bucket_size == 200_000_000
    assert by_id["fsdp"].changes == {"hardware.num_gpus": 4, "hardware.sharding": "fsdp",
                                     "hardware.reduce_bucket_size": "auto"}


def test_zero3_gathers_a_module_above_max_live_parameters_whole() -> None:
    """DeepSpeed's ``fetch_sub_module`` (runtime/zero/partitioned_param_coordinator.py) gathers the running module
    whatever its size; ``stage3_max_live_parameters`` (1e9) bounds only the prefetch: ``max_params_to_prefetch =
    min(max_live − available, prefetch_bucket)``. By hand for Llama-3.1-70B (config.json: hidden 8192, ffn 28672,
    8 key/value heads of 128, vocab 128256, untied): a layer holds 2·8192² + 2·8192·1024 + 3·8192·28672 + 2·8192 =
    855,654,400 elements, lm_head (and the embedding) 128256·8192 = 1,050,673,152, above 1e9: gathered whole in bf16,
    2,101,346,304 bytes, with nothing prefetched beside it (the old cap said 2e9 bytes). Llama-3.1-405B's layers
    (16384 hidden, 53248 ffn, 8 key/value heads of 128): 2·16384² + 2·16384·1024 + 3·16384·53248 + 2·16384 =
    3,187,703,808 elements each, 6,375,407,616 bytes gathered."""
    for model, largest in (("meta-llama/Llama-3.1-70B", 128256 * 8192),
                           ("meta-llama/Llama-3.1-405B", 2 * 16384**2 + 2 * 16384 * 1024 + 3 * 16384 * 53248
                            + 2 * 16384)):
        res = estimate(PlanRequest(model=model, method="lora", hardware={"num_gpus": 8, "sharding": "zero3"}))
        assert _items(res)["sharding/gathered_parameters"] == 2 * largest
    assert 2 * 128256 * 8192 == 2_101_346_304
