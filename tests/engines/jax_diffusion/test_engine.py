"""The image engine behind ``engine: jax``, ``task: image`` on the tiny SD checkpoint: requests
checked against what the programs serve, n images per request with seeds seed + k, the model's
own images, charges that add up, and no compilation after warmup."""

from __future__ import annotations

import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")

from hyperbatch.engines.base import EngineConfig
from hyperbatch.engines.jax_diffusion.engine import JaxDiffusionEngine
from hyperbatch.engines.registry import engine_class, option_problems
from hyperbatch.schemas.records import Charge, ErrorCode, ImageParams, Request


def image(rid: str, prompt: str = "a red fox", **params) -> Request:
    fields = {"width": 32, "height": 32, "steps": 2, "guidance_scale": 7.5, "scheduler": "euler",
              **params}  # fmt: skip
    return Request(rid, prompt=prompt, image=ImageParams(**fields))


@pytest.fixture(scope="module")
def engine(tiny_dirs):
    config = EngineConfig(
        model=tiny_dirs["tiny-sd"],
        batch_size=2,
        options={"sizes": ["32x32", "32x48"], "max_steps": 4},
    )
    e = JaxDiffusionEngine(config)
    e.warmup()
    return e


def test_the_registry_serves_image_jobs_with_this_engine():
    assert engine_class("jax", "image") is JaxDiffusionEngine
    assert option_problems("jax", {"sizes": ["32x30"]}, "image") == [
        'engine_options.sizes: must be a non-empty list of sizes like "512x512" (multiples of 8),'
        " got ['32x30'] (image sizes the job serves, one compiled program each (default: the "
        "job's image.size))"
    ]


def test_requests_get_the_models_images_and_bad_ones_fail_alone(engine):
    assert engine.stats().compilations == 2
    requests = [
        image("two", seed=5, n=2),
        image("odd", width=40, height=40),
        image("long", steps=5),
        image("tall", "a waterfall", width=32, height=48, seed=9, steps=3, scheduler="ddim"),
        image("unseeded", negative_prompt="blurry"),
    ]
    before = engine.stats()
    results = engine.generate(requests)
    assert [r.record_id for r in results] == [r.record_id for r in requests]
    by = {r.record_id: r for r in results}
    assert by["odd"].error_code is ErrorCode.INVALID_SIZE
    assert "serves 32x32, 32x48" in by["odd"].error_message
    assert by["long"].error_code is ErrorCode.INVALID_STEPS
    assert [img.seed for img in by["two"].images] == [5, 6]
    (tall,) = by["tall"].images
    assert (tall.width, tall.height, tall.steps, tall.scheduler) == (32, 48, 3, "ddim")
    assert tall.pixels.shape == (48, 32, 3)

    # the same images as the model gives for those seeds, whatever batch they rode in
    direct = engine.model.generate(["a red fox"] * 2, seeds=[5, 6], steps=2, width=32, height=32)
    np.testing.assert_array_equal(np.stack([i.pixels for i in by["two"].images]), direct.images)
    (drawn,) = by["unseeded"].images
    again = engine.model.generate(
        ["a red fox"], ["blurry"], seeds=[drawn.seed], steps=2, width=32, height=32
    )
    np.testing.assert_array_equal(drawn.pixels, again.images[0])

    delta = engine.stats() - before
    charged = sum((r.charge for r in results), Charge())
    assert delta.busy_seconds == pytest.approx(charged.busy_seconds)
    assert delta.computed_token_slots == pytest.approx(charged.computed_token_slots)
    assert delta.useful_token_slots == charged.useful_token_slots == 2 * 2 + 3 + 2
    # 32x32: [unseeded(2), two(2)] [two(2), idle] -> 2 batches of 2 rows x 2 steps; 32x48: 1 x 3
    assert delta.computed_token_slots == 2 * 2 * 2 + 2 * 3
    assert (delta.records, delta.results, delta.errors, delta.images) == (5, 3, 2, 4)
    assert engine.stats().compilations == 2
