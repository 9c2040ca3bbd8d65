"""Typed engine options: one frozen dataclass per engine, checked before launch, light to import.

An engine declares the ``engine_options`` a job spec may set as a dataclass of :func:`option`
fields -- type, default, what a valid value is, and a line of help -- in a module that imports
neither jax nor vllm (the registry points at it), so ``hyperbatch validate``, ``submit`` and the
triggers refuse unknown keys, wrong types and impossible values, all at once, wherever they run.
The engine itself builds its typed options with ``parse`` (the same checks) and reads fields,
never the raw mapping.

    @dataclasses.dataclass(frozen=True)
    class MyOptions(EngineOptions):
        decode_steps: int = option(8, "tokens per slot between host checks", minimum=1)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Self

from hyperbatch.schemas.records import parse_size

INTS = "list of integers"  # a ``kind`` for lists of integers (prefill buckets and the like)
SIZES = "list of WIDTHxHEIGHT"  # a ``kind`` for image sizes ("512x512"), multiples of 8


class OptionsError(ValueError):
    """``engine_options`` that an engine cannot use; ``problems`` says what to change."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    kind: type | str  # int, float, bool, str or INTS
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None


def option(
    default: Any,
    help: str,
    *,
    kind: type | str | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: Sequence[Any] | None = None,
) -> Any:
    """A field of an options dataclass. ``default=None`` means "not set" (the engine decides);
    ``kind`` defaults to the default's type."""
    if kind is None:
        if default is None:
            raise TypeError("an option whose default is None needs a kind")
        kind = type(default)
    spec = OptionSpec(kind, help, minimum, maximum, tuple(choices) if choices else None)
    if isinstance(default, list | tuple):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={"option": spec})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _type_problem(spec: OptionSpec, value: Any) -> str | None:
    kind = spec.kind
    if kind is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if kind is int:
        return None if _is_int(value) else "must be an integer"
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a number"
    if kind is str:
        return None if isinstance(value, str) and value else "must be a non-empty string"
    if kind == INTS:
        ok = isinstance(value, list | tuple) and len(value) > 0 and all(map(_is_int, value))
        return None if ok else "must be a non-empty list of integers"
    if kind == SIZES:
        ok = isinstance(value, list | tuple) and len(value) > 0
        ok = ok and all(parse_size(v) is not None for v in value)
        return None if ok else 'must be a non-empty list of sizes like "512x512" (multiples of 8)'
    raise TypeError(f"unknown option kind {kind!r}")


def _value_problem(spec: OptionSpec, value: Any) -> str | None:
    if spec.kind == SIZES:
        return None
    values = value if spec.kind == INTS else [value]
    if spec.choices is not None and value not in spec.choices:
        return f"must be one of {', '.join(map(str, spec.choices))}"
    if spec.minimum is not None and any(v < spec.minimum for v in values):
        return f"must be at least {spec.minimum:g}"
    if spec.maximum is not None and any(v > spec.maximum for v in values):
        return f"must be at most {spec.maximum:g}"
    return None


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Base of every engine's options dataclass (see the module docstring)."""

    #: the engine's registry name, for messages
    ENGINE = "engine"

    @classmethod
    def specs(cls) -> dict[str, tuple[OptionSpec, Any]]:
        """name -> (its spec, its default), in declaration order."""
        return {
            f.name: (f.metadata["option"], f.default)
            for f in dataclasses.fields(cls)
            if "option" in f.metadata
        }

    @classmethod
    def problems(cls, values: Mapping[str, Any]) -> list[str]:
        """Every problem with ``values`` (empty when they are all valid)."""
        specs = cls.specs()
        out = []
        unknown = sorted(set(values) - set(specs))
        if unknown:
            out.append(
                f"engine_options: {', '.join(unknown)} not supported by the {cls.ENGINE} engine; "
                f"allowed: {', '.join(sorted(specs))}"
            )
        for name, value in values.items():
            if name not in specs:
                continue
            spec, default = specs[name]
            if value is None:
                if default is not None:
                    out.append(f"engine_options.{name}: must be set (or left out); {spec.help}")
                continue
            problem = _type_problem(spec, value) or _value_problem(spec, value)
            if problem:
                out.append(f"engine_options.{name}: {problem}, got {value!r} ({spec.help})")
        return out

    @classmethod
    def parse(cls, values: Mapping[str, Any] | None) -> Self:
        """Typed options from a job's ``engine_options``; raises OptionsError."""
        values = dict(values or {})
        problems = cls.problems(values)
        if problems:
            raise OptionsError(problems)
        kinds = {name: spec.kind for name, (spec, _) in cls.specs().items()}
        typed = {
            k: (tuple(v) if kinds[k] in (INTS, SIZES) else float(v) if kinds[k] is float else v)
            for k, v in values.items()
            if v is not None
        }
        return cls(**typed)

    def set_values(self) -> dict[str, Any]:
        """The options that are set (not None), as plain values."""
        return {
            name: getattr(self, name) for name in self.specs() if getattr(self, name) is not None
        }

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """One row per option (``hyperbatch engines``): name, kind, default, help."""
        rows = []
        for name, (spec, default) in cls.specs().items():
            kind = spec.kind if isinstance(spec.kind, str) else spec.kind.__name__
            rows.append({"name": name, "kind": kind, "default": default, "help": spec.help})
        return rows


@dataclasses.dataclass(frozen=True)
class NoOptions(EngineOptions):
    """For engines without options."""
