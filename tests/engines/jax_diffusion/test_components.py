"""Text encoders, UNet and VAE decoder, loaded through our loader, equal diffusers/transformers'
PyTorch modules of the same checkpoint within 1e-4 max abs (float32)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")
require("diffusers", "diffusers' and transformers' PyTorch modules are the reference")

import jax
import jax.numpy as jnp
import torch

from hyperbatch.engines.jax_diffusion import loading, text_encoder, unet, vae
from hyperbatch.engines.jax_diffusion.layers import AttentionImpl

PRESETS = ("tiny-sd", "tiny-sd2", "tiny-sdxl")
TOL = 1e-4
# small query blocks so the blocked paths run too (a 16x16 latent has 256 positions)
CPU, XLA = AttentionImpl("cpu", 64), AttentionImpl("xla", 64)


def _load(path: str):
    checkpoint, host = loading.read(path)
    return checkpoint, jax.tree.map(jnp.asarray, host)


def _report(name: str, ours, expected) -> float:
    diff = float(np.abs(np.asarray(ours) - np.asarray(expected)).max())
    scale = float(np.abs(np.asarray(expected)).max())
    print(f"{name}: max abs diff {diff:.2e} (values up to {scale:.2f})")
    assert scale > 0.1, "the comparison is not between near-zero numbers"
    return diff


@pytest.mark.parametrize(("preset", "impl"), [(p, CPU) for p in PRESETS] + [("tiny-sdxl", XLA)])
def test_text_encoders_match(tiny_dirs, reference_pipeline, preset, impl):
    checkpoint, params = _load(tiny_dirs[preset])
    pipe = reference_pipeline(tiny_dirs[preset])
    modules = [pipe.text_encoder] + ([pipe.text_encoder_2] if preset == "tiny-sdxl" else [])
    ids, _ = checkpoint.tokenizers[0].encode(
        ["a photo of a cat", "an astronaut riding a horse on the moon " * 3, ""]
    )
    for cfg, p, module in zip(checkpoint.text_encoders, params.text_encoders, modules, strict=True):
        ours = text_encoder.encode(cfg, p, jnp.asarray(ids), jnp.float32, impl)
        with torch.no_grad():
            ref = module(torch.from_numpy(ids).long(), output_hidden_states=True)
        pooled = ref.text_embeds if cfg.projection_dim else ref.pooler_output
        assert _report(f"{preset} last hidden state", ours.last, ref.last_hidden_state) <= TOL
        assert (
            _report(f"{preset} hidden_states[-2]", ours.penultimate, ref.hidden_states[-2]) <= TOL
        )
        assert _report(f"{preset} pooled", ours.pooled, pooled) <= TOL


@pytest.mark.parametrize(
    ("preset", "latent_hw", "impl"),
    [
        ("tiny-sd", (16, 16), CPU),
        ("tiny-sd2", (16, 16), CPU),
        ("tiny-sdxl", (16, 16), CPU),
        ("tiny-sd", (9, 7), CPU),
        ("tiny-sdxl", (16, 16), XLA),
    ],
)
def test_unet_matches(tiny_dirs, reference_pipeline, preset, latent_hw, impl):
    """(9, 7): odd latent sides, so the up path resizes to the skips' sizes (not x2)."""
    checkpoint, params = _load(tiny_dirs[preset])
    pipe = reference_pipeline(tiny_dirs[preset])
    rng = np.random.default_rng(1)
    b, (h, w) = 3, latent_hw
    x = rng.standard_normal((b, 4, h, w)).astype(np.float32)
    t = np.array([999.0, 501.0, 13.25], np.float32)
    context = rng.standard_normal((b, 77, checkpoint.unet.cross_attention_dim)).astype(np.float32)
    added, kwargs = None, {}
    if checkpoint.unet.addition_embed_type == "text_time":
        pooled = rng.standard_normal((b, checkpoint.text_encoders[1].projection_dim)).astype(
            np.float32
        )
        time_ids = np.array(
            [[32, 32, 0, 0, 32, 32], [64, 48, 3, 5, 32, 32], [1024, 768, 0, 16, 1024, 1024]],
            np.float32,
        )
        added = unet.Added(jnp.asarray(pooled), jnp.asarray(time_ids))
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.from_numpy(pooled),
            "time_ids": torch.from_numpy(time_ids),
        }
    ours = unet.apply(
        checkpoint.unet,
        params.unet,
        jnp.asarray(x.transpose(0, 2, 3, 1)),
        jnp.asarray(t),
        jnp.asarray(context),
        added,
        impl=impl,
    )
    with torch.no_grad():
        ref = pipe.unet(
            torch.from_numpy(x),
            torch.from_numpy(t),
            encoder_hidden_states=torch.from_numpy(context),
            **kwargs,
        ).sample.numpy()
    name = f"{preset} UNet {latent_hw} ({impl.kind} attention)"
    assert _report(name, np.asarray(ours).transpose(0, 3, 1, 2), ref) <= TOL


@pytest.mark.parametrize(
    ("preset", "impl"), [("tiny-sd", CPU), ("tiny-sdxl", CPU), ("tiny-sd", XLA)]
)
def test_vae_decode_matches(tiny_dirs, reference_pipeline, preset, impl):
    checkpoint, params = _load(tiny_dirs[preset])
    pipe = reference_pipeline(tiny_dirs[preset])
    z = np.random.default_rng(2).standard_normal((2, 4, 16, 12)).astype(np.float32)
    ours = vae.decode(checkpoint.vae, params.vae, jnp.asarray(z.transpose(0, 2, 3, 1)), impl)
    with torch.no_grad():
        ref = pipe.vae.decode(torch.from_numpy(z)).sample.numpy()
    assert _report(f"{preset} VAE decode", np.asarray(ours).transpose(0, 3, 1, 2), ref) <= TOL
