"""Reading a diffusers-layout checkpoint: local folder or ``gs://`` prefix (copied once into the
local cache), ``model_index.json`` -> SD 1.x/2.x or SDXL, each component's config and safetensors
-> typed configs and float32 host parameters, the CLIP tokenizers and the scheduler config.

Only the files the engine reads are copied from a bucket: configs, tokenizer files and the
safetensors of the chosen ``variant`` (``None`` = the full-precision files, or e.g. ``"fp16"``);
never the safety checker, ``.bin``/``.ckpt`` weights or other variants.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, NamedTuple

from hyperbatch import storage
from hyperbatch.engines.jax_diffusion import text_encoder, unet, vae
from hyperbatch.engines.jax_diffusion.config import (
    TextEncoderConfig,
    UNetConfig,
    UnsupportedModel,
    VAEConfig,
    text_encoder_config,
    unet_config,
    vae_config,
)
from hyperbatch.engines.jax_diffusion.tokenizer import ClipTokenizer
from hyperbatch.engines.jax_diffusion.weights import CheckpointError, Tensors, component_files

Kind = Literal["sd", "sdxl"]

_PIPELINES: dict[str, Kind] = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
}
_COMPONENTS = (
    "unet",
    "vae",
    "text_encoder",
    "text_encoder_2",
    "tokenizer",
    "tokenizer_2",
    "scheduler",
)
_SMALL_FILES = {
    "config.json",
    "scheduler_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
}
_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}


class PipelineParams(NamedTuple):
    """Host (numpy float32) or device parameters of the components the engine runs."""

    text_encoders: tuple[text_encoder.TextEncoderParams, ...]
    unet: unet.UNetParams
    vae: vae.VAEDecoderParams


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    source: str  # what the caller named (local path or gs:// URL)
    path: str  # the local folder
    kind: Kind
    unet: UNetConfig
    vae: VAEConfig
    text_encoders: tuple[TextEncoderConfig, ...]
    tokenizers: tuple[ClipTokenizer, ...]
    scheduler_config: dict[str, Any]
    force_zeros_for_empty_prompt: bool  # SDXL: a missing negative prompt is all-zero embeddings


def default_cache_dir() -> str:
    return os.environ.get(
        "HYPERBATCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hyperbatch")
    )


def _wanted(relative: str, variant: str | None) -> bool:
    parts = relative.split("/")
    if len(parts) == 1:
        return parts[0] == "model_index.json"
    if len(parts) != 2 or parts[0] not in _COMPONENTS:
        return False
    folder, name = parts
    if name in _SMALL_FILES:
        return True
    stem = _STEMS.get(folder, "model")
    v = re.escape(f".{variant}") if variant else ""
    weights = rf"{re.escape(stem)}{v}(-\d+-of-\d+)?\.safetensors"
    return (
        re.fullmatch(weights, name) is not None
        or name == f"{stem}{'.' + variant if variant else ''}.safetensors.index.json"
    )


def local_copy(source: str, variant: str | None = None, cache_dir: str | None = None) -> str:
    """A local folder holding ``source``'s files; a ``gs://`` checkpoint is copied into the cache
    (files already there with the same size and generation are kept)."""
    if not storage.is_gcs(source):
        path = os.path.expanduser(source)
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise CheckpointError(
                f"{source} is not a diffusers checkpoint folder (no model_index.json)"
            )
        return path
    base = source.rstrip("/") + "/"
    files = [f for f in storage.list_prefix(base) if _wanted(f.path[len(base) :], variant)]
    if not any(f.path == base + "model_index.json" for f in files):
        raise CheckpointError(f"{source} is not a diffusers checkpoint (no model_index.json there)")
    digest = hashlib.sha256(f"{base}|{variant}".encode()).hexdigest()[:16]
    local = os.path.join(cache_dir or default_cache_dir(), "models", f"diffusers-{digest}")
    index_path = os.path.join(local, ".hyperbatch-index.json")
    known: dict[str, list[int]] = {}
    if os.path.isfile(index_path):
        with open(index_path) as f:
            known = json.load(f)

    def fetch(info: storage.FileInfo) -> None:
        rel = info.path[len(base) :]
        target = os.path.join(local, rel)
        if known.get(rel) == [info.size, info.generation] and os.path.isfile(target):
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        storage.download(info.path, target)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(fetch, files))
    with open(index_path + ".tmp", "w") as f:
        json.dump({f.path[len(base) :]: [f.size, f.generation] for f in files}, f)
    os.replace(index_path + ".tmp", index_path)
    return local


def _json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read(
    source: str, variant: str | None = None, cache_dir: str | None = None
) -> tuple[Checkpoint, PipelineParams]:
    """Configs, tokenizers and float32 host parameters of the checkpoint at ``source``."""
    path = local_copy(source, variant, cache_dir)
    index = _json(os.path.join(path, "model_index.json"))
    cls = str(index.get("_class_name"))
    kind = _PIPELINES.get(cls)
    if kind is None:
        raise UnsupportedModel(
            f"{source}: pipeline {cls!r} is not supported "
            f"(supported: {', '.join(_PIPELINES)}; text-to-image Stable Diffusion 1.x/2.x/XL)"
        )
    encoders = ("text_encoder",) if kind == "sd" else ("text_encoder", "text_encoder_2")
    tok_dirs = ("tokenizer",) if kind == "sd" else ("tokenizer", "tokenizer_2")
    for name in (*encoders, *tok_dirs, "unet", "vae", "scheduler"):
        entry = index.get(name)
        if not entry or entry[0] is None:
            raise UnsupportedModel(
                f"{source}: the pipeline has no {name} (SDXL refiners are not supported)"
            )

    text_cfgs, text_params = [], []
    for name in encoders:
        raw = _json(os.path.join(path, name, "config.json"))
        with_projection = index[name][1] == "CLIPTextModelWithProjection"
        if index[name][1] not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            raise UnsupportedModel(f"{source}: {name} is a {index[name][1]}, not a CLIP text model")
        cfg = text_encoder_config(raw, with_projection)
        tensors = Tensors(
            component_files(os.path.join(path, name), "model", variant), ("text_model.",)
        )
        text_cfgs.append(cfg)
        text_params.append(text_encoder.params_from(cfg, tensors))
    unet_cfg = unet_config(_json(os.path.join(path, "unet", "config.json")))
    unet_params = unet.params_from(
        unet_cfg, Tensors(component_files(os.path.join(path, "unet"), _STEMS["unet"], variant))
    )
    vae_cfg = vae_config(_json(os.path.join(path, "vae", "config.json")))
    vae_params = vae.params_from(
        vae_cfg, Tensors(component_files(os.path.join(path, "vae"), _STEMS["vae"], variant))
    )
    tokenizers = tuple(ClipTokenizer.from_dir(os.path.join(path, d)) for d in tok_dirs)
    scheduler_config = _json(os.path.join(path, "scheduler", "scheduler_config.json"))
    checkpoint = Checkpoint(
        source=source,
        path=path,
        kind=kind,
        unet=unet_cfg,
        vae=vae_cfg,
        text_encoders=tuple(text_cfgs),
        tokenizers=tokenizers,
        scheduler_config=scheduler_config,
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", kind == "sdxl"))
        and kind == "sdxl",
    )
    context_dim = sum(c.hidden_size for c in text_cfgs)
    if context_dim != unet_cfg.cross_attention_dim:
        raise CheckpointError(
            f"{source}: the text encoders give {context_dim} features, the UNet expects "
            f"{unet_cfg.cross_attention_dim}"
        )
    return checkpoint, PipelineParams(tuple(text_params), unet_params, vae_params)
