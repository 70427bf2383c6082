"""Writes every dashboard's JSON into a directory (default: the repository's dashboards/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from glmserve.dashboards import DASHBOARDS, render

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "dashboards"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m glmserve.dashboards", description=__doc__)
    parser.add_argument("directory", type=Path, nargs="?", default=DEFAULT_DIR)
    directory = parser.parse_args().directory
    directory.mkdir(parents=True, exist_ok=True)
    for dashboard in DASHBOARDS:
        (directory / dashboard.filename).write_text(render(dashboard))
        print(directory / dashboard.filename)


if __name__ == "__main__":
    main()
