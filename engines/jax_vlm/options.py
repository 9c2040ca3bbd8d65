"""The JAX VLM engine's ``engine_options``: the text engine's, plus the image bounds (no jax)."""

from __future__ import annotations

import dataclasses

from hyperbatch.engines.jax_llm.options import JaxOptions
from hyperbatch.engines.options import option


@dataclasses.dataclass(frozen=True)
class JaxVLMOptions(JaxOptions):
    ENGINE = "jax-vlm"

    max_images: int = option(
        4, "input images per request (more: too_many_images)", minimum=1, maximum=64
    )
    vision_batch: int = option(
        8, "image tiles per vision-tower call (a static shape: the last call is padded)", minimum=1
    )
    longest_edge: int | None = option(
        None,
        "resize an image to this longest edge before cutting it into tiles (default: the "
        "processor's); bounds the tiles per image: (ceil(edge / tile))^2 + 1",
        kind=int,
        minimum=1,
    )
