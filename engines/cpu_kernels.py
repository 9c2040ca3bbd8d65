"""Our C++ CPU kernels (XLA FFI calls): built once per machine, registered once per process.

A kernel is compiled on first use with the machine's C++ compiler (``$CXX``, else ``g++``,
``c++`` or ``clang++``) for the machine's own CPU (``-march=native``), into
``<cache>/cpu-kernels/<key>/`` where the key hashes the source, the compiler, the flags, jaxlib
and the CPU, so a copied cache never runs code built for another CPU. Its handlers are
registered as XLA FFI targets of the CPU platform. ``load()`` raises ``KernelUnavailable`` with
the reason when the kernel cannot be had; engines then say why they use XLA's code instead.
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
from collections.abc import Mapping
from pathlib import Path

import jax

from hyperbatch.engines.models import default_cache_dir

# -ffast-math lets the exp loops vectorise; it is given when compiling only, never when linking,
# so a library does not switch the whole process to flush-to-zero.
COMPILE_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-march=native", "-ffast-math", "-w")
SHARED_HEADER = Path(__file__).with_name("cpu_parallel.h")  # what the kernels share


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built or loaded here; the message says why."""


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


class CpuKernel:
    """One C++ source of FFI handlers: ``targets`` maps each FFI target name to the symbol the
    library exports for it (``XLA_FFI_DEFINE_HANDLER_SYMBOL``)."""

    def __init__(self, source: Path, what: str, targets: Mapping[str, str]):
        self.source = source
        self.what = what  # for messages: "the CPU attention kernel"
        self.targets = dict(targets)
        self._lock = threading.Lock()
        self._loaded: str | None = None  # the library registered in this process

    def build_key(self, cxx: str) -> str:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
        h = hashlib.sha256()
        for part in (
            self.source.read_bytes(),
            SHARED_HEADER.read_bytes(),
            version.encode(),
            " ".join(COMPILE_FLAGS).encode(),
            importlib.metadata.version("jaxlib").encode(),
            platform.machine().encode(),
            _cpu_identity().encode(),
        ):
            h.update(part)
            h.update(b"\0")
        return h.hexdigest()[:16]

    def build(self, cache_dir: str | None = None) -> str:
        """Compile the kernel (or reuse the cached build); returns the shared library's path."""
        cxx = _compiler()
        out_dir = Path(cache_dir or default_cache_dir()) / "cpu-kernels" / self.build_key(cxx)
        lib = out_dir / f"{self.source.stem}.so"
        if lib.is_file():
            return str(lib)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            obj, tmp_lib = Path(tmp) / "kernel.o", Path(tmp) / "kernel.so"
            steps = (
                [cxx, *COMPILE_FLAGS, f"-I{jax.ffi.include_dir()}", f"-I{SHARED_HEADER.parent}",
                 "-c", str(self.source), "-o", str(obj)],
                [cxx, "-shared", str(obj), "-o", str(tmp_lib)],
            )  # fmt: skip
            for cmd in steps:
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode:
                    raise KernelUnavailable(
                        f"compiling {self.what} failed ({' '.join(cmd)}):\n{proc.stderr[-2000:]}"
                    )
            os.replace(tmp_lib, lib)  # atomic: concurrent builders agree on one complete file
        return str(lib)

    def load(self, cache_dir: str | None = None) -> str:
        """Build (once per machine) and register (once per process) the kernel; its path."""
        with self._lock:
            if self._loaded is None:
                path = self.build(cache_dir)
                try:
                    lib = ctypes.cdll.LoadLibrary(path)
                    capsules = {
                        t: jax.ffi.pycapsule(getattr(lib, s)) for t, s in self.targets.items()
                    }
                except (OSError, AttributeError) as e:
                    raise KernelUnavailable(f"loading {path} failed: {e}") from e
                for target, capsule in capsules.items():
                    jax.ffi.register_ffi_target(target, capsule, platform="cpu")
                self._loaded = path
            return self._loaded
