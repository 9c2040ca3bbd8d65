"""Job specs: strict validation with actionable messages, overrides, relative paths, digests."""

from __future__ import annotations

import json
import os

import pytest

from hyperbatch.jobs import spec as job_spec
from hyperbatch.jobs.spec import SpecError


@pytest.fixture
def job_dir(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.jsonl").write_text('{"id": "1", "prompt": "hi"}\n')
    return tmp_path


def write(job_dir, **fields) -> str:
    base = {"name": "demo", "task": "chat", "input": "data/*.jsonl", "input_format": "jsonl",
            "output": "out", "model": "any", "engine": "fake"}  # fmt: skip
    base.update(fields)
    path = job_dir / "job.yaml"
    path.write_text(json.dumps({k: v for k, v in base.items() if v is not None}))
    return str(path)


def test_valid_spec_resolves_paths_relative_to_the_file(job_dir, monkeypatch):
    monkeypatch.chdir("/")
    spec = job_spec.load(write(job_dir))
    assert spec.input == str(job_dir / "data" / "*.jsonl")
    assert spec.output == str(job_dir / "out")
    assert spec.batch_size == 32
    assert spec.job_id.startswith("demo-")


def test_set_overrides_are_typed_and_relative_to_cwd(job_dir, monkeypatch):
    monkeypatch.chdir(job_dir)
    spec = job_spec.load(
        write(job_dir),
        ["batch_size=8", "sampling.temperature=0.5", "sampling.stop=[END]", "output=elsewhere"],
    )
    assert spec.batch_size == 8
    assert spec.sampling == {"temperature": 0.5, "stop": ["END"]}
    assert spec.output == str(job_dir / "elsewhere")
    assert spec.default_sampling.stop == ("END",)


def test_every_problem_is_reported_with_its_field(job_dir):
    path = write(job_dir, name="Bad Name", task="summarize", batch_size="big",
                 sampling={"temprature": 1, "top_p": 2}, colour="blue")  # fmt: skip
    with pytest.raises(SpecError) as info:
        job_spec.load(path)
    text = str(info.value)
    for needle in ("name:", "task: must be one of chat, completion", "batch_size: must be an integer",
                   "sampling: unknown key(s) temprature", "sampling.top_p must be", "colour: unknown key"):  # fmt: skip
        assert needle in text, text


def test_missing_required_and_missing_files(job_dir):
    with pytest.raises(SpecError, match="input_format: required"):
        job_spec.load(write(job_dir, input_format=None))
    with pytest.raises(SpecError, match="input: no files match"):
        job_spec.load(write(job_dir, input="data/*.avro"))
    with pytest.raises(SpecError, match=r"model: model .* not found"):
        job_spec.load(write(job_dir, engine="jax", model="no/such/model"))
    with pytest.raises(SpecError, match="engine: unknown engine"):
        job_spec.load(write(job_dir, engine="tensorrt"))


def test_impossible_values_are_refused(job_dir):
    for fields, needle in [
        ({"batch_size": 0}, "batch_size: must be between"),
        ({"accelerator": "tpu-v99"}, "accelerator: must be one of"),
        ({"max_error_rate": 1.5}, "max_error_rate"),
        ({"sampling": {"max_tokens": -1}}, "sampling.max_tokens must be an integer >= 1"),
        ({"spot": "yes"}, "spot: must be true or false"),
    ]:
        with pytest.raises(SpecError, match=needle):
            job_spec.load(write(job_dir, **fields))


def test_bad_override_syntax(job_dir):
    with pytest.raises(SpecError, match="expected key=value"):
        job_spec.load(write(job_dir), ["batch_size"])


def test_gcs_output_bucket_must_exist(job_dir, gcs_bucket):
    spec = job_spec.load(write(job_dir, output=f"{gcs_bucket}/jobs"))
    assert spec.output == f"{gcs_bucket}/jobs"
    with pytest.raises(SpecError, match="bucket no-such-bucket-xyz does not exist"):
        job_spec.load(write(job_dir, output="gs://no-such-bucket-xyz/jobs"))


def test_job_id_is_deterministic_and_follows_the_spec(job_dir):
    a = job_spec.load(write(job_dir))
    b = job_spec.load(write(job_dir))
    c = job_spec.load(write(job_dir), ["sampling.seed=7"])
    assert a.job_id == b.job_id
    assert a.job_id != c.job_id
    assert os.path.basename(a.job_dir()) == a.job_id


def test_dtype_auto_is_float32_on_cpu_and_bfloat16_on_accelerators(job_dir):
    assert job_spec.load(write(job_dir)).resolved_dtype == "float32"
    assert job_spec.load(write(job_dir, accelerator="tpu-v6e")).resolved_dtype == "bfloat16"
    assert (
        job_spec.load(write(job_dir, accelerator="nvidia-l4", dtype="float32")).resolved_dtype
        == "float32"
    )


def test_capabilities_an_engine_lacks_are_refused_before_launch(tmp_path):
    """Penalties on the JAX engine would pass validation and then fail every record."""
    from hyperbatch.jobs.spec import SpecError, validate

    data = {"name": "caps", "task": "chat", "input": "x", "input_format": "jsonl",
            "output": str(tmp_path), "model": "m", "engine": "jax"}  # fmt: skip
    with pytest.raises(SpecError, match=r"sampling\.presence_penalty: the jax engine does not"):
        validate({**data, "sampling": {"presence_penalty": 0.5}}, check_resources=False)
    assert validate({**data, "sampling": {"logprobs": 2, "n": 2}}, check_resources=False)
    assert validate({**data, "engine": "vllm", "sampling": {"presence_penalty": 0.5}},
                    check_resources=False)  # fmt: skip


def test_broken_models_and_unwritable_outputs_are_refused_before_launch(tmp_path):
    """These used to pass validate and then fail `run` with a traceback."""
    from hyperbatch.engines.models import resolve_model
    from hyperbatch.jobs.spec import SpecError, load

    (tmp_path / "in.jsonl").write_text('{"id": "a", "prompt": "hi"}\n')
    gguf = resolve_model("smollm2-135m-instruct").path
    with open(gguf, "rb") as f:
        data = f.read()
    broken = {
        "truncated.gguf": data[: len(data) // 2],
        "one-kb.gguf": data[:1024],
        "random.gguf": os.urandom(4096),
    }
    base = {"name": "broken", "task": "chat", "input": str(tmp_path / "in.jsonl"),
            "input_format": "jsonl", "output": str(tmp_path / "out")}  # fmt: skip
    for name, content in broken.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SpecError, match="model: ") as e:
            load(data={**base, "model": str(tmp_path / name)})
        assert any(word in str(e.value) for word in ("truncated", "not a GGUF", "not a readable"))
    (tmp_path / "a-file").write_text("x")
    for unwritable in ("/proc/hyperbatch-out", str(tmp_path / "a-file" / "out")):  # even as root
        with pytest.raises(SpecError, match="output: cannot write in"):
            load(data={**base, "model": gguf, "output": unwritable})
    assert load(data={**base, "model": gguf}).model == gguf
    assert not (tmp_path / "out").exists()  # the probe left nothing behind
