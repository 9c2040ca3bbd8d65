"""What accelerator time costs: the dated price table's rate for a job, and $ for seconds used.

The rates themselves live with the rest of an accelerator's facts in ``hyperbatch.accelerators``
(us-central1 list prices, on-demand and spot, with their date and source); a job spec can set
``usd_per_accelerator_hour`` for its region and discount.
"""

from __future__ import annotations

import dataclasses

from hyperbatch import accelerators
from hyperbatch.accelerators import PRICE_TABLE_DATE, PRICE_TABLE_SOURCE

__all__ = ["PRICE_TABLE_DATE", "PRICE_TABLE_SOURCE", "Price", "cost_usd", "price_for"]


@dataclasses.dataclass(frozen=True)
class Price:
    usd_per_accelerator_hour: float
    pricing_model: str  # on_demand | spot | override
    table_date: str
    table_source: str


def price_for(accelerator: str, spot: bool = False, override: float | None = None) -> Price:
    if override is not None:
        return Price(override, "override", PRICE_TABLE_DATE, "job spec usd_per_accelerator_hour")
    sku = accelerators.get(accelerator)
    usd = sku.spot_usd_per_hour if spot else sku.on_demand_usd_per_hour
    return Price(usd, "spot" if spot else "on_demand", PRICE_TABLE_DATE, PRICE_TABLE_SOURCE)


def cost_usd(price: Price, accelerator_seconds: float, accelerator_count: int) -> float:
    return price.usd_per_accelerator_hour * accelerator_count * accelerator_seconds / 3600.0
