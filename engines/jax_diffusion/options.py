"""The JAX diffusion engine's ``engine_options`` (``engine: jax``, ``task: image``): typed,
checked without jax."""

from __future__ import annotations

import dataclasses

from hyperbatch.engines.options import SIZES, EngineOptions, option


@dataclasses.dataclass(frozen=True)
class DiffusionEngineOptions(EngineOptions):
    ENGINE = "jax (image)"

    sizes: tuple[str, ...] | None = option(
        None,
        "image sizes the job serves, one compiled program each (default: the job's image.size)",
        kind=SIZES,
    )
    max_steps: int = option(
        50, "most denoising steps a request may ask for (the step tables' length)", minimum=1,
        maximum=1000,
    )  # fmt: skip
    attention: str = option(
        "auto", "auto | cpu (our C++ kernel) | xla", choices=("auto", "cpu", "xla")
    )
    query_block: int = option(4096, "attention query positions per step", minimum=1)
    vae_chunks: int = option(1, "decode a batch in this many parts (memory)", minimum=1)
    variant: str | None = option(None, 'safetensors variant to read ("fp16")', kind=str)
    data_parallel: int | None = option(
        None, "devices the image batch is split over (default: all local devices)", kind=int,
        minimum=1,
    )  # fmt: skip
    cpu_cores: bool = option(
        True,
        "on accelerator cpu: one XLA device per core, each denoising a slice of the batch (unless "
        "JAX_NUM_CPU_DEVICES or XLA_FLAGS chose a count, or JAX already runs in the process)",
    )
