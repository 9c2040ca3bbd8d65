"""The JAX LLM engine's ``engine_options``: typed, validated, importable without jax."""

from __future__ import annotations

import dataclasses

from hyperbatch.engines.options import INTS, EngineOptions, option

ATTENTION = ("auto", "cpu", "xla")


@dataclasses.dataclass(frozen=True)
class JaxOptions(EngineOptions):
    ENGINE = "jax"

    prefill_buckets: tuple[int, ...] | None = option(
        None, "prompt-length buckets (default 16, 64, 256, ... max_seq_len)", kind=INTS,
        minimum=1,
    )  # fmt: skip
    prefill_tokens: int = option(
        256, "tokens per prefill call (by bucket: P = max(1, this // bucket) rows)", minimum=8
    )
    decode_steps: int = option(
        8, "decode steps per device call (tokens per slot between host checks)", minimum=1,
        maximum=1024,
    )  # fmt: skip
    tail_batch: int | None = option(
        None, "decode calls with at most this many busy slots compute only them (a job's tail; "
        "the CPU kernel only; default batch_size/4, 0: off)", kind=int, minimum=0,
    )  # fmt: skip
    attention_block: int = option(64, "KV-cache block walked by the attention loop", minimum=8)
    prefix_cache_rows: int = option(
        8, "rows of the shared-prefix store (0 disables prefix reuse)", minimum=0
    )
    prefix_max_tokens: int | None = option(
        None, "longest reusable prefix (default 512)", kind=int, minimum=1
    )
    prefix_min_tokens: int = option(8, "shortest prefix worth reusing", minimum=1)
    refill_min_free: int | None = option(
        None, "admit waiting requests once this many slots are free (default batch_size/32 "
        "with the CPU kernel's packed prefill, else batch_size/8)", kind=int, minimum=1,
    )  # fmt: skip
    tensor_parallel: int | None = option(
        None, "devices on the 'model' mesh axis (default: gcd(devices, KV heads))", kind=int,
        minimum=1,
    )  # fmt: skip
    data_parallel: int | None = option(
        None, "devices on the 'data' mesh axis (default: the rest)", kind=int, minimum=1
    )
    compilation_cache_dir: str | None = option(
        None, "JAX persistent compilation cache (default under the model cache)", kind=str
    )
    attention: str = option(
        "auto", "auto | cpu (the C++ kernel; CPU, one device, float32) | xla", choices=ATTENTION
    )

    def tail_batch_for(self, batch: int, kernel: bool) -> int:
        """The tail batch of a decode of ``batch`` slots: the option's, else a quarter of the
        batch where the CPU kernel serves attention (it takes each token's cache row); 0: none.
        The engine and the cost estimate both ask here."""
        if self.tail_batch is not None:
            return self.tail_batch
        return batch // 4 if kernel and batch >= 16 else 0

    def refill_min_for(self, batch: int, packed: bool) -> int:
        """Free slots that start an admission round: the option's, else batch/32 where
        prefill is packed (a round pads nothing, its last call's prompts go on in the next
        one) or batch/8 where each round pads its prompts to length buckets. The engine and
        the cost estimate both ask here."""
        if self.refill_min_free is not None:
            return self.refill_min_free
        return max(1, batch // (32 if packed else 8))
