"""Reading API keys out of Secrets, each Secret fetched at most once per reconciliation."""

from __future__ import annotations

import base64
import binascii
from functools import cache

from glmserve.common.tenancy import SecretKeyRef
from glmserve.operator.cluster import Cluster
from glmserve.operator.tenancy import SecretReader


def secret_reader(cluster: Cluster, namespace: str) -> SecretReader:
    @cache
    def data(name: str) -> dict[str, str]:
        secret = cluster.get("v1", "Secret", name, namespace)
        return (secret or {}).get("data") or {}

    def read(ref: SecretKeyRef) -> str | None:
        encoded = data(ref.name).get(ref.key)
        if encoded is None:
            return None
        try:
            return base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None

    return read
