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
from hyperbatch.schemas.formats.base import MODEL_MISMATCH_POLICIES
from hyperbatch.schemas.records import SAMPLING_FIELDS, SamplingParams, TaskKind, sampling_problems

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")
TASKS = tuple(t.value for t in TaskKind)
INPUT_FORMATS = ("openai", "jsonl", "avro", "vertex", "images")
VECTOR_OUTPUTS = ("none", "parquet", "vertex_vector_search")
DTYPES = ("auto", "float32", "bfloat16")
PATH_FIELDS = ("input", "output", "model", "image_root")
MAX_BATCH_SIZE = 4096


class SpecError(ValueError):
    """A job spec that must not run. ``problems`` lists each field's problem and its fix."""

    def __init__(self, problems: Sequence[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"invalid job spec{f' {source}' if source else ''}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


@dataclasses.dataclass(frozen=True)
class ImageDefaults:
    """An image job's defaults (spec ``image``): size, denoising steps, scheduler, guidance,
    negative prompt, and the format images are written in."""

    size: str = "512x512"
    steps: int = 30
    scheduler: str = "euler"
    guidance_scale: float = 7.5
    negative_prompt: str | None = None
    format: str = "png"

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])


IMAGE_SCHEDULERS = ("euler", "ddim", "dpmpp_2m")
IMAGE_FILE_FORMATS = ("png", "jpeg", "webp")


def image_problems(values: Mapping[str, Any]) -> list[str]:
    """Problems with a spec's ``image`` mapping (types and ranges), all at once."""
    from hyperbatch.schemas.records import MAX_GUIDANCE, MAX_IMAGE_STEPS, parse_size

    known = [f.name for f in dataclasses.fields(ImageDefaults)]
    out = []
    unknown = sorted(set(values) - set(known))
    if unknown:
        out.append(f"image: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(known)}")
    v = dict(values)
    if "size" in v and parse_size(v["size"]) is None:
        out.append(f'image.size: a size like "512x512" (multiples of 8), got {v["size"]!r}')
    steps = v.get("steps", 1)
    if not (isinstance(steps, int) and not isinstance(steps, bool)) or not (
        1 <= steps <= MAX_IMAGE_STEPS
    ):
        out.append(f"image.steps: an integer from 1 to {MAX_IMAGE_STEPS}, got {steps!r}")
    if v.get("scheduler", "euler") not in IMAGE_SCHEDULERS:
        out.append(f"image.scheduler: one of {', '.join(IMAGE_SCHEDULERS)}, got {v['scheduler']!r}")
    g = v.get("guidance_scale", 0.0)
    if not isinstance(g, int | float) or isinstance(g, bool) or not 0 <= g <= MAX_GUIDANCE:
        out.append(f"image.guidance_scale: a number from 0 to {MAX_GUIDANCE:g}, got {g!r}")
    if not isinstance(v.get("negative_prompt", ""), str | None):
        out.append("image.negative_prompt: must be a string")
    if v.get("format", "png") not in IMAGE_FILE_FORMATS:
        out.append(f"image.format: one of {', '.join(IMAGE_FILE_FORMATS)}, got {v['format']!r}")
    return out


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
    served_model_name: str | list[str] | None = None  # the name(s) outputs carry; see below
    model_mismatch: str = "error"  # a record naming another model: "error" or "ignore" the field
    max_cost_usd: float | None = None  # budget cap: refused above it, stopped before it (estimate)
    image: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # image jobs' defaults
    prompt: str | None = None  # input_format images: the instruction for every image
    system: str | None = None  # input_format images: an optional system prompt
    image_root: str | None = None  # local files (or a gs:// prefix) records may read images from

    REQUIRED = ("name", "task", "input", "input_format", "output", "model")

    @property
    def default_sampling(self) -> SamplingParams:
        from hyperbatch.schemas.records import sampling_from_dict

        return sampling_from_dict(self.sampling)

    @property
    def served_model_names(self) -> tuple[str, ...]:
        """The model names this job answers to (the first is what outputs carry): the spec's
        ``served_model_name``, else the catalogue name, else the model's folder or file name."""
        if isinstance(self.served_model_name, str):
            return (self.served_model_name,)
        if self.served_model_name:
            return tuple(self.served_model_name)
        if self.model in models_catalogue():
            return (self.model,)
        base = self.model.rstrip("/").rsplit("/", 1)[-1]
        return (base[: -len(".gguf")] if base.endswith(".gguf") else base,)

    @property
    def image_defaults(self) -> ImageDefaults:
        """Image jobs: what a record that does not say gets (spec ``image``)."""
        return ImageDefaults(**self.image)

    @property
    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float32" if accelerators.get(self.accelerator).kind == "cpu" else "bfloat16"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["engine_options"] = dict(self.engine_options)
        d["sampling"] = dict(self.sampling)
        d["image"] = dict(self.image)
        return d

    @property
    def digest(self) -> str:
        # A budget is not part of what the job computes: a rerun with a higher cap is the same
        # job (same id) and resumes from its committed shards.
        identity = {k: v for k, v in self.to_dict().items() if k not in BUDGET_FIELDS}
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @property
    def job_id(self) -> str:
        """Deterministic: the same spec is the same job, so a rerun resumes it."""
        return f"{self.name}-{self.digest[:10]}"

    def job_dir(self, job_id: str | None = None) -> str:
        return storage.join(self.output, job_id or self.job_id)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(JobSpec)}
BUDGET_FIELDS = ("max_cost_usd",)  # not in the digest: changing them keeps the job id
SPEC_FILE = "spec.json"


class JobIdConflict(ValueError):
    """The job id is already used by a job with a different spec."""


def record_once(spec: JobSpec, job_id: str, job_folder: str) -> None:
    """Write ``<job_folder>/spec.json`` if absent (compare-and-swap); the same job id with the
    same spec is fine (a resume or a duplicate submission), with another spec it is refused.
    A new budget (``max_cost_usd``, not part of the digest) replaces the recorded one."""
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
        data, generation = storage.read_versioned(path) or (b"{}", 0)
        existing = json.loads(data)
        if existing.get("spec_digest") != spec.digest:
            raise JobIdConflict(
                f"job id {job_id} is already used by another spec (in {job_folder}); "
                "choose another job id (or name), or delete that job folder"
            ) from None
        recorded, asked = existing.get("spec", {}), spec.to_dict()
        if any(recorded.get(k) != asked[k] for k in BUDGET_FIELDS):
            with contextlib.suppress(storage.PreconditionFailed):  # another writer won: theirs
                storage.write_bytes(
                    path,
                    json.dumps(body, indent=2).encode(),
                    if_generation_match=generation,
                    content_type="application/json",
                )


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
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             (str, list): "a string or a list of strings"}  # fmt: skip
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
    "served_model_name": (
        lambda v: (
            (isinstance(v, str) and bool(v.strip()))
            or (
                isinstance(v, list) and bool(v) and all(isinstance(n, str) and n.strip() for n in v)
            )
        ),
        "must be a model name or a list of names (what a record's body.model may say)",
    ),
    "model_mismatch": (
        lambda v: v in MODEL_MISMATCH_POLICIES,
        f"must be {' or '.join(MODEL_MISMATCH_POLICIES)} (what to do with a record that names "
        "a model this job does not serve)",
    ),
    "max_cost_usd": (
        lambda v: v > 0,
        "must be a positive number of US dollars (or omitted for no cap); "
        "`hyperbatch estimate` prints what the job should cost",
    ),
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
    if fmt == "vertex" and task == TaskKind.COMPLETION:
        out.append(
            "input_format: vertex lines are Gemini chat requests (task chat) or text-embedding "
            "lines (task embedding); use openai or jsonl for completion"
        )
    out += _image_input_problems(typed)
    if embedding and typed.get("sampling"):
        out.append("sampling: an embedding job samples nothing; remove it")
    image = task == TaskKind.IMAGE
    if typed.get("image") and not image:
        out.append("image: only image jobs (task image) draw images; remove it")
    if image:
        out += image_problems(typed.get("image") or {})
        if typed.get("sampling"):
            out.append("sampling: an image job samples no tokens; use image (steps, guidance)")
        if fmt not in (None, "openai", "jsonl", "avro"):
            out.append("input_format: image jobs read openai, jsonl or avro records")
        sizes = (typed.get("engine_options") or {}).get("sizes")
        size = (typed.get("image") or {}).get("size", ImageDefaults.size)
        if isinstance(sizes, list | tuple) and size not in sizes:
            out.append(
                f"image.size: {size} is not among engine_options.sizes ({', '.join(map(str, sizes))})"
                "; records that give no size get it, so the job must serve it"
            )
    return out


def _image_input_problems(typed: Mapping[str, Any]) -> list[str]:
    """``input_format: images`` (a glob of image files + the spec's prompt) and its fields."""
    out = []
    images = typed.get("input_format") == "images"
    if images and typed.get("task") not in (None, TaskKind.CHAT):
        out.append("input_format: images are captioned, classified or read by task chat")
    if images and not (isinstance(typed.get("prompt"), str) and typed["prompt"].strip()):
        out.append("prompt: input_format images needs the instruction for every image (prompt)")
    for key in ("prompt", "system"):
        if typed.get(key) is not None and not images:
            out.append(f"{key}: only input_format images takes a job-wide {key}; remove it")
    if images and typed.get("engine", "jax") == "jax":
        out.append(
            "engine: the jax engine serves text models; images need a vision-language model on "
            "engine jax-vlm (or vllm)"
        )
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
            fmt = models.check_model(spec.model)
        except storage.CredentialsError as e:
            not_checked(f"model: whether {spec.model} is a model", e)
        except (models.ModelNotFound, storage.StorageError) as e:
            problems.append(f"model: {e}")
        else:
            if (fmt == "diffusers") != (spec.task == TaskKind.IMAGE):
                problems.append(
                    f"model: {spec.model} is a diffusers pipeline: it serves task image"
                    if fmt == "diffusers"
                    else "model: task image needs a diffusers pipeline folder (model_index.json, "
                    f"unet/, vae/, text_encoder/, tokenizer/, scheduler/); {spec.model} is a "
                    f"{fmt} model"
                )
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
    "image": dict,
    "sampling": dict,
    "spot": bool,
    "usd_per_accelerator_hour": float,
    "max_error_rate": float,
    "vector_output": str,
    "dimensions": int,
    "served_model_name": (str, list),
    "model_mismatch": str,
    "max_cost_usd": float,
    "prompt": str,
    "system": str,
    "image_root": str,
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
