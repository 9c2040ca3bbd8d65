"""Apache Beam: the batch pipeline, record I/O, sharding, batching and the engine adapter."""

import logging


class _ImportNoise(logging.Filter):
    """Beam's GCP I/O logs at import (on the root logger) that apitools is missing; nothing here
    needs apitools. Installed before any module of this package imports Beam."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("apitools not found")


logging.getLogger().addFilter(_ImportNoise())
