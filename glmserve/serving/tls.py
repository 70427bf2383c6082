"""The ingress's HTTPS, checked before anything starts.

Ray Serve hands uvicorn only the certificate, key, key password and CA file (HTTPOptions), so the
protocol versions and ciphers are those of Python's default server context
(`ssl.SSLContext(PROTOCOL_TLS_SERVER)`, which uvicorn builds): TLS 1.2 and 1.3 only, and for TLS
1.2 only forward-secret ECDHE/DHE suites with AES-GCM, ChaCha20-Poly1305 or SHA-2 CBC
(docs/security.md lists them). An OpenSSL configuration can lower that floor for every program on
the machine, so `glmserve up` checks the context it will get rather than trusting it.
"""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

from glmserve.common.errors import ConfigError

MIN_VERSION = ssl.TLSVersion.TLSv1_2


def server_context() -> ssl.SSLContext:
    """The context uvicorn makes for the ingress (before it loads the certificate)."""
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


def check_tls(keyfile: Path) -> None:
    """Refuses to serve HTTPS with a key others can read, or with a TLS floor below 1.2."""
    mode = keyfile.stat().st_mode  # through symlinks: a Kubernetes Secret's files are links
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"TLS key file {keyfile} is accessible by its group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {keyfile}"
        )
    floor = server_context().minimum_version
    if floor < MIN_VERSION:  # MINIMUM_SUPPORTED (-2) too
        raise ConfigError(
            f"this Python/OpenSSL accepts {floor.name} by default (an OpenSSL configuration's MinProtocol?); "
            f"the ingress serves TLS 1.2 or later only"
        )
