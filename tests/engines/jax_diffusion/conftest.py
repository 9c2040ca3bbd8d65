"""Tiny random-weight SD / SD2 / SDXL checkpoints in the diffusers layout, built once per session
with diffusers itself (``hyperbatch.engines.jax_diffusion.tiny``), and a persistent compilation
cache so repeated programs are a cache read."""

from __future__ import annotations

import pytest

from tests.optional import require


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    require("diffusers", "the tiny checkpoints are built and checked with diffusers")
    from hyperbatch.engines.jax_diffusion import tiny

    root = tmp_path_factory.mktemp("tiny-diffusion")
    return {p: tiny.build(str(root / p), p) for p in ("tiny-sd", "tiny-sd2", "tiny-sdxl")}


@pytest.fixture(scope="session", autouse=True)
def _compile_cache(tmp_path_factory):
    import jax

    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax-cache")))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(scope="session")
def reference_pipeline():
    """diffusers' pipeline of a tiny checkpoint, float32, loaded once per path."""
    torch = require("torch", "diffusers' PyTorch pipelines are the reference")
    diffusers = require("diffusers", "diffusers' PyTorch pipelines are the reference")
    cache: dict[str, object] = {}

    def load(path: str):
        if path not in cache:
            pipe = diffusers.DiffusionPipeline.from_pretrained(path, dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)
            cache[path] = pipe
        return cache[path]

    return load
