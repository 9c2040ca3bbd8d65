"""Faults injected into real parts, for the resume tests."""

from __future__ import annotations

from typing import Any

import pytest


def crash_on_call(
    monkeypatch: pytest.MonkeyPatch, cls: type, method: str, n: int, message: str
) -> None:
    """Make the ``n``-th call of ``cls.method`` (counted over every instance) raise
    RuntimeError(message); the other calls run the real method. ``monkeypatch.undo()`` or
    ``heal`` puts it back."""
    real = getattr(cls, method)
    calls = {"n": 0}

    def crashing(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError(message)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, crashing)
    monkeypatch.setattr(cls, f"_real_{method}", real, raising=False)


def heal(monkeypatch: pytest.MonkeyPatch, cls: type, method: str) -> None:
    """Undo ``crash_on_call``: the real method again."""
    monkeypatch.setattr(cls, method, getattr(cls, f"_real_{method}"))
