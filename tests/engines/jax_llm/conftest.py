"""Tiny random checkpoints shared by the jax engine tests (built once per session)."""

from __future__ import annotations

import pytest

from tests.helpers.tiny_models import VARIANTS, tiny_llama_dir


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {v: tiny_llama_dir(str(root / v), v) for v in VARIANTS}


@pytest.fixture(scope="session", autouse=True)
def _compile_cache(tmp_path_factory):
    """Engines share one persistent compilation cache for the session (cheap re-warmups)."""
    import jax

    if not jax.config.jax_compilation_cache_dir:
        path = tmp_path_factory.mktemp("jax-cache")
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
