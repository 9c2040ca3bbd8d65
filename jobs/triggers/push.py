"""The push endpoint: a WSGI app that accepts Pub/Sub push envelopes (deployable on Cloud Run).

    POST /            a push envelope {"message": {data, attributes, messageId, publishTime},
                      "subscription"}; with a verifier, only with a valid OIDC token
    GET  /healthz     200 "ok"

Answers: 200 with the outcome as JSON once the message may be acked (the job is recorded, or
the message is ignored, or rejected and dead-lettered); 400 for a body that is not a push
envelope; 401/403 without a valid token; 413 for a body over 16 MiB; 503 when handling failed
and Pub/Sub should push again. Error bodies are fixed texts: what went wrong is logged, never
sent to the caller. ``serve`` runs the app on gunicorn (threads, timeouts, header limits), as
Cloud Run's Python samples do; any WSGI server can host ``make_app``'s result.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from hyperbatch.jobs.triggers.handler import TriggerHandler
from hyperbatch.jobs.triggers.messages import Delivery
from hyperbatch.jobs.triggers.oidc import Forbidden, OidcVerifier, Unauthenticated

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 16 << 20  # Pub/Sub messages are at most 10 MB; base64 adds a third

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    503: "Service Unavailable",
}


def _answer(start: StartResponse, code: int, body: Any) -> Iterable[bytes]:
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    headers = [
        ("Content-Type", "application/json" if not isinstance(body, bytes) else "text/plain"),
        ("Content-Length", str(len(data))),
    ]
    if code == 401:
        headers.append(("WWW-Authenticate", 'Bearer realm="pubsub-push"'))
    start(f"{code} {_REASONS[code]}", headers)
    return [data]


def make_app(handler: TriggerHandler, verifier: OidcVerifier | None) -> Callable[..., Any]:
    """The WSGI application; ``verifier`` None means push requests are not authenticated."""

    def app(environ: dict[str, Any], start: StartResponse) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"
        if path == "/healthz":
            return _answer(start, 200, b"ok")
        if path not in ("/", "/push"):
            return _answer(start, 404, {"error": f"no {path}; Pub/Sub pushes to /"})
        if method != "POST":
            return _answer(start, 405, {"error": "Pub/Sub pushes with POST"})
        if verifier is not None:
            try:
                claims = verifier.verify(environ.get("HTTP_AUTHORIZATION"))
            except Unauthenticated as e:
                log.warning("push refused (401): %s", e)
                return _answer(start, 401, {"error": "a valid Pub/Sub push token is required"})
            except Forbidden as e:
                log.warning("push refused (403): %s", e)
                return _answer(start, 403, {"error": "this identity may not push here"})
            log.debug("push from %s", claims.get("email"))
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            return _answer(start, 413 if length > 0 else 400, {"error": "bad Content-Length"})
        try:
            envelope = json.loads(environ["wsgi.input"].read(length))
            delivery = Delivery.from_push(envelope)
        except ValueError as e:
            log.info("push refused (400): %s", e)
            return _answer(start, 400, {"error": "not a Pub/Sub push envelope"})
        try:
            outcome = handler.handle(delivery)
        except Exception:
            log.exception("message %s not handled; Pub/Sub will push it again", delivery.message_id)
            return _answer(start, 503, {"error": "not handled; push it again"})
        return _answer(start, 200 if outcome.ack else 503, outcome.to_dict())

    return app


def serve(
    app: Callable[..., Any],
    host: str,
    port: int,
    *,
    threads: int = 8,
    timeout_s: int = 600,
) -> None:
    """Serve ``app`` with gunicorn until SIGTERM/SIGINT: one process (the handler keeps the
    launcher's state), ``threads`` requests at once, a request may take ``timeout_s`` (a launch
    on Dataflow can take a minute), request lines and headers bounded."""
    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": f"{host}:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": threads,
                "timeout": timeout_s,
                "graceful_timeout": 30,
                "keepalive": 5,
                "limit_request_line": 8190,
                "limit_request_fields": 100,
                "limit_request_field_size": 8190,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": "warning",
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Callable[..., Any]:
            return app

    _Gunicorn().run()
