"""Every example job spec in the repository is valid (the cloud ones as far as can be checked here)."""

from __future__ import annotations

import glob
import os

import pytest

from hyperbatch.jobs import spec as job_spec
from tests.optional import require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.yaml"), recursive=True))


def test_there_are_examples():
    names = {os.path.relpath(p, ROOT) for p in SPECS}
    assert {
        "examples/quickstart/job.yaml",
        "examples/embeddings/job.yaml",
        "examples/images/job.yaml",
        "examples/vision/job.yaml",
        "examples/vision/gemini.yaml",
        "examples/vllm/gpu.yaml",
        "examples/vllm/tpu.yaml",
    } <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: os.path.relpath(p, ROOT))
def test_example_spec_is_valid(path):
    with open(path) as f:
        text = f.read()
    cloud = "gs://" in text
    if "model: tiny-sd" in text and not os.path.isdir(
        os.path.join(os.path.dirname(path), "tiny-sd")
    ):
        require("diffusers", "the image example's tiny checkpoint is built with diffusers")
        from hyperbatch.engines.jax_diffusion import tiny

        tiny.build(os.path.join(os.path.dirname(path), "tiny-sd"), "tiny-sd")
    if "model: tiny-vlm" in text:  # its checkpoint, photos and Gemini lines (kept if built)
        require("transformers", "the vision example's tiny checkpoint is built with transformers")
        from examples.vision.make_example import build

        build(os.path.dirname(path))
    if "engine: vllm" in text and not cloud:
        require("vllm", "this example runs vLLM on this machine")
    # gs:// examples name buckets that don't exist here: check everything but their existence
    spec = job_spec.load(path, check_resources=not cloud)
    assert spec.job_id.startswith(spec.name)
    if spec.accelerator.startswith(("nvidia", "tpu")):
        assert spec.resolved_dtype == "bfloat16"


def test_the_embeddings_corpus_is_all_valid_records():
    from hyperbatch.schemas.formats import FORMATS, Location, Parsed
    from hyperbatch.schemas.records import SamplingParams, TaskKind

    path = os.path.join(ROOT, "examples", "embeddings", "corpus.jsonl")
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    parsed = [
        FORMATS["jsonl"].parse(raw, Location(path, i + 1), TaskKind.EMBEDDING, SamplingParams())
        for i, raw in enumerate(lines)
    ]
    assert len(parsed) >= 300
    assert all(isinstance(p, Parsed) for p in parsed)
    assert len({p.request.record_id for p in parsed}) == len(parsed)
