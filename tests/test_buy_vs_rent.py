"""Buy vs rent (app/core/ownership.py): arithmetic on hand-made figures, the catalog's dated purchase prices,
POST /api/v1/buy-vs-rent, and the page's table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.calibration.store import JobStore, measured_mfus
from app.core import PlanRequest
from app.core.catalog import gpus
from app.core.ownership import buy_vs_rent
from app.core.throughput import FlopsPerToken, GpuCost, ThroughputReport, flop_counts, flops_per_token
from app.main import app, create_app
from app.settings import Settings, get_settings

client = TestClient(app)


def _row(gpu_id: str, hours: float, price: float | None) -> GpuCost:
    g = gpus()[gpu_id]
    return GpuCost(gpu=g.id, name=g.name, num_gpus=1, bf16_tflops=g.bf16_tflops, tokens_per_second=1.0, hours=hours,
                   gpu_hours=hours, price_usd_per_hour=price, price_date=None, price_source="override",
                   cost_usd=None if price is None else hours * price)


def _report(rows: list[GpuCost]) -> ThroughputReport:
    zero = FlopsPerToken(active_params=0, adapter_params=0, attention_forward=0, forward=0, backward=0, recompute=0,
                         total=0)
    return ThroughputReport(method="qlora", tokens=1000, mfu=None, slowdown=1.0, flops_per_token=zero,
                            total_flops=0, gpus=rows)


# One run: 10 h on an owned RTX 4090; renting: 2 h on an H100 at $2.70 ($5.40) or 4 h on an A100 at $1.60 ($6.40).
REPORT = _report([_row("nvidia-h100-sxm-80gb", 2.0, 2.7), _row("nvidia-a100-80gb", 4.0, 1.6),
                  _row("nvidia-rtx-4090", 10.0, None)])


def test_break_even_by_hand() -> None:
    out = buy_vs_rent(REPORT, usd_per_kwh=0.30)
    assert out.rent is not None and out.rent.gpu == "nvidia-h100-sxm-80gb" and out.rent.cost_usd == pytest.approx(5.40)
    (rtx,) = out.options  # the only buyable card among the three
    assert rtx.gpu == "nvidia-rtx-4090" and rtx.purchase_price_usd == 1599 and rtx.purchase_price_source == "catalog"
    # power: 10 h × 450 W = 4.5 kWh × $0.30 = $1.35 per run
    assert rtx.power_watts == 450 and rtx.power_cost_usd == pytest.approx(1.35)
    # break-even: $1,599 ÷ ($5.40 − $1.35) = 394.81 runs = 3,948.1 h on the 4090
    assert rtx.break_even_runs == pytest.approx(1599 / 4.05) == pytest.approx(394.8148, rel=1e-6)
    assert rtx.break_even_hours == pytest.approx(3948.148, rel=1e-6)


def test_overrides_no_power_and_never() -> None:
    mine = buy_vs_rent(REPORT, usd_per_kwh=0.30, purchase_prices={"nvidia-rtx-4090": 2000}).options[0]
    assert mine.purchase_price_source == "override" and mine.purchase_price_date is None
    assert mine.break_even_runs == pytest.approx(2000 / 4.05)  # 493.83 runs
    free_power = buy_vs_rent(REPORT).options[0]
    assert free_power.power_cost_usd is None and free_power.break_even_runs == pytest.approx(1599 / 5.40)  # 296.1
    # at $2/kWh a run's power (10 h × 0.45 kW × $2 = $9) costs more than renting it ($5.40): never pays off
    dear = buy_vs_rent(REPORT, usd_per_kwh=2.0).options[0]
    assert dear.power_cost_usd == pytest.approx(9.0) and dear.break_even_runs is None and dear.break_even_hours is None
    # nothing rentable holds the run: no break-even either
    alone = buy_vs_rent(_report([_row("nvidia-rtx-4090", 10.0, None)]), usd_per_kwh=0.3)
    assert alone.rent is None and alone.options[0].break_even_runs is None
    with pytest.raises(ValueError, match="usd_per_kwh"):
        buy_vs_rent(REPORT, usd_per_kwh=-1)


def test_catalog_purchase_prices_are_dated_with_a_source() -> None:
    buyable = [g for g in gpus().values() if g.form in ("consumer", "workstation")]
    assert len(buyable) == 9
    for g in buyable:
        assert g.purchase_price_usd and g.purchase_price_usd > 0 and g.tdp_watts, g.id
        assert re.fullmatch(r"2026-1[12]", g.purchase_price_date or ""), g.id
        assert "MSRP" in (g.purchase_price_source or "") or "list price" in (g.purchase_price_source or ""), g.id
    assert all(g.purchase_price_usd is None for g in gpus().values() if g.form == "datacenter")


def test_api_buy_vs_rent() -> None:
    body = {"request": {"model": "meta-llama/Llama-3.1-8B", "method": "qlora"}, "usd_per_kwh": 0.25,
            "purchase_prices": {"nvidia-rtx-5090": 2600}}
    r = client.post("/api/v1/buy-vs-rent", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    rent = data["rent"]
    assert rent["cost_usd"] == pytest.approx(rent["hours"] * rent["num_gpus"] * rent["price_usd_per_hour"])
    by_gpu = {o["gpu"]: o for o in data["options"]}
    o = by_gpu["nvidia-rtx-5090"]
    assert o["purchase_usd"] == 2600 and o["purchase_price_source"] == "override"
    power = o["hours"] * 575 / 1000 * 0.25  # RTX 5090 board power 575 W
    assert o["power_cost_usd"] == pytest.approx(power)
    assert o["break_even_runs"] == pytest.approx(2600 / (rent["cost_usd"] - power))
    assert by_gpu["nvidia-rtx-4090"]["purchase_usd"] == 1599
    # consumer cards are timed at their class MFU (0.30), and the time follows it: 4090 vs 5090 by TFLOP/s
    assert by_gpu["nvidia-rtx-4090"]["hours"] / o["hours"] == pytest.approx(209.5 / 165.2)
    bad = client.post("/api/v1/buy-vs-rent", json={**body, "purchase_prices": {"rtx-9090": 1}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "purchase_prices"]
    bad = client.post("/api/v1/buy-vs-rent", json={**body, "usd_per_kwh": -1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "usd_per_kwh"]
    # an MFU of 5e-324 made tokens/s underflow to 0 and the hours infinite (null in JSON): refused below 0.1%
    bad = client.post("/api/v1/buy-vs-rent", json={**body, "mfu": 5e-324})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "mfu"]
    slowest = client.post("/api/v1/buy-vs-rent", json={**body, "mfu": 0.001, "tokens": 10**16}).json()
    # hours scale as tokens / MFU: 10^16 / 10^8 tokens at 0.001 / 0.30 MFU, from the 5090 row above
    assert slowest["options"][0]["hours"] > 0 and by_gpu["nvidia-rtx-5090"]["hours"] * 1e8 * 300 == pytest.approx(
        {x["gpu"]: x for x in slowest["options"]}["nvidia-rtx-5090"]["hours"])


def test_page_buy_or_rent_table() -> None:
    params = {"model": "meta-llama/Llama-3.1-8B", "method": "qlora", "gpu": "nvidia-rtx-4090", "usd_per_kwh": "0.3",
              "buy_price": "1800"}
    page = client.get("/", params=params)
    assert page.status_code == 200
    html = page.text
    row = re.search(r'<tr data-gpu="nvidia-rtx-4090">(.*?)</tr>', html, re.S)
    assert row is not None and "$1,800 (yours)" in row.group(1) and "450 W" in row.group(1)
    data = client.get("/compare.json", params=params).json()
    costs = data["methods"]["qlora"]["throughput"]["gpus"]
    own = next(g for g in costs if g["gpu"] == "nvidia-rtx-4090")
    rent = min((g for g in costs if g["cost_usd"] is not None), key=lambda g: g["cost_usd"])
    runs = 1800 / (rent["cost_usd"] - own["hours"] * 0.45 * 0.3)
    assert f"{runs:,.0f} runs" in row.group(1)
    assert "Buy or rent" in data["fragments"]["costs"]
    bad = client.get("/", params={**params, "usd_per_kwh": "-2"})
    assert bad.status_code == 422 and "usd_per_kwh:" in bad.text


def test_calibrated_mfu_replaces_the_class_default(tmp_path: Path) -> None:
    """Finished GPU calibrations give each card the median MFU they reached: FLOPs/token × tokens/s ÷ peak.
    Jobs are written with tokens/s chosen to reach MFU 0.20, 0.25 and 0.30 on an RTX 4090 (165.2 TFLOP/s);
    a QLoRA job counts by its 16-bit twin (0.25 here, its own 4-bit tokens/s would say 0.05); a CPU job is
    not GPU evidence."""
    db = tmp_path / "db.sqlite3"
    store = JobStore(db)
    body = {"model": "meta-llama/Llama-3.2-1B", "method": "lora", "hardware": {"gpu": "nvidia-rtx-4090"}}
    flops = flops_per_token(flop_counts(PlanRequest.model_validate(body)), gradient_checkpointing=True).total

    def tps(mfu: float) -> float:
        return mfu * 165.2e12 / flops

    for mfu in (0.20, 0.25, 0.30):
        store.finish(store.create(body, "cuda:0", 1, 2, None), "done",
                     result={"tokens_per_s": tps(mfu), "measured_device": "nvidia-rtx-4090"})
    qlora = store.create({**body, "method": "qlora"}, "cuda:0", 1, 2, None)
    store.finish(qlora, "done", result={"tokens_per_s": tps(0.05), "measured_device": "nvidia-rtx-4090",
                                        "sixteen_bit_base": {"method": "lora", "tokens_per_s": tps(0.25)}})
    store.finish(store.create(body, "cpu", 1, 2, None), "done", result={"tokens_per_s": tps(0.9)})
    measured = measured_mfus(db)
    assert measured.keys() == {"nvidia-rtx-4090"} and measured["nvidia-rtx-4090"] == pytest.approx(0.25)
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(database_path=db)
    with TestClient(app) as c:
        data = c.get("/compare.json", params={"model": "meta-llama/Llama-3.2-1B", "gpu": "nvidia-rtx-4090"}).json()
        rows = {g["gpu"]: g for g in data["methods"]["lora"]["throughput"]["gpus"]}
        assert (rows["nvidia-rtx-4090"]["mfu"], rows["nvidia-rtx-4090"]["mfu_source"]) == (
            pytest.approx(0.25), "calibrated")
        assert (rows["nvidia-rtx-5090"]["mfu"], rows["nvidia-rtx-5090"]["mfu_source"]) == (0.30, "class")
        mine = c.get("/compare.json", params={"model": "meta-llama/Llama-3.2-1B", "mfu": "0.5"}).json()
        assert {g["mfu_source"] for g in mine["methods"]["lora"]["throughput"]["gpus"]} == {"given"}
