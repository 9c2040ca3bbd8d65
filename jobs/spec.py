"""The job spec: parse YAML/JSON, apply ``--set key=value`` overrides, validate, digest.

Validation happens before any accelerator time is spent and reports every problem at once, each
naming its field and what to do. Unknown keys are errors (a typo must not silently become a
default). Relative paths in a spec file are relative to the file's directory; paths given with
``--set`` are relative to the current directory, where the user typed them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from hyperbatch import accelerators, storage
from hyperbatch.engines import registry
from hyperbatch.schemas.records import SAMPLING_FIELDS, SamplingParams, TaskKind, sampling_problems

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")
TASKS = tuple(t.value for t in TaskKind)
INPUT_FORMATS = ("openai", "jsonl", "avro", "vertex")
VECTOR_OUTPUTS = ("none", "parquet", "vertex_vector_search")
DTYPES = ("auto", "float32", "bfloat16")
PATH_FIELDS = ("input", "output", "model")
MAX_BATCH_SIZE = 4096


class SpecError(ValueError):
    """A job spec that must not run. ``problems`` lists each field's problem and its fix."""

    def __init__(self, problems: Sequence[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"invalid job spec{f' {source}' if source else ''}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


@dataclasses.dataclass(frozen=True)
class JobSpec:
    name: str
    task: str
    input: str
    input_format: str
    output: str
    model: str
    engine: str = "jax"
    accelerator: str = "cpu"
    accelerator_count: int = 1
    batch_size: int = 32
    records_per_shard: int = 1000
    max_seq_len: int | None = None
    dtype: str = "auto"
    engine_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sampling: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    spot: bool = False
    usd_per_accelerator_hour: float | None = None
    max_error_rate: float = 0.5  # more than half the records failed: something is wrong
    vector_output: str = "none"  # embedding jobs: also write vectors as Parquet or Vector Search
    dimensions: int | None = None  # embedding jobs: every vector cut to this many (renormalised)

    REQUIRED = ("name", "task", "input", "input_format", "output", "model")

    @property
    def default_sampling(self) -> SamplingParams:
        from hyperbatch.schemas.records import sampling_from_dict

        return sampling_from_dict(self.sampling)

    @property
    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float32" if accelerators.get(self.accelerator).kind == "cpu" else "bfloat16"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["engine_options"] = dict(self.engine_options)
        d["sampling"] = dict(self.sampling)
        return d

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def job_id(self) -> str:
        """Deterministic: the same spec is the same job, so a rerun resumes it."""
        return f"{self.name}-{self.digest[:10]}"

    def job_dir(self, job_id: str | None = None) -> str:
        return storage.join(self.output, job_id or self.job_id)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(JobSpec)}
SPEC_FILE = "spec.json"


class JobIdConflict(ValueError):
    """The job id is already used by a job with a different spec."""


def record_once(spec: JobSpec, job_id: str, job_folder: str) -> None:
    """Write ``<job_folder>/spec.json`` if absent (compare-and-swap); the same job id with the
    same spec is fine (a resume or a duplicate submission), with another spec it is refused."""
    path = storage.join(job_folder, SPEC_FILE)
    body = {"job_id": job_id, "spec_digest": spec.digest, "spec": spec.to_dict()}
    try:
        storage.write_bytes(
            path,
            json.dumps(body, indent=2).encode(),
            if_generation_match=0,
            content_type="application/json",
        )
    except storage.PreconditionFailed:
        existing = json.loads(storage.read_bytes(path))
        if existing.get("spec_digest") != spec.digest:
            raise JobIdConflict(
                f"job id {job_id} is already used by another spec (in {job_folder}); "
                "choose another job id (or name), or delete that job folder"
            ) from None


# --------------------------------------------------------------------------- loading


def load_file(path: str) -> dict[str, Any]:
    """Read a spec file (YAML or JSON; local or gs://) into a dict; raises SpecError."""
    try:
        text = storage.read_text(path)
    except storage.CredentialsError:
        raise  # not the spec's fault: its own paragraph says how to sign in
    except (storage.StorageError, OSError) as e:
        raise SpecError([f"cannot read the spec file: {e}"], path) from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError([f"not valid YAML/JSON: {e}"], path) from e
    if not isinstance(data, dict):
        raise SpecError(["the spec must be a mapping of keys to values"], path)
    return data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["sampling.max_tokens=32", "batch_size=8"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError([f"--set {item!r}: expected key=value, e.g. --set batch_size=16"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpecError([f"--set {item!r}: {p} is set twice as a value and a mapping"])
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in overrides.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def _absolutize(field: str, value: str, base_dir: str) -> str:
    value = os.path.expanduser(value)
    if not value or storage.is_gcs(value) or os.path.isabs(value):
        return value
    if field == "model" and value in models_catalogue():
        return value
    return os.path.normpath(os.path.join(base_dir, value))


def models_catalogue() -> tuple[str, ...]:
    from hyperbatch.engines.models import CATALOGUE

    return tuple(CATALOGUE)


def load(
    path: str | None = None,
    overrides: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
    check_resources: bool = True,
) -> JobSpec:
    """Build a validated JobSpec from a file and/or a dict, plus ``--set`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = load_file(path)
        base_dir = os.path.dirname(os.path.abspath(path)) if not storage.is_gcs(path) else ""
        if base_dir:
            for f in PATH_FIELDS:
                if isinstance(raw.get(f), str):
                    raw[f] = _absolutize(f, raw[f], base_dir)
    if data is not None:
        raw = merge(raw, data)
    extra = parse_overrides(overrides)
    for f in PATH_FIELDS:
        if isinstance(extra.get(f), str):
            extra[f] = _absolutize(f, extra[f], os.getcwd())
    raw = merge(raw, extra)
    return validate(raw, source=path, check_resources=check_resources)


# --------------------------------------------------------------------------- validation


def _type_name(t: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(t, "a mapping" if t is dict else str(t))


def validate(
    raw: Mapping[str, Any], source: str | None = None, check_resources: bool = True
) -> JobSpec:
    problems: list[str] = []
    for key in sorted(set(raw) - set(FIELDS)):
        close = [f for f in FIELDS if f.startswith(key[:3])]
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append(f"{key}: unknown key{hint}; allowed keys: {', '.join(FIELDS)}")
    for key in JobSpec.REQUIRED:
        if raw.get(key) in (None, ""):
            problems.append(f"{key}: required; {_FIELD_HELP[key]}")
    typed: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in FIELDS or value is None:
            continue
        expected = _FIELD_TYPES[key]
        if not _has_type(value, expected):
            problems.append(f"{key}: must be {_type_name(expected)}, got {value!r}")
            continue
        typed[key] = float(value) if expected is float else value
    for key, value in typed.items():
        check = _VALUE_CHECKS.get(key)
        if check is not None and not check[0](value):
            problems.append(f"{key}: {check[1]}; got {value!r}")
    sampling = typed.get("sampling", {})
    unknown_s = sorted(set(sampling) - set(SAMPLING_FIELDS))
    if unknown_s:
        problems.append(
            f"sampling: unknown key(s) {', '.join(unknown_s)}; allowed: {', '.join(SAMPLING_FIELDS)}"
        )
    problems += [f"sampling.{p}" for p in sampling_problems(sampling)]
    engine = typed.get("engine", FIELDS["engine"].default)
    if engine in registry.ENGINES:
        # the engine's options module is light (no jax, no vllm): checked wherever this runs
        task = typed.get("task")
        problems += _task_problems(typed)
        problems += registry.option_problems(engine, typed.get("engine_options", {}), task)
        problems += registry.sampling_problems(engine, sampling)
        if task in TASKS:
            problems += registry.task_problems(engine, task)
    if problems:
        raise SpecError(problems, source)
    spec = JobSpec(**typed)
    if check_resources:
        problems += check_spec_resources(spec)
    if problems:
        raise SpecError(problems, source)
    return spec


_VALUE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (
        lambda v: bool(NAME_RE.match(v)),
        "use 2-40 lowercase letters, digits and '-', starting with a letter "
        "(it becomes part of the job id and of paths)",
    ),
    "task": (lambda v: v in TASKS, f"must be one of {', '.join(TASKS)}"),
    "input_format": (lambda v: v in INPUT_FORMATS, f"must be one of {', '.join(INPUT_FORMATS)}"),
    "vector_output": (lambda v: v in VECTOR_OUTPUTS, f"must be one of {', '.join(VECTOR_OUTPUTS)}"),
    "accelerator": (
        lambda v: v in accelerators.ACCELERATORS,
        f"must be one of {', '.join(accelerators.ACCELERATORS)}",
    ),
    "engine": (
        lambda v: v in registry.ENGINES,
        "unknown engine; `hyperbatch engines` lists the engines and how to install them",
    ),
    "accelerator_count": (lambda v: v >= 1, "must be at least 1"),
    "batch_size": (lambda v: 1 <= v <= MAX_BATCH_SIZE, f"must be between 1 and {MAX_BATCH_SIZE}"),
    "records_per_shard": (lambda v: 1 <= v <= 1_000_000, "must be between 1 and 1000000"),
    "max_seq_len": (lambda v: 16 <= v <= 1 << 20, "must be between 16 and 1048576 (or omitted)"),
    "dtype": (lambda v: v in DTYPES, f"must be one of {', '.join(DTYPES)}"),
    "max_error_rate": (lambda v: 0.0 <= v <= 1.0, "must be a fraction between 0 and 1"),
    "dimensions": (lambda v: v >= 1, "must be a positive number of dimensions"),
    "usd_per_accelerator_hour": (
        lambda v: v >= 0,
        "must be >= 0 (or omitted to use the price table)",
    ),
}


def _task_problems(typed: Mapping[str, Any]) -> list[str]:
    """Fields that only make sense for some tasks, and formats that carry only some."""
    task, fmt = typed.get("task"), typed.get("input_format")
    out = []
    embedding = task == TaskKind.EMBEDDING
    if typed.get("vector_output", "none") != "none" and not embedding:
        out.append("vector_output: only embedding jobs write vectors; remove it")
    if typed.get("dimensions") is not None and not embedding:
        out.append("dimensions: only embedding jobs have vectors to cut; remove it")
    if fmt == "vertex" and task is not None and not embedding:
        out.append(
            "input_format: vertex lines are served for task embedding (Vertex AI text-embedding "
            "batch lines); use openai or jsonl for chat and completion"
        )
    if embedding and typed.get("sampling"):
        out.append("sampling: an embedding job samples nothing; remove it")
    return out


def _has_type(value: Any, expected: type) -> bool:
    if isinstance(value, bool) or expected is bool:
        return isinstance(value, bool) and expected is bool
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def check_spec_resources(
    spec: JobSpec, unchecked: dict[str, storage.CredentialsError] | None = None
) -> list[str]:
    """Checks that touch the outside world: inputs exist, the model and engine are there.

    A gs:// check that finds no usable Google credentials raises that CredentialsError; given
    ``unchecked`` (a dry run, which shows its plan anyway), it adds there what it did not check
    and why.
    """
    from hyperbatch.engines import models

    problems = []

    def not_checked(what: str, error: storage.CredentialsError) -> None:
        if unchecked is None:
            raise error
        unchecked[what] = error

    try:
        files = storage.glob(spec.input)
    except storage.CredentialsError as e:
        not_checked(f"input: whether files match {spec.input}", e)
    except (storage.StorageError, OSError) as e:
        files = []
        problems.append(f"input: cannot list {spec.input}: {e}")
    else:
        if not files:
            problems.append(
                f"input: no files match {spec.input!r}; check the path or glob "
                "(relative paths in a spec file are relative to the file)"
            )
    if storage.is_gcs(spec.output):
        try:
            if not storage.bucket_exists(spec.output):
                bucket = storage.split_gcs(spec.output)[0]
                problems.append(
                    f"output: bucket {bucket} does not exist; create it "
                    f"(gcloud storage buckets create gs://{bucket}) or choose another"
                )
        except storage.CredentialsError as e:
            not_checked(f"output: whether its bucket exists and {spec.output} may be written", e)
        except storage.StorageError as e:
            problems.append(f"output: {e}")
    elif os.path.exists(spec.output) and not os.path.isdir(spec.output):
        problems.append(f"output: {spec.output} exists and is not a directory")
    if not any(p.startswith("output:") for p in [*problems, *(unchecked or [])]):
        try:
            problems += _write_probe(spec.output)
        except storage.CredentialsError as e:
            not_checked(f"output: whether {spec.output} may be written", e)
    if registry.entry(spec.engine).needs_model:
        try:
            models.check_model(spec.model)
        except storage.CredentialsError as e:
            not_checked(f"model: whether {spec.model} is a model", e)
        except (models.ModelNotFound, storage.StorageError) as e:
            problems.append(f"model: {e}")
        entry = models.CATALOGUE.get(spec.model)
        if entry is not None and spec.task not in entry.tasks:
            fits = [n for n, e in models.CATALOGUE.items() if spec.task in e.tasks]
            problems.append(
                f"model: {spec.model} is a model for {', '.join(entry.tasks)}, not {spec.task}"
                + (f"; for {spec.task} use {', '.join(fits)}" if fits else "")
            )
    # A cpu job runs on this machine, so its engine must load here; TPU/GPU jobs run on workers
    # whose image carries the engine.
    if accelerators.get(spec.accelerator).kind == "cpu":
        missing = registry.missing_dependency(spec.engine)
        if missing:
            problems.append(f"engine: {spec.engine}: {missing}")
    return problems


def _write_probe(output: str) -> list[str]:
    """Write and remove a small object under ``output``: a job that cannot write its results
    is refused now, not after its accelerator time is spent."""
    import uuid

    probe = storage.join(output, f".hyperbatch-write-probe-{uuid.uuid4().hex[:12]}")
    created = [] if storage.is_gcs(output) else _missing_dirs(output)
    try:
        storage.write_bytes(probe, b"probe")
        storage.delete(probe)
    except storage.CredentialsError:
        raise  # not a place we may not write: we cannot look (check_spec_resources says so)
    except (storage.StorageError, OSError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return [f"output: cannot write in {output} ({reason}); choose a folder you may write to"]
    finally:
        for d in reversed(created):  # leave no folder behind that only the probe made
            with contextlib.suppress(OSError):
                os.rmdir(d)
    return []


def _missing_dirs(path: str) -> list[str]:
    """The folders of ``path`` that do not exist yet, outermost first."""
    out = []
    path = os.path.abspath(path)
    while path and not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return list(reversed(out))


_FIELD_TYPES: dict[str, Any] = {
    "name": str,
    "task": str,
    "input": str,
    "input_format": str,
    "output": str,
    "model": str,
    "engine": str,
    "accelerator": str,
    "accelerator_count": int,
    "batch_size": int,
    "records_per_shard": int,
    "max_seq_len": int,
    "dtype": str,
    "engine_options": dict,
    "sampling": dict,
    "spot": bool,
    "usd_per_accelerator_hour": float,
    "max_error_rate": float,
    "vector_output": str,
    "dimensions": int,
}

_FIELD_HELP = {
    "name": "a short job name like 'rag-summaries'",
    "task": f"one of {', '.join(TASKS)}",
    "input": "a file, a glob or a gs:// glob of input records",
    "input_format": f"one of {', '.join(INPUT_FORMATS)}",
    "output": "a directory or gs:// prefix for results, errors and the manifest",
    "model": "a catalogue name (smollm2-135m-instruct), a model directory, a .gguf file or gs:// URL",
}

assert set(_FIELD_TYPES) == set(FIELDS), "every JobSpec field needs a type"
