"""Optional heavy dependencies in tests: skipped with a reason on a laptop, a failure in CI.

CI (``.ci/run`` sets ``CI=1``) installs everything, so a missing piece there is a broken build,
never a silently skipped test.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def unavailable(what: str, detail: str) -> NoReturn:
    """Fail under CI; skip with the reason elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"CI needs {what}: {detail}", pytrace=False)
    pytest.skip(
        f"{what} is not available here ({detail}); `make test` installs it",
        allow_module_level=True,  # also from a test module's top, before its imports
    )


def require(module: str, why: str) -> ModuleType:
    """Import ``module`` (e.g. at a test module's top), or fail in CI / skip elsewhere."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        unavailable(module, f"{why}: {e}")
