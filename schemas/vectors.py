"""Vector outputs of embedding jobs, written beside the format's own results as part of each
shard's commit (``vector_output`` in the spec):

``parquet``
    One row per vector: ``id`` (the record's id), ``index`` (the text's position in its record:
    0 unless an OpenAI ``input`` array held several), ``vector`` (a fixed-size list of float32),
    ``token_count``, ``truncated``, ``metadata`` (the record's, a map of strings). Loads as is
    into pandas/Polars/DuckDB/BigQuery and into vector stores that read Parquet.

``vertex_vector_search``
    The JSON lines Vertex AI Vector Search imports (``.json`` files): ``{"id", "embedding",
    "restricts"?}``. A datapoint's id is the record's id (``<id>#<index>`` for the texts of a
    record that held several); each metadata entry becomes a restrict (namespace = key, allow =
    [value]) so a query can filter on it.
"""

from __future__ import annotations

import abc
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hyperbatch.schemas.formats.base import Parsed
from hyperbatch.schemas.records import Result


def _vectors(items: Sequence[tuple[Parsed, Result]]) -> Iterator[tuple[Parsed, Result, int]]:
    for parsed, res in items:
        for i in range(len(res.embeddings or ())):
            yield parsed, res, i


class VectorWriter(abc.ABC):
    name: ClassVar[str]
    suffix: ClassVar[str]
    content_type: ClassVar[str]

    @abc.abstractmethod
    def encode(self, items: Sequence[tuple[Parsed, Result]]) -> bytes:
        """The file of one shard's vectors (``b""`` when it has none)."""


class ParquetVectors(VectorWriter):
    name = "parquet"
    suffix = ".parquet"
    content_type = "application/vnd.apache.parquet"

    def encode(self, items: Sequence[tuple[Parsed, Result]]) -> bytes:
        rows = list(_vectors(items))
        if not rows:
            return b""
        assert rows[0][1].embeddings is not None
        dims = len(rows[0][1].embeddings[rows[0][2]])
        flat = np.asarray(
            [res.embeddings[i] for _, res, i in rows if res.embeddings], dtype=np.float32
        ).reshape(-1)
        table = pa.table(
            {
                "id": pa.array([p.request.record_id for p, _, _ in rows], pa.string()),
                "index": pa.array([i for _, _, i in rows], pa.int32()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dims),
                "token_count": pa.array(
                    [res.token_counts[i] if res.token_counts else None for _, res, i in rows],
                    pa.int32(),
                ),
                "truncated": pa.array(
                    [bool(res.truncated[i]) if res.truncated else False for _, res, i in rows],
                    pa.bool_(),
                ),
                "metadata": pa.array(
                    [list((p.metadata or {}).items()) for p, _, _ in rows],
                    pa.map_(pa.string(), pa.string()),
                ),
            }
        )
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return buf.getvalue()


class VertexVectorSearch(VectorWriter):
    name = "vertex_vector_search"
    suffix = ".json"  # Vector Search imports .json files of JSON lines
    content_type = "application/json"

    def encode(self, items: Sequence[tuple[Parsed, Result]]) -> bytes:
        lines = []
        for parsed, res, i in _vectors(items):
            assert res.embeddings is not None
            rid = parsed.request.record_id
            line: dict[str, Any] = {
                "id": rid if len(res.embeddings) == 1 else f"{rid}#{i}",
                "embedding": list(res.embeddings[i]),
            }
            if parsed.metadata:
                line["restricts"] = [
                    {"namespace": k, "allow": [v]} for k, v in sorted(parsed.metadata.items())
                ]
            lines.append(json.dumps(line, ensure_ascii=False))
        return ("\n".join(lines) + "\n").encode() if lines else b""


VECTOR_WRITERS: dict[str, VectorWriter] = {
    w.name: w for w in (ParquetVectors(), VertexVectorSearch())
}
