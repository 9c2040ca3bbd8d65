"""The push endpoint over real HTTP: pushes from the Pub/Sub emulator, and OIDC verification
with tokens signed by a key this test controls (its certificate injected as "Google's")."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.server
import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
import typing
import urllib.error
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from hyperbatch.jobs import pubsub
from hyperbatch.jobs.store import JobStore
from hyperbatch.jobs.triggers.handler import TriggerHandler
from hyperbatch.jobs.triggers.oidc import GoogleCerts, OidcVerifier, Unauthenticated
from hyperbatch.jobs.triggers.push import make_app
from tests.helpers import loopback
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


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serving(app):
    """The app in this process, on the standard library's server (a quick harness; the product
    serves it with gunicorn: test_served_by_gunicorn)."""
    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
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
    app = make_app(TriggerHandler(store, allow=[os.path.dirname(store.root)]), verifier)
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
            # a fixed answer: nothing about why, what was fetched, or how (that is logged)
            assert (
                body
                == {
                    401: {"error": "a valid Pub/Sub push token is required"},
                    403: {"error": "this identity may not push here"},
                }[code]
            )
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
        TriggerHandler(JobStore(store.root + "-guarded"), allow=[os.path.dirname(store.root)]),
        OidcVerifier(AUDIENCE, [PUSHER], certs=lambda: {google_key.kid: google_key.cert_pem}),
    )
    with (
        serving(
            make_app(TriggerHandler(store, allow=[os.path.dirname(store.root)]), None)
        ) as open_url,
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


def test_a_flood_of_bad_tokens_costs_no_certificate_fetches(google_key):
    """Google's certificates are fetched once and kept (max-age); a fetch that fails backs off
    instead of being retried by every request."""
    from google.auth import jwt

    fetched = []

    def fetch():
        fetched.append(1)
        return {google_key.kid: google_key.cert_pem}, 3600.0

    certs = GoogleCerts(fetch=fetch)
    verifier = OidcVerifier(AUDIENCE, [PUSHER], certs=certs)
    stranger = SigningKey("unknown-key")
    for i in range(200):
        token = ["garbage", stranger.token(), google_key.token(aud="x")][i % 3]
        with pytest.raises(Unauthenticated):
            verifier.verify(f"Bearer {token}")
    assert verifier.verify(f"Bearer {google_key.token()}")["email"] == PUSHER
    # one fetch, plus at most one for the unknown key id (a key rotation looks like that)
    assert len(fetched) <= 2
    assert jwt.decode_header(stranger.token())["kid"] == "unknown-key"

    now = [0.0]
    failing = GoogleCerts(fetch=lambda: (_ for _ in ()).throw(ConnectionError("offline")),
                          clock=lambda: now[0])  # fmt: skip
    for _ in range(100):
        with pytest.raises(Unauthenticated):
            failing()
    assert failing.fetches == 1  # backing off: not once per request
    now[0] = 31.0
    with pytest.raises(Unauthenticated):
        failing()
    assert failing.fetches == 2  # after the back-off, one more try


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_served_by_gunicorn(tmp_path):
    """`hyperbatch trigger serve` runs the app on gunicorn: pushes are recorded, an oversized
    body is refused, and it stops on SIGTERM."""
    import signal

    port = _free_port()
    root = str(tmp_path / "jobs")
    spec = cp.spec_dict(cp.write_input(str(tmp_path / "in.jsonl")), root, name="gunicorned")
    server = subprocess.Popen(
        [sys.executable, "-m", "hyperbatch", "trigger", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--root", root, "--record-only", "--allow-unauthenticated",
         "--allow", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        cp.wait_for(lambda: _healthy(url), timeout=60)
        status, body = post(url, envelope(spec, "g-1", job_id="via-gunicorn"))
        assert (status, body["kind"]) == (200, "submitted")
        assert JobStore(root).get("via-gunicorn").state == "QUEUED"
        assert _declare_a_body_of(port, 17 << 20) == 413  # refused before it is read
    finally:
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
    assert "gunicorn" in err


def _declare_a_body_of(port: int, size: int) -> int:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    try:
        return conn.getresponse().status
    finally:
        conn.close()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_the_detail_of_a_refused_token_is_logged_not_answered(store_and_spec, google_key, caplog):
    """The answer is fixed (above); why the token was refused goes to the log, for the
    operator."""
    import logging

    store, spec = store_and_spec
    verifier = OidcVerifier(AUDIENCE, [PUSHER], certs=lambda: {google_key.kid: google_key.cert_pem})
    app = make_app(TriggerHandler(store, allow=[os.path.dirname(store.root)]), verifier)
    refused = {
        "garbage": (401, "push refused (401): not a JWT"),
        SigningKey(google_key.kid).token(): (401, "push refused (401): invalid token: "),
        google_key.token(aud="https://elsewhere.example/"): (
            401, "push refused (401): invalid token: Token has wrong audience"),
        google_key.token(email="someone@proj.iam.gserviceaccount.com"): (
            403, "push refused (403): someone@proj.iam.gserviceaccount.com may not push here"),
    }  # fmt: skip
    with serving(app) as url, caplog.at_level(logging.WARNING):
        for i, (token, (code, logged)) in enumerate(refused.items()):
            caplog.clear()
            status, body = post(url, envelope(spec, f"m{i}"), token)
            assert status == code
            [record] = [r for r in caplog.records if r.getMessage().startswith("push refused")]
            assert record.levelno == logging.WARNING
            assert record.getMessage().startswith(logged), record.getMessage()
            detail = record.getMessage().split(": ", 1)[1]
            assert detail not in json.dumps(body)  # logged, never answered
    assert store.list() == []


class _CertsServer(http.server.BaseHTTPRequestHandler):
    """Google's certificate endpoint: the current keys, with its Cache-Control header."""

    certs: typing.ClassVar[dict[str, str]] = {}
    cache_control: typing.ClassVar[str | None] = None
    hits: typing.ClassVar[int] = 0

    def do_GET(self):
        type(self).hits += 1
        data = json.dumps(self.certs).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.cache_control is not None:
            self.send_header("Cache-Control", self.cache_control)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_certificates_are_refetched_when_their_max_age_is_over(google_key):
    """The real fetch (google.auth's transport) reads max-age from Cache-Control; the cache
    serves the certificates until then, with no request, and refetches after (a key rotation
    is then seen). Without a max-age the default time to live applies."""
    rotated = SigningKey("google-key-2")
    now = [1000.0]
    _CertsServer.certs = {google_key.kid: google_key.cert_pem}
    _CertsServer.cache_control = "public, max-age=300, must-revalidate, no-transform"
    _CertsServer.hits = 0
    with loopback.serve(_CertsServer) as port:
        url = f"http://127.0.0.1:{port}/oauth2/v1/certs"
        certs = GoogleCerts(url=url, default_ttl_s=3600.0, clock=lambda: now[0])
        verifier = OidcVerifier(AUDIENCE, [PUSHER], certs=certs)
        assert verifier.verify(f"Bearer {google_key.token()}")["email"] == PUSHER
        assert _CertsServer.hits == 1
        _CertsServer.certs = {rotated.kid: rotated.cert_pem}  # Google rotates its keys
        for t in (1100.0, 1299.0):  # within max-age: the cache answers, no request
            now[0] = t
            assert verifier.verify(f"Bearer {google_key.token()}")["email"] == PUSHER
        assert _CertsServer.hits == 1
        now[0] = 1301.0  # max-age is over: refetched, the rotated key is now the one
        assert verifier.verify(f"Bearer {rotated.token()}")["email"] == PUSHER
        assert _CertsServer.hits == 2
        with pytest.raises(Unauthenticated):
            verifier.verify(f"Bearer {google_key.token()}")  # the retired key (cache: 1 min)
        assert _CertsServer.hits == 2

        _CertsServer.cache_control = None  # no max-age: the default, 3600 s
        now[0] = 1601.0  # the 300 s of the last answer are over
        certs()
        assert _CertsServer.hits == 3
        now[0] = 1601.0 + 3599.0
        certs()
        assert _CertsServer.hits == 3
        now[0] = 1601.0 + 3601.0
        certs()
        assert _CertsServer.hits == 4
