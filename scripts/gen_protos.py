"""Generate `mitransfer/v1/` from proto/mitransfer/v1 (the one command for generated code).

    python scripts/gen_protos.py          # regenerate mitransfer/v1/ in place
    python scripts/gen_protos.py --check  # exit 1 if mitransfer/v1/ differs from what proto/ makes

Output: *_pb2.py, *_pb2_grpc.py and typed *.pyi stubs (mypy-protobuf). Never edit it by hand.
Only mitransfer/v1/ is generated: mitransfer/__init__.py, mitransfer/py.typed and the protocol
helpers in mitransfer/protocol/ are kept by hand and never touched here.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PACKAGE = "mitransfer"
GENERATED = Path(PACKAGE) / "v1"  # the only folder this script writes


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    # The protoc plugins (protoc-gen-mypy…) live beside this interpreter, active venv or not.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    for folder in [out / GENERATED, *(p for p in (out / GENERATED).rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    unexpected = sorted(str(p.relative_to(out)) for p in (out / PACKAGE).iterdir() if p.name != GENERATED.name)
    if unexpected:  # a .proto outside proto/mitransfer/v1 would land beside the hand-kept files
        raise SystemExit(f"protoc wrote outside {GENERATED}/: {', '.join(unexpected)}")


def _differences(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    diff = sorted(str(p) for p in files_a ^ files_b)
    diff += sorted(str(p) for p in files_a & files_b if not filecmp.cmp(a / p, b / p, shallow=False))
    return diff


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the generated code is stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        if args.check:
            stale = _differences(out / GENERATED, ROOT / GENERATED)
            if stale:
                print("generated code is stale; run: python scripts/gen_protos.py", file=sys.stderr)
                for name in stale:
                    print(f"  {GENERATED / name}", file=sys.stderr)
                return 1
            print("generated code is current")
            return 0
        shutil.rmtree(ROOT / GENERATED, ignore_errors=True)
        shutil.copytree(out / GENERATED, ROOT / GENERATED)
    print(f"generated {GENERATED}/ from proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
