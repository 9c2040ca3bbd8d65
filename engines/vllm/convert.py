"""GGUF files for vLLM: dequantized once into a Hugging Face directory, with transformers.

vLLM's GGUF kernels are CUDA-only and it wants a tokenizer from the hub for a GGUF file; we
turn the GGUF (weights, tokenizer and chat template from its metadata) into a local HF layout
with transformers' own GGUF loader -- the reference -- and cache it beside the model cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

from hyperbatch.engines.models import default_cache_dir


def gguf_to_hf(gguf_path: str, cache_dir: str | None = None) -> str:
    st = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = os.path.join(cache_dir or default_cache_dir(), "gguf-hf", key.hexdigest()[:16])
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    # The weights are dequantized to fp32 already; only the GGUF tag blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=".convert-")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
