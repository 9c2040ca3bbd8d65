"""The push endpoint over real HTTP: pushes from the Pub/Sub emulator, and OIDC verification
with tokens signed by a key this test controls (its certificate injected as "Google's")."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from hyperbatch.jobs import pubsub
from hyperbatch.jobs.store import JobStore
from hyperbatch.jobs.triggers.handler import TriggerHandler
from hyperbatch.jobs.triggers.oidc import OidcVerifier
from hyperbatch.jobs.triggers.push import make_app, make_http_server
from tests.jobs import control_plane as cp

AUDIENCE = "https://hyperbatch-trigger-abc-uc.a.run.app/"
PUSHER = "pubsub-push@proj.iam.gserviceaccount.com"


class SigningKey:
    """An RSA key and self-signed certificate, like one of Google's token-signing keys."""

    def __init__(self, kid: str):
        from google.auth import crypt

        self.kid = kid
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.signer = crypt.RSASigner.from_string(pem, key_id=kid)

    def token(self, **overrides) -> str:
        from google.auth import jwt

        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "email": PUSHER,
            "email_verified": True,
            "sub": "1234567890",
            "iat": now,
            "exp": now + 3600,
            **overrides,
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(self.signer, claims).decode()


@pytest.fixture(scope="module")
def google_key():
    return SigningKey("google-key-1")


@contextlib.contextmanager
def serving(app):
    server = make_http_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def post(url: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def envelope(spec: dict, message_id: str, **attributes: str) -> dict:
    return {
        "message": {
            "data": base64.b64encode(json.dumps(spec).encode()).decode(),
            "attributes": attributes,
            "messageId": message_id,
            "publishTime": "2026-01-01T00:00:00.000Z",
        },
        "subscription": "projects/p/subscriptions/push",
    }


@pytest.fixture
def store_and_spec(tmp_path):
    store = JobStore(str(tmp_path / "jobs"))
    spec = cp.spec_dict(cp.write_input(str(tmp_path / "in.jsonl")), store.root, name="pushed")
    return store, spec


def test_oidc_tokens_are_verified(store_and_spec, google_key):
    store, spec = store_and_spec
    impostor = SigningKey(google_key.kid)  # same key id, another key: a forged signature
    verifier = OidcVerifier(AUDIENCE, [PUSHER], certs=lambda: {google_key.kid: google_key.cert_pem})
    app = make_app(TriggerHandler(store), verifier)
    with serving(app) as url:
        refused = {
            "no token": (None, 401),
            "not a JWT": ("garbage", 401),
            "forged signature": (impostor.token(), 401),
            "wrong audience": (google_key.token(aud="https://elsewhere.example/"), 401),
            "expired": (
                google_key.token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
                401,
            ),
            "not Google": (google_key.token(iss="https://evil.example"), 401),
            "another account": (
                google_key.token(email="someone@proj.iam.gserviceaccount.com"),
                403,
            ),
            "unverified email": (google_key.token(email_verified=False), 403),
        }
        for i, (why, (token, code)) in enumerate(refused.items()):
            status, body = post(url, envelope(spec, f"m{i}"), token)
            assert (why, status) == (why, code), body
        assert store.list() == []

        status, body = post(url, envelope(spec, "ok-1", job_id="pushed-ok"), google_key.token())
        assert status == 200
        assert body == {"ack": True, "kind": "submitted", "job_id": "pushed-ok", "detail": "QUEUED"}
        status, body = post(url, envelope(spec, "ok-2", job_id="pushed-ok"), google_key.token())
        assert (status, body["kind"]) == (200, "duplicate")
        status, body = post(url, {"not": "an envelope"}, google_key.token())
        assert status == 400
        status, body = post(url, envelope({"name": "x"}, "bad-spec"), google_key.token())
        assert (status, body["kind"]) == (200, "rejected")  # recorded, and acked: never retried
    assert [r.job_id for r in store.list()] == ["pushed-ok"]
    assert "task: required" in store.rejected()[0]["reason"]


@pytest.mark.usefixtures("pubsub_server")
def test_pushes_from_the_emulator(store_and_spec, google_key):
    store, spec = store_and_spec
    requests = cp.topic("requests")
    calls: list[int] = []

    def counting(app):
        def wrapped(environ, start):
            def start_and_count(status, headers, *rest):
                calls.append(int(status.split()[0]))
                return start(status, headers, *rest)

            return app(environ, start_and_count)

        return wrapped

    guarded = make_app(
        TriggerHandler(JobStore(store.root + "-guarded")),
        OidcVerifier(AUDIENCE, [PUSHER], certs=lambda: {google_key.kid: google_key.cert_pem}),
    )
    with (
        serving(make_app(TriggerHandler(store), None)) as open_url,
        serving(counting(guarded)) as guarded_url,
    ):
        cp.subscription(requests, push_config={"push_endpoint": open_url})
        cp.subscription(requests, push_config={"push_endpoint": guarded_url})
        pubsub.publish(requests, json.dumps(spec).encode(), {"job_id": "from-push"})
        record = cp.wait_for(lambda: store.find("from-push"), timeout=30)
        cp.wait_for(lambda: len(calls) >= 1, timeout=30)
    assert record.to_dict()["submission"]["via"] == "pubsub"
    assert record.to_dict()["submission"]["subscription"].startswith("projects/")
    # the emulator's push carries no token: the guarded endpoint refuses it, records nothing
    assert set(calls) == {401}
    assert JobStore(store.root + "-guarded").list() == []
