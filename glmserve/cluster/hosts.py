"""A host: one pod as a network namespace with its own IP, its own mount namespace (private
/dev/shm, /tmp/ray and the pod's Secret/ConfigMap mounts), its own UTS namespace (the pod's name
as host name), its processes and its log.

Mounts are private rather than paths rewritten: the pod templates name absolute paths
(/etc/glmserve/..., /tmp/ray, /dev/shm) that every host would otherwise share, and a private
/dev/shm keeps vLLM, NIXL/UCX and Ray's object store from taking shared-memory shortcuts between
"hosts" that separate machines would not have. `ip netns exec` already gives each process a
mount namespace of its own (with /etc/netns/<ns>/hosts over /etc/hosts); the mounts are made there.
As the kubelet does, the host name is the pod's name and the hosts file maps it to the pod's IP:
Gloo (vLLM's data-parallel and expert groups on CPU) binds to the address its host name resolves
to, and with the machine's name, unknown to the hosts file, every rank would bind 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from glmserve.cluster import netns
from glmserve.cluster.pods import Pod

# What a container image provides and a pod does not set: the same interpreter and code as here.
PASSED_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "HF_HOME", "VIRTUAL_ENV", "HOME")
# What UCX (NIXL's transport) finds on separate machines: only the network. Here the hosts share
# PIDs and IPC, so its cma/sysv transports would otherwise move KV between "hosts" in memory.
NODE_ENV = {"UCX_TLS": "tcp,self", "UCX_NET_DEVICES": "eth0"}
ENV_FILE = "env.json"
RAY_HOME = Path.home() / ".ray"  # a token file here would turn token auth on for every host


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    pod: Pod
    netns: str
    veth: str
    address: ipaddress.IPv4Interface
    dir: Path

    @property
    def ip(self) -> str:
        return str(self.address.ip)

    @property
    def log(self) -> Path:
        return self.dir / "pod.log"


def _mount_script(host: Host) -> str:
    lines = [
        "set -e",
        f"hostname {shlex.quote(host.name)}",
        f"mount -t tmpfs -o size={host.pod.shm_bytes} tmpfs /dev/shm",
        "mkdir -p /tmp/ray",
        f"mount --bind {shlex.quote(str(host.dir / 'ray'))} /tmp/ray",
    ]
    if RAY_HOME.is_dir():
        lines.append(f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(RAY_HOME))}")
    for i, path in enumerate(sorted(host.pod.files)):
        lines.append(f"mkdir -p {shlex.quote(path)}")
        lines.append(f"mount --bind {shlex.quote(str(host.dir / 'mounts' / str(i)))} {shlex.quote(path)}")
    for path, directory in sorted(host.pod.claims.items()):
        lines.append(f"mkdir -p {shlex.quote(path)}")
        lines.append(f"mount --bind -o ro {shlex.quote(directory)} {shlex.quote(path)}")
    lines.append(f"exec bash -c {shlex.quote(host.pod.command)}")
    return "\n".join(lines)


def write_files(host: Host) -> None:
    (host.dir / "ray").mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(sorted(host.pod.files)):
        target = host.dir / "mounts" / str(i)
        target.mkdir(parents=True, exist_ok=True)
        for name, content in host.pod.files[path].items():
            (target / name).write_text(content)


def environment(host: Host) -> dict[str, str]:
    base = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '/usr/bin:/bin')}"
    env = {**base, **NODE_ENV, **host.pod.env}
    if "RAY_CLOUD_INSTANCE_ID" in env:
        env["RAY_CLOUD_INSTANCE_ID"] = host.name
    return env


def start(host: Host) -> subprocess.Popen[bytes]:
    write_files(host)
    env = environment(host)
    # For `cluster exec`, which runs a command with the pod's env as `kubectl exec` would.
    with os.fdopen(os.open(host.dir / ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        json.dump(env, f)
    with host.log.open("ab") as log:
        return subprocess.Popen(
            ["ip", "netns", "exec", host.netns, "unshare", "--uts", "bash", "-c", _mount_script(host)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_namespace(name: str, veth: str | None) -> None:
    """SIGKILL every process in a host's namespace (all of them, whoever started them), then
    remove the namespace and its veth."""
    for _ in range(50):
        pids = netns.pids(name)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    netns.delete_host(name, veth)
