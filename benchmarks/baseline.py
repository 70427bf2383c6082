"""Today's code for a benchmark's baseline: a git ref's `glmserve` package (and this tree's
benchmarks beside it), extracted into a directory that a subprocess puts first on its path."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def baseline_tree(ref: str, into: Path) -> Path | None:
    """`into`, holding `ref`'s glmserve package and a copy of this tree's benchmarks; None where
    git has no such ref (e.g. a shallow clone)."""
    archive = subprocess.run(["git", "archive", ref, "glmserve"], cwd=ROOT, capture_output=True, check=False)
    if archive.returncode:
        print(f"no baseline: git archive {ref} failed: {archive.stderr.decode().strip()}", file=sys.stderr)
        return None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    shutil.copytree(ROOT / "benchmarks", into / "benchmarks", ignore=shutil.ignore_patterns("results"))
    return into
