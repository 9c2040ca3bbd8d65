"""Answer questions over the embeddings example's output: embed each question with the same
model, rank the corpus's vectors (the job's Parquet files) by cosine similarity, print the top
passages.

    python examples/embeddings/search.py out/stdlib-embeddings-<id>          # the job folder
    python examples/embeddings/search.py out/stdlib-embeddings-<id> "how do I read a CSV file?"
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq

from hyperbatch.engines import models
from hyperbatch.engines.jax_encoder.encoder import Encoder

HERE = os.path.dirname(os.path.abspath(__file__))
QUESTIONS = [
    "How do I compress a file?",
    "How can I parse command-line options in my program?",
    "What is the difference between two dates?",
]


def main(job_dir: str, questions: list[str], top: int = 3) -> None:
    files = sorted(glob.glob(os.path.join(job_dir, "vectors", "*.parquet")))
    if not files:
        sys.exit(f"no vectors in {job_dir}/vectors: run the job in examples/embeddings/job.yaml")
    tables = [pq.read_table(f) for f in files]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    # the vector column is a fixed-size list of float32: one [rows, dims] matrix per file
    vectors = np.concatenate(
        [t.column("vector").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)
         for t in tables]
    )  # fmt: skip
    with open(os.path.join(HERE, "corpus.jsonl"), encoding="utf-8") as f:
        texts = {r["id"]: r["text"] for r in map(json.loads, f)}

    encoder = Encoder.load(models.resolve_model("all-minilm-l6-v2").path)
    queries, _ = encoder.encode_texts(questions)
    scores = queries @ vectors.T  # unit vectors: the dot product is the cosine
    print(f"{len(ids)} passages from {len(files)} Parquet file(s) in {job_dir}")
    for question, row in zip(questions, scores, strict=True):
        print(f"\n{question}")
        for j in np.argsort(-row)[:top]:
            print(f"  {row[j]:.3f}  {ids[j]:<16} {texts[ids[j]][:100]}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:] or QUESTIONS)
