"""Our JAX LLM engine (JetStream-style static batches) for the Llama family; see engine.py."""

from hyperbatch.engines.jax_llm.engine import JaxLLMEngine

__all__ = ["JaxLLMEngine"]
