"""Image inputs through the whole pipeline with the fake engine: ``input_format: images`` over
local and gs:// globs, image parts in OpenAI and JSONL chat lines, and every way reading an
image can fail -- each an error record with its stable code, the rest of the job served; resume
after a crash, duplicate ids and exact counts; reading bounded in threads and bytes.

The fake engine writes an image as ``<image:WxH:#rrggbb>`` (size as shown, mean colour), so the
results say which image arrived, upright and whole."""

from __future__ import annotations

import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from hyperbatch import storage
from hyperbatch.engines.fake import FakeEngine
from hyperbatch.jobs import spec as job_spec
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.runners import images as image_reading
from hyperbatch.runners import pipeline
from hyperbatch.runners.options import local_options
from hyperbatch.runners.progress import PROGRESS
from hyperbatch.schemas.formats.base import Location, Parsed
from hyperbatch.schemas.images import ImageInput
from hyperbatch.schemas.records import Request, SamplingParams
from tests.helpers import images as pics
from tests.helpers.faults import crash_on_call, heal
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
            assert r["usage"]["prompt_tokens"] > r["usage"]["image_tokens"] == 1  # the fake: 1
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
    # OpenAI's usage has no image field: image tokens are in prompt_tokens (and the manifest)
    usage = next(r for r in results if r["custom_id"] == "two")["response"]["body"]["usage"]
    assert usage["prompt_tokens"] == 4
    assert "image_tokens" not in usage["prompt_tokens_details"]
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


def test_an_image_job_resumes_after_a_crash_over_the_images_it_first_listed(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(7):
        (folder / f"p{i}.png").write_bytes(pics.encode(pics.drawn(20 + i, 10, seed=i), "PNG"))
    spec = images_spec(str(folder / "*.png"), str(tmp_path / "out"))  # 3 per shard: 3 shards
    crash_on_call(monkeypatch, FakeEngine, "generate", 2, "accelerator fell over")
    with pytest.raises(Exception, match="accelerator fell over"):
        pipeline.run(spec, options=local_options())  # one shard at a time: one commits
    assert len(storage.glob(JobFolder(spec.job_dir()).commits_prefix + "*.json")) == 1

    # a photo added to the folder since is not this job's: the rerun keeps the first listing
    (folder / "p0b.png").write_bytes(pics.encode(pics.drawn(9, 9, seed=9), "PNG"))
    heal(monkeypatch, FakeEngine, "generate")
    PROGRESS.reset()
    m = pipeline.run(spec)
    results, errors = outputs(spec.job_dir())
    assert sorted(r["id"] for r in results) == [f"p{i}.png" for i in range(7)]  # none twice
    assert errors == []
    assert m["records_in"] == m["results"] == m["input_images"] == m["image_tokens"] == 7
    assert PROGRESS.snapshot().shards_resumed == 1


def test_duplicate_ids_in_image_lines_are_served_once_and_counted_exactly(tmp_path):
    red = pics.data_url(pics.encode(pics.solid(4, 4, (255, 0, 0)), "PNG"))
    lines = [image_line("a", red), image_line("b", red), image_line("a", red, text="again"),
             image_line("c", "data:image/png;base64,iVBORw0KGgo=")]  # fmt: skip
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    spec = job_spec.validate({
        "name": "dups", "task": "chat", "input": str(tmp_path / "in.jsonl"),
        "input_format": "openai", "output": str(tmp_path / "out"), "model": "fake",
        "engine": "fake", "max_error_rate": 1.0,
    })  # fmt: skip
    m = pipeline.run(spec)
    results, errors = outputs(spec.job_dir())
    assert sorted(r["custom_id"] for r in results) == ["a", "b"]
    assert sorted((e["custom_id"], e["error"]["code"]) for e in errors) == [
        ("a", "duplicate_id"), ("c", "invalid_image")]  # fmt: skip
    assert (m["records_in"], m["results"], m["errors"], m["input_images"]) == (4, 2, 2, 2)
    assert m["image_tokens"] == 2
    assert m["errors_by_code"] == {"duplicate_id": 1, "invalid_image": 1}


def test_reading_is_bounded_in_threads_and_bytes_whatever_the_shards_in_flight(
    tmp_path, monkeypatch
):
    """Six shards read at once share one pool of 3 threads and a bound of two shards' bytes:
    never more than 3 downloads at a time, never more bytes held than the bound, all given back."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shards = []
    for s in range(6):
        items = []
        for k in range(4):
            name = f"s{s}k{k}.png"
            (folder / name).write_bytes(pics.encode(pics.drawn(30, 30, seed=10 * s + k), "PNG"))
            req = Request(name, SamplingParams(), input_images=(ImageInput(str(folder / name)),))
            items.append(Parsed(req, Location("listing", k + 1)))
        shards.append(items)
    per_shard = max(sum((folder / p.request.record_id).stat().st_size for p in items)
                    for items in shards)  # fmt: skip
    memory = image_reading.ImageMemory(2 * per_shard)
    monkeypatch.setattr(image_reading, "MEMORY", memory)
    monkeypatch.setattr(image_reading, "_POOL", ThreadPoolExecutor(3))
    active, most, lock = [0], [0], threading.Lock()
    real = storage.read_bytes

    def slow_read(path: str) -> bytes:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return real(path)

    monkeypatch.setattr(storage, "read_bytes", slow_read)
    spec = images_spec(str(folder / "*.png"), str(tmp_path / "out"))

    def serve_one(items):
        ok, errors, held = image_reading.read_images(items, spec)
        try:
            assert memory.held <= memory.limit
            time.sleep(0.02)  # the engine serving the shard
            return [(p.request.record_id, p.request.input_images[0].width) for p in ok], errors
        finally:
            held.release()

    with ThreadPoolExecutor(6) as shard_threads:
        done = list(shard_threads.map(serve_one, shards))
    assert all(errors == [] and [w for _, w in ok] == [30] * 4 for ok, errors in done)
    assert most[0] <= 3
    assert per_shard <= memory.peak <= memory.limit
    assert memory.held == 0
