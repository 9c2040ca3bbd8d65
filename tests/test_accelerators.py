"""One accelerator table: every name has a kind, a JAX platform, Dataflow workers and a price."""

from __future__ import annotations

import pytest

from hyperbatch import accelerators
from hyperbatch.accelerators import ACCELERATORS, UnknownAccelerator
from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.vllm import args as vllm_args
from hyperbatch.jobs import pricing

EXPECTED_PLATFORM = {
    "cpu": "cpu",
    "tpu-v5e": "tpu",
    "tpu-v6e": "tpu",
    "tpu-v5p": "tpu",
    "nvidia-l4": "gpu",
    "nvidia-a100-40gb": "gpu",
    "nvidia-a100-80gb": "gpu",
    "nvidia-h100-80gb": "gpu",
    "nvidia-h200-141gb": "gpu",
}


def test_every_accelerator_is_in_the_table_once():
    assert set(ACCELERATORS) == set(EXPECTED_PLATFORM)


@pytest.mark.parametrize("name", sorted(EXPECTED_PLATFORM))
def test_one_mapping_serves_pricing_jax_vllm_and_dataflow(name):
    acc = accelerators.get(name)
    assert acc.jax_platform == EXPECTED_PLATFORM[name]
    assert acc.kind == {"cpu": "cpu", "tpu": "tpu", "gpu": "gpu"}[acc.jax_platform]
    price = pricing.price_for(name)
    assert price.usd_per_accelerator_hour == acc.on_demand_usd_per_hour > 0
    assert (
        pricing.price_for(name, spot=True).usd_per_accelerator_hour < price.usd_per_accelerator_hour
    )
    count = acc.counts()[0]
    cfg = EngineConfig(model="m", accelerator=name, accelerator_count=count, dtype="bfloat16")
    vllm = vllm_args.engine_args(cfg, "m")
    if acc.kind == "cpu":
        assert vllm["enforce_eager"] is True
        assert acc.worker_accelerator(count) is None
    else:
        assert vllm["tensor_parallel_size"] == count
        option = acc.worker_accelerator(count)
        assert option.startswith(f"type:{acc.dataflow_type};")
        assert ("topology:" in option) == (acc.kind == "tpu")
        assert acc.machine_type(count)


def test_dataflow_worker_shapes_by_hand():
    assert accelerators.get("tpu-v6e").worker_accelerator(4) == "type:tpu-v6e-slice;topology:2x2"
    assert accelerators.get("tpu-v6e").machine_type(4) == "ct6e-standard-4t"
    assert (
        accelerators.get("nvidia-l4").worker_accelerator(2)
        == "type:nvidia-l4;count:2;install-nvidia-driver"
    )
    assert accelerators.get("cpu").machine_type(3) == "n2-standard-2"
    with pytest.raises(UnknownAccelerator, match="carry 8 GPUs"):
        accelerators.get("nvidia-h200-141gb").machine_type(1)
    with pytest.raises(UnknownAccelerator, match="use one of cpu, tpu-v5e"):
        accelerators.get("tpu-v9")
