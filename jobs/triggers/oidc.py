"""Verify the OIDC token Pub/Sub signs for each push request (``Authorization: Bearer <JWT>``).

A push subscription with authentication sends a Google-signed ID token: issuer
``accounts.google.com`` (or its https:// form), audience as configured on the subscription
(default: the endpoint URL), and the push service account in the ``email`` claim
(``email_verified`` true). A missing, malformed, expired, wrongly signed or wrongly addressed
token is ``Unauthenticated`` (HTTP 401); a valid token of another identity is ``Forbidden``
(403). Google's signing certificates are fetched from ``GOOGLE_CERTS_URL`` and cached as the
response's Cache-Control allows; a failed fetch is not retried before a back-off (30 s,
doubling to 10 min), and a token naming a key the cache lacks refetches at most once a minute,
so a flood of garbage tokens costs no network at all. Tests inject their own fetch.
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

    MIN_REFRESH_S = 60.0  # a token with an unknown key id refetches at most this often
    BACKOFF_S = (30.0, 600.0)  # after a failed fetch: first wait, longest wait

    def __init__(
        self,
        url: str = GOOGLE_CERTS_URL,
        default_ttl_s: float = 3600.0,
        fetch: Callable[[], tuple[Certs, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.url, self.default_ttl_s = url, default_ttl_s
        self._fetch_fn = fetch or self._fetch
        self._clock = clock
        self._certs: Certs = {}
        self._expires = 0.0
        self._fetched_at = -1e18
        self._next_try = 0.0
        self._backoff = self.BACKOFF_S[0]
        self.fetches = 0
        self._lock = threading.Lock()

    def __call__(self, kid: str | None = None) -> Certs:
        """The certificates; refetched when expired, or when ``kid`` is missing from them (at
        most once a minute). Raises Unauthenticated while a failed fetch backs off."""
        with self._lock:
            now = self._clock()
            unknown = kid is not None and kid not in self._certs
            due = now >= self._expires or (unknown and now - self._fetched_at >= self.MIN_REFRESH_S)
            if due and now >= self._next_try:
                self.fetches += 1
                try:
                    certs, ttl = self._fetch_fn()
                except Exception as e:
                    self._next_try = now + self._backoff
                    self._backoff = min(2 * self._backoff, self.BACKOFF_S[1])
                    raise Unauthenticated(f"cannot fetch Google's certificates: {e!r}") from e
                self._certs, self._fetched_at = certs, now
                self._expires, self._backoff = now + ttl, self.BACKOFF_S[0]
            if not self._certs:
                raise Unauthenticated("Google's certificates are not available (backing off)")
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
            header = jwt.decode_header(token.strip())
        except (ValueError, exceptions.GoogleAuthError) as e:
            raise Unauthenticated(f"not a JWT: {e}") from e
        kid = header.get("kid") if isinstance(header, dict) else None
        try:
            claims = jwt.decode(
                token.strip(),
                certs=_certs_for(self.certs, kid),
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


def _certs_for(source: Callable[..., Certs], kid: str | None) -> Certs:
    """``source(kid)`` when it takes the key id (GoogleCerts), else ``source()`` (tests)."""
    if isinstance(source, GoogleCerts):
        return source(kid)
    return source()
