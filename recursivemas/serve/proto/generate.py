"""Regenerate the committed gRPC stubs from ``recursivemas.proto`` (``make proto``).

Run from anywhere: ``python recursivemas/serve/proto/generate.py [--out DIR]``. It imports nothing of
``recursivemas`` (so no torch), only ``grpc_tools`` (the ``grpcio-tools`` package, in the ``dev`` extra).

The include root is the repository root, so the file's proto path is ``recursivemas/serve/proto/recursivemas.proto``
and the generated gRPC module imports its messages as ``from recursivemas.serve.proto import recursivemas_pb2``:
a package import, with no fix-up of the generated code. ``tests/test_serve_proto.py`` regenerates into a temporary
directory and compares, so stubs that are stale against the ``.proto`` fail the tests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]  # the repository root: recursivemas/serve/proto/ -> ../../..
PROTO = HERE / "recursivemas.proto"
OUTPUTS = ("recursivemas_pb2.py", "recursivemas_pb2.pyi", "recursivemas_pb2_grpc.py")


def regenerate(out: Path = ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) on the .proto; return the generated files, under ``out/recursivemas/...``."""
    try:
        from grpc_tools import protoc
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SystemExit("grpcio-tools is not installed: pip install -e '.[dev]' (or pip install grpcio-tools)") from e
    import importlib.resources

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO} (its message is above)")
    target = out / HERE.relative_to(ROOT)
    return [target / name for name in OUTPUTS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write under (default: the repository root)")
    for path in regenerate(parser.parse_args(argv).out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
