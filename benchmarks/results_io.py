"""Benchmark results: JSON + a markdown table + a PNG plot in benchmarks/results/."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    import os

    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write(name: str, data: dict[str, Any], markdown: str, plot: Callable[[Path], None]) -> list[Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    paths = [RESULTS / f"{name}.json", RESULTS / f"{name}.md", RESULTS / f"{name}.png"]
    paths[0].write_text(json.dumps({"environment": environment(), **data}, indent=2) + "\n")
    paths[1].write_text(markdown)
    plot(paths[2])
    return paths
