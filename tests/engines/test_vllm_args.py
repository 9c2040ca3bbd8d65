"""The exact vLLM arguments built for each accelerator (GPU and TPU cannot run here)."""

from __future__ import annotations

import pytest

from hyperbatch.accelerators import UnknownAccelerator
from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.vllm import args
from hyperbatch.engines.vllm.options import VLLMOptions
from hyperbatch.schemas.records import sampling_from_dict


def cfg(accelerator: str, count: int = 1, **kw) -> EngineConfig:
    return EngineConfig(model="m", accelerator=accelerator, accelerator_count=count, **kw)


# guided requests: llguidance with compact JSON, as the jax engine
GUIDANCE = {"backend": "guidance", "disable_any_whitespace": True}


def test_structured_outputs_options_are_ours_not_llm_arguments():
    c = cfg("cpu", options={"structured_outputs_backend": "xgrammar", "json_whitespace": True})
    got = args.engine_args(c, "/m")
    assert got["structured_outputs_config"] == {
        "backend": "xgrammar",
        "disable_any_whitespace": False,
    }
    assert "structured_outputs_backend" not in got
    assert "json_whitespace" not in got


def test_cpu_args_and_env():
    c = cfg("cpu", batch_size=16, max_seq_len=2048, options={"cpu_kvcache_space_gib": 4})
    assert args.engine_args(c, "/models/smol") == {
        "model": "/models/smol", "max_num_seqs": 16, "enable_prefix_caching": True, "seed": 0,
        "max_model_len": 2048, "dtype": "float32", "enforce_eager": True,
        "enable_chunked_prefill": False, "structured_outputs_config": GUIDANCE,
    }  # fmt: skip
    env = args.engine_env(c)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"


@pytest.mark.parametrize(
    ("accelerator", "count", "expected"),
    [
        ("nvidia-l4", 1, {"dtype": "bfloat16", "tensor_parallel_size": 1,
                          "gpu_memory_utilization": 0.90, "enable_chunked_prefill": True}),
        ("nvidia-h100-80gb", 8, {"dtype": "bfloat16", "tensor_parallel_size": 8,
                                 "gpu_memory_utilization": 0.90, "enable_chunked_prefill": True}),
        ("tpu-v5e", 4, {"dtype": "bfloat16", "tensor_parallel_size": 4, "enable_chunked_prefill": True}),
        ("tpu-v6e", 8, {"dtype": "bfloat16", "tensor_parallel_size": 8, "enable_chunked_prefill": True}),
    ],
)  # fmt: skip
def test_accelerator_args(accelerator, count, expected):
    c = cfg(
        accelerator, count, batch_size=256, dtype="bfloat16"
    )  # what the spec resolves "auto" to
    base = {
        "model": "gs-cache/llama",
        "max_num_seqs": 256,
        "enable_prefix_caching": True,
        "seed": 0,
        "structured_outputs_config": GUIDANCE,
    }
    assert args.engine_args(c, "gs-cache/llama") == {**base, **expected}
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in args.engine_env(c)  # workers per chip/GPU
    assert (args.engine_env(c).get("VLLM_TARGET_DEVICE") == "tpu") == accelerator.startswith("tpu")


def test_spec_overrides_win_and_unknown_options_are_refused():
    c = cfg("nvidia-a100-80gb", 2, dtype="bfloat16", options={"gpu_memory_utilization": 0.8, "quantization": "fp8",
                                            "max_num_batched_tokens": 8192})  # fmt: skip
    a = args.engine_args(c, "m")
    assert (a["gpu_memory_utilization"], a["quantization"], a["max_num_batched_tokens"]) == (
        0.8,
        "fp8",
        8192,
    )
    assert "gpu_mem not supported by the vllm engine" in VLLMOptions.problems({"gpu_mem": 0.5})[0]
    assert VLLMOptions.problems({"enforce_eager": False, "cpu_kvcache_space_gib": 8}) == []
    [bad] = VLLMOptions.problems({"gpu_memory_utilization": 1.5})
    assert "gpu_memory_utilization: must be at most 1" in bad
    with pytest.raises(UnknownAccelerator, match="unknown accelerator 'fpga'"):
        args.engine_args(cfg("fpga"), "m")


def test_sampling_mapping():
    p = sampling_from_dict({"max_tokens": 12, "temperature": 0.7, "top_p": 0.9, "top_k": 40,
                            "seed": 5, "stop": ["\n\n"], "stop_token_ids": [2],
                            "presence_penalty": 0.5, "frequency_penalty": -0.5, "logprobs": 3})  # fmt: skip
    assert args.sampling_kwargs(p) == {
        "n": 1, "max_tokens": 12, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 5,
        "stop": ["\n\n"], "stop_token_ids": [2], "ignore_eos": False, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "logprobs": 3, "include_stop_str_in_output": False,
    }  # fmt: skip
    greedy = args.sampling_kwargs(sampling_from_dict({"temperature": 0.0}))
    assert (greedy["temperature"], greedy["stop"], greedy["stop_token_ids"]) == (0.0, None, None)


def test_a_local_vllm_job_needs_vllm_installed(tmp_path, monkeypatch):
    import importlib.util

    from hyperbatch.jobs import spec as job_spec

    (tmp_path / "in.jsonl").write_text('{"id": "1", "prompt": "hi"}\n')
    data = {"name": "vj", "task": "chat", "input": str(tmp_path / "in.jsonl"), "input_format": "jsonl",
            "output": str(tmp_path), "model": "smollm2-135m-instruct", "engine": "vllm"}  # fmt: skip
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real(n, *a)
    )
    with pytest.raises(
        job_spec.SpecError, match="engine: vllm: vllm not installed here; install with"
    ):
        job_spec.validate(data)
    job_spec.validate({**data, "accelerator": "nvidia-l4"})  # runs on workers: not checked here
