"""Static shapes and per-request determinism of ``DiffusionModel.generate``: one compilation per
declared resolution whatever the requests hold; a seed's image does not depend on the batch or
position it lands in; padding, truncation and request errors are reported."""

from __future__ import annotations

import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")

from hyperbatch.engines.jax_diffusion.generation import (
    DiffusionModel,
    InvalidRequest,
    UnservedSize,
)


@pytest.fixture(scope="module")
def model(tiny_dirs) -> DiffusionModel:
    return DiffusionModel.load(
        tiny_dirs["tiny-sd"], batch_size=4, resolutions=((32, 32), (48, 32)), max_steps=12
    )


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def test_compilations_never_depend_on_the_data(tiny_dirs):
    model = DiffusionModel.load(
        tiny_dirs["tiny-sd"], batch_size=2, resolutions=((32, 32), (48, 32)), max_steps=12
    )
    assert model.compilations == 0
    model.warmup()
    assert model.compilations == 2  # one per declared resolution
    requests = [
        dict(prompts=["a cat"], steps=1, guidance=7.5, scheduler="euler"),
        dict(prompts=["a dog " * 40, "x", "y"], steps=12, guidance=0.0, scheduler="ddim"),
        dict(
            prompts=["a", "b", "c", "d", "e"],
            steps=[3, 7, 12, 1, 5],
            guidance=[1, 2, 3, 4, 5],
            scheduler=["euler", "ddim", "dpmpp_2m", "dpmpp_2m", "euler"],
        ),
        dict(prompts=["wide"], width=48, height=32, steps=4, scheduler="dpmpp_2m"),
        dict(
            prompts=["given latents", "too"], steps=2, latents=np.ones((2, 4, 16, 16), np.float32)
        ),
    ]
    for kwargs in requests:
        result = model.generate(
            negative_prompts="blurry", seeds=list(range(len(kwargs["prompts"]))), **kwargs
        )
        assert result.images.shape[0] == len(kwargs["prompts"])
        assert result.timings.compile_s == 0.0
    assert model.compilations == 2


def test_a_seed_gives_the_same_image_in_any_batch_or_position(model):
    alone = model.generate(
        ["a cat", "a dog", "a red sofa"], seeds=[11, 22, 33], steps=5, width=32, height=32
    )
    # the same requests again, shuffled among others over two batches of 4
    mixed = model.generate(
        ["noise", "a red sofa", "more noise", "a cat", "a dog", "x"],
        seeds=[5, 33, 6, 11, 22, 7],
        steps=[3, 5, 8, 5, 5, 2],
        guidance=[3.0, 7.5, 1.0, 7.5, 7.5, 9.0],
        scheduler=["ddim", "euler", "dpmpp_2m", "euler", "euler", "ddim"],
        width=32,
        height=32,
    )
    pairs = [(0, 3), (1, 4), (2, 1)]  # (index alone, index mixed)
    diffs = [_max_diff(alone.images[i], mixed.images[j]) for i, j in pairs]
    print(f"max |diff| per image across batches/positions: {diffs}")
    assert diffs == [0, 0, 0]
    # different seeds do make different images
    assert _max_diff(alone.images[0], alone.images[1]) > 0


def test_drawn_seeds_are_returned_and_reproduce(model):
    first = model.generate(["a cat", "a cat"], steps=3, width=32, height=32)
    assert len(set(first.seeds)) == 2
    assert all(0 <= s < 2**63 for s in first.seeds)
    again = model.generate(["a cat", "a cat"], seeds=first.seeds, steps=3, width=32, height=32)
    np.testing.assert_array_equal(first.images, again.images)


def test_padding_truncation_and_order(model):
    long = "a very long prompt about a lighthouse by the sea " * 10
    result = model.generate(
        ["a", long, "c", "d", "e"], ["", "", long, None, None], steps=2, width=48, height=32
    )
    assert result.images.shape == (5, 32, 48, 3)
    assert result.images.dtype == np.uint8
    assert (result.batches, result.padding_slots) == (2, 3)
    assert result.truncated == [False, True, False, False, False]
    assert result.negative_truncated == [False, False, True, False, False]


def test_request_errors_say_what_is_served(model):
    with pytest.raises(UnservedSize, match=r"64x64 is not served; this model serves 32x32, 48x32"):
        model.generate(["a"], width=64, height=64)
    with pytest.raises(InvalidRequest, match=r"steps 13 is outside \[1, 12\]"):
        model.generate(["a"], steps=13, width=32, height=32)
    with pytest.raises(InvalidRequest, match=r"guidance -1\.0"):
        model.generate(["a"], steps=2, guidance=-1.0, width=32, height=32)
    with pytest.raises(InvalidRequest, match="scheduler 'pndm'"):
        model.generate(["a"], steps=2, scheduler="pndm", width=32, height=32)
    with pytest.raises(InvalidRequest, match="seed"):
        model.generate(["a"], steps=2, seeds=[2**64], width=32, height=32)
    with pytest.raises(InvalidRequest, match="seeds has 1 entries for 2 prompts"):
        model.generate(["a", "b"], seeds=[1], width=32, height=32)


def test_options_are_validated(tiny_dirs):
    with pytest.raises(ValueError, match="multiples of 8"):
        DiffusionModel.load(tiny_dirs["tiny-sd"], resolutions=((30, 32),))
    with pytest.raises(ValueError, match="dtype 'float8'"):
        DiffusionModel.load(tiny_dirs["tiny-sd"], dtype="float8")
    with pytest.raises(TypeError):
        DiffusionModel.load(tiny_dirs["tiny-sd"], not_an_option=1)


def test_bfloat16_stays_close_to_float32(tiny_dirs, model):
    low = DiffusionModel.load(
        tiny_dirs["tiny-sd"], dtype="bfloat16", batch_size=2, resolutions=((32, 32),), max_steps=4
    )
    kwargs = dict(seeds=[1, 2], steps=4, width=32, height=32, return_float=True)
    ours = low.generate(["a cat", "a dog"], **kwargs).float_images
    full = model.generate(["a cat", "a dog"], **kwargs).float_images
    mse = float(np.mean((ours - full) ** 2))
    psnr = 10 * np.log10(1 / mse)
    print(f"bfloat16 vs float32: PSNR {psnr:.1f} dB")
    assert np.isfinite(ours).all()
    assert psnr > 25
