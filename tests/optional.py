"""Optional heavy dependencies in tests: skipped with a reason on a laptop, a failure in CI.

CI (``.ci/run`` sets ``CI=1``) installs everything, so a missing piece there is a broken build,
never a silently skipped test.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def require(module: str, why: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if os.environ.get("CI"):
            pytest.fail(f"{module} must be installed in CI ({why}): {e}")
        pytest.skip(f"{module} is not installed ({why}); `make test` installs it")
