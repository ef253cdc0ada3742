"""Generate the Python wire types from proto/saiki/v1/*.proto (run: `make proto`).

The stubs are checked in; tests/proto/test_generated.py regenerates them into a temporary
folder and fails if the checked-in files drift from the .proto files.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on every saiki .proto file, writing _pb2, _pb2_grpc and .pyi into out_dir."""
    import grpc_tools
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("saiki/v1/*.proto"))
    well_known = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    # protoc resolves the relative source names against the -I roots.
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(out_dir.glob("saiki/v1/*_pb2*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT
    for path in generate(target):
        print(path)
