"""The CPU attention-layer kernel (``cpu_attention.cc``): built once per machine, called from JAX.

The kernel is compiled on first use with the machine's C++ compiler (``$CXX``, else ``g++``,
``c++`` or ``clang++``) for the machine's own CPU (``-march=native``), into
``<cache>/cpu-kernels/<key>/`` where the key hashes the source, the compiler, the flags, jaxlib
and the CPU, so a copied cache never runs code built for another CPU. It is registered as an XLA
FFI target of the CPU platform; ``attention_layer`` calls it. Engines ask ``load()`` and say why they use
XLA's attention instead when it raises ``KernelUnavailable``.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hyperbatch.engines import models

SOURCE = Path(__file__).with_name("cpu_attention.cc")
TARGET = "hyperbatch_cpu_attention_layer"
MAX_GROUP = 8  # query heads per KV head the kernel is specialised for
# -ffast-math lets the exp loop vectorise; it is given when compiling only, never when linking,
# so the library does not switch the whole process to flush-to-zero.
COMPILE_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-march=native", "-ffast-math", "-w")

_lock = threading.Lock()
_loaded: str | None = None  # the library registered in this process


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built or loaded here; the message says why."""


def supports(num_heads: int, num_kv_heads: int) -> str | None:
    """None if the kernel serves this attention layout, else the reason it does not."""
    group = num_heads // num_kv_heads
    if group > MAX_GROUP:
        return f"{group} query heads per KV head (the kernel handles up to {MAX_GROUP})"
    return None


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name) or name
    raise KernelUnavailable("no C++ compiler found (set CXX, or install g++)")


def _cpu_identity() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _build_key(cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        version.encode(),
        " ".join(COMPILE_FLAGS).encode(),
        importlib.metadata.version("jaxlib").encode(),
        platform.machine().encode(),
        _cpu_identity().encode(),
    ):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def build(cache_dir: str | None = None) -> str:
    """Compile the kernel (or reuse the cached build); returns the shared library's path."""
    cxx = _compiler()
    out_dir = Path(cache_dir or models.default_cache_dir()) / "cpu-kernels" / _build_key(cxx)
    lib = out_dir / "cpu_attention.so"
    if lib.is_file():
        return str(lib)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        obj, tmp_lib = Path(tmp) / "cpu_attention.o", Path(tmp) / "cpu_attention.so"
        include = jax.ffi.include_dir()
        steps = (
            [cxx, *COMPILE_FLAGS, f"-I{include}", "-c", str(SOURCE), "-o", str(obj)],
            [cxx, "-shared", str(obj), "-o", str(tmp_lib)],
        )
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise KernelUnavailable(
                    f"compiling the CPU attention kernel failed ({' '.join(cmd)}):\n"
                    f"{proc.stderr[-2000:]}"
                )
        os.replace(tmp_lib, lib)  # atomic: concurrent builders agree on one complete file
    return str(lib)


def load(cache_dir: str | None = None) -> str:
    """Build (once per machine) and register (once per process) the kernel; its path."""
    global _loaded
    with _lock:
        if _loaded is None:
            path = build(cache_dir)
            try:
                lib = ctypes.cdll.LoadLibrary(path)
                capsule = jax.ffi.pycapsule(lib.HyperbatchAttentionLayer)
            except (OSError, AttributeError) as e:
                raise KernelUnavailable(f"loading {path} failed: {e}") from e
            jax.ffi.register_ffi_target(TARGET, capsule, platform="cpu")
            _loaded = path
        return _loaded


def attention_layer(qkv, cos, sin, k_cache, v_cache, rows, pos, window: int | None):
    """One layer's cache update and attention for N tokens (all float32).

    qkv [N, KVH, G+2, hd]: each KV head's G query projections, then k, then v, before RoPE;
    cos/sin [N, hd]: RoPE tables at each token's position; caches k [R, KVH, hd, S], v
    [R, KVH, S, hd]; rows/pos [N]: each token's cache row and position. Writes RoPE(k) and v of
    every token, then attends each token's RoPE'd queries over its row's keys up to its position.
    Tokens with a row out of range or a position outside the cache write nothing and get zeros.
    Returns (out [N, KVH*G*hd], k_cache, v_cache), the caches updated in place (aliased).
    ``load()`` must have run."""
    n, kvh, g2, hd = qkv.shape
    shapes = (
        jax.ShapeDtypeStruct((n, kvh, g2 - 2, hd), jnp.float32),
        jax.ShapeDtypeStruct(k_cache.shape, jnp.float32),
        jax.ShapeDtypeStruct(v_cache.shape, jnp.float32),
    )
    out, k_cache, v_cache = jax.ffi.ffi_call(TARGET, shapes, input_output_aliases={3: 1, 4: 2})(
        qkv.astype(jnp.float32),
        cos.astype(jnp.float32),
        sin.astype(jnp.float32),
        k_cache,
        v_cache,
        rows.astype(jnp.int32),
        pos.astype(jnp.int32),
        window=np.int64(window or 0),
    )
    return out.reshape(n, kvh * (g2 - 2) * hd), k_cache, v_cache
