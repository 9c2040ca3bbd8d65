"""Our JAX LLM engine (JetStream-style static batches) for the Llama family; see engine.py.

Nothing is imported here: the registry loads ``engine`` (jax) only when a job runs, and spec
validation reads ``options`` without jax.
"""
