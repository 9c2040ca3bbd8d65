"""The whole generation (text encoding, guided denoising loop, VAE decode) gives diffusers'
pipeline's images from the same initial latents: PSNR >= 40 dB on the decoded float images."""

from __future__ import annotations

import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")
require("diffusers", "diffusers' pipelines are the reference")

import diffusers
import torch

from hyperbatch.engines.jax_diffusion.generation import DiffusionModel

SIZE = 32
LONG = "a very detailed painting of a lighthouse by the sea " * 8  # > 77 tokens
SCHEDULER_CLASSES = {
    "euler": diffusers.EulerDiscreteScheduler,
    "ddim": diffusers.DDIMScheduler,
    "dpmpp_2m": diffusers.DPMSolverMultistepScheduler,
}

# (preset, scheduler, steps, guidance, prompts, negative prompts (ours; None = not given))
CASES = [
    ("tiny-sd", "euler", 8, 7.5, ["a photo of a cat", LONG], ["blurry", None]),
    ("tiny-sd", "ddim", 8, 7.5, ["a photo of a cat", "a red sofa"], None),
    ("tiny-sd", "dpmpp_2m", 16, 5.0, ["a photo of a cat", "a red sofa"], ["text", "watermark"]),
    ("tiny-sd", "euler", 6, 1.0, ["no guidance at all", "a red sofa"], None),
    ("tiny-sd2", "ddim", 8, 6.0, ["a photo of a cat", "a red sofa"], ["blurry", "text"]),
    ("tiny-sd2", "euler", 8, 6.0, ["a photo of a cat", LONG], None),
    ("tiny-sdxl", "euler", 8, 5.0, ["a photo of a cat", LONG], None),
    ("tiny-sdxl", "dpmpp_2m", 8, 5.0, ["a photo of a cat", "a red sofa"], ["blurry", ""]),
]


@pytest.fixture(scope="module")
def models(tiny_dirs):
    cache: dict[str, DiffusionModel] = {}

    def get(preset: str) -> DiffusionModel:
        if preset not in cache:
            cache[preset] = DiffusionModel.load(
                tiny_dirs[preset], batch_size=2, resolutions=((SIZE, SIZE),), max_steps=20
            )
        return cache[preset]

    return get


def _psnr(ours: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((ours.astype(np.float64) - ref.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.mark.parametrize(
    ("preset", "scheduler", "steps", "guidance", "prompts", "negatives"), CASES
)
def test_images_equal_diffusers(
    tiny_dirs, reference_pipeline, models, preset, scheduler, steps, guidance, prompts, negatives
):
    pipe = reference_pipeline(tiny_dirs[preset])
    pipe.scheduler = SCHEDULER_CLASSES[scheduler].from_config(pipe.scheduler.config)
    model = models(preset)
    scale = model.checkpoint.vae.scale_factor
    latents = torch.randn(
        (2, 4, SIZE // scale, SIZE // scale), generator=torch.Generator().manual_seed(7)
    )
    reference_negatives = None if negatives is None else [n or "" for n in negatives]
    if preset == "tiny-sdxl" and negatives is not None:
        reference_negatives = negatives  # "" (given) is encoded; only a missing one is zeros
    expected = pipe(
        prompts,
        negative_prompt=reference_negatives,
        num_inference_steps=steps,
        guidance_scale=guidance,
        latents=latents,
        height=SIZE,
        width=SIZE,
        output_type="np",
    ).images
    result = model.generate(
        prompts,
        negatives,
        steps=steps,
        guidance=guidance,
        scheduler=scheduler,
        latents=latents.numpy(),
        width=SIZE,
        height=SIZE,
        return_float=True,
    )
    psnr = _psnr(result.float_images, expected)
    diff = float(np.abs(result.float_images - expected).max())
    print(
        f"{preset}/{scheduler}/{steps} steps/guidance {guidance}: PSNR {psnr:.1f} dB, max abs {diff:.2e}"
    )
    assert psnr >= 40.0
    assert expected.std() > 0.02  # not a blank image
    assert result.truncated == [p == LONG for p in prompts]
    assert np.abs(result.images.astype(int) - np.round(expected * 255).astype(int)).max() <= 1
