"""A plug-in engine for launcher tests: the fake engine, but each request takes a while.

Importing this module registers engine ``slow`` (``engine_options.seconds_per_request``, default
0.2), so a test can start a job that is still running when it cancels or kills it. Job processes
import it with ``--plugin tests.runners.slow_engine``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import ClassVar

from hyperbatch.engines import registry
from hyperbatch.engines.base import OnResult
from hyperbatch.engines.fake import FakeEngine, FakeOptions
from hyperbatch.engines.options import EngineOptions, option
from hyperbatch.schemas.records import Request, Result


@dataclasses.dataclass(frozen=True)
class SlowOptions(FakeOptions):
    ENGINE = "slow"

    seconds_per_request: float = option(0.2, "sleep before each request", minimum=0)


class SlowEngine(FakeEngine):
    name = "slow"
    OPTIONS: ClassVar[type[EngineOptions]] = SlowOptions

    def generate(
        self, requests: Sequence[Request], on_result: OnResult | None = None
    ) -> list[Result]:
        delay = SlowOptions.parse(self.config.options).seconds_per_request
        out = []
        for r in requests:
            time.sleep(delay)
            out += super().generate([r], on_result)
        return out


if "slow" not in registry.ENGINES:
    registry.register(
        "slow",
        registry.EngineEntry(
            "tests.runners.slow_engine:SlowEngine",
            "tests.runners.slow_engine:SlowOptions",
            "nothing (tests)",
            "fake, slowly",
            needs_model=False,
        ),
    )
