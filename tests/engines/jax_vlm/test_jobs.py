"""Image jobs end to end on our jax-vlm engine (the tiny random-weight Idefics3): an image glob
and Vertex Gemini lines through the pipeline, each result's image tokens those of its picture,
and the manifest's ``input_images`` / ``image_tokens`` the exact sums of the results'."""

from __future__ import annotations

import base64

from hyperbatch.engines.jax_vlm import processor
from hyperbatch.engines.jax_vlm.engine import load_checkpoint
from hyperbatch.jobs import spec as job_spec
from hyperbatch.runners import engine_adapter, pipeline
from tests.helpers import images as pics
from tests.optional import require
from tests.records import jsonl
from tests.runners.test_pipeline import outputs

require("jax", "the JAX engine")
require("transformers", "the tiny checkpoint is built with transformers")

SIZES = [(90, 50), (20, 30), (33, 140), (64, 64)]


def image_tokens(cfg, w: int, h: int) -> int:
    return processor.n_tiles(*processor.tiles_of(w, h, cfg.processor)) * cfg.tokens_per_tile


def spec_for(tiny_vlm, tmp_path, **fields):
    return job_spec.validate({
        "task": "chat", "output": str(tmp_path / "out"), "model": tiny_vlm, "engine": "jax-vlm",
        "accelerator": "cpu", "batch_size": 4, "max_seq_len": 256, "records_per_shard": 2,
        "sampling": {"max_tokens": 4, "temperature": 0}, "max_error_rate": 1.0,
        "engine_options": {"vision_batch": 4}, **fields,
    })  # fmt: skip


def test_an_image_glob_and_gemini_lines_on_the_real_engine(tiny_vlm, tmp_path):
    cfg, _, _ = load_checkpoint(tiny_vlm)
    photos = tmp_path / "photos"
    photos.mkdir()
    data = {}
    for i, (w, h) in enumerate(SIZES):
        data[f"p{i}.png"] = pics.encode(pics.drawn(w, h, seed=i), "PNG")
        (photos / f"p{i}.png").write_bytes(data[f"p{i}.png"])
    (photos / "broken.png").write_bytes(pics.truncated(data["p0.png"]))
    try:
        spec = spec_for(tiny_vlm, tmp_path, name="vlm-glob", input=str(photos / "*.png"),
                        input_format="images", prompt="Describe it.")  # fmt: skip
        m = pipeline.run(spec)
        results, errors = outputs(spec.job_dir())
        assert [(e["record_id"], e["code"]) for e in errors] == [("broken.png", "invalid_image")]
        assert sorted(r["id"] for r in results) == [f"p{i}.png" for i in range(4)]
        for r in results:
            w, h = SIZES[int(r["id"][1])]
            assert r["usage"]["image_tokens"] == image_tokens(cfg, w, h)
            assert r["usage"]["prompt_tokens"] > r["usage"]["image_tokens"]
            assert r["usage"]["completion_tokens"] == 4
        assert m["input_images"] == 4
        assert m["image_tokens"] == sum(r["usage"]["image_tokens"] for r in results)
        assert m["prompt_tokens"] == sum(r["usage"]["prompt_tokens"] for r in results)

        inline = base64.b64encode(data["p2.png"]).decode()
        lines = [
            {"request": {"contents": [{"role": "user", "parts": [
                {"inlineData": {"mimeType": "image/png", "data": inline}}, {"text": "What?"}]}]}},
            {"request": {"contents": [{"role": "user", "parts": [{"text": "Say hi."}]}],
                         "generationConfig": {"maxOutputTokens": 3}}},
        ]  # fmt: skip
        (tmp_path / "gemini.jsonl").write_bytes(jsonl(lines))
        spec = spec_for(tiny_vlm, tmp_path, name="vlm-gemini", input_format="vertex",
                        input=str(tmp_path / "gemini.jsonl"))  # fmt: skip
        m = pipeline.run(spec)
        results, errors = outputs(spec.job_dir())
        assert errors == []
        assert [r["request"] for r in results] == [line["request"] for line in lines]
        usage = [r["response"]["usageMetadata"] for r in results]
        n = image_tokens(cfg, *SIZES[2])
        assert usage[0]["promptTokensDetails"][1] == {"modality": "IMAGE", "tokenCount": n}
        assert [d["modality"] for d in usage[1]["promptTokensDetails"]] == ["TEXT"]
        assert usage[1]["candidatesTokenCount"] <= 3
        answer = results[0]["response"]["candidates"][0]
        assert answer["content"]["role"] == "model"
        assert answer["finishReason"] in ("STOP", "MAX_TOKENS")
        assert (m["input_images"], m["image_tokens"]) == (1, n)
    finally:
        engine_adapter.close_engines()
