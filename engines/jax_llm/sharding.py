"""Device mesh and partition specs: tensor parallelism over KV heads / MLP columns / vocab
("model" axis) and data parallelism over decode slots ("data" axis).

Specs follow the fused layouts of ``model.py``: Q/K/V columns are grouped by KV head, so sharding
the KV-head axis keeps every head's q, k and v on one device; the attention output projection and
the MLP down projection are sharded on their input rows (XLA inserts the all-reduce). An axis that
does not divide evenly is left unsharded rather than padded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hyperbatch.engines.jax_llm.config import ModelConfig


def plan_mesh(
    n_devices: int,
    cfg: ModelConfig,
    batch_size: int,
    tensor_parallel: int | None = None,
    data_parallel: int | None = None,
) -> tuple[int, int]:
    """(data, model) axis sizes. Default: the widest tensor parallelism the KV heads allow,
    the remaining devices on the batch."""
    if tensor_parallel is None:
        tensor_parallel = math.gcd(n_devices, cfg.num_kv_heads)
    if data_parallel is None:
        data_parallel = n_devices // tensor_parallel
        while data_parallel > 1 and batch_size % data_parallel:
            data_parallel -= 1
    if tensor_parallel * data_parallel > n_devices:
        raise ValueError(
            f"mesh data={data_parallel} x model={tensor_parallel} needs "
            f"{tensor_parallel * data_parallel} devices; only {n_devices} available"
        )
    if batch_size % data_parallel:
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of data_parallel {data_parallel}"
        )
    return data_parallel, tensor_parallel


def make_mesh(devices: Sequence[Any], data: int, model: int) -> Mesh:
    import numpy as np

    grid = np.asarray(list(devices)[: data * model], dtype=object).reshape(data, model)
    return Mesh(grid, ("data", "model"))


def _spec(shape: tuple[int, ...], axes: dict[int, str], mesh: Mesh) -> P:
    parts: list[str | None] = [None] * len(shape)
    for dim, name in axes.items():
        if shape[dim] % mesh.shape[name] == 0:
            parts[dim] = name
    return P(*parts)


_LAYER_AXES = {  # per-layer weights (model.py layout)
    "wqkv": {1: "model"},
    "bqkv": {0: "model"},
    "wo": {0: "model"},
    "w_gate_up": {2: "model"},
    "b_gate_up": {1: "model"},
    "w_down": {0: "model"},
}


def param_shardings(params: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
    def named(shape: tuple[int, ...], axes: dict[int, str]) -> NamedSharding:
        return NamedSharding(mesh, _spec(shape, axes, mesh))

    out: dict[str, Any] = {
        "embed": named(params["embed"].shape, {}),
        "lm_head": named(params["lm_head"].shape, {1: "model"}),
        "final_norm": named(params["final_norm"].shape, {}),
        "layers": [
            {k: named(v.shape, _LAYER_AXES.get(k, {})) for k, v in lp.items()}
            for lp in params["layers"]
        ],
    }
    return out


def cache_sharding(shape: tuple[int, ...], mesh: Mesh, batch_axis: bool) -> NamedSharding:
    """One layer's [rows, KVH, S, hd]: rows over "data" (decode slots only), heads over "model"."""
    axes = {1: "model"}
    if batch_axis:
        axes[0] = "data"
    return NamedSharding(mesh, _spec(shape, axes, mesh))


def put(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(jax.device_put, tree, shardings)
