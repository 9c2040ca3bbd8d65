"""The compiled text-to-image program: text encoding, the whole denoising loop and VAE decoding in
one XLA computation per (image batch, height, width).

Everything a request varies is data, never shape: prompts (token ids), seeds, guidance scale, the
scheduler, the number of steps and the prediction type (per-row step tables padded to
``max_steps``, see ``schedulers``). So one compilation serves every request of a resolution, and
rows of one batch may even use different schedulers or step counts (the loop runs to the batch's
largest count; shorter rows hold still).

Rows are independent: each row's initial noise comes from its own seed (threefry key data), and
classifier-free guidance runs as one UNet call on ``2B`` rows interleaved per image
(``[neg_0, pos_0, neg_1, pos_1, ...]``) so both halves of an image live on the same device when
the batch is sharded over a mesh's ``data`` axis.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from hyperbatch.engines.jax_diffusion import schedulers, text_encoder, unet, vae
from hyperbatch.engines.jax_diffusion.layers import AttentionImpl
from hyperbatch.engines.jax_diffusion.loading import Checkpoint, PipelineParams


class BatchInputs(NamedTuple):
    """One batch of ``B`` images (host numpy or device arrays)."""

    ids: jax.Array  # int32 [encoders, B, 2, T]: negative, positive token ids per encoder
    zero_negative: jax.Array  # bool [B]: SDXL's all-zero negative embedding (no negative prompt)
    key_data: jax.Array  # uint32 [B, 2]: threefry key of each row's seed
    latents: jax.Array  # float32 [B, C, h, w]: explicit initial latents (diffusers' layout)
    use_latents: jax.Array  # bool [B]: take ``latents`` instead of the seed's noise
    table: schedulers.StepTable  # float32 [B, max_steps] per field
    init_sigma: jax.Array  # float32 [B]
    num_steps: jax.Array  # int32 []: loop trip count (the batch's largest step count)
    guidance: jax.Array  # float32 [B]; <= 1 means no guidance (the conditional prediction only)
    time_ids: jax.Array  # float32 [B, 6]: SDXL size/crop conditioning (unused for SD)


def initial_noise(key_data: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal noise ``[B, *shape]``, row ``i`` from ``key_data[i]`` alone."""
    keys = jax.random.wrap_key_data(key_data, impl="threefry2x32")
    return jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(keys)


def _interleave(neg: jax.Array, pos: jax.Array) -> jax.Array:
    return jnp.stack([neg, pos], axis=1).reshape((-1, *neg.shape[1:]))


def text_context(
    ck: Checkpoint,
    params: PipelineParams,
    ids: jax.Array,
    zero_negative: jax.Array,
    dtype,
    impl: AttentionImpl,
) -> tuple[jax.Array, jax.Array | None]:
    """Cross-attention context ``[2B, T, D]`` and SDXL's pooled embedding ``[2B, P]`` (None for
    SD) for the interleaved negative/positive rows, as the SD and SDXL pipelines compute them."""
    b, t = ids.shape[1], ids.shape[3]
    encodings = [
        text_encoder.encode(cfg, p, ids[i].reshape(2 * b, t), dtype, impl)
        for i, (cfg, p) in enumerate(zip(ck.text_encoders, params.text_encoders, strict=True))
    ]
    if ck.kind == "sd":
        return encodings[0].last, None
    context = jnp.concatenate([e.penultimate for e in encodings], axis=-1)
    pooled = encodings[-1].pooled
    keep = jnp.stack([~zero_negative, jnp.ones_like(zero_negative)], axis=1).reshape(-1)
    context = jnp.where(keep[:, None, None], context, jnp.zeros_like(context))
    pooled = jnp.where(keep[:, None], pooled, jnp.zeros_like(pooled))
    return context, pooled


def denoise(
    ck: Checkpoint,
    params: PipelineParams,
    inputs: BatchInputs,
    latent_shape: tuple[int, int, int],
    dtype,
    impl: AttentionImpl,
) -> jax.Array:
    """Initial latents -> denoised latents ``[B, h, w, C]`` (float32, channels-last)."""
    c, h, w = latent_shape
    context, pooled = text_context(ck, params, inputs.ids, inputs.zero_negative, dtype, impl)
    added = None
    if pooled is not None:
        added = unet.Added(pooled, _interleave(inputs.time_ids, inputs.time_ids))
    noise = initial_noise(inputs.key_data, (c, h, w))
    x = jnp.where(inputs.use_latents[:, None, None, None], inputs.latents, noise)
    x = (x * inputs.init_sigma[:, None, None, None]).transpose(0, 2, 3, 1)
    guided = (inputs.guidance > 1.0)[:, None, None, None]
    g = inputs.guidance[:, None, None, None]

    def body(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        x, x0_prev = carry
        coeffs = jax.tree.map(lambda col: col[:, i], inputs.table)
        scaled = x * coeffs.c_in[:, None, None, None]
        model_in = _interleave(scaled, scaled).astype(dtype)
        t = _interleave(coeffs.t, coeffs.t)
        out = unet.apply(ck.unet, params.unet, model_in, t, context, added, impl=impl)
        out = out.astype(jnp.float32).reshape((-1, 2, *out.shape[1:]))
        uncond, cond = out[:, 0], out[:, 1]
        m = jnp.where(guided, uncond + g * (cond - uncond), cond)
        return schedulers.step(coeffs, x, m, x0_prev)

    x, _ = lax.fori_loop(0, inputs.num_steps, body, (x, jnp.zeros_like(x)))
    return x


def decode_images(
    ck: Checkpoint,
    params: PipelineParams,
    latents: jax.Array,
    vae_dtype,
    impl: AttentionImpl,
    chunks: int,
) -> jax.Array:
    """Denoised latents ``[B, h, w, C]`` -> float32 images ``[B, H, W, 3]`` in [0, 1] (diffusers'
    ``(x * 0.5 + 0.5).clamp(0, 1)``), decoded ``B / chunks`` images at a time."""
    z = vae.unscale_latents(ck.vae, latents, ck.kind == "sdxl").astype(vae_dtype)

    def one(zc: jax.Array) -> jax.Array:
        return vae.decode(ck.vae, params.vae, zc, impl).astype(jnp.float32)

    if chunks <= 1:
        pixels = one(z)
    else:  # chunk j holds rows j, j + chunks, ...: every chunk spans all devices of the batch axis
        b = z.shape[0]
        strided = z.reshape((b // chunks, chunks, *z.shape[1:])).swapaxes(0, 1)
        out = lax.map(one, strided)
        pixels = out.swapaxes(0, 1).reshape((b, *out.shape[2:]))
    return jnp.clip(pixels * 0.5 + 0.5, 0.0, 1.0)


def to_uint8(images: jax.Array) -> jax.Array:
    """diffusers' ``(images * 255).round().astype("uint8")``."""
    return jnp.round(images * 255.0).astype(jnp.uint8)
