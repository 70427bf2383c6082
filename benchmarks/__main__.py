"""`python -m benchmarks`: lists the benchmarks; run one with `python -m benchmarks.NAME`."""

import pkgutil
from pathlib import Path

HELPERS = {"loadgen", "results_io", "servers", "sim", "workload"}

if __name__ == "__main__":
    names = [m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]) if m.name not in HELPERS]
    print("benchmarks (run with python -m benchmarks.NAME):")
    for name in sorted(n for n in names if not n.startswith("_")):
        print(f"  {name}")
