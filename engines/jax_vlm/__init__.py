"""Our JAX vision-language engine: Idefics3 / SmolVLM on the JAX LLM engine's text stack."""
