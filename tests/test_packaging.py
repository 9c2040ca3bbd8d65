"""The core (jobs, runners, schemas, the CLI) imports and validates without jax or vllm."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = __file__.rsplit("/tests/", 1)[0]

BLOCK_HEAVY = """
import sys
for name in ("jax", "jaxlib", "vllm", "torch", "transformers"):
    sys.modules[name] = None  # any import of these now raises ImportError
import hyperbatch.cli, hyperbatch.jobs.spec, hyperbatch.jobs.manifest, hyperbatch.runners.pipeline
import hyperbatch.runners.engine_adapter, hyperbatch.schemas.formats
from hyperbatch.engines.registry import EngineNotAvailable, engine_class
engine_class("fake")
try:
    engine_class("jax")
except EngineNotAvailable as e:
    assert "pip install 'hyperbatch[jax]'" in str(e), e
else:
    raise AssertionError("the jax engine loaded without jax")
print("core ok")
"""


def test_core_imports_without_heavy_engines():
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_HEAVY], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "core ok"


def test_console_script_is_declared():
    text = Path(ROOT, "setup.py").read_text()
    assert '"hyperbatch=hyperbatch.cli:main"' in text


def test_the_wheel_installs_one_namespace(tmp_path):
    """Build the wheel, install it (not editable) into a fresh virtualenv, and use it from
    elsewhere: only ``hyperbatch`` is at the top level, with its schemas and the kernel source,
    and the CLI works. (The fresh environment reaches this one's third-party packages through a
    path entry, not through its ``.pth`` files: the editable install stays out.)"""
    import site
    import sysconfig
    import zipfile

    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(dist), ROOT],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    [wheel] = dist.glob("hyperbatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"hyperbatch", "hyperbatch-0.1.0.dist-info"}
    assert "hyperbatch/schemas/job_request.avsc" in names
    assert "hyperbatch/engines/jax_llm/cpu_attention.cc" in names
    assert "hyperbatch/engines/jax_encoder/cpu_attention.cc" in names
    assert "hyperbatch/engines/cpu_parallel.h" in names
    assert "hyperbatch/schemas/embedding_result.avsc" in names
    assert {"hyperbatch/jobs/spec.py", "hyperbatch/cli/__init__.py"} <= set(names)

    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
         str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    fresh_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    ours = [p for p in site.getsitepackages() if p.startswith(sys.prefix)] or [
        sysconfig.get_paths()["purelib"]
    ]
    Path(fresh_site, "zz-test-dependencies.pth").write_text("\n".join(ours) + "\n")
    top_level = sorted(
        p.name for p in Path(fresh_site).iterdir() if not p.name.endswith((".pth", ".dist-info"))
    )
    assert top_level == ["hyperbatch"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(args), cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": ""},
        )  # fmt: skip

    where = run(str(python), "-c", "import hyperbatch.jobs.spec as m; print(m.__file__)")
    assert where.stdout.strip().startswith(fresh_site), where.stderr
    help_text = run(str(env_dir / "bin" / "hyperbatch"), "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "validate" in help_text.stdout
    assert "trigger" in help_text.stdout
    module_help = run(str(python), "-m", "hyperbatch", "--help")
    assert module_help.returncode == 0, module_help.stderr
    assert "Usage: hyperbatch" in module_help.stdout
    quickstart = os.path.join(ROOT, "examples", "quickstart", "job.yaml")
    validated = run(str(env_dir / "bin" / "hyperbatch"), "validate", quickstart, "--format", "json")
    assert validated.returncode == 0, validated.stderr
    assert '"job_id": "quickstart-' in validated.stdout


VALIDATE_WITHOUT_ENGINES = """
import json, sys
for name in ("jax", "jaxlib", "vllm", "torch", "transformers"):
    sys.modules[name] = None
from click.testing import CliRunner
from hyperbatch.cli import main
from hyperbatch.jobs.triggers.messages import Delivery, Rejected, interpret

base = {"name": "nojax", "task": "chat", "input": sys.argv[1], "input_format": "openai",
        "output": sys.argv[2], "model": "smollm2-135m-instruct", "accelerator": "tpu-v6e"}
out = {}
for engine, options in [
    ("jax", {}),
    ("jax", {"decode_stepz": 4, "prefill_tokens": 2, "attention": "fast", "prefill_buckets": [0]}),
    ("vllm", {"gpu_memory_utilization": 2.0, "enforce_eager": "yes", "swapspace": 1}),
]:
    spec = {**base, "engine": engine, "engine_options": options}
    path = sys.argv[3]
    open(path, "w").write(json.dumps(spec))
    r = CliRunner().invoke(main, ["validate", path])
    out[f"{engine}-{len(options)}"] = [r.exit_code, r.output]
try:
    interpret(Delivery("m1", json.dumps({**base, "engine_options": {"decode_stepz": 4}}).encode(), {}))
except Rejected as e:
    out["trigger"] = str(e)
print(json.dumps(out))
"""


def test_specs_are_validated_without_jax_or_vllm(tmp_path):
    """Every engine's options are checked (unknown keys, types, values) where neither jax nor
    vllm can be imported: the CLI's validate and a trigger message."""
    import json

    (tmp_path / "in.jsonl").write_text('{"custom_id": "a"}\n')
    out = subprocess.run(
        [sys.executable, "-c", VALIDATE_WITHOUT_ENGINES, str(tmp_path / "in.jsonl"),
         str(tmp_path / "out"), str(tmp_path / "job.json")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["jax-0"][0] == 0, found["jax-0"][1]  # a TPU job validates where jax is absent
    code, text = found["jax-4"]
    assert code == 2
    for problem in (
        "decode_stepz not supported by the jax engine",
        "engine_options.prefill_tokens: must be at least 8",
        "engine_options.attention: must be one of auto, cpu, xla",
        "engine_options.prefill_buckets: must be at least 1",
    ):
        assert problem in text
    code, text = found["vllm-3"]
    assert code == 2
    for problem in (
        "swapspace not supported by the vllm engine",
        "engine_options.gpu_memory_utilization: must be at most 1",
        "engine_options.enforce_eager: must be true or false",
    ):
        assert problem in text
    assert "decode_stepz not supported by the jax engine" in found["trigger"]
