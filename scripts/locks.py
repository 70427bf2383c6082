"""Locks of exact versions per target, compiled from pyproject.toml's requirements.

    python scripts/locks.py compile [--upgrade]   regenerate locks/*.txt (`make lock`)
    python scripts/locks.py check LOCK            exit 1 when this interpreter's packages differ from LOCK
    python scripts/locks.py stale LOCK            print the installed packages that LOCK does not list
    python scripts/locks.py overwritten LOCK      print (as LOCK pins them) the packages whose files a bundler replaced
    python scripts/locks.py wheels TARGET...      check on PyPI that every pin of a target has a wheel for it

`check`, `stale` and `overwritten` use the standard library only: the installer runs them while it builds the venv.
Upgrading is `compile` after a change to pyproject.toml (or `--upgrade` for the newest releases it
allows), reviewed as a diff of locks/ and tested with `make test`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCKS = REPO / "locks"
# Debian bookworm, of the development machines and the images, has glibc 2.36.
PLATFORM = "x86_64-manylinux_2_36"
# The development target is the interpreter that scripts/install.sh finds here (redis' async-timeout
# is only for Python < 3.11.3); the images run Debian bookworm's python3.
DEV_PYTHON = "3.11.7"
IMAGE_PYTHON = "3.11.2"
# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that make `import vllm` fail next to the
# CPU torch (glmserve serves text only), and NIXL's CUDA 13 half is not needed to load it on a CPU.
# The CPU locks leave them out and are installed with --no-deps, so they stay out of the venv.
CPU_EXCLUDED = ("torchvision", "torchaudio", "torchcodec", "nixl-cu13")
# Installed beside any lock: the venv's own installer and glmserve itself (from the source tree).
NOT_LOCKED = frozenset({"pip", "glmserve"})
# Distributions that also install their own copies of other projects' files: xds-protos (Envoy's
# stubs) bundles old googleapis-common-protos, opentelemetry-proto (without ScopeSpans, which the
# OTLP exporter imports) and opencensus modules. Where both install a path, the owner's bytes must win:
# the installer reinstalls whichever owner `overwritten` names. Uninstalling a bundler deletes those
# paths too, owners' files included: reinstall the owners after it.
BUNDLERS = frozenset({"xds-protos"})
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


@dataclass(frozen=True, slots=True)
class Target:
    """One lock: the pyproject extras it installs, for which Python, and whether torch is the CPU build."""

    name: str
    extras: tuple[str, ...]
    python: str
    cpu_torch: bool

    @property
    def path(self) -> Path:
        return LOCKS / f"{self.name}.txt"


TARGETS = (
    Target("dev", ("cpu", "dev"), DEV_PYTHON, cpu_torch=True),
    Target("serving-cpu", ("cpu",), IMAGE_PYTHON, cpu_torch=True),
    Target("serving-cuda", ("cuda",), IMAGE_PYTHON, cpu_torch=False),
    Target("operator", (), IMAGE_PYTHON, cpu_torch=False),
)


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """Project name -> exact version of every `name==version` line of a lock."""
    pins = {}
    for line in path.read_text().splitlines():
        if match := PIN.match(line):
            pins[canonical(match[1])] = match[2]
    return pins


def installed() -> dict[str, str]:
    """Project name -> version of every distribution this interpreter can import."""
    return {canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def differences(lock: dict[str, str], present: dict[str, str]) -> list[str]:
    """What a venv holds that its lock does not say, one line each; empty when they agree."""
    problems = [f"{name}=={lock[name]} is locked but not installed" for name in sorted(lock.keys() - present.keys())]
    problems += [
        f"{name}=={present[name]} is installed but not locked"
        for name in sorted(present.keys() - lock.keys() - NOT_LOCKED)
    ]
    problems += [
        f"{name} is {present[name]}, the lock says {lock[name]}"
        for name in sorted(lock.keys() & present.keys())
        if present[name] != lock[name]
    ]
    return problems


def overwritten() -> list[str]:
    """Names of the installed distributions that a bundler's copy of one of their files replaced
    (the file on disk is missing or no longer has the hash their RECORD gives)."""
    dists = {canonical(dist.metadata["Name"]): dist for dist in metadata.distributions()}
    bundled = {str(path) for name in BUNDLERS & dists.keys() for path in dists[name].files or ()}
    found = []
    for name, dist in sorted(dists.items()):
        if name in BUNDLERS:
            continue
        for path in dist.files or ():
            if path.hash is None or path.hash.mode != "sha256" or str(path) not in bundled:
                continue
            file = Path(str(dist.locate_file(path)))
            digest = hashlib.sha256(file.read_bytes()).digest() if file.exists() else b""
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != path.hash.value:
                found.append(name)
                break
    return found


def torch_cpu_links() -> str:
    """Where the CPU build of torch is found: pip's find-links here, else PyTorch's CPU index."""
    return (
        os.environ.get("TORCH_CPU_LINKS")
        or os.environ.get("PIP_FIND_LINKS")
        or "https://download.pytorch.org/whl/cpu/torch/"
    )


def compile_lock(target: Target, upgrade: bool) -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        sys.exit("locks.py: uv not found (it is in the dev extra: scripts/install.sh installs it)")
    command = [uv, "pip", "compile", "pyproject.toml", "--quiet", "--no-header", "--annotation-style", "line"]
    command += ["--python-platform", PLATFORM, "--python-version", target.python, "--output-file", str(target.path)]
    command += [arg for extra in target.extras for arg in ("--extra", extra)]
    if target.cpu_torch:
        command += ["--find-links", torch_cpu_links()]
        command += [arg for name in CPU_EXCLUDED for arg in ("--no-emit-package", name)]
    if upgrade:
        command.append("--upgrade")
    subprocess.run(command, cwd=REPO, check=True)
    body = target.path.read_text()
    target.path.write_text("# Generated from pyproject.toml by `make lock` (scripts/locks.py); do not edit.\n" + body)


def wheels_command(target: Target, scratch: Path) -> tuple[list[str], dict[str, str]]:
    """pip's dry run of installing `target`'s lock on its platform: binary wheels only (an image
    build has no compilers for an sdist), metadata only (PyPI serves it apart from the wheels)."""
    arch, _, libc = PLATFORM.partition("-")
    newest = int(libc.rpartition("_")[2])
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(newest, 4, -1)]
    platforms += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    abi = "cp" + "".join(target.python.split(".")[:2])
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "--no-deps"]
    command += ["--only-binary=:all:", "--python-version", target.python, "--implementation", "cp"]
    command += [arg for tag in platforms for arg in ("--platform", tag)]
    command += [arg for name in (abi, "abi3", "none") for arg in ("--abi", name)]
    command += ["--target", str(scratch), "--requirement", str(target.path)]
    if target.cpu_torch:
        command += ["--find-links", torch_cpu_links()]
    # Only this target's sources: a machine's find-links could offer torch's CPU build to the CUDA lock.
    env = {key: value for key, value in os.environ.items() if key != "PIP_FIND_LINKS"}
    env["PIP_CONFIG_FILE"] = os.devnull
    return command, env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    compile_parser = commands.add_parser("compile", help="regenerate locks/*.txt")
    compile_parser.add_argument("--upgrade", action="store_true", help="take the newest releases pyproject allows")
    wheels_parser = commands.add_parser("wheels", help="check that every pin of TARGET has a wheel for it")
    wheels_parser.add_argument("targets", nargs="+", choices=[target.name for target in TARGETS], metavar="TARGET")
    for name, help_text in (
        ("check", "compare this interpreter's packages with LOCK"),
        ("stale", "list unlocked"),
        ("overwritten", "list the pins of LOCK whose files a bundler replaced"),
    ):
        commands.add_parser(name, help=help_text).add_argument("lock", type=Path)
    args = parser.parse_args(argv)
    if args.command == "compile":
        LOCKS.mkdir(exist_ok=True)
        for target in TARGETS:
            compile_lock(target, args.upgrade)
        print("locks.py: wrote " + " ".join(str(target.path.relative_to(REPO)) for target in TARGETS))
        return 0
    if args.command == "wheels":
        failed = 0
        for target in (target for target in TARGETS if target.name in args.targets):
            with tempfile.TemporaryDirectory() as scratch:
                command, env = wheels_command(target, Path(scratch))
                failed |= subprocess.run(command, env=env, check=False).returncode
        return 1 if failed else 0
    if not args.lock.is_file():
        parser.error(f"LOCK: {args.lock} is not a file (the locks are in {LOCKS})")
    lock, present = read_lock(args.lock), installed()
    if args.command == "stale":
        for name in sorted(present.keys() - lock.keys() - NOT_LOCKED):
            print(name)
        return 0
    if args.command == "overwritten":
        for name in overwritten():
            print(f"{name}=={lock.get(name, present[name])}")
        return 0
    problems = differences(lock, present)
    problems += [f"{name}: files overwritten by {', '.join(sorted(BUNDLERS))}; reinstall it" for name in overwritten()]
    for problem in problems:
        print(f"{args.lock.name}: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
