"""Random-weight Stable Diffusion checkpoints in the diffusers layout, built with diffusers itself.

For the tests, the CPU example and the throughput benchmark: nothing is fetched (the CLIP BPE
vocabulary is made here from a built-in corpus), and a random model paints noise. Needs
``diffusers``, ``transformers`` and ``torch`` (the ``test`` extra), imported only when called.

``build(path, preset, seed=0, **overrides)`` writes ``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/`` (+ ``text_encoder_2/`` for SDXL), ``tokenizer/`` (``vocab.json``,
``merges.txt``) and ``scheduler/``, exactly as ``pipeline.save_pretrained`` does. Presets:

* ``tiny-sd``: SD 1.x block layout (cross-attention at the high resolutions, conv 1x1
  projections, quick-GELU CLIP), UNet channels (32, 64), CLIP hidden 32.
* ``tiny-sd2``: SD 2.x traits: linear projections, GELU CLIP, ``v_prediction``, per-level heads.
* ``tiny-sdxl``: two text encoders (the second with a projection for the pooled embedding),
  ``text_time`` micro-conditioning, 1-2 transformer layers per block.
* ``sd15-mini``: SD-1.5's architecture with a fifth of the channels (the benchmark's model).

``overrides``: ``unet``, ``vae``, ``text_encoder``, ``text_encoder_2`` and ``scheduler`` dicts
merged into the preset's configs.
"""

from __future__ import annotations

import collections
import copy
import itertools
import json
import os
from typing import Any

CORPUS = """\
a photo of a cat sitting on a red sofa, high quality, detailed
an astronaut riding a horse on the moon, digital art, trending
a watercolor painting of a lighthouse by the sea at sunset
portrait of an old man with a beard, oil painting, dramatic light
a futuristic city skyline at night with neon lights and flying cars
a bowl of fruit on a wooden table, still life, soft shadows
a mountain landscape with a lake and pine trees in the morning fog
blurry, low quality, bad anatomy, watermark, text, jpeg artifacts
a cute robot painting the sky blue and the grass green
the quick brown fox jumps over the lazy dog
"""

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clip_vocab(num_merges: int = 300) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: the 256 byte characters, the same with ``</w>``, merges learnt
    greedily on ``CORPUS``, then ``<|startoftext|>`` and ``<|endoftext|>`` last (as in CLIP, the
    end token has the highest id)."""
    import re

    table = _bytes_to_unicode()
    base = list(table.values())
    words: collections.Counter[tuple[str, ...]] = collections.Counter()
    for word in re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", CORPUS.lower()):
        chars = [table[b] for b in word.encode("utf-8")]
        words[(*chars[:-1], chars[-1] + "</w>")] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        merged: collections.Counter[tuple[str, ...]] = collections.Counter()
        for word, count in words.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    tokens = [*base, *(c + "</w>" for c in base), *("".join(m) for m in merges), BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return vocab, [f"{a} {b}" for a, b in merges]


def write_tokenizer(path: str, pad_token: str = EOS) -> None:
    """``vocab.json``, ``merges.txt`` and the tokenizer configs of a CLIP tokenizer."""
    vocab, merges = clip_vocab()
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    with open(os.path.join(path, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=1)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(
            {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, **special},
            f,
            indent=1,
        )


def _text_config(vocab_size: int, eos_id: int, **kw: Any) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_LENGTH,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": eos_id - 1,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "projection_dim": 32,
        **kw,
    }


SD_SCHEDULER = {  # SD 1.5's scheduler_config.json (PNDM), which the other schedulers derive from
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}
SDXL_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}

_TINY_VAE = {
    "block_out_channels": [32, 64],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "scaling_factor": 0.18215,
}


def _presets(vocab_size: int, eos_id: int) -> dict[str, dict[str, Any]]:
    sd_unet = {
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }
    return {
        "tiny-sd": {
            "kind": "sd",
            "unet": sd_unet,
            "vae": _TINY_VAE,
            # eos_token_id 2: the legacy CLIP configs (SD 1.x) that pool at the highest token id
            "text_encoder": _text_config(vocab_size, eos_id, eos_token_id=2),
            "scheduler": SD_SCHEDULER,
        },
        "tiny-sd2": {
            "kind": "sd",
            "unet": {
                **sd_unet,
                "attention_head_dim": [2, 4],
                "use_linear_projection": True,
                "upcast_attention": True,
                "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            },
            "vae": _TINY_VAE,
            "text_encoder": _text_config(vocab_size, eos_id, hidden_act="gelu"),
            "scheduler": {
                **SD_SCHEDULER,
                "_class_name": "DDIMScheduler",
                "prediction_type": "v_prediction",
                "timestep_spacing": "leading",
            },
        },
        "tiny-sdxl": {
            "kind": "sdxl",
            "unet": {
                "block_out_channels": [32, 64],
                "layers_per_block": 2,
                "sample_size": 16,
                "in_channels": 4,
                "out_channels": 4,
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                "attention_head_dim": [2, 4],
                "use_linear_projection": True,
                "addition_embed_type": "text_time",
                "addition_time_embed_dim": 8,
                "transformer_layers_per_block": [1, 2],
                "projection_class_embeddings_input_dim": 6 * 8 + 32,
                "cross_attention_dim": 64,
                "norm_num_groups": 8,
            },
            "vae": {**_TINY_VAE, "scaling_factor": 0.13025, "force_upcast": True},
            "text_encoder": _text_config(vocab_size, eos_id, hidden_act="gelu"),
            "text_encoder_2": _text_config(
                vocab_size, eos_id, hidden_act="gelu", num_hidden_layers=4, intermediate_size=48
            ),
            "scheduler": SDXL_SCHEDULER,
        },
        "sd15-mini": {
            "kind": "sd",
            "unet": {
                "block_out_channels": [64, 128, 256, 256],
                "layers_per_block": 2,
                "sample_size": 32,
                "in_channels": 4,
                "out_channels": 4,
                "down_block_types": [
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "DownBlock2D",
                ],
                "up_block_types": [
                    "UpBlock2D",
                    "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D",
                ],
                "cross_attention_dim": 256,
                "attention_head_dim": 8,
                "norm_num_groups": 32,
            },
            "vae": {
                **_TINY_VAE,
                "block_out_channels": [32, 64, 128, 128],
                "down_block_types": ["DownEncoderBlock2D"] * 4,
                "up_block_types": ["UpDecoderBlock2D"] * 4,
                "layers_per_block": 2,
                "norm_num_groups": 32,
            },
            "text_encoder": _text_config(
                vocab_size,
                eos_id,
                hidden_size=256,
                intermediate_size=1024,
                num_hidden_layers=4,
                num_attention_heads=4,
                eos_token_id=2,
            ),
            "scheduler": SD_SCHEDULER,
        },
    }


PRESETS = ("tiny-sd", "tiny-sd2", "tiny-sdxl", "sd15-mini")


def _randomise(module: Any, gen: Any) -> None:
    """Norm scales and biases start at 1/0: perturb them so a wrong loader cannot hide."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 2)
            is_norm = any("norm" in part for part in leaf[:-1])
            if name.endswith(".weight") and is_norm and p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def build(path: str, preset: str = "tiny-sd", seed: int = 0, **overrides: dict[str, Any]) -> str:
    """Write a random-weight checkpoint of ``preset`` into ``path`` (see the module docstring);
    returns ``path``. Deterministic for given arguments."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.schedulers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    vocab, _ = clip_vocab()
    presets = _presets(len(vocab), vocab[EOS])
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    spec = copy.deepcopy(presets[preset])
    for key, value in overrides.items():
        if key not in spec:
            raise ValueError(f"unknown override {key!r} for preset {preset!r}")
        spec[key].update(value)

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**spec["unet"]).eval()
    vae = AutoencoderKL(**spec["vae"]).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**spec["text_encoder"])).eval()
    for module in (unet, vae, text_encoder):
        _randomise(module, gen)
    scheduler_cls = {
        "PNDMScheduler": PNDMScheduler,
        "DDIMScheduler": DDIMScheduler,
        "EulerDiscreteScheduler": EulerDiscreteScheduler,
    }[spec["scheduler"]["_class_name"]]
    scheduler = scheduler_cls.from_config(spec["scheduler"])

    os.makedirs(path, exist_ok=True)
    write_tokenizer(os.path.join(path, "tokenizer"))
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
    if spec["kind"] == "sd":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        from diffusers import StableDiffusionXLPipeline

        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**spec["text_encoder_2"])
        ).eval()
        _randomise(text_encoder_2, gen)
        write_tokenizer(os.path.join(path, "tokenizer_2"), pad_token="!")
        tokenizer_2 = CLIPTokenizer.from_pretrained(os.path.join(path, "tokenizer_2"))
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,
        )
    pipe.save_pretrained(path, safe_serialization=True)
    # save_pretrained rewrites the tokenizer folders: restore the hub's form (vocab.json and
    # merges.txt, no tokenizer.json), which is what real SD checkpoints ship
    for name, pad in (("tokenizer", EOS), ("tokenizer_2", "!")):
        folder = os.path.join(path, name)
        if os.path.isdir(folder):
            for extra in ("tokenizer.json", "added_tokens.json"):
                if os.path.exists(os.path.join(folder, extra)):
                    os.remove(os.path.join(folder, extra))
            write_tokenizer(folder, pad_token=pad)
    return path
