"""The image example's checkpoint script builds a model our engine loads and runs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from tests.optional import require

require("jax", "the JAX engine")
require("diffusers", "the script builds the checkpoint with diffusers")

from hyperbatch.engines.jax_diffusion.generation import DiffusionModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(ROOT, "examples", "images", "make_tiny_model.py")


def test_make_tiny_model_builds_a_loadable_checkpoint(tmp_path):
    out = str(tmp_path / "tiny-sd")
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--out", out], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == out
    for name in ("model_index.json", "unet", "vae", "text_encoder", "scheduler"):
        assert os.path.exists(os.path.join(out, name))
    tokenizer = os.path.join(out, "tokenizer")
    assert sorted(os.listdir(tokenizer)) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    model = DiffusionModel.load(out, batch_size=1, resolutions=((32, 32),), max_steps=2)
    result = model.generate(["a red fox in the snow"], seeds=[1], steps=2, width=32, height=32)
    assert result.images.shape == (1, 32, 32, 3)
    assert result.images.std() > 1  # random weights paint noise, not a flat image
    again = subprocess.run(
        [sys.executable, SCRIPT, "--out", out], capture_output=True, text=True, check=False
    )
    assert again.returncode == 0
    assert "already holds a checkpoint" in again.stderr
    assert np.isfinite(result.images).all()
