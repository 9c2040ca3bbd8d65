"""The hyper-parameters of an Idefics3-family checkpoint: its Llama text model (``jax_llm``'s
``ModelConfig``), its SigLIP-style vision tower, the pixel-shuffle connector, and the image
processor's settings (``preprocessor_config.json`` / ``processor_config.json``)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from hyperbatch.engines.jax_llm.config import ModelConfig, UnsupportedModel
from hyperbatch.engines.jax_llm.config import from_hf as text_from_hf

#: HF ``model_type`` values served (SmolVLM v1 checkpoints are ``idefics3``; SmolVLM2 is
#: ``smolvlm``, the same network)
SUPPORTED_ARCHITECTURES = ("idefics3", "smolvlm")
LANCZOS = 1  # PIL's resampling filter number


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    image_size: int  # a tile's side in pixels
    patch_size: int
    layer_norm_eps: float
    hidden_act: str

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class ProcessorConfig:
    """What the model's image processor does (Idefics3ImageProcessor's fields)."""

    longest_edge: int  # size.longest_edge: the whole image is first resized to this
    tile: int  # max_image_size.longest_edge: the tile side
    do_image_splitting: bool = True
    resample: int = LANCZOS
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_seq_len: int = 64  # image tokens per tile


@dataclasses.dataclass(frozen=True)
class VLMConfig:
    architecture: str
    text: ModelConfig
    vision: VisionConfig
    scale_factor: int
    image_token_id: int
    processor: ProcessorConfig

    @property
    def tokens_per_tile(self) -> int:
        return self.vision.patches_per_side**2 // self.scale_factor**2


def is_vlm_dir(path: str) -> bool:
    """Does ``path`` hold a checkpoint of an architecture served here (by its config.json)?"""
    try:
        with open(os.path.join(path, "config.json")) as f:
            return json.load(f).get("model_type") in SUPPORTED_ARCHITECTURES
    except (OSError, ValueError):
        return False


def _read(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def processor_config(model_dir: str) -> ProcessorConfig:
    proc = _read(os.path.join(model_dir, "processor_config.json"))
    image = _read(os.path.join(model_dir, "preprocessor_config.json")) or proc.get(
        "image_processor", {}
    )
    if not image:
        raise UnsupportedModel(
            f"{model_dir} has no image processor config (preprocessor_config.json or "
            "processor_config.json): save the model's processor beside it"
        )
    mean, std = image.get("image_mean", [0.5] * 3), image.get("image_std", [0.5] * 3)
    return ProcessorConfig(
        longest_edge=int(image.get("size", {}).get("longest_edge", 4 * 364)),
        tile=int(image.get("max_image_size", {}).get("longest_edge", 364)),
        do_image_splitting=bool(image.get("do_image_splitting", True)),
        resample=int(image.get("resample", LANCZOS)),
        rescale_factor=float(image.get("rescale_factor", 1 / 255)),
        image_mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        image_std=(float(std[0]), float(std[1]), float(std[2])),
        image_seq_len=int(proc.get("image_seq_len", 64)),
    )


def from_hf(config: Mapping[str, Any], model_dir: str) -> VLMConfig:
    arch = config.get("model_type")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModel(
            f"model_type {arch!r} is not a vision-language model the jax-vlm engine serves; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)} (or use the vllm engine)"
        )
    generation = _read(os.path.join(model_dir, "generation_config.json")) or None
    text = text_from_hf(dict(config.get("text_config") or {}), generation)
    v = dict(config.get("vision_config") or {})
    vision = VisionConfig(
        hidden_size=int(v.get("hidden_size", 1152)),
        intermediate_size=int(v.get("intermediate_size", 3072)),
        num_layers=int(v.get("num_hidden_layers", 12)),
        num_heads=int(v.get("num_attention_heads", 16)),
        image_size=int(v.get("image_size", 224)),
        patch_size=int(v.get("patch_size", 32)),
        layer_norm_eps=float(v.get("layer_norm_eps", 1e-6)),
        hidden_act=str(v.get("hidden_act", "gelu_pytorch_tanh")),
    )
    if vision.hidden_act not in ("gelu_pytorch_tanh", "gelu"):
        raise UnsupportedModel(f"vision hidden_act {vision.hidden_act!r} is not supported")
    processor = processor_config(model_dir)
    out = VLMConfig(
        architecture=arch,
        text=text,
        vision=vision,
        scale_factor=int(config.get("scale_factor", 2)),
        image_token_id=int(config["image_token_id"]),
        processor=processor,
    )
    if processor.tile != vision.image_size:
        raise UnsupportedModel(
            f"the processor's tiles are {processor.tile} pixels but the vision tower reads "
            f"{vision.image_size}: the checkpoint and its processor do not match"
        )
    if out.tokens_per_tile != processor.image_seq_len:
        raise UnsupportedModel(
            f"image_seq_len is {processor.image_seq_len} but the vision tower gives "
            f"{out.tokens_per_tile} tokens per tile: the checkpoint and its processor do not match"
        )
    return out
