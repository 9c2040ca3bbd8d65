"""The core (jobs, runners, schemas, the CLI) imports and validates without jax or vllm."""

from __future__ import annotations

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
