"""Data parallelism: the image batch split over 8 (simulated) devices gives the one-device images
(to the last of 256 levels).

Runs in a subprocess because the device count is fixed when JAX starts
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tests.optional import require

require("jax", "the JAX engine")

SCRIPT = r"""
import json, sys
import jax
import numpy as np
from hyperbatch.engines.jax_diffusion.generation import DiffusionModel

path = sys.argv[1]
prompts = [f"prompt number {i}" for i in range(11)]
kwargs = dict(seeds=list(range(100, 111)), steps=[3, 4] * 5 + [2], guidance=6.0,
              scheduler=["euler", "dpmpp_2m", "ddim"] * 3 + ["euler", "ddim"], width=32, height=32)
out = {"devices": len(jax.devices())}
images = {}
for dp in (1, 8):
    model = DiffusionModel.load(path, batch_size=8, resolutions=((32, 32),), max_steps=4, data_parallel=dp)
    model.warmup()
    compiled = model._program(32, 32, False)[0]
    out[f"output_devices_{dp}"] = len(compiled.output_shardings.device_set)
    images[dp] = model.generate(prompts, "blurry", **kwargs).images
    out[f"compilations_{dp}"] = model.compilations
diff = np.abs(images[1].astype(int) - images[8].astype(int))
out["max_abs_diff"] = int(diff.max())
out["differing_share"] = float((diff > 0).mean())
out["image_std"] = float(images[8].std())
print(json.dumps(out))
"""


def _run(script: str, args: list[str], env: dict[str, str]) -> dict:
    """The JSON line a script prints last, run in a fresh Python with ``env``."""
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_eight_devices_give_the_single_device_images(tiny_dirs):
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}  # it wins over
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = _run(SCRIPT, [tiny_dirs["tiny-sd"]], env)
    print(out)
    assert out["devices"] == 8
    assert out["output_devices_1"] == 1
    assert out["output_devices_8"] == 8  # the batch really is split
    assert out["compilations_1"] == out["compilations_8"] == 1
    # the same images: a batch of 1 per device is computed by other kernel shapes than a batch
    # of 8 on one, so float sums may round a pixel to the next of its 256 levels -- never more,
    # and rarely (CI saw 1 level; a wrong split, seed or step would change whole images)
    assert out["max_abs_diff"] <= 1
    assert out["differing_share"] < 0.01
    assert out["image_std"] > 1.0


ENGINE_SCRIPT = r"""
import json, os, sys
import jax
from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.jax_diffusion.engine import JaxDiffusionEngine

path, cpu_cores = sys.argv[1], sys.argv[2] == "on"
config = EngineConfig(model=path, batch_size=4, accelerator="cpu",
                      options={"sizes": ["32x32"], "max_steps": 2, "cpu_cores": cpu_cores})
engine = JaxDiffusionEngine(config)
mesh = engine.model.mesh
print(json.dumps({"devices": len(jax.devices()), "cores": len(os.sched_getaffinity(0)),
                  "mesh": 1 if mesh is None else mesh.size}))
"""


def test_a_cpu_job_splits_its_image_batch_over_the_cores(tiny_dirs):
    """On accelerator cpu the engine starts JAX with one device per core and splits each batch
    over them (``cpu_cores``, on by default); off, JAX's one CPU device serves the batch."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env["JAX_PLATFORMS"] = "cpu"
    seen = {}
    for setting in ("on", "off"):
        seen[setting] = _run(ENGINE_SCRIPT, [tiny_dirs["tiny-sd"], setting], env)
    cores = seen["on"]["cores"]
    assert seen["on"]["devices"] == cores
    assert seen["on"]["mesh"] == math.gcd(cores, 4)
    assert seen["off"]["devices"] == 1
    assert seen["off"]["mesh"] == 1
