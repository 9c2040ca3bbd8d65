"""Loading diffusers-layout checkpoints: from gs:// into the cache (only the files read, once),
half-precision variants and safetensors dtypes, and clear errors for what is not supported."""

from __future__ import annotations

import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")

import jax

from hyperbatch import storage
from hyperbatch.engines.jax_diffusion import loading
from hyperbatch.engines.jax_diffusion.config import UnsupportedModel
from hyperbatch.engines.jax_diffusion.weights import CheckpointError, read_safetensors


def _leaves(params) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_gcs_checkpoint_is_copied_once_and_only_what_is_read(
    tiny_dirs, gcs_bucket, tmp_path, monkeypatch
):
    src = tiny_dirs["tiny-sd"]
    url = f"{gcs_bucket}/models/tiny-sd"
    for root, _, files in os.walk(src):
        for name in files:
            local = os.path.join(root, name)
            storage.upload_file(local, f"{url}/{os.path.relpath(local, src)}")
    # things a hub snapshot carries that the engine never reads
    junk = os.path.join(tmp_path, "junk.bin")
    with open(junk, "wb") as f:
        f.write(b"x" * 1000)
    for extra in (
        "safety_checker/model.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "README.md",
    ):
        storage.upload_file(junk, f"{url}/{extra}")

    downloads: list[str] = []
    real = storage.download
    monkeypatch.setattr(storage, "download", lambda p, lp: (downloads.append(p), real(p, lp))[1])
    cache = str(tmp_path / "cache")
    checkpoint, params = loading.read(url, cache_dir=cache)
    fetched = {p[len(url) + 1 :] for p in downloads}
    assert "model_index.json" in fetched
    assert "unet/diffusion_pytorch_model.safetensors" in fetched
    assert not fetched & {
        "safety_checker/model.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "README.md",
    }
    _, local_params = loading.read(src)
    for a, b in zip(_leaves(params), _leaves(local_params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert checkpoint.source == url

    downloads.clear()
    loading.read(url, cache_dir=cache)
    assert downloads == []  # same sizes and generations: nothing copied again


def test_fp16_variant_loads_the_half_precision_files(tiny_dirs, tmp_path):
    torch = require("torch", "diffusers writes the fp16 variant")
    diffusers = require("diffusers", "diffusers writes the fp16 variant")
    pipe = diffusers.DiffusionPipeline.from_pretrained(tiny_dirs["tiny-sd"], dtype=torch.float16)
    out = str(tmp_path / "fp16")
    pipe.save_pretrained(out, variant="fp16")
    for name in ("tokenizer", "scheduler"):
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        shutil.copytree(os.path.join(tiny_dirs["tiny-sd"], name), os.path.join(out, name))
    assert os.path.isfile(os.path.join(out, "unet", "diffusion_pytorch_model.fp16.safetensors"))
    with pytest.raises(CheckpointError, match="pass the matching variant"):
        loading.read(out)
    _, half = loading.read(out, variant="fp16")
    _, full = loading.read(tiny_dirs["tiny-sd"])
    for a, b in zip(_leaves(half), _leaves(full), strict=True):
        np.testing.assert_array_equal(a, b.astype(np.float16).astype(np.float32))


def test_bfloat16_safetensors_are_read(tmp_path):
    torch = require("torch", "safetensors' torch writer makes the bf16 file")
    from safetensors.torch import save_file

    values = torch.tensor([[1.5, -2.25], [3.0, 1e-3]], dtype=torch.bfloat16)
    save_file({"w": values}, str(tmp_path / "x.safetensors"))
    ((name, arr),) = read_safetensors(str(tmp_path / "x.safetensors"))
    assert name == "w"
    assert arr.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(arr.astype(np.float32), values.float().numpy())


def _copy(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    return dst


def _edit(path: str, **changes) -> None:
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


def test_unsupported_checkpoints_are_named(tiny_dirs, tmp_path):
    ckpt = _copy(tiny_dirs["tiny-sd"], str(tmp_path / "a"))
    _edit(os.path.join(ckpt, "model_index.json"), _class_name="StableDiffusionInpaintPipeline")
    with pytest.raises(UnsupportedModel, match=r"StableDiffusionInpaintPipeline.*not supported"):
        loading.read(ckpt)

    ckpt = _copy(tiny_dirs["tiny-sd"], str(tmp_path / "b"))
    _edit(os.path.join(ckpt, "unet", "config.json"), class_embed_type="timestep")
    with pytest.raises(UnsupportedModel, match="class_embed_type='timestep'"):
        loading.read(ckpt)

    ckpt = _copy(tiny_dirs["tiny-sd"], str(tmp_path / "c"))
    _edit(
        os.path.join(ckpt, "unet", "config.json"),
        down_block_types=["SimpleCrossAttnDownBlock2D", "DownBlock2D"],
    )
    with pytest.raises(UnsupportedModel, match="SimpleCrossAttnDownBlock2D"):
        loading.read(ckpt)

    # a tensor the configured model has no place for is an error, not silently dropped
    ckpt = _copy(tiny_dirs["tiny-sd"], str(tmp_path / "d"))
    _edit(os.path.join(ckpt, "unet", "config.json"), layers_per_block=0)
    with pytest.raises(CheckpointError, match="not used by the model"):
        loading.read(ckpt)

    with pytest.raises(CheckpointError, match=r"no model_index\.json"):
        loading.read(str(tmp_path))
