"""Our JAX text encoder (BERT family, Llama/Qwen2 embedders) for embedding jobs.

``encoder`` holds the model-level API (``Encoder``); ``engine`` the Engine behind ``engine: jax``
for ``task: embedding``; ``options`` its typed ``engine_options``. Nothing is imported here, so
spec validation reads the options without jax.
"""
