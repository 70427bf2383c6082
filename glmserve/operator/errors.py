"""How API failures reach kopf: what a retry can fix is temporary (with back-off), the rest permanent."""

from __future__ import annotations

import kopf
from kubernetes.dynamic.exceptions import DynamicApiError, ResourceNotFoundError
from urllib3.exceptions import HTTPError

RETRY_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
RETRY_DELAY_S = 10.0
# A missing API (KubeRay or Karpenter not installed yet) is fixed by an admin, not in seconds.
MISSING_API_DELAY_S = 60.0
API_ERRORS = (ResourceNotFoundError, DynamicApiError, HTTPError)


def as_kopf_error(exc: Exception, doing: str) -> kopf.TemporaryError | kopf.PermanentError:
    """`exc` is one of API_ERRORS."""
    if isinstance(exc, ResourceNotFoundError):
        return kopf.TemporaryError(f"{doing}: the API is not served ({exc}); install it", delay=MISSING_API_DELAY_S)
    if isinstance(exc, DynamicApiError):
        message = f"{doing}: {exc.status} {exc.summary()}"
        if exc.status in RETRY_STATUSES:
            return kopf.TemporaryError(message, delay=RETRY_DELAY_S)
        return kopf.PermanentError(message)
    return kopf.TemporaryError(f"{doing}: {exc}", delay=RETRY_DELAY_S)  # the connection failed
