"""The price table: $ per accelerator-hour by SKU, on-demand and spot, with its date and source.

Prices are us-central1 list prices transcribed by hand from Google Cloud's public pricing pages
(nothing is fetched at run time). GPU prices are per GPU and include the GPU's share of the host
machine type that carries it; TPU prices are per chip; ``cpu`` is a whole n2-standard-2 machine.
Prices change and differ by region: a job spec can set ``usd_per_accelerator_hour`` to override.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AcceleratorSku:
    name: str
    kind: str  # cpu | tpu | gpu
    description: str
    on_demand_usd_per_hour: float  # per chip / per GPU / per machine (cpu)
    spot_usd_per_hour: float
    machine_type: str  # the machine type that carries one accelerator (or a host's worth)
    chips_per_host: int


PRICE_TABLE_DATE = "2025-06-01"
PRICE_TABLE_SOURCE = (
    "us-central1 list prices transcribed from cloud.google.com/compute/vm-instance-pricing, "
    "cloud.google.com/compute/gpus-pricing and cloud.google.com/tpu/pricing; verify for your "
    "region and date, or set usd_per_accelerator_hour in the job spec"
)

ACCELERATORS: dict[str, AcceleratorSku] = {
    s.name: s
    for s in (
        AcceleratorSku("cpu", "cpu", "n2-standard-2 (2 vCPU, 8 GB), no accelerator",
                       0.0971, 0.0235, "n2-standard-2", 1),
        AcceleratorSku("tpu-v5e", "tpu", "TPU v5e (v5litepod) chip",
                       1.20, 0.48, "ct5lp-hightpu-4t", 4),
        AcceleratorSku("tpu-v6e", "tpu", "TPU v6e (Trillium) chip",
                       2.70, 1.08, "ct6e-standard-4t", 4),
        AcceleratorSku("tpu-v5p", "tpu", "TPU v5p chip",
                       4.20, 1.68, "ct5p-hightpu-4t", 4),
        AcceleratorSku("nvidia-l4", "gpu", "NVIDIA L4 24 GB (g2-standard-4 share)",
                       0.7068, 0.2828, "g2-standard-4", 1),
        AcceleratorSku("nvidia-a100-40gb", "gpu", "NVIDIA A100 40 GB (a2-highgpu-1g)",
                       3.6734, 1.4694, "a2-highgpu-1g", 1),
        AcceleratorSku("nvidia-a100-80gb", "gpu", "NVIDIA A100 80 GB (a2-ultragpu-1g)",
                       5.0688, 2.0275, "a2-ultragpu-1g", 1),
        AcceleratorSku("nvidia-h100-80gb", "gpu", "NVIDIA H100 80 GB (a3-highgpu-8g / 8)",
                       11.0613, 4.4245, "a3-highgpu-8g", 8),
        AcceleratorSku("nvidia-h200-141gb", "gpu", "NVIDIA H200 141 GB (a3-ultragpu-8g / 8)",
                       10.6009, 4.2404, "a3-ultragpu-8g", 8),
    )
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Price:
    usd_per_accelerator_hour: float
    pricing_model: str  # on_demand | spot | override
    table_date: str
    table_source: str


def price_for(accelerator: str, spot: bool = False, override: float | None = None) -> Price:
    if override is not None:
        return Price(override, "override", PRICE_TABLE_DATE, "job spec usd_per_accelerator_hour")
    sku = ACCELERATORS[accelerator]
    usd = sku.spot_usd_per_hour if spot else sku.on_demand_usd_per_hour
    return Price(usd, "spot" if spot else "on_demand", PRICE_TABLE_DATE, PRICE_TABLE_SOURCE)


def cost_usd(price: Price, accelerator_seconds: float, accelerator_count: int) -> float:
    return price.usd_per_accelerator_hour * accelerator_count * accelerator_seconds / 3600.0
