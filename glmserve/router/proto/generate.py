"""Regenerates the committed stubs from router.proto: `python -m glmserve.router.proto.generate`.

Run from anywhere; the repository root is the include path, so the stubs import each other as
`glmserve.router.proto.router_pb2`.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO = Path(__file__).with_name("router.proto")
ROOT = PROTO.parents[3]
STUBS = ("router_pb2.py", "router_pb2.pyi", "router_pb2_grpc.py")


def generate(out_root: Path, proto: Path = PROTO, root: Path = ROOT) -> list[Path]:
    """Writes the stubs of `proto` (imported relative to `root`) under `out_root` and returns
    their paths; by default the router's, under `out_root`/glmserve/router/proto."""
    from grpc_tools import protoc

    rel = proto.relative_to(root)
    args = ["protoc", f"-I{root}", f"--python_out={out_root}", f"--pyi_out={out_root}"]
    args += [f"--grpc_python_out={out_root}", str(rel)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {proto}")
    return [out_root / rel.parent / name for name in STUBS]


if __name__ == "__main__":
    for path in generate(ROOT):
        print(f"wrote {path}", file=sys.stderr)
