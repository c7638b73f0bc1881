"""Buy vs rent: what owning a consumer or workstation card costs per run, against renting the cheapest cloud
GPU that holds the same run, and after how many hours of use buying has paid for itself.

For one run of ``tokens`` training tokens (times from :mod:`app.core.throughput`, so the same FLOPs, MFU and
slowdown as the time/cost table), with ``n`` cards of a buyable GPU (``hardware.num_gpus``):

- purchase ``n · P`` (USD; ``P`` the catalog's ``purchase_price_usd`` or the caller's override);
- power per run ``H · n · W/1000 · k`` USD (``H`` run hours on the owned cards, ``W`` the board power
  ``tdp_watts``, ``k`` USD per kWh; zero when no electricity price is given). Board power is the ceiling a
  card draws under a sustained training load; the rest of the computer is not counted;
- rent per run ``R``: the lowest ``cost_usd`` among the catalog GPUs with a rental price that hold the run;
- break-even: buying pays off after ``runs* = n · P / (R − power per run)`` runs, i.e.
  ``hours* = runs* · H`` hours of training on the owned cards; never when power per run ≥ R.

Pure Python: imports neither torch nor FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.core.catalog import gpus
from app.core.estimate import estimate
from app.core.request import PlanRequest
from app.core.throughput import DEFAULT_TOKENS, MIN_MFU, GpuCost, ThroughputReport, throughput

WH_PER_KWH = 1000


class BuyOption(BaseModel):
    """Owning ``num_gpus`` cards of one GPU for this run, against renting."""

    gpu: str
    name: str
    num_gpus: int
    purchase_price_usd: float = Field(description="per card, USD")
    purchase_price_source: Literal["catalog", "override"]
    purchase_price_date: str | None = Field(description="when the catalog's price was entered; null for an override")
    purchase_usd: float = Field(description="num_gpus × purchase_price_usd")
    hours: float = Field(description="wall-clock hours of this run on the owned cards")
    power_watts: int | None = Field(description="board power per card (TDP), W")
    power_cost_usd: float | None = Field(description="hours × num_gpus × W/1000 × USD/kWh; null without a kWh price")
    rent_cost_usd: float | None = Field(description="the same run on the cheapest rentable GPU that holds it")
    break_even_runs: float | None = Field(
        description="purchase ÷ (rent per run − power per run); null when renting is never dearer or nothing "
        "rentable holds the run")
    break_even_hours: float | None = Field(description="break_even_runs × hours: training hours on the owned cards")


class BuyVsRent(BaseModel):
    """GET/POST /api/v1/buy-vs-rent's response (and the page's "Buy or rent" table)."""

    tokens: int
    usd_per_kwh: float | None = Field(description="electricity price; null: power not counted")
    rent: GpuCost | None = Field(description="the cheapest rental (lowest cost_usd) among the GPUs that hold the run")
    options: list[BuyOption] = Field(description="buyable GPUs (a purchase price) that hold the run, cheapest first")


def buy_vs_rent(report: ThroughputReport, *, usd_per_kwh: float | None = None,
                purchase_prices: Mapping[str, float] | None = None) -> BuyVsRent:
    """Buy vs rent from a time/cost ``report`` of the GPUs that hold the run (``throughput(req, fitting)``)."""
    if usd_per_kwh is not None and usd_per_kwh < 0:
        raise ValueError("usd_per_kwh must not be negative")
    table = gpus()
    priced = [row for row in report.gpus if row.cost_usd is not None]
    rent = min(priced, key=lambda row: (row.cost_usd, row.hours)) if priced else None
    options: list[BuyOption] = []
    overrides = purchase_prices or {}
    for row in report.gpus:
        g = table[row.gpu]
        price = overrides.get(g.id, g.purchase_price_usd)
        if price is None:
            continue
        watts = g.tdp_watts
        power = (row.hours * row.num_gpus * watts / WH_PER_KWH * usd_per_kwh
                 if usd_per_kwh is not None and watts is not None else None)
        purchase = row.num_gpus * price
        saving = None if rent is None or rent.cost_usd is None else rent.cost_usd - (power or 0.0)
        runs = purchase / saving if saving is not None and saving > 0 else None
        options.append(BuyOption(
            gpu=g.id, name=g.name, num_gpus=row.num_gpus, purchase_price_usd=price,
            purchase_price_source="override" if g.id in overrides else "catalog",
            purchase_price_date=None if g.id in overrides else g.purchase_price_date,
            purchase_usd=purchase, hours=row.hours, power_watts=watts, power_cost_usd=power,
            rent_cost_usd=None if rent is None else rent.cost_usd, break_even_runs=runs,
            break_even_hours=None if runs is None else runs * row.hours))
    options.sort(key=lambda o: (o.purchase_usd, o.hours))
    return BuyVsRent(tokens=report.tokens, usd_per_kwh=usd_per_kwh, rent=rent, options=options)


Usd = Annotated[float, Field(ge=0, le=1_000_000)]


class BuyVsRentRequest(BaseModel):
    """POST /api/v1/buy-vs-rent's body: a plan and the time/cost assumptions (all optional)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "request": {"model": "meta-llama/Llama-3.1-8B", "method": "qlora", "hardware": {"gpu": "nvidia-rtx-4090"}},
        "tokens": 100_000_000, "usd_per_kwh": 0.30, "purchase_prices": {"nvidia-rtx-5090": 2600}}]})

    request: PlanRequest
    tokens: int = Field(DEFAULT_TOKENS, ge=1, le=10**16, description="training tokens of one run (all epochs)")
    mfu: float | None = Field(None, ge=MIN_MFU, le=1,
                              description="one MFU for every GPU; null: per GPU class/calibrated")
    usd_per_kwh: float | None = Field(None, ge=0, le=100, description="electricity price; null: power not counted")
    prices: dict[str, Usd] = Field(default_factory=dict, max_length=64, description="USD per GPU-hour by GPU id")
    purchase_prices: dict[str, Usd] = Field(default_factory=dict, max_length=64, description="USD per card by GPU id")

    @field_validator("prices", "purchase_prices")
    @classmethod
    def _catalog_ids(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(gpus()))
        if unknown:
            raise ValueError(f"unknown GPU id(s) {', '.join(unknown)}; GET /api/v1/gpus lists them")
        return v


def plan_buy_vs_rent(body: BuyVsRentRequest, measured_mfu: Mapping[str, float] | None = None) -> BuyVsRent:
    """Estimate the plan, time it on every catalog GPU that holds it, and compare buying with renting.
    Raises :class:`~app.core.errors.PlanError` when the plan is refused."""
    result = estimate(body.request)
    report = throughput(body.request, [f.gpu for f in result.fits if f.fits], tokens=body.tokens, mfu=body.mfu,
                        prices=body.prices, measured_mfu=measured_mfu)
    return buy_vs_rent(report, usd_per_kwh=body.usd_per_kwh, purchase_prices=body.purchase_prices)


__all__ = ["BuyOption", "BuyVsRent", "BuyVsRentRequest", "buy_vs_rent", "plan_buy_vs_rent"]
