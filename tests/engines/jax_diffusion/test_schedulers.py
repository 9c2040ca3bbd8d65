"""Every scheduler step equals diffusers' on the same inputs (timesteps, input scaling, update)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")
require("diffusers", "diffusers' schedulers are the reference")

import diffusers
import jax.numpy as jnp
import torch

from hyperbatch.engines.jax_diffusion import schedulers
from hyperbatch.engines.jax_diffusion.tiny import SD_SCHEDULER, SDXL_SCHEDULER

CLASSES = {
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}

# (name, checkpoint scheduler config); each scheduler derives its settings from it
CONFIGS = {
    "sd15": SD_SCHEDULER,
    "sdxl": SDXL_SCHEDULER,
    "sd2-v": {**SD_SCHEDULER, "prediction_type": "v_prediction", "timestep_spacing": "leading"},
    "linspace": {**SD_SCHEDULER, "timestep_spacing": "linspace", "steps_offset": 0},
    "trailing-zero-snr": {
        **SD_SCHEDULER,
        "timestep_spacing": "trailing",
        "rescale_betas_zero_snr": True,
        "prediction_type": "v_prediction",
    },
    "karras": {**SDXL_SCHEDULER, "use_karras_sigmas": True},
    "clip-sample": {**SD_SCHEDULER, "clip_sample": True, "beta_schedule": "linear"},
    "cosine-sample": {
        **SD_SCHEDULER,
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "sample",
    },
}
CASES = [
    (kind, name, steps)
    for kind in CLASSES
    for name in CONFIGS
    for steps in (4, 20)
    if not (name == "karras" and kind == "ddim")  # DDIM has no Karras sigmas
]


def _reference(kind: str, config: dict):
    cls = getattr(diffusers, CLASSES[kind])
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if kind == "dpmpp_2m" else {}
    return cls.from_config({k: v for k, v in config.items() if k != "_class_name"}, **extra)


@pytest.mark.parametrize(("kind", "config_name", "steps"), CASES)
def test_steps_equal_diffusers(kind, config_name, steps):
    config = CONFIGS[config_name]
    ref = _reference(kind, config)
    ref.set_timesteps(steps)
    plan = schedulers.plan(kind, config, steps)
    table = plan.table

    # Karras timesteps come from the sigmas: equal up to float32 rounding (torch's CPU linspace,
    # which builds the betas, rounds differently from numpy's in the last bit)
    np.testing.assert_allclose(table.t, ref.timesteps.numpy().astype(np.float32), rtol=1e-6)
    assert plan.init_sigma == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)

    rng = np.random.default_rng(steps)
    shape = (2, 4, 8, 8)
    x = rng.standard_normal(shape).astype(np.float32) * plan.init_sigma
    x0_prev = jnp.zeros(shape, jnp.float32)
    worst = 0.0
    for i, t in enumerate(ref.timesteps):
        m = rng.standard_normal(shape).astype(np.float32)
        scaled = ref.scale_model_input(torch.from_numpy(x), t).numpy()
        np.testing.assert_allclose(x * table.c_in[i], scaled, rtol=2e-6, atol=1e-6)
        expected = ref.step(torch.from_numpy(m), t, torch.from_numpy(x)).prev_sample.numpy()
        row = schedulers.StepTable(*(np.full(shape[0], col[i], np.float32) for col in table))
        ours, x0_prev = schedulers.step(row, jnp.asarray(x), jnp.asarray(m), x0_prev)
        diff = float(np.abs(np.asarray(ours) - expected).max())
        scale = max(1.0, float(np.abs(expected).max()), float(np.abs(x).max()))
        worst = max(worst, diff / scale)
        assert diff <= 2e-6 * scale, f"step {i} (t={float(t)}): max abs diff {diff:.3g}"
        x = expected  # both sides continue from the reference's sample
    print(
        f"{kind}/{config_name}/{steps}: worst step diff {worst:.2e} (relative to the sample scale)"
    )


def test_alphas_cumprod_match_diffusers():
    for config in CONFIGS.values():
        for kind in CLASSES:
            if kind == "ddim" and config.get("use_karras_sigmas"):
                continue
            ref = _reference(kind, config)
            ours = schedulers.alphas_cumprod(
                schedulers.settings(kind, config), zero_snr_floor=kind != "ddim"
            )
            np.testing.assert_allclose(ours, ref.alphas_cumprod.numpy(), rtol=2e-6, atol=1e-9)


def test_unsupported_settings_are_named():
    with pytest.raises(schedulers.UnsupportedScheduler, match="thresholding"):
        schedulers.plan("ddim", {**SD_SCHEDULER, "thresholding": True}, 10)
    with pytest.raises(schedulers.UnsupportedScheduler, match="unknown scheduler 'pndm'"):
        schedulers.plan("pndm", SD_SCHEDULER, 10)
    with pytest.raises(schedulers.UnsupportedScheduler, match="at least 1"):
        schedulers.plan("euler", SD_SCHEDULER, 0)


def test_padding_steps_leave_the_sample_alone():
    plan = schedulers.plan("dpmpp_2m", SD_SCHEDULER, 3)
    table = schedulers.padded(plan, 6)
    assert len(table.t) == 6
    x = jnp.ones((1, 4, 2, 2))
    row = schedulers.StepTable(*(np.full(1, col[4], np.float32) for col in table))
    out, _ = schedulers.step(row, x, jnp.full_like(x, 7.0), jnp.full_like(x, 3.0))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
