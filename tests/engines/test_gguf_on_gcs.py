"""A gs:// GGUF model is checked at validate like a local one (issue 12, item 9): its header and
tensor table are read through the storage layer in ranges, never its weights, and a truncated,
cut-short or foreign file is refused before launch."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from hyperbatch import storage
from hyperbatch.cli import EXIT_OK, EXIT_USER_ERROR, main
from hyperbatch.engines import models
from tests.optional import require

gguf = require("gguf", "GGUF headers are read with its block sizes (the jax extra)")


def tiny_gguf(path: str) -> int:
    """A small GGUF in the layout llama.cpp writes: metadata with a string array (the vocab) and
    a number array (scores), an 8 MiB float32 tensor and a small float16 one."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_token_list([f"tok{i}" for i in range(300)])
    writer.add_token_scores([float(i) for i in range(300)])
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((1024, 2048), dtype=np.float32))
    writer.add_tensor("token_embd.weight", np.ones((300, 16), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return os.path.getsize(path)


def reader_extent(path: str) -> int:
    reader = gguf.GGUFReader(path)
    return max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)


def test_the_header_parser_agrees_with_gguf_s_reader(tmp_path):
    """The streaming parser (what gs:// models go through) finds the same end of the tensor
    data as the gguf package's reader, for a small file and for SmolLM2 from its wheel."""
    small = str(tmp_path / "tiny.gguf")
    size = tiny_gguf(small)
    smollm2 = models.resolve_model("smollm2-135m-instruct").path
    for path in (small, smollm2):
        with open(path, "rb") as f:
            assert models.gguf_extent(f) == reader_extent(path)
    assert reader_extent(small) == size


@pytest.fixture
def ranges_read(monkeypatch):
    """Every byte range downloaded from Cloud Storage (the client's own call, spied on)."""
    from google.cloud.storage import Blob

    seen: list[tuple[int, int]] = []
    original = Blob.download_as_bytes

    def spy(self, *args, **kwargs):
        data = original(self, *args, **kwargs)
        seen.append((kwargs.get("start") or 0, len(data)))
        return data

    monkeypatch.setattr(Blob, "download_as_bytes", spy)
    return seen


def test_a_gcs_gguf_is_checked_from_its_header_only(tmp_path, gcs_bucket, ranges_read):
    local = str(tmp_path / "tiny.gguf")
    size = tiny_gguf(local)
    with open(local, "rb") as f:
        data = f.read()
    smollm2 = models.resolve_model("smollm2-135m-instruct").path
    with open(smollm2, "rb") as f:
        smollm2_head = f.read(1024)
    objects = {
        "sound.gguf": data,
        "truncated.gguf": data[: size - 4096],  # the last tensor runs past the end
        "one-kb.gguf": smollm2_head,  # the header itself is cut short
        "random.gguf": os.urandom(4096),
    }
    for name, content in objects.items():
        storage.write_bytes(f"{gcs_bucket}/models/{name}", content)

    ranges_read.clear()
    assert models.check_model(f"{gcs_bucket}/models/sound.gguf") == "gguf"
    downloaded = sum(n for _, n in ranges_read)
    assert 0 < downloaded <= (1 << 20) + 1  # one 1 MiB range: the header, not the 8 MiB
    assert downloaded < size / 4

    expected = {
        "truncated.gguf": f"{gcs_bucket}/models/truncated.gguf is truncated: its tensors need "
        f"{size} bytes, the object has {size - 4096}; copy it again",
        "one-kb.gguf": f"{gcs_bucket}/models/one-kb.gguf is not a readable GGUF model (the "
        "header ends early); it may be truncated: copy it again",
        "random.gguf": f"{gcs_bucket}/models/random.gguf is not a GGUF file (it does not start "
        "with 'GGUF')",
    }
    for name, message in expected.items():
        with pytest.raises(models.ModelNotFound) as e:
            models.check_model(f"{gcs_bucket}/models/{name}")
        assert str(e.value) == message


def test_validate_refuses_a_truncated_gcs_gguf_before_launch(tmp_path, gcs_bucket):
    local = str(tmp_path / "tiny.gguf")
    size = tiny_gguf(local)
    with open(local, "rb") as f:
        data = f.read()
    storage.write_bytes(f"{gcs_bucket}/models/sound.gguf", data)
    storage.write_bytes(f"{gcs_bucket}/models/cut.gguf", data[: size // 2])
    (tmp_path / "in.jsonl").write_text('{"id": "a", "prompt": "hi"}\n')

    def job(model: str) -> str:
        spec = {"name": "gcs-gguf", "task": "completion", "input": str(tmp_path / "in.jsonl"),
                "input_format": "jsonl", "output": f"{gcs_bucket}/out", "model": model,
                "engine": "jax"}  # fmt: skip
        path = tmp_path / "job.json"
        path.write_text(json.dumps(spec))
        return str(path)

    refused = CliRunner().invoke(main, ["validate", job(f"{gcs_bucket}/models/cut.gguf")])
    assert refused.exit_code == EXIT_USER_ERROR, refused.output
    assert "Traceback" not in refused.stderr
    assert f"model: {gcs_bucket}/models/cut.gguf is truncated: its tensors need {size} " in (
        refused.stderr
    )
    accepted = CliRunner().invoke(main, ["validate", job(f"{gcs_bucket}/models/sound.gguf")])
    assert accepted.exit_code == EXIT_OK, accepted.output
