"""Verify the OIDC token Pub/Sub signs for each push request (``Authorization: Bearer <JWT>``).

A push subscription with authentication sends a Google-signed ID token: issuer
``accounts.google.com`` (or its https:// form), audience as configured on the subscription
(default: the endpoint URL), and the push service account in the ``email`` claim
(``email_verified`` true). A missing, malformed, expired, wrongly signed or wrongly addressed
token is ``Unauthenticated`` (HTTP 401); a valid token of another identity is ``Forbidden``
(403). Google's signing certificates are fetched from ``GOOGLE_CERTS_URL`` and cached as the
response's Cache-Control allows; tests inject their own.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"

Certs = Mapping[str, str]  # key id -> PEM certificate (or public key)


class Unauthenticated(Exception):
    """No valid token: answer 401."""


class Forbidden(Exception):
    """A valid token of an identity that may not push here: answer 403."""


class GoogleCerts:
    """Google's token-signing certificates, fetched on demand and cached by max-age."""

    def __init__(self, url: str = GOOGLE_CERTS_URL, default_ttl_s: float = 3600.0):
        self.url, self.default_ttl_s = url, default_ttl_s
        self._certs: Certs = {}
        self._expires = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> Certs:
        with self._lock:
            if time.monotonic() >= self._expires:
                self._certs, ttl = self._fetch()
                self._expires = time.monotonic() + ttl
            return self._certs

    def _fetch(self) -> tuple[Certs, float]:
        import google.auth.transport.requests

        response = google.auth.transport.requests.Request()(self.url, method="GET")
        if response.status != 200:
            raise Unauthenticated(f"cannot fetch Google's certificates ({response.status})")
        cache = response.headers.get("cache-control", "")
        m = re.search(r"max-age=(\d+)", cache)
        return json.loads(response.data), float(m.group(1)) if m else self.default_ttl_s


class OidcVerifier:
    def __init__(
        self,
        audience: str,
        service_accounts: Iterable[str] = (),
        certs: Callable[[], Certs] | None = None,
        clock_skew_s: int = 30,
    ):
        if not audience:
            raise ValueError("an OIDC audience is required (the push endpoint's URL by default)")
        self.audience = audience
        self.service_accounts = frozenset(service_accounts)
        self.certs = certs or GoogleCerts()
        self.clock_skew_s = clock_skew_s

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims, or Unauthenticated / Forbidden."""
        from google.auth import exceptions, jwt

        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing 'Authorization: Bearer <token>'")
        try:
            claims = jwt.decode(
                token.strip(),
                certs=self.certs(),
                audience=self.audience,
                clock_skew_in_seconds=self.clock_skew_s,
            )
        except (ValueError, exceptions.GoogleAuthError) as e:
            raise Unauthenticated(f"invalid token: {e}") from e
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthenticated(f"token issuer {claims.get('iss')!r} is not Google")
        email = claims.get("email")
        if not email or claims.get("email_verified") is not True:
            raise Forbidden("token has no verified email claim")
        if self.service_accounts and email not in self.service_accounts:
            raise Forbidden(f"{email} may not push here")
        return claims
