"""Retry policies for transient cloud errors, declared once and reused everywhere."""

from __future__ import annotations

import tenacity

try:  # google-api-core is a dependency of the Google clients; absent only in odd installs
    from google.api_core import exceptions as gexc

    _TRANSIENT_GOOGLE: tuple[type[BaseException], ...] = (
        gexc.TooManyRequests,
        gexc.InternalServerError,
        gexc.BadGateway,
        gexc.ServiceUnavailable,
        gexc.GatewayTimeout,
        gexc.DeadlineExceeded,
    )
except ImportError:  # pragma: no cover
    _TRANSIENT_GOOGLE = ()

try:
    import requests

    _TRANSIENT_HTTP: tuple[type[BaseException], ...] = (
        requests.ConnectionError,
        requests.Timeout,
    )
except ImportError:  # pragma: no cover
    _TRANSIENT_HTTP = ()

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    *_TRANSIENT_GOOGLE,
    *_TRANSIENT_HTTP,
    ConnectionError,
    TimeoutError,
)


def _log_retry(state: tenacity.RetryCallState) -> None:
    import logging

    exc = state.outcome.exception() if state.outcome else None
    logging.getLogger("hyperbatch.retry").warning(
        "transient error in %s (attempt %d), retrying: %r",
        getattr(state.fn, "__qualname__", state.fn),
        state.attempt_number,
        exc,
    )


#: Cloud Storage and other Google API calls: a few quick retries, then give up loudly.
CLOUD_RETRY = tenacity.retry(
    retry=tenacity.retry_if_exception_type(TRANSIENT_ERRORS),
    stop=tenacity.stop_after_attempt(6) | tenacity.stop_after_delay(120),
    wait=tenacity.wait_exponential_jitter(multiplier=0.25, max=10),
    before_sleep=_log_retry,
    reraise=True,
)
