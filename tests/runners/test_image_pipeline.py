"""Image jobs through the Beam pipeline: every record ends as one result or one error, images
land in the job folder under names no id can escape or collide on, carry their parameters,
are written in the shard's commit (a rerun never duplicates them), and the manifest prices them
per 1,000 images. The fake engine draws solid colours a test can check (red = the prompt's
words, green = the seed, blue = the steps); one run of the tiny real checkpoint checks that the
files hold the engine's own images."""

from __future__ import annotations

import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from hyperbatch import storage
from hyperbatch.engines.fake import FakeEngine
from hyperbatch.jobs import spec as job_spec
from hyperbatch.jobs.layout import JobFolder
from hyperbatch.runners import pipeline
from hyperbatch.runners.options import local_options
from hyperbatch.schemas import avro, image_outputs
from hyperbatch.schemas.image_outputs import IMAGE_FORMATS
from tests.helpers.faults import crash_on_call, heal
from tests.optional import require
from tests.records import jsonl, read_jsonl


def make_spec(input_glob: str, output: str, **fields):
    data = {"name": "img", "task": "image", "input": input_glob, "input_format": "jsonl",
            "output": output, "model": "fake", "engine": "fake", "records_per_shard": 3,
            "image": {"size": "32x16", "steps": 4}, **fields}  # fmt: skip
    return job_spec.validate(data)


def records(job_dir: str, folder: str) -> list[dict]:
    out = []
    for f in storage.glob(f"{job_dir}/{folder}/*.jsonl"):
        out += read_jsonl(storage.read_bytes(f.path))
    return out


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


HOSTILE = ["../../escape", "a/b", "a b", "a_b", "ünï côdé", "..", "-" * 300]


def test_every_record_ends_once_and_images_stay_in_their_folder(tmp_path):
    good = [{"id": rid, "prompt": "two words", "seed": 10 + i} for i, rid in enumerate(HOSTILE)]
    good.append({"id": "many", "prompt": "one two three", "seed": 250, "n": 3, "steps": 9,
                 "width": 24, "height": 8, "metadata": {"k": "v"}})  # fmt: skip
    bad = [
        ({"id": "e-empty", "prompt": " "}, "empty_input"),
        ({"id": "e-size", "prompt": "x", "width": 20, "height": 16}, "invalid_size"),
        ({"id": "e-half", "prompt": "x", "width": 16}, "invalid_size"),
        ({"id": "e-steps", "prompt": "x", "steps": 0}, "invalid_steps"),
        ({"id": "e-guidance", "prompt": "x", "guidance_scale": -1}, "invalid_guidance"),
        ({"id": "e-n", "prompt": "x", "n": 0}, "invalid_n"),
        ({"id": "e-field", "prompt": "x", "style": "vivid"}, "invalid_record"),
        ({"id": "many", "prompt": "again"}, "duplicate_id"),
    ]
    (tmp_path / "in.jsonl").write_bytes(jsonl(good + [b for b, _ in bad]))
    spec = make_spec(str(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    m = pipeline.run(spec)
    job_dir = spec.job_dir()

    errors = records(job_dir, "errors")
    assert sorted((e["record_id"], e["code"]) for e in errors) == sorted(
        (b["id"], code) for b, code in bad
    )
    results = records(job_dir, "results")
    assert sorted(r["id"] for r in results) == sorted(g["id"] for g in good)
    files = sorted(os.listdir(os.path.join(job_dir, "images")))
    names = [os.path.basename(e["uri"]) for r in results for e in r["images"]]
    assert sorted(names) == sorted(f for f in files if f != "_index")  # nothing else, no orphans
    assert len(set(names)) == len(names) == len(HOSTILE) + 3  # sanitising made no collision
    for r in results:
        for e in r["images"]:
            assert os.path.dirname(e["uri"]) == os.path.join(job_dir, "images")

    many = next(r for r in results if r["id"] == "many")
    assert [e["seed"] for e in many["images"]] == [250, 251, 252]
    assert many["metadata"] == {"k": "v"}
    for e in many["images"]:
        data = storage.read_bytes(e["uri"])
        assert pixels(data).shape == (8, 24, 3)
        assert pixels(data)[0, 0].tolist() == [3, e["seed"] % 256, 9]  # words, seed, steps
        params = image_outputs.parameters_of(data)
        assert (params["prompt"], params["seed"], params["steps"]) == ("one two three",
                                                                        e["seed"], 9)  # fmt: skip
        assert params["record_id"] == "many"
    escape = next(r for r in results if r["id"] == "../../escape")
    assert pixels(storage.read_bytes(escape["images"][0]["uri"])).shape == (16, 32, 3)  # job size

    index = records(job_dir, "images/_index")
    assert sorted(i["id"] for i in index) == sorted(r["id"] for r in results)
    assert (m["records_in"], m["results"], m["errors"], m["images"]) == (16, 8, 8, 10)
    assert m["usd_per_1k_images"] == pytest.approx(m["cost_usd"] / 10 * 1000, rel=0.01)
    assert m["outputs"]["images"] == f"{job_dir}/images/*"


def test_images_are_part_of_the_commit_a_rerun_writes_each_once(tmp_path, monkeypatch):
    docs = [{"id": f"r{i:02d}", "prompt": "a b", "seed": i} for i in range(9)]
    (tmp_path / "in.jsonl").write_bytes(jsonl(docs))
    spec = make_spec(str(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    crash_on_call(monkeypatch, FakeEngine, "generate", 3, "accelerator fell over")
    with pytest.raises(Exception, match="accelerator fell over"):
        pipeline.run(spec, options=local_options())
    job_dir = spec.job_dir()
    assert len(JobFolder(job_dir).committed_shards()) == 2
    heal(monkeypatch, FakeEngine, "generate")
    m = pipeline.run(spec)
    files = [f for f in os.listdir(os.path.join(job_dir, "images")) if f != "_index"]
    assert len(files) == 9 == m["images"]
    assert sorted(i["id"] for i in records(job_dir, "images/_index")) == [d["id"] for d in docs]


def test_openai_image_lines_give_urls_or_inline_files(tmp_path):
    lines = [
        {"custom_id": "u", "method": "POST", "url": "/v1/images/generations",
         "body": {"prompt": "a lighthouse at night", "size": "16x16", "seed": 3, "n": 2}},
        {"custom_id": "b", "method": "POST", "url": "/v1/images/generations",
         "body": {"prompt": "a lighthouse", "seed": 4, "response_format": "b64_json",
                  "model": "img-model"}},
        {"custom_id": "q", "method": "POST", "url": "/v1/images/generations",
         "body": {"prompt": "a lighthouse", "quality": "hd"}},
        {"custom_id": "s", "method": "POST", "url": "/v1/images/generations",
         "body": {"prompt": "a lighthouse", "size": "big"}},
    ]  # fmt: skip
    (tmp_path / "in.jsonl").write_bytes(jsonl(lines))
    spec = make_spec(
        str(tmp_path / "in.jsonl"), str(tmp_path / "out"), input_format="openai",
        served_model_name="img-model",
    )  # fmt: skip
    pipeline.run(spec)
    out = {r["custom_id"]: r for r in records(spec.job_dir(), "results")}
    urls = [d["url"] for d in out["u"]["response"]["body"]["data"]]
    assert [pixels(storage.read_bytes(u))[0, 0].tolist() for u in urls] == [[4, 3, 4], [4, 4, 4]]
    assert pixels(storage.read_bytes(urls[0])).shape == (16, 16, 3)
    (inline,) = out["b"]["response"]["body"]["data"]
    assert pixels(base64.b64decode(inline["b64_json"]))[0, 0].tolist() == [2, 4, 4]
    assert len(os.listdir(os.path.join(spec.job_dir(), "images"))) == 2 + 1  # + _index
    errors = {e["custom_id"]: e for e in records(spec.job_dir(), "errors")}
    assert errors["q"]["error"]["code"] == "invalid_record"
    assert "quality" in errors["q"]["error"]["message"]
    assert errors["s"]["error"]["code"] == "invalid_size"


def test_avro_image_records_round_trip(tmp_path):
    data = avro.to_avro_bytes("image_request", [
        {"record_id": "a", "prompt": "a cat on a mat", "seed": 1, "n": 2, "metadata": {"m": "1"}},
        {"record_id": "b", "prompt": "a dog", "width": 12, "height": 16},
    ])  # fmt: skip
    (tmp_path / "in.avro").write_bytes(data)
    spec = make_spec(str(tmp_path / "in.avro"), str(tmp_path / "out"), input_format="avro",
                     image={"size": "16x16", "steps": 2, "format": "webp"})  # fmt: skip
    m = pipeline.run(spec)
    [result] = [
        r for f in storage.glob(f"{spec.job_dir()}/results/*.avro")
        for r in avro.from_avro_bytes(storage.read_bytes(f.path))
    ]  # fmt: skip
    assert result["id"] == "a"
    assert result["metadata"] == {"m": "1"}
    assert [e["seed"] for e in result["images"]] == [1, 2]
    first = storage.read_bytes(result["images"][0]["uri"])
    assert result["images"][0]["uri"].endswith(".webp")
    assert image_outputs.parameters_of(first)["prompt"] == "a cat on a mat"
    assert [(e["record_id"], e["code"]) for e in records(spec.job_dir(), "errors")] == [
        ("b", "invalid_size")
    ]
    assert m["images"] == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image": {"size": "30x30"}}, "image.size"),
        ({"image": {"steps": 0}}, "image.steps"),
        ({"image": {"format": "gif"}}, "image.format"),
        ({"image": {"colour": "red"}}, "unknown key"),
        ({"sampling": {"temperature": 0.5}}, "an image job samples no tokens"),
        ({"input_format": "vertex"}, "image jobs read openai, jsonl or avro"),
        ({"engine_options": {"sizes": ["64x64"]}, "image": {"size": "32x32"}},
         "not among engine_options.sizes"),
        ({"task": "chat", "input_format": "openai"}, "only image jobs"),
    ],
)  # fmt: skip
def test_image_specs_are_checked_before_launch(tmp_path, fields, message):
    with pytest.raises(job_spec.SpecError, match=message):
        make_spec(str(tmp_path / "in.jsonl"), str(tmp_path / "out"), **fields)


def test_file_names_never_escape_or_collide():
    png = IMAGE_FORMATS["png"]
    names = {image_outputs.file_name(rid, 0, png) for rid in [*HOSTILE, "", "/", "\\x"]}
    assert len(names) == len(HOSTILE) + 3
    for name in names:
        assert "/" not in name
        assert "\\" not in name
        assert not name.startswith(".")
        assert len(name) < 80
    assert image_outputs.file_name("a b", 2, png) != image_outputs.file_name("a_b", 2, png)


@pytest.mark.slow
def test_the_tiny_checkpoint_job_writes_the_engines_images(tmp_path):
    """The real engine end to end: the PNG files hold exactly the images the model draws for
    those seeds, and a size the job does not serve is an error record."""
    require("diffusers", "the tiny checkpoint is built with diffusers")
    from hyperbatch.engines.jax_diffusion import tiny
    from hyperbatch.engines.jax_diffusion.generation import DiffusionModel

    model_dir = tiny.build(str(tmp_path / "tiny-sd"), "tiny-sd")
    prompts = [
        {"id": "fox", "prompt": "a red fox in the snow", "seed": 1, "n": 2},
        {"id": "city", "prompt": "a city at night", "negative_prompt": "blurry", "seed": 7,
         "scheduler": "dpmpp_2m"},
        {"id": "big", "prompt": "a mountain", "width": 64, "height": 64},
    ]  # fmt: skip
    (tmp_path / "in.jsonl").write_bytes(jsonl(prompts))
    spec = make_spec(
        str(tmp_path / "in.jsonl"), str(tmp_path / "out"), model=model_dir, engine="jax",
        batch_size=2, image={"size": "32x32", "steps": 3}, records_per_shard=10,
    )  # fmt: skip
    m = pipeline.run(spec)
    results = {r["id"]: r for r in records(spec.job_dir(), "results")}
    model = DiffusionModel.load(model_dir, batch_size=2, resolutions=((32, 32),), max_steps=50)
    fox = model.generate(["a red fox in the snow"] * 2, seeds=[1, 2], steps=3, width=32, height=32)
    got = [pixels(storage.read_bytes(e["uri"])) for e in results["fox"]["images"]]
    np.testing.assert_array_equal(np.stack(got), fox.images)
    city = model.generate(["a city at night"], ["blurry"], seeds=[7], steps=3, width=32,
                          height=32, scheduler="dpmpp_2m")  # fmt: skip
    np.testing.assert_array_equal(
        pixels(storage.read_bytes(results["city"]["images"][0]["uri"])), city.images[0]
    )
    [error] = records(spec.job_dir(), "errors")
    assert (error["record_id"], error["code"]) == ("big", "invalid_size")
    assert (m["images"], m["engine_compilations"]) == (3, 1)
    assert m["usd_per_1k_images"] > 0
    assert json.loads(json.dumps(m))["padding_waste_percent"] == pytest.approx(25.0)
