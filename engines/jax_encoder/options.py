"""The JAX encoder's ``engine_options`` (``engine: jax``, ``task: embedding``): typed, checked
without jax. ``None`` means "as the model's sentence-transformers files say"."""

from __future__ import annotations

import dataclasses

from hyperbatch.engines.options import INTS, EngineOptions, option

POOLING = ("mean", "cls", "lasttoken", "max")


@dataclasses.dataclass(frozen=True)
class EncoderEngineOptions(EngineOptions):
    ENGINE = "jax (embedding)"

    batch_tokens: int = option(
        2048, "token positions per device call: a length-L bucket runs batch_tokens // L rows",
        minimum=16,
    )  # fmt: skip
    buckets: tuple[int, ...] | None = option(
        None, "padded lengths, one compiled program each (default: steps of 16)", kind=INTS,
        minimum=1,
    )  # fmt: skip
    pooling: str | None = option(None, "mean | cls | lasttoken | max", kind=str, choices=POOLING)
    normalize: bool | None = option(None, "unit-length vectors", kind=bool)
    max_seq_length: int | None = option(
        None, "tokens read per text; longer texts are truncated", kind=int, minimum=2
    )
    attention: str = option(
        "auto", "auto | cpu (our C++ kernel) | xla", choices=("auto", "cpu", "xla")
    )
    packing: bool | None = option(
        None,
        "pack texts back to back into rows of max_seq_length (BERT family; default unless "
        "buckets are given) instead of length buckets",
        kind=bool,
    )
