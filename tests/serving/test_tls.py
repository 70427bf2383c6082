"""The ingress's TLS checks (glmserve/serving/tls.py) and `glmserve up` refusing a readable key
before it starts anything; the live handshakes are in test_security.py."""

from __future__ import annotations

import re
import ssl
import subprocess
from pathlib import Path

import pytest

from glmserve.common.errors import ConfigError
from glmserve.common.ports import free_port
from glmserve.serving.tls import check_tls, server_context
from tests.conftest import VENV_BIN
from tests.serving.conftest import self_signed

DOC = Path(__file__).parents[2] / "docs" / "security.md"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o700 | 0o010])
def test_a_key_others_can_read_is_refused_with_the_chmod_to_run(tmp_path: Path, mode: int) -> None:
    _, key = self_signed(tmp_path)
    key.chmod(mode)
    with pytest.raises(ConfigError) as refused:
        check_tls(key)
    assert str(refused.value).endswith(f"(mode {mode:04o}); run: chmod 600 {key}")


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_is_accepted_also_through_a_symlink(tmp_path: Path, mode: int) -> None:
    _, key = self_signed(tmp_path)
    key.chmod(mode)
    link = tmp_path / "tls.key"  # how a Kubernetes Secret volume presents its files
    link.symlink_to(key)
    check_tls(link)


def test_glmserve_up_refuses_a_readable_key_before_starting_anything(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    key.chmod(0o644)
    port = free_port()
    argv = [
        str(VENV_BIN / "glmserve"),
        "up",
        "--port",
        str(port),
        "--tls-certfile",
        str(cert),
        "--tls-keyfile",
        str(key),
    ]
    argv += ["--ray-address", "127.0.0.1:1"]  # were the check missed, no stack would start either
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert f"run: chmod 600 {key}" in done.stdout + done.stderr
    assert "starting Ray" not in done.stdout + done.stderr


def documented_ciphers() -> list[str]:
    """The cipher suites docs/security.md says the ingress offers, in order."""
    section = DOC.read_text().split("## HTTPS", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"`((?:TLS_|ECDHE-|DHE-)[A-Z0-9_-]+)`", section)


def test_the_documented_protocols_and_ciphers_are_the_servers() -> None:
    context = server_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert documented_ciphers() == [c["name"] for c in context.get_ciphers()]
