"""The jax-vlm engine against transformers on a tiny random-weight Idefics3 checkpoint (fp32):
image preprocessing, the vision tower, logits and greedy completions; per-request image errors;
compilations independent of the data; a text checkpoint refused."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest

from hyperbatch.engines.base import EngineConfig
from hyperbatch.schemas.images import ImageInput
from hyperbatch.schemas.records import ErrorCode, Request, SamplingParams
from tests.helpers import images as pics
from tests.optional import require

require("jax", "the JAX engine")
torch = require("torch", "the reference implementation (transformers on PyTorch)")
require("transformers", "the reference implementation")

from PIL import Image

from hyperbatch.engines.attention import AttentionImpl
from hyperbatch.engines.jax_vlm import processor, vision
from hyperbatch.engines.jax_vlm.engine import JaxVLMEngine, load_checkpoint

SIZES = [(20, 30), (90, 50), (33, 140), (64, 64), (7, 5)]
DEGENERATE = [(1, 1), (1, 300), (300, 1), (1000, 3), (65, 64)]  # slivers and off-by-one tiles
PROMPT = "Describe this image."


@pytest.fixture(scope="module")
def reference(tiny_vlm):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_vlm)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vlm, dtype=torch.float32).eval()
    return proc, model


@pytest.fixture(scope="module")
def engine(tiny_vlm):
    engine = JaxVLMEngine(EngineConfig(model=tiny_vlm, batch_size=4, max_seq_len=256,
                                       options={"vision_batch": 4}))  # fmt: skip
    engine.warmup()
    yield engine
    engine.close()


def image(w: int, h: int, seed: int) -> tuple[ImageInput, Image.Image]:
    data = pics.encode(pics.drawn(w, h, seed=seed, text="7" if w > 40 else None), "PNG")
    return ImageInput(f"img-{seed}.png").probed(data), Image.open(io.BytesIO(data)).convert("RGB")


def chat(rid: str, images: list[ImageInput], texts: list[str], system: str | None = None,
         max_tokens: int = 8) -> Request:  # fmt: skip
    parts = tuple({"type": "image", "image": i} for i in range(len(images)))
    parts += tuple({"type": "text", "text": t} for t in texts)
    messages = ({"role": "system", "content": system},) if system else ()
    messages += ({"role": "user", "content": parts},)
    return Request(rid, SamplingParams(max_tokens=max_tokens, temperature=0.0),
                   messages=messages, input_images=tuple(images))  # fmt: skip


def hf_inputs(proc, request: Request, pil_images: list[Image.Image]):
    messages = []
    for m in request.messages:
        c = m["content"]
        parts = [{"type": "text", "text": c}] if isinstance(c, str) else [
            {"type": "image"} if p["type"] == "image" else {"type": "text", "text": p["text"]}
            for p in c
        ]  # fmt: skip
        messages.append({"role": m["role"], "content": parts})
    text = proc.apply_chat_template(messages, add_generation_prompt=True)
    return proc(text=text, images=pil_images or None, return_tensors="pt")


@pytest.mark.parametrize("longest_edge", [None, 32])
def test_preprocessing_equals_transformers(tiny_vlm, reference, longest_edge):
    proc, _ = reference
    cfg, _, _ = load_checkpoint(tiny_vlm)
    kwargs = {}
    if longest_edge is not None:  # the engine option, and the processor's own size override
        cfg = dataclasses.replace(cfg, processor=dataclasses.replace(cfg.processor,
                                                                      longest_edge=longest_edge))  # fmt: skip
        kwargs["size"] = {"longest_edge": longest_edge}
    for i, (w, h) in enumerate(SIZES + DEGENERATE):
        _, pil = image(w, h, i)
        ours, rows, cols = processor.preprocess(np.asarray(pil), cfg.processor)
        ref = proc.image_processor(images=[pil], return_tensors="np", return_row_col_info=True,
                                   **kwargs)  # fmt: skip
        assert (rows, cols) == (ref["rows"][0][0], ref["cols"][0][0])
        assert (rows, cols) == processor.tiles_of(w, h, cfg.processor)
        assert ours.shape == ref["pixel_values"][0].shape
        np.testing.assert_allclose(ours, ref["pixel_values"][0], atol=1e-5, rtol=0)
    if longest_edge == 32:
        assert processor.tiles_of(90, 50, cfg.processor) == (0, 0)  # one tile: no split


@pytest.mark.parametrize("kind", ["cpu", "xla"])  # the CPU's form and the accelerators'
def test_vision_tower_and_connector_equal_transformers(tiny_vlm, reference, kind):
    _, model = reference
    cfg, _, tensors = load_checkpoint(tiny_vlm)
    tiles = np.concatenate([processor.preprocess(np.asarray(image(w, h, i)[1]), cfg.processor)[0]
                            for i, (w, h) in enumerate(SIZES[:2])])  # fmt: skip
    params = vision.to_params(cfg, tensors, np.float32)
    ours = np.asarray(vision.encode(params, tiles, cfg=cfg, impl=AttentionImpl(kind)))
    with torch.no_grad():
        ref = model.model.get_image_features(pixel_values=torch.tensor(tiles)[None]).pooler_output
    assert ours.shape == tuple(ref.shape) == (len(tiles), cfg.tokens_per_tile, 128)
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5, rtol=0)


def test_prompt_logits_equal_transformers(engine, reference):
    """The prompt's embeddings (text rows + image features, as a prefill call builds them)
    through the text engine's model: every position's logits within 1e-4."""
    import jax.numpy as jnp

    from hyperbatch.engines.jax_llm.model import forward_logits

    proc, model = reference
    (a, pa), (b, pb) = image(90, 50, 1), image(33, 140, 2)
    req = chat("x", [a, b], ["What differs?"], system="Be brief.")
    ids = engine.prompt_tokens(req)
    inputs = hf_inputs(proc, req, [pa, pb])
    assert ids == inputs["input_ids"][0].tolist()
    feats = []
    for im in (a, b):
        tiles = processor.preprocess(im.pixels(), engine.vlm.processor)[0]
        feats.append(engine._encode(tiles).reshape(-1, 128))
    feats_all = np.concatenate(feats)
    ids_a = np.asarray(ids)
    is_image = ids_a == engine.vlm.image_token_id
    assert is_image.sum() == len(feats_all)
    params = engine.programs.params
    table = np.asarray(params["embed"])[ids_a]
    table[is_image] = feats_all
    tokens = jnp.arange(len(ids))[None]
    ours = np.asarray(forward_logits({**params, "embed": jnp.asarray(table)}, tokens,
                                     cfg=engine.cfg))[0]  # fmt: skip
    with torch.no_grad():
        ref = model(**inputs).logits[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_greedy_completions_equal_transformers_in_one_batch(engine, reference):
    proc, model = reference
    pics_ = [image(w, h, i) for i, (w, h) in enumerate(SIZES)]
    requests = [
        (chat("one", [pics_[0][0]], [PROMPT]), [pics_[0][1]]),
        (chat("two", [pics_[1][0], pics_[2][0]], ["Compare them."]), [pics_[1][1], pics_[2][1]]),
        (chat("sys", [pics_[3][0]], [PROMPT], system="You label photos."), [pics_[3][1]]),
        (chat("tiny", [pics_[4][0]], ["And this one?"], max_tokens=12), [pics_[4][1]]),
        (chat("text", [], ["No picture here, just say hi."]), []),
    ]
    compiled = engine.compilations()
    results = engine.generate([r for r, _ in requests])  # 5 requests, 4 slots: a refill too
    assert engine.compilations() == compiled  # nothing compiled for this data
    for (req, pil), res in zip(requests, results, strict=True):
        assert res.ok, res.error_message
        inputs = hf_inputs(proc, req, pil)
        out = model.generate(**inputs, max_new_tokens=req.sampling.max_tokens, do_sample=False)
        want = out[0, inputs["input_ids"].shape[1] :].tolist()
        eos = engine.info.eos_token_ids
        if want and want[-1] in eos:  # we report the text before the EOS, not the EOS
            want = want[: want.index(want[-1])]
        assert list(res.token_ids[: len(want)]) == want, req.record_id
        n_image = int((inputs["input_ids"][0] == engine.vlm.image_token_id).sum())
        assert res.usage.image_tokens == n_image
        assert res.usage.prompt_tokens == inputs["input_ids"].shape[1]


def test_a_broken_image_fails_its_request_only(engine):
    good, _ = image(40, 30, 5)
    data = pics.encode(pics.drawn(60, 60, 6), "PNG")
    broken = dataclasses.replace(ImageInput("half.png").probed(data), data=data[: len(data) // 2])
    results = engine.generate([chat("ok", [good], [PROMPT]), chat("bad", [broken], [PROMPT])])
    assert results[0].ok
    assert results[1].error_code == ErrorCode.INVALID_IMAGE
    assert "half.png" in results[1].error_message
    assert engine.info.max_images == 4


def test_a_text_checkpoint_is_refused_and_options_are_the_engines_own(engine, tmp_path):
    """The constructor is the text engine's with its checkpoint hook overridden: a text model
    is refused with what to use instead; the options parsed are JaxVLMOptions."""
    from hyperbatch.engines.jax_vlm.config import UnsupportedModel
    from hyperbatch.engines.jax_vlm.options import JaxVLMOptions
    from tests.helpers.tiny_models import tiny_llama_dir

    assert isinstance(engine.options, JaxVLMOptions)
    assert engine.vision_batch == 4
    text = tiny_llama_dir(str(tmp_path / "t"), "smollm2")
    with pytest.raises(UnsupportedModel, match="engine jax"):
        JaxVLMEngine(EngineConfig(model=text, batch_size=2, max_seq_len=64))


def test_the_bucketed_prefill_path_gives_the_same_answers(tiny_vlm, engine):
    """``attention: xla`` (the TPU/GPU path: prefill by length buckets, not packed) injects the
    image features the same way."""
    xla = JaxVLMEngine(EngineConfig(model=tiny_vlm, batch_size=2, max_seq_len=256,
                                    options={"attention": "xla", "vision_batch": 4}))  # fmt: skip
    try:
        assert not xla.packed
        xla.warmup()
        (a, _), (b, _) = image(90, 50, 1), image(20, 30, 0)
        requests = [chat("a", [a], [PROMPT]), chat("b", [a, b], ["Compare them."])]
        ours = [r.token_ids for r in xla.generate(requests)]
        assert ours == [r.token_ids for r in engine.generate(requests)]
    finally:
        xla.close()
