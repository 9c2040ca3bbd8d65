"""Our CLIP tokenizer gives transformers' CLIPTokenizer ids from the same vocab.json/merges.txt."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.optional import require

require("jax", "the JAX engine")
require("transformers", "transformers' CLIPTokenizer is the reference")

import transformers

from hyperbatch.engines.jax_diffusion.tokenizer import ClipTokenizer

TEXTS = [
    "a photo of a cat",
    "Hello!! World!  tabs\tand\nnewlines",
    "",
    "the astronaut's horse isn't 42 years old ",
    "ünïcödé café 東京 emoji 🚀",
    "<|endoftext|> inside a prompt",
    "x!y!z, (masterpiece:1.2), [blurry]",
    "a " * 100,
    "photo" * 40,
]


@pytest.mark.parametrize("folder", ["tokenizer", "tokenizer_2"])
def test_ids_equal_transformers(tiny_dirs, folder):
    path = os.path.join(tiny_dirs["tiny-sdxl"], folder)  # tokenizer_2 pads with "!" as SDXL's
    ref = transformers.CLIPTokenizer.from_pretrained(path)
    ours = ClipTokenizer.from_dir(path)
    expected = ref(
        TEXTS,
        padding="max_length",
        max_length=ref.model_max_length,
        truncation=True,
        return_tensors="np",
    ).input_ids
    ids, truncated = ours.encode(TEXTS)
    np.testing.assert_array_equal(ids, expected)
    untruncated = [len(x) for x in ref(TEXTS).input_ids]
    assert truncated.tolist() == [n > ref.model_max_length for n in untruncated]
    assert truncated.tolist()[-2:] == [True, True]


def test_missing_vocabulary_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vocab\.json is missing"):
        ClipTokenizer.from_dir(str(tmp_path))
