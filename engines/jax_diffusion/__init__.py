"""Our JAX text-to-image engine (MaxDiffusion-style): SD 1.x/2.x and SDXL in diffusers' layout.

``generation`` holds the model-level API (``DiffusionModel.load(path, ...)`` -> ``warmup()`` ->
``generate(prompts, ...)``); ``engine`` the Engine behind ``engine: jax`` for ``task: image``;
``options`` its typed ``engine_options``. Nothing is imported here, so spec validation reads the
options without jax.
"""
