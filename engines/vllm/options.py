"""The vLLM engine's ``engine_options``: typed, validated, importable without vllm.

Every option but ours -- ``cpu_kvcache_space_gib`` (the CPU KV cache in GiB),
``structured_outputs_backend`` and ``json_whitespace`` (vLLM's structured-outputs config) -- is a
``vllm.LLM`` argument, passed as given when set; unset ones take the per-accelerator defaults of
``args``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hyperbatch.engines.options import EngineOptions, option


@dataclasses.dataclass(frozen=True)
class VLLMOptions(EngineOptions):
    ENGINE = "vllm"

    dtype: str | None = option(
        None,
        "weights/activations dtype (default: the job's dtype)",
        kind=str,
        choices=("float32", "bfloat16", "float16", "auto"),
    )
    tensor_parallel_size: int | None = option(
        None, "GPUs/chips per model (default: accelerator_count)", kind=int, minimum=1
    )
    pipeline_parallel_size: int | None = option(None, "pipeline stages", kind=int, minimum=1)
    max_model_len: int | None = option(
        None, "context length (default: max_seq_len)", kind=int, minimum=16
    )
    max_num_seqs: int | None = option(
        None, "concurrent sequences (default: batch_size)", kind=int, minimum=1
    )
    max_num_batched_tokens: int | None = option(
        None, "tokens per engine step", kind=int, minimum=16
    )
    gpu_memory_utilization: float | None = option(
        None,
        "share of GPU memory vLLM may take (default 0.90)",
        kind=float,
        minimum=0.05,
        maximum=1.0,
    )
    kv_cache_memory_bytes: int | None = option(None, "KV cache size in bytes", kind=int, minimum=1)
    enable_prefix_caching: bool | None = option(
        None, "reuse shared prefixes (default on)", kind=bool
    )
    enable_chunked_prefill: bool | None = option(
        None, "chunked prefill (default on GPU/TPU, off on CPU)", kind=bool
    )
    enforce_eager: bool | None = option(
        None, "no CUDA graphs / compilation (default on CPU)", kind=bool
    )
    quantization: str | None = option(None, "quantization method, e.g. fp8, awq", kind=str)
    kv_cache_dtype: str | None = option(None, "KV cache dtype, e.g. fp8", kind=str)
    swap_space: float | None = option(None, "CPU swap space in GiB", kind=float, minimum=0)
    seed: int | None = option(None, "vLLM's global seed (default 0)", kind=int, minimum=0)
    trust_remote_code: bool | None = option(None, "run the model repository's own code", kind=bool)
    block_size: int | None = option(None, "KV cache block size in tokens", kind=int, minimum=1)
    cpu_kvcache_space_gib: float = option(2.0, "CPU only: KV cache in GiB", minimum=0.1)
    structured_outputs_backend: str = option(
        "guidance",
        "grammar engine of guided requests (guidance: llguidance, as the jax engine)",
        choices=("guidance", "xgrammar", "outlines", "lm-format-enforcer", "auto"),
    )
    json_whitespace: bool = option(
        False, "let guided JSON hold free whitespace (default: compact, as the jax engine)"
    )
    max_images: int | None = option(
        None, "vision-language models: images per request (vLLM's limit_mm_per_prompt)",
        kind=int, minimum=0,
    )  # fmt: skip

    def llm_overrides(self) -> dict[str, Any]:
        """The ``vllm.LLM`` arguments this job sets explicitly."""
        own = {"cpu_kvcache_space_gib", "structured_outputs_backend", "json_whitespace",
               "max_images"}  # fmt: skip
        out = {k: v for k, v in self.set_values().items() if k not in own}
        if self.max_images is not None:
            out["limit_mm_per_prompt"] = {"image": self.max_images}
        return out
