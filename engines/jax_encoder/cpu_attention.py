"""The CPU encoder-attention kernel (``cpu_attention.cc``): built once per machine, called from JAX.

Compiled on first use with the machine's C++ compiler (``$CXX``, else ``g++``, ``c++`` or
``clang++``) for the machine's own CPU (``-march=native``) into
``$HYPERBATCH_CACHE/cpu-kernels/<key>/`` (default ``~/.cache/hyperbatch``), where the key hashes
the source, compiler, flags, jaxlib and CPU, so a copied cache never runs code built for another
CPU. Registered as an XLA FFI target of the CPU platform. ``load()`` raises ``KernelUnavailable``
with the reason when it cannot be had; the encoder then uses XLA's attention.
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

SOURCE = Path(__file__).with_name("cpu_attention.cc")
TARGET = "hyperbatch_encoder_attention"
TARGET_PACKED = "hyperbatch_encoder_attention_packed"
# -ffast-math lets the exp loop vectorise; given when compiling only, never when linking, so the
# library does not switch the whole process to flush-to-zero.
COMPILE_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-march=native", "-ffast-math", "-w")

_lock = threading.Lock()
_loaded: str | None = None


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built or loaded here; the message says why."""


def supports(head_dim: int) -> str | None:
    """None if the kernel serves this head size, else the reason it does not."""
    if head_dim % 16 or head_dim > 256:
        return f"head_dim {head_dim} (the kernel needs a multiple of 16, at most 256)"
    return None


def _cache_dir() -> Path:
    default = os.path.join(os.path.expanduser("~"), ".cache", "hyperbatch")
    return Path(os.environ.get("HYPERBATCH_CACHE", default))


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name) or name
    raise KernelUnavailable("no C++ compiler found (set CXX, or install g++)")


def _build_key(cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = "".join(sorted({ln for ln in f if ln.startswith(("model name", "flags"))}))
    except OSError:
        cpu = platform.processor()
    h = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        version.encode(),
        " ".join(COMPILE_FLAGS).encode(),
        importlib.metadata.version("jaxlib").encode(),
        platform.machine().encode(),
        cpu.encode(),
    ):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def build() -> str:
    """Compile the kernel (or reuse the cached build); returns the shared library's path."""
    cxx = _compiler()
    out_dir = _cache_dir() / "cpu-kernels" / _build_key(cxx)
    lib = out_dir / "encoder_attention.so"
    if lib.is_file():
        return str(lib)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        obj, tmp_lib = Path(tmp) / "attention.o", Path(tmp) / "attention.so"
        steps = (
            [cxx, *COMPILE_FLAGS, f"-I{jax.ffi.include_dir()}", "-c", str(SOURCE), "-o", str(obj)],
            [cxx, "-shared", str(obj), "-o", str(tmp_lib)],
        )
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise KernelUnavailable(
                    f"compiling the encoder attention kernel failed ({' '.join(cmd)}):\n"
                    f"{proc.stderr[-2000:]}"
                )
        os.replace(tmp_lib, lib)  # atomic: concurrent builders agree on one complete file
    return str(lib)


def load() -> str:
    """Build (once per machine) and register (once per process) the kernel; its path."""
    global _loaded
    with _lock:
        if _loaded is None:
            path = build()
            try:
                lib = ctypes.cdll.LoadLibrary(path)
                capsule = jax.ffi.pycapsule(lib.HyperbatchEncoderAttention)
                packed = jax.ffi.pycapsule(lib.HyperbatchEncoderAttentionPacked)
            except (OSError, AttributeError) as e:
                raise KernelUnavailable(f"loading {path} failed: {e}") from e
            jax.ffi.register_ffi_target(TARGET, capsule, platform="cpu")
            jax.ffi.register_ffi_target(TARGET_PACKED, packed, platform="cpu")
            _loaded = path
        return _loaded


def attention(qkv: jax.Array, lengths: jax.Array) -> jax.Array:
    """qkv [B, T, 3, H, hd] float32 (q pre-scaled), lengths [B] -> out [B, T, H, hd] float32,
    zeros at padded positions. ``load()`` must have run."""
    b, t, _, h, hd = qkv.shape
    out = jax.ShapeDtypeStruct((b, t, h, hd), jnp.float32)
    return jax.ffi.ffi_call(TARGET, out)(qkv.astype(jnp.float32), lengths.astype(jnp.int32))


def attention_packed(qkv: jax.Array, starts: jax.Array, lengths: jax.Array) -> jax.Array:
    """qkv [N, 3, H, hd] float32 (q pre-scaled) holding sequences back to back; sequence s is
    tokens ``starts[s] : starts[s] + lengths[s]`` (length 0: unused) -> out [N, H, hd], each
    sequence attending within itself, zeros where no sequence is. ``load()`` must have run."""
    n, _, h, hd = qkv.shape
    out = jax.ShapeDtypeStruct((n, h, hd), jnp.float32)
    return jax.ffi.ffi_call(TARGET_PACKED, out)(
        qkv.astype(jnp.float32), starts.astype(jnp.int32), lengths.astype(jnp.int32)
    )
