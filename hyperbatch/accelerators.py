"""Accelerators: one table from a name to its kind, JAX platform, Dataflow workers and price.

Every part that depends on the accelerator reads it here: job spec validation (the names),
pricing (the $ per hour), the JAX engine (which JAX backend it must find -- it never falls back
to another), vLLM's arguments (by kind) and the Dataflow launch (worker machine type and
``worker_accelerator`` per count).

Prices are us-central1 list prices transcribed by hand from Google Cloud's public pricing pages
(nothing is fetched at run time). GPU prices are per GPU and include the GPU's share of the host
machine type that carries it; TPU prices are per chip; ``cpu`` is a whole n2-standard-2 machine.
Prices change and differ by region: a job spec can set ``usd_per_accelerator_hour`` to override.

Dataflow TPU workers are single-host slices (type ``tpu-v5-lite-podslice`` etc. with a topology
per chip count; source: cloud.google.com/dataflow/docs/tpu/tpu-support, checked 2025-09). GPU
workers carry 1–16 GPUs of one type (``type:...;count:N;install-nvidia-driver``); a3-highgpu-1g/2g/4g
are offered only as Spot or flex-start capacity.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Literal

Kind = Literal["cpu", "tpu", "gpu"]

PRICE_TABLE_DATE = "2025-06-01"
PRICE_TABLE_SOURCE = (
    "us-central1 list prices transcribed from cloud.google.com/compute/vm-instance-pricing, "
    "cloud.google.com/compute/gpus-pricing and cloud.google.com/tpu/pricing; verify for your "
    "region and date, or set usd_per_accelerator_hour in the job spec"
)

#: The JAX platform (``jax.devices(platform)``) of each kind. CUDA devices are JAX's "gpu".
JAX_PLATFORMS: Mapping[str, str] = types.MappingProxyType(
    {"cpu": "cpu", "tpu": "tpu", "gpu": "gpu"}
)


class UnknownAccelerator(ValueError):
    """A name that is not in the table, or a count no worker of that type carries."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    kind: Kind
    description: str
    on_demand_usd_per_hour: float  # per chip / per GPU / per machine (cpu)
    spot_usd_per_hour: float
    #: accelerators per Dataflow worker -> its machine type (cpu: any count, one machine type)
    machine_types: Mapping[int, str]
    #: the Dataflow/Compute Engine accelerator type (``worker_accelerator``'s ``type:``)
    dataflow_type: str | None = None
    #: TPU slices: chips -> topology
    topologies: Mapping[int, str] = dataclasses.field(default_factory=dict)

    @property
    def jax_platform(self) -> str:
        """The JAX backend a job on this accelerator must run on."""
        return JAX_PLATFORMS[self.kind]

    def counts(self) -> tuple[int, ...]:
        """Accelerator counts a Dataflow worker of this type can carry."""
        return tuple(sorted(self.machine_types))

    def machine_type(self, count: int) -> str:
        if self.kind == "cpu":
            return self.machine_types[1]
        if count not in self.machine_types:
            unit = "chips" if self.kind == "tpu" else "GPUs"
            raise UnknownAccelerator(
                f"{self.name} workers carry {', '.join(map(str, self.counts()))} {unit}; "
                "set accelerator_count to one of them"
            )
        return self.machine_types[count]

    def worker_accelerator(self, count: int) -> str | None:
        """Dataflow's ``worker_accelerator`` service option for ``count`` of these, or None."""
        self.machine_type(count)  # refuses counts no worker carries
        if self.kind == "tpu":
            return f"type:{self.dataflow_type};topology:{self.topologies[count]}"
        if self.kind == "gpu":
            return f"type:{self.dataflow_type};count:{count};install-nvidia-driver"
        return None


def _tpu(name, description, on_demand, spot, dataflow_type, slices) -> Accelerator:
    return Accelerator(
        name, "tpu", description, on_demand, spot,
        machine_types={n: m for n, (_, m) in slices.items()},
        dataflow_type=dataflow_type,
        topologies={n: t for n, (t, _) in slices.items()},
    )  # fmt: skip


def _gpu(name, description, on_demand, spot, dataflow_type, machines) -> Accelerator:
    return Accelerator(name, "gpu", description, on_demand, spot, machines, dataflow_type)


_TABLE = (
    Accelerator("cpu", "cpu", "n2-standard-2 (2 vCPU, 8 GB), no accelerator", 0.0971, 0.0235,
                {1: "n2-standard-2"}),
    _tpu("tpu-v5e", "TPU v5e (v5litepod) chip", 1.20, 0.48, "tpu-v5-lite-podslice",
         {1: ("1x1", "ct5lp-hightpu-1t"), 4: ("2x2", "ct5lp-hightpu-4t"),
          8: ("2x4", "ct5lp-hightpu-8t")}),
    _tpu("tpu-v6e", "TPU v6e (Trillium) chip", 2.70, 1.08, "tpu-v6e-slice",
         {1: ("1x1", "ct6e-standard-1t"), 4: ("2x2", "ct6e-standard-4t"),
          8: ("2x4", "ct6e-standard-8t")}),
    _tpu("tpu-v5p", "TPU v5p chip", 4.20, 1.68, "tpu-v5p-slice", {4: ("2x2x1", "ct5p-hightpu-4t")}),
    _gpu("nvidia-l4", "NVIDIA L4 24 GB (g2-standard-4 share)", 0.7068, 0.2828, "nvidia-l4",
         {1: "g2-standard-4", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"}),
    _gpu("nvidia-a100-40gb", "NVIDIA A100 40 GB (a2-highgpu-1g)", 3.6734, 1.4694,
         "nvidia-tesla-a100", {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g",
                               8: "a2-highgpu-8g", 16: "a2-megagpu-16g"}),
    _gpu("nvidia-a100-80gb", "NVIDIA A100 80 GB (a2-ultragpu-1g)", 5.0688, 2.0275,
         "nvidia-a100-80gb", {1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g", 4: "a2-ultragpu-4g",
                              8: "a2-ultragpu-8g"}),
    _gpu("nvidia-h100-80gb", "NVIDIA H100 80 GB (a3-highgpu-8g / 8)", 11.0613, 4.4245,
         "nvidia-h100-80gb", {1: "a3-highgpu-1g", 2: "a3-highgpu-2g", 4: "a3-highgpu-4g",
                              8: "a3-highgpu-8g"}),
    _gpu("nvidia-h200-141gb", "NVIDIA H200 141 GB (a3-ultragpu-8g / 8)", 10.6009, 4.2404,
         "nvidia-h200-141gb", {8: "a3-ultragpu-8g"}),
)  # fmt: skip

#: read-only: name -> Accelerator
ACCELERATORS: Mapping[str, Accelerator] = types.MappingProxyType({a.name: a for a in _TABLE})


def get(name: str) -> Accelerator:
    try:
        return ACCELERATORS[name]
    except KeyError:
        raise UnknownAccelerator(
            f"unknown accelerator {name!r}; use one of {', '.join(ACCELERATORS)}"
        ) from None
