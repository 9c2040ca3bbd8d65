"""Reading one component's safetensors (single file or sharded with an index) and handing tensors
to the model code by their diffusers/transformers names, converted to our layouts.

A ``Tensors`` store is strict: every tensor must be taken exactly once (``finish`` names the ones
left over), so a checkpoint feature we do not implement fails loudly instead of being ignored.
"""

from __future__ import annotations

import json
import os

import numpy as np

from hyperbatch.engines.jax_diffusion.layers import Conv, Linear, Norm
from hyperbatch.engines.jax_llm.weights import CheckpointError, read_safetensors

__all__ = ["CheckpointError", "read_safetensors"]


def component_files(folder: str, stem: str, variant: str | None = None) -> list[str]:
    """The safetensors files of one component: ``{stem}[.{variant}].safetensors`` or the shards
    an ``....safetensors.index.json`` names."""
    name = f"{stem}.{variant}" if variant else stem
    index = os.path.join(folder, f"{name}.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, s) for s in shards]
    single = os.path.join(folder, f"{name}.safetensors")
    if os.path.isfile(single):
        return [single]
    found = (
        sorted(p for p in os.listdir(folder) if p.endswith(".safetensors"))
        if os.path.isdir(folder)
        else []
    )
    hint = f" (found {', '.join(found)}; pass the matching variant)" if found else ""
    raise CheckpointError(f"{folder}: no {name}.safetensors{hint}")


class Tensors:
    """Named float32 views of a component's tensors, taken once each by the model's converters."""

    def __init__(self, files: list[str], strip_prefixes: tuple[str, ...] = ()) -> None:
        self.where = os.path.dirname(files[0]) if files else "?"
        self._arrays: dict[str, np.ndarray] = {}
        for path in files:
            if not os.path.isfile(path):
                raise CheckpointError(f"{path} is missing (named by the index)")
            for name, arr in read_safetensors(path):
                for prefix in strip_prefixes:
                    name = name.removeprefix(prefix)
                self._arrays[name] = arr
        self._taken: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self._arrays)

    def rename(self, old: str, new: str) -> None:
        """Map a legacy name onto the current one (e.g. the VAE's ``query`` -> ``to_q``)."""
        if old in self._arrays and new not in self._arrays:
            self._arrays[new] = self._arrays.pop(old)

    def discard(self, prefix: str) -> None:
        """Mark a part this engine never runs as used (the VAE's encoder for text-to-image)."""
        self._taken.update(k for k in self._arrays if k.startswith(prefix))

    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if name not in self._arrays:
            raise CheckpointError(f"{self.where}: tensor {name} is missing")
        if name in self._taken:
            raise CheckpointError(f"{self.where}: tensor {name} taken twice")
        self._taken.add(name)
        arr = np.asarray(self._arrays[name], dtype=np.float32)
        if shape is not None and tuple(arr.shape) != tuple(shape):
            raise CheckpointError(
                f"{self.where}: tensor {name} has shape {tuple(arr.shape)}, the config implies {shape}"
            )
        return arr

    def linear(self, name: str, bias: bool = True) -> Linear:
        """``name.weight [out, in]`` (or a 1x1 conv ``[out, in, 1, 1]``) -> ``Linear(w [in, out])``."""
        w = self.take(f"{name}.weight")
        if w.ndim == 4:
            w = w[:, :, 0, 0]
        b = self.take(f"{name}.bias") if bias or f"{name}.bias" in self._arrays else None
        return Linear(np.ascontiguousarray(w.T), b)

    def conv(self, name: str) -> Conv:
        """``name.weight [out, in, kh, kw]`` -> ``Conv(w [kh, kw, in, out])``."""
        w = self.take(f"{name}.weight")
        if w.ndim == 2:  # a linear stored where a 1x1 conv is used
            w = w[:, :, None, None]
        b = self.take(f"{name}.bias") if f"{name}.bias" in self._arrays else None
        return Conv(np.ascontiguousarray(w.transpose(2, 3, 1, 0)), b)

    def norm(self, name: str) -> Norm:
        return Norm(self.take(f"{name}.weight"), self.take(f"{name}.bias"))

    def finish(self) -> None:
        left = sorted(set(self._arrays) - self._taken)
        if left:
            shown = ", ".join(left[:8]) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
            raise CheckpointError(
                f"{self.where}: {len(left)} tensors are not used by the model the config describes "
                f"({shown}); the checkpoint has a feature this engine does not implement"
            )
