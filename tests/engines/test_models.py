"""Model references: catalogue names, local layouts, and gs:// models cached locally."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyperbatch import storage
from hyperbatch.engines import models


def test_catalogue_name_resolves_to_the_wheel_gguf():
    local = models.resolve_model("smollm2-135m-instruct")
    assert local.format == "gguf"
    assert local.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    with open(local.path, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_local_directory_must_look_like_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(models.ModelNotFound, match=r"lacks tokenizer\.json"):
        models.check_model(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(models.ModelNotFound, match=r"no \*\.safetensors"):
        models.check_model(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert models.resolve_model(str(tmp_path)).format == "hf"
    with pytest.raises(models.ModelNotFound, match="not found"):
        models.check_model(str(tmp_path / "missing"))


def test_gcs_model_is_downloaded_once_and_refreshed_when_it_changes(
    gcs_bucket, tmp_path, monkeypatch
):
    base = f"{gcs_bucket}/models/tiny"
    files = {"config.json": b'{"a": 1}', "tokenizer.json": b"{}", "model.safetensors": b"W" * 5000}
    for name, data in files.items():
        storage.write_bytes(f"{base}/{name}", data)
    storage.write_bytes(f"{base}/nested/ignored.bin", b"not part of the model")
    downloads = []
    real = storage.download
    monkeypatch.setattr(
        storage, "download", lambda src, dst: (downloads.append(src), real(src, dst))
    )

    first = models.resolve_model(base, cache_dir=str(tmp_path))
    assert first.format == "hf"
    assert sorted(os.listdir(first.path)) == sorted([*files, ".hyperbatch-index.json"])
    for name, data in files.items():
        assert (Path(first.path) / name).read_bytes() == data
    assert len(downloads) == 3

    again = models.resolve_model(base + "/", cache_dir=str(tmp_path))
    assert again.path == first.path
    assert len(downloads) == 3  # nothing re-downloaded

    storage.write_bytes(f"{base}/config.json", b'{"a": 2}')
    models.resolve_model(base, cache_dir=str(tmp_path))
    assert downloads[3:] == [f"{base}/config.json"]
    assert (Path(first.path) / "config.json").read_bytes() == b'{"a": 2}'


def test_gcs_model_checks_name_what_is_missing(gcs_bucket):
    with pytest.raises(models.ModelNotFound, match=r"config\.json does not exist"):
        models.check_model(f"{gcs_bucket}/models/none")
    with pytest.raises(models.ModelNotFound, match="no such object"):
        models.check_model(f"{gcs_bucket}/m.gguf")
