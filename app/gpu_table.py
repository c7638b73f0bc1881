"""The page's GPU table: every catalog GPU × method, with the run's time and cost where it fits and the shortfall
(bytes per GPU) where it does not, and where the catalog's prices come from."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.catalog import Gpu, gpus
from app.core.units import format_bytes
from app.formatting import format_gib, format_hours, format_usd
from app.views import CompareView


@dataclass(frozen=True)
class CostCell:
    text: str
    cls: str  # "fits", "no" or "refused"
    title: str = ""


@dataclass(frozen=True)
class GpuRow:
    gpu: Gpu
    price: str
    selected: bool
    cells: list[CostCell]


def price_source(gpu_id: str) -> str:
    """Where the catalog's purchase price of ``gpu_id`` comes from."""
    return gpus()[gpu_id].purchase_price_source or ""


def price_dates() -> str:
    """The months the catalog's prices were read, e.g. '2026-11'."""
    return ", ".join(sorted({g.price_date for g in gpus().values() if g.price_usd_per_hour is not None}))


def gpu_rows(view: CompareView) -> list[GpuRow]:
    """Every catalog GPU × method: time and cost where the run fits, the shortfall where it does not."""
    rows: list[GpuRow] = []
    overrides = {**view.options.prices,
                 **({view.gpu.id: view.options.price} if view.options.price is not None else {})}
    for g in gpus().values():
        cells: list[CostCell] = []
        for c in view.columns:
            fit, cost = c.fit_on(g.id), c.cost_on(g.id)
            if fit is None:
                cells.append(CostCell("—", "refused", c.error or ""))
            elif not fit.fits or cost is None:
                cells.append(CostCell(f"short {format_gib(-fit.headroom_bytes)}", "no",
                                      f"needs {format_bytes(fit.vram_bytes - fit.headroom_bytes)} per GPU, "
                                      f"{format_bytes(-fit.headroom_bytes)} more than the card has"))
            else:
                text = format_hours(cost.hours) + (f" · {format_usd(cost.cost_usd)}" if cost.cost_usd is not None
                                                   else "")
                cells.append(CostCell(text, "fits", f"{format_bytes(fit.headroom_bytes)} spare; "
                                      f"{cost.tokens_per_second:,.0f} tokens/s at MFU {cost.mfu:.2f} "
                                      f"({cost.mfu_source})"))
        if g.id in overrides:
            price = f"${overrides[g.id]:g} (yours)"
        elif g.price_usd_per_hour is not None:
            price = f"${g.price_usd_per_hour:g}"
        else:
            price = "—"
        rows.append(GpuRow(g, price, g.id == view.gpu.id, cells))
    return rows
