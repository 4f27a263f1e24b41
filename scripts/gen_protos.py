"""Generate the Python gRPC stubs in protocol/ from protocol/proto/*.proto.

Run `python scripts/gen_protos.py` after editing a .proto file (it needs the test extra's
grpcio-tools, pinned so the output is reproducible); `--check` exits 1 when the committed
stubs differ from what would be generated, which tests/protocol/test_stubs.py relies on.

Two rewrites follow protoc, each for a reason:
- protoc writes `import grpc_service_pb2`, a top-level import; ours live in edgecut.protocol.
- the messages are registered in a private descriptor pool, not the process-wide default one,
  because tritonclient registers its own `inference` package under the same file and symbol
  names, and a process (a test, a device agent) may well hold both.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protocol" / "proto"
OUT_DIR = ROOT / "protocol"


def generate() -> dict[str, str]:
    """Return {file name: generated text} for every stub file, without writing anything."""
    protos = sorted(PROTO_DIR.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}",
            f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}",
            *[str(p) for p in protos],
        ]
        subprocess.run(cmd, check=True)
        files = {p.name: p.read_text() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    stems = [p.stem for p in protos]
    for name, text in files.items():
        for stem in stems:
            text = re.sub(rf"^import {stem}_pb2 as", f"from . import {stem}_pb2 as", text,
                          flags=re.MULTILINE)
        text = text.replace("_descriptor_pool.Default().AddSerializedFile",
                            "_descriptor_pool.DescriptorPool().AddSerializedFile")
        files[name] = text
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed stubs are stale; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        target = OUT_DIR / name
        if target.exists() and target.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            target.write_text(text)
    if args.check and stale:
        print(f"stale stubs: {', '.join(stale)}; run: python scripts/gen_protos.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
