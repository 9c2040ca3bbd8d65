"""Tiny random checkpoints shared by the jax engine tests (built once per session)."""

from __future__ import annotations

import pytest

from tests.helpers.tiny_models import VARIANTS, tiny_llama_dir
from tests.optional import unavailable


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


@pytest.fixture(scope="session")
def cpu_kernel() -> str:
    """The CPU attention kernel, built and registered (a failure in CI, a skip elsewhere)."""
    from hyperbatch.engines.jax_llm import cpu_attention

    try:
        return cpu_attention.load()
    except cpu_attention.KernelUnavailable as e:
        unavailable("the CPU attention kernel", str(e))
