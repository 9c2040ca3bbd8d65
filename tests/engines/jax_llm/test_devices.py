"""The JAX engine runs on the job's accelerator or refuses: never a silent fall back to the CPU."""

from __future__ import annotations

import pytest

from tests.optional import require

require("jax", "the JAX engine")

import jax

from hyperbatch.accelerators import ACCELERATORS
from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.jax_llm.engine import (
    AcceleratorUnavailable,
    JaxLLMEngine,
    accelerator_devices,
)


@pytest.mark.parametrize("name", sorted(ACCELERATORS))
def test_each_accelerator_asks_jax_for_its_platform(name):
    platform = ACCELERATORS[name].jax_platform
    try:
        present = jax.devices(platform)
    except RuntimeError:
        present = []
    if present:
        assert [d.platform for d in accelerator_devices(name, 1)] == [platform]
    else:
        with pytest.raises(AcceleratorUnavailable) as e:
            accelerator_devices(name, 1)
        message = str(e.value)
        assert f"accelerator {name} needs JAX's {platform} backend" in message
        assert "cpu device(s)" in message  # what JAX does see here
        assert "set accelerator: cpu" in message


def test_engine_refuses_before_loading_the_model(tmp_path):
    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("this machine has a GPU")
    missing = str(tmp_path / "no-model-here")  # never read: the device check comes first
    with pytest.raises(AcceleratorUnavailable, match="nvidia-h100-80gb needs JAX's gpu"):
        JaxLLMEngine(EngineConfig(model=missing, accelerator="nvidia-h100-80gb", dtype="bfloat16"))


def test_more_chips_than_present_is_refused():
    n = len(jax.devices("cpu"))
    with pytest.raises(AcceleratorUnavailable, match=f"accelerator_count={n + 1}"):
        accelerator_devices("cpu", n + 1)
