"""Image inputs through the whole pipeline with the fake engine: ``input_format: images`` over
local and gs:// globs, image parts in OpenAI and JSONL chat lines, and every way reading an
image can fail -- each an error record with its stable code, the rest of the job served.

The fake engine writes an image as ``<image:WxH:#rrggbb>`` (size as shown, mean colour), so the
results say which image arrived, upright and whole."""

from __future__ import annotations

import io
import os

import pytest
from PIL import Image

from hyperbatch import storage
from hyperbatch.jobs import spec as job_spec
from hyperbatch.runners import pipeline
from hyperbatch.runners.progress import PROGRESS
from tests.helpers import images as pics
from tests.records import jsonl
from tests.runners.test_pipeline import outputs


def images_spec(input_glob: str, output: str, **fields):
    data = {"name": "caption", "task": "chat", "input": input_glob, "input_format": "images",
            "prompt": "describe this photo", "output": output, "model": "fake", "engine": "fake",
            "records_per_shard": 3, "max_error_rate": 1.0, **fields}  # fmt: skip
    return job_spec.validate(data)


def image_line(custom_id: str, url: str, text: str = "what is it", **part) -> dict:
    content = [{"type": "image_url", "image_url": {"url": url, **part}},
               {"type": "text", "text": text}]  # fmt: skip
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": content}], "max_tokens": 50}}  # fmt: skip


def write_folder(root) -> dict[str, str]:
    """A folder of good and bad images; returns {relative path: expected code or word}."""
    os.makedirs(root / "2024", exist_ok=True)
    want = {}
    for i, (w, h) in enumerate([(40, 30), (17, 64), (96, 96), (5, 7)]):
        im = pics.drawn(w, h, seed=i, text="hi" if i == 2 else None)
        fmt, ext = [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"), ("PNG", "png")][i]
        kw = {"quality": 95} if fmt == "JPEG" else ({"lossless": True} if fmt == "WEBP" else {})
        data = pics.encode(im, fmt, **kw)
        name = f"2024/img{i}.{ext}"
        (root / name).write_bytes(data)
        decoded = Image.open(io.BytesIO(data))
        want[name] = f"<image:{w}x{h}:{pics.mean_hex(decoded)}>"
    (root / "rotated.jpg").write_bytes(pics.exif_rotated(40, 20))
    want["rotated.jpg"] = "<image:20x40:"
    (root / "half.png").write_bytes(pics.truncated(pics.encode(pics.drawn(64, 64, 3), "PNG")))
    want["half.png"] = "invalid_image"
    (root / "notes.jpg").write_bytes(b"this is not a picture at all")
    want["notes.jpg"] = "invalid_image"
    (root / "anim.gif").write_bytes(pics.gif())
    want["anim.gif"] = "unsupported_image_type"
    (root / "bomb.png").write_bytes(pics.bomb_png())
    want["bomb.png"] = "image_too_large"
    return want


def check_outputs(spec, want: dict[str, str], source_prefix: str) -> dict:
    results, errors = outputs(spec.job_dir())
    served = {r["id"]: r for r in results}
    failed = {e["record_id"]: e["code"] for e in errors}
    assert len(served) + len(failed) == len(want)
    for rid, expected in want.items():
        if expected.startswith("<image"):
            r = served[rid]
            assert expected in r["text"]
            assert r["source_uri"] == source_prefix + rid
            assert "photo this describe" in r["text"]  # the job's prompt, after the image
            assert r["usage"]["prompt_tokens"] > 0
        else:
            assert failed[rid] == expected, rid
    return {"results": results, "errors": errors}


def test_an_image_glob_is_one_request_per_image_with_its_errors(tmp_path):
    want = write_folder(tmp_path / "photos")
    spec = images_spec(str(tmp_path / "photos" / "**"), str(tmp_path / "out"))
    m = pipeline.run(spec)
    check_outputs(spec, want, str(tmp_path / "photos") + "/")
    n_ok = sum(1 for v in want.values() if v.startswith("<image"))
    assert m["records_in"] == len(want) == m["results"] + m["errors"]
    assert m["results"] == n_ok
    assert m["input_images"] == n_ok
    assert m["image_tokens"] == n_ok  # the fake engine: one token per image
    assert m["errors_by_code"] == {"invalid_image": 2, "unsupported_image_type": 1,
                                   "image_too_large": 1}  # fmt: skip

    # a rerun resumes: every shard committed, nothing served twice
    PROGRESS.reset()
    again = pipeline.run(spec)
    assert again["results"] == n_ok
    assert PROGRESS.snapshot().shards_resumed == len(again["shards"]) == 3
    results, _ = outputs(spec.job_dir())
    assert len(results) == n_ok


def test_an_image_glob_on_cloud_storage(gcs_bucket):
    data = pics.encode(pics.solid(12, 8, (10, 20, 30)), "PNG")
    storage.write_bytes(f"{gcs_bucket}/photos/a/one.png", data)
    storage.write_bytes(f"{gcs_bucket}/photos/b/two.png", data)
    storage.write_bytes(f"{gcs_bucket}/photos/b/skip.txt", b"not matched")
    spec = images_spec(f"{gcs_bucket}/photos/**.png", f"{gcs_bucket}/jobs",
                       system="You caption photos.")  # fmt: skip
    m = pipeline.run(spec)
    results, errors = outputs(spec.job_dir())
    assert errors == []
    assert sorted(r["id"] for r in results) == ["a/one.png", "b/two.png"]
    assert {r["source_uri"] for r in results} == {f"{gcs_bucket}/photos/a/one.png",
                                                  f"{gcs_bucket}/photos/b/two.png"}  # fmt: skip
    assert all("<image:12x8:#0a141e>" in r["text"] for r in results)
    assert m["input_images"] == 2


def test_image_parts_in_openai_lines(tmp_path, gcs_bucket):
    red = pics.encode(pics.solid(10, 6, (255, 0, 0)), "PNG")
    blue = pics.encode(pics.solid(6, 10, (0, 0, 255)), "JPEG", quality=100)
    storage.write_bytes(f"{gcs_bucket}/img/blue.jpg", blue)
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "red.png").write_bytes(red)
    (tmp_path / "secret.png").write_bytes(red)
    os.symlink(tmp_path / "secret.png", allowed / "link.png")
    lines = [
        image_line("data", pics.data_url(red)),
        image_line("gcs", f"{gcs_bucket}/img/blue.jpg"),
        image_line("local", str(allowed / "red.png")),
        image_line("relative", "red.png"),
        image_line("file-url", f"file://{allowed / 'red.png'}", detail="low"),
        image_line("escape", str(allowed / ".." / "secret.png")),
        image_line("symlink", str(allowed / "link.png")),
        image_line("web", "https://example.com/cat.png"),
        image_line("missing", f"{gcs_bucket}/img/nope.jpg"),
        image_line("text-data", "data:text/plain;base64,aGVsbG8="),
        image_line("bad-b64", "data:image/png;base64,@@@"),
        {**image_line("two", pics.data_url(red)),
         "body": {"messages": [{"role": "user", "content": [
             {"type": "image_url", "image_url": {"url": pics.data_url(red)}},
             {"type": "text", "text": "and"},
             {"type": "image_url", "image_url": {"url": f"{gcs_bucket}/img/blue.jpg"}}]}]}},
        {**image_line("audio", "x"), "body": {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {}}]}]}},
    ]  # fmt: skip
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    spec = job_spec.validate({
        "name": "parts", "task": "chat", "input": str(tmp_path / "in.jsonl"),
        "input_format": "openai", "output": str(tmp_path / "out"), "model": "fake",
        "engine": "fake", "image_root": str(allowed), "max_error_rate": 1.0,
    })  # fmt: skip
    m = pipeline.run(spec)
    results, errors = outputs(spec.job_dir())
    text = {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"]
            for r in results}  # fmt: skip
    codes = {e["custom_id"]: e["error"]["code"] for e in errors}
    assert text["data"] == "it is what <image:10x6:#ff0000>"
    assert "<image:6x10:#0000fe>" in text["gcs"] or "<image:6x10:#0000ff>" in text["gcs"]
    for rid in ("local", "relative", "file-url"):
        assert "<image:10x6:#ff0000>" in text[rid]
    assert text["two"].startswith("<image:6x10:")
    assert text["two"].endswith("and <image:10x6:#ff0000>")
    assert codes == {
        "escape": "image_not_allowed", "symlink": "image_not_allowed", "web": "image_not_allowed",
        "missing": "image_not_found", "text-data": "invalid_image", "bad-b64": "invalid_image",
        "audio": "invalid_record",
    }  # fmt: skip
    assert m["input_images"] == 7  # five records with one, "two" with two
    assert (
        "outside image_root"
        in next(e for e in errors if e["custom_id"] == "escape")["error"]["message"]
    )


def test_local_images_need_an_image_root_and_text_engines_refuse_images(tmp_path):
    red = pics.encode(pics.solid(4, 4, (255, 0, 0)), "PNG")
    (tmp_path / "red.png").write_bytes(red)
    lines = [
        {"id": "local", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": str(tmp_path / "red.png")}}]}]},
        {"id": "inline", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": pics.data_url(red)}},
            {"type": "text", "text": "hello"}]}]},
        {"id": "text", "messages": [{"role": "user", "content": "only words"}]},
    ]  # fmt: skip
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    base = {"name": "noroot", "task": "chat", "input": str(tmp_path / "in.jsonl"),
            "input_format": "jsonl", "output": str(tmp_path / "out"), "model": "fake",
            "engine": "fake", "max_error_rate": 1.0}  # fmt: skip
    spec = job_spec.validate(base)
    pipeline.run(spec)
    results, errors = outputs(spec.job_dir())
    assert {r["id"]: r["text"] for r in results} == {
        "inline": "hello <image:4x4:#ff0000>", "text": "words only"}  # fmt: skip
    assert [(e["record_id"], e["code"]) for e in errors] == [("local", "image_not_allowed")]
    assert "image_root" in errors[0]["message"]

    text_only = job_spec.validate({**base, "name": "textonly", "engine_options": {"max_images": 0}})
    pipeline.run(text_only)
    results, errors = outputs(text_only.job_dir())
    assert [r["id"] for r in results] == ["text"]
    assert sorted((e["record_id"], e["code"]) for e in errors) == [
        ("inline", "too_many_images"), ("local", "image_not_allowed")]  # fmt: skip
    assert "reads text only" in next(e for e in errors if e["record_id"] == "inline")["message"]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"prompt": None}, "prompt: input_format images needs"),
        ({"task": "completion"}, "input_format: images are captioned"),
        ({"engine": "jax", "model": "smollm2-135m-instruct"}, "engine: the jax engine serves text"),
    ],
)
def test_image_specs_are_checked_before_anything_runs(tmp_path, fields, problem):
    data = {"name": "bad", "task": "chat", "input": str(tmp_path / "*.png"),
            "input_format": "images", "prompt": "describe", "output": str(tmp_path / "out"),
            "model": "fake", "engine": "fake", **fields}  # fmt: skip
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(job_spec.SpecError) as e:
        job_spec.validate(data, check_resources=False)
    assert any(p.startswith(problem) for p in e.value.problems), e.value.problems


def test_a_job_prompt_belongs_to_image_globs(tmp_path):
    with pytest.raises(job_spec.SpecError) as e:
        job_spec.validate({"name": "x", "task": "chat", "input": "a.jsonl", "input_format": "openai",
                           "output": str(tmp_path), "model": "fake", "engine": "fake",
                           "prompt": "hi"}, check_resources=False)  # fmt: skip
    assert any("only input_format images takes" in p for p in e.value.problems)
