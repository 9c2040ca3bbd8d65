"""What vLLM is told, per accelerator: engine arguments, environment, sampling parameters.

Pure functions of our EngineConfig / SamplingParams (no vLLM import), so the exact arguments
for GPUs and TPUs -- which cannot run here -- are tested as data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyperbatch.engines.base import EngineConfig
from hyperbatch.schemas.records import SamplingParams

# engine_options a job spec may set, passed to vllm.LLM(...) as they are
LLM_OPTIONS = frozenset({
    "dtype", "tensor_parallel_size", "pipeline_parallel_size", "max_model_len",
    "max_num_seqs", "max_num_batched_tokens", "gpu_memory_utilization", "kv_cache_memory_bytes",
    "enable_prefix_caching", "enable_chunked_prefill", "enforce_eager", "quantization",
    "kv_cache_dtype", "swap_space", "seed", "trust_remote_code", "block_size",
})  # fmt: skip
# our own options: not vLLM arguments
CPU_KVCACHE_OPTION = "cpu_kvcache_space_gib"
OWN_OPTIONS = frozenset({CPU_KVCACHE_OPTION})

ACCELERATOR_KINDS = {"cpu": "cpu", "tpu": "tpu", "nvidia": "gpu"}


def accelerator_kind(accelerator: str) -> str:
    for prefix, kind in ACCELERATOR_KINDS.items():
        if accelerator.startswith(prefix):
            return kind
    raise ValueError(f"accelerator {accelerator!r} is not one vLLM can run on")


def option_problems(options: Mapping[str, Any]) -> list[str]:
    unknown = sorted(set(options) - LLM_OPTIONS - OWN_OPTIONS)
    if not unknown:
        return []
    allowed = ", ".join(sorted(LLM_OPTIONS | OWN_OPTIONS))
    return [
        f"engine_options: {', '.join(unknown)} not supported by the vllm engine; allowed: {allowed}"
    ]


def engine_args(config: EngineConfig, model_path: str) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` for this job's accelerator, before overrides."""
    kind = accelerator_kind(config.accelerator)
    args: dict[str, Any] = {
        "model": model_path,
        "max_num_seqs": config.batch_size,
        "enable_prefix_caching": True,
        "seed": 0,
        "dtype": config.dtype,  # the job spec resolves "auto": float32 on CPU, bfloat16 elsewhere
    }
    if config.max_seq_len:
        args["max_model_len"] = config.max_seq_len
    if kind == "cpu":
        # bf16 is slow without AVX-512 BF16; CUDA graphs and torch.compile don't apply.
        args.update(enforce_eager=True)
    elif kind == "gpu":
        args.update(
            tensor_parallel_size=config.accelerator_count,
            gpu_memory_utilization=0.90,
            enable_chunked_prefill=True,
        )
    else:  # tpu, through the vllm-tpu platform: one process drives every chip of the host
        args.update(
            tensor_parallel_size=config.accelerator_count,
            enable_chunked_prefill=True,
        )
    args.update({k: v for k, v in config.options.items() if k in LLM_OPTIONS})
    return args


def engine_env(config: EngineConfig) -> dict[str, str]:
    """Environment vLLM must see before it is imported."""
    env = {
        "HF_HUB_OFFLINE": "1",  # never download at run time: models are local or copied from gs://
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "VLLM_LOGGING_STREAM": "ext://sys.stderr",  # stdout carries data (--format json)
        "VLLM_LOGGING_LEVEL": "WARNING",
    }
    kind = accelerator_kind(config.accelerator)
    if kind == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(config.options.get(CPU_KVCACHE_OPTION, 2))
        # In-process engine core: starts in seconds and leaves no process behind.
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    elif kind == "tpu":
        env["VLLM_TARGET_DEVICE"] = "tpu"
    return env


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for one request."""
    kw: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,  # 0 disables top-k in vLLM too
        "seed": params.seed,
        "stop": list(params.stop) or None,
        "stop_token_ids": list(params.stop_token_ids) or None,
        "ignore_eos": params.ignore_eos,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "logprobs": params.logprobs,
        "include_stop_str_in_output": False,
    }
    return kw
