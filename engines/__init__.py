"""Inference engines behind one contract (engines.base); heavy dependencies live inside each engine."""
