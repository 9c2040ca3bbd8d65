"""A tiny random-weight Idefics3 checkpoint (built once per session) for the jax-vlm tests."""

from __future__ import annotations

import pytest

from tests.helpers.tiny_vlm import tiny_idefics3_dir


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory) -> str:
    return tiny_idefics3_dir(str(tmp_path_factory.mktemp("tiny-vlm")))


@pytest.fixture(scope="session", autouse=True)
def _compile_cache(tmp_path_factory):
    """Engines share one persistent compilation cache for the session (cheap re-warmups)."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        path = tmp_path_factory.mktemp("jax-cache")
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
