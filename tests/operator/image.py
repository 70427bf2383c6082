"""The operator started from its image (images/operator) instead of in-process, for the end-to-end
tests' `--operator-image`: `kopf run` inside the image, on the host's network where kmock listens."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

KUBECONFIG = "/etc/glmserve/kubeconfig"


class ImageOperator:
    """`kopf ARGS` in a container of `image`, through podman or (without a container engine) buildah."""

    def __init__(self, image: str, kubeconfig: Path, args: list[str], log: Path) -> None:
        self._image, self._kubeconfig, self._args, self._log = image, kubeconfig, args, log
        self._container: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None

    def _command(self) -> list[str]:
        mount = f"{self._kubeconfig}:{KUBECONFIG}:ro"
        kopf = ["kopf", *self._args]
        if podman := shutil.which("podman"):
            env = f"KUBECONFIG={KUBECONFIG}"
            return [podman, "run", "--rm", "--network=host", "-v", mount, "-e", env, self._image, *kopf]
        if buildah := shutil.which("buildah"):
            made = subprocess.run(
                [buildah, "from", "--pull=never", self._image], check=False, capture_output=True, text=True
            )
            if made.returncode:
                pytest.fail(f"buildah from {self._image}: {made.stderr.strip()} (build it with `make images`)")
            self._container = made.stdout.strip()
            # buildah's chroot isolation shares the host's network namespace.
            return [buildah, "run", "-v", mount, "--env", f"KUBECONFIG={KUBECONFIG}", self._container, "--", *kopf]
        pytest.fail("--operator-image needs podman or buildah (apt-get install buildah)")

    def __enter__(self) -> ImageOperator:
        command = self._command()
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def _stop(self) -> None:
        """SIGTERM to kopf, as the kubelet stops a container. podman forwards it; buildah would kill
        kopf outright, so kopf (a process of this session: chroot isolation shares the PID
        namespace) gets it directly."""
        assert self._process is not None
        if self._container is None:
            self._process.terminate()
            return
        listed = subprocess.run(
            ["ps", "-ww", "-o", "pid=,args=", "-s", str(self._process.pid)], capture_output=True, text=True, check=False
        )
        for line in listed.stdout.splitlines():
            pid, args = line.split(None, 1)
            if "/bin/kopf run" in args and not args.startswith("buildah"):  # not its chroot wrapper
                os.kill(int(pid), signal.SIGTERM)

    @property
    def output(self) -> str:
        return self._log.read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        if self._process.poll() is None:
            self._stop()
        try:
            self.exit_code = self._process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self.exit_code = self._process.wait()
        if self._container and (buildah := shutil.which("buildah")):
            subprocess.run([buildah, "rm", self._container], capture_output=True, check=False)
