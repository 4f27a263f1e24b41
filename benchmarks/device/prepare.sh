#!/usr/bin/env bash
# Builds, from scratch, the folder that benchmarks/device/run.sh carries to the device
# machine (default .dev/ at the repository root; git-ignored):
#
#     bash benchmarks/device/prepare.sh      # then one device call: bash .dev/run.sh
#
#   whl/            wheels the benchmark needs beyond the device image: CPython 3.12, x86-64
#   triton.tar.xz   tritonserver 2.51 and its Python backend, trimmed from nvidia-pytriton 0.7.0
#   ppocr/          the PP-OCR classifier's .onnx from the installed rapidocr-onnxruntime
#   run.sh, serving_wrap.py, triton_preflight.py, check_cpu.py, taskset   copies of this folder
#
# Needs pip with access to PyPI, xz, tar, git, and binutils' strip (without it the server's
# binaries keep 15 MiB of symbols). Settings (environment):
#   PREPARED       the folder to build (default REPO/.dev); an existing one is replaced
#   XZ_LEVEL       xz preset for triton.tar.xz (default 9; 0 for a quick trial)
#   PYTHON         runs pip, find_triton and the model lookup (default REPO/.venv/bin/python,
#                  else python3); it needs rapidocr-onnxruntime 1.4.4 installed
#   TRITON_WHEEL   an nvidia-pytriton 0.7.0 wheel, a folder holding one, or the unpacked
#                  wheel (default /tmp/edgecut-pytriton, as benchmarks/serving.py --triton);
#                  a missing wheel is fetched with pip download
# pip's own variables apply: PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR takes the wheels from DIR.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PREPARED="${PREPARED:-$REPO/.dev}"
XZ_LEVEL="${XZ_LEVEL:-9}"
if [ -z "${PYTHON:-}" ]; then
    [ -x "$REPO/.venv/bin/python" ] && PYTHON="$REPO/.venv/bin/python" || PYTHON=python3
fi
TRITON_WHEEL="${TRITON_WHEEL:-${TMPDIR:-/tmp}/edgecut-pytriton}"
PYTRITON_VERSION=0.7.0   # ships tritonserver 2.51; the trimming below follows its layout
PPOCR_CLS=ch_ppocr_mobile_v2.0_cls_infer.onnx
RUN_SCRIPTS=(run.sh serving_wrap.py triton_preflight.py check_cpu.py taskset)
TRAVEL_LIMIT_MIB=64      # the device call's limit: working tree and carried folder together

# The versions this repository's .venv runs, so the device measures the same client and
# server code as here. The device image (Python 3.12.3, no network) has numpy, onnx,
# onnxruntime, grpcio, aiohttp, psutil, rich, networkx, prometheus-client, scipy and
# setuptools; grpcio is carried anyway, to get this version rather than the image's.
WHEELS=(
    brotli==1.2.1
    cffi==2.1.1
    cryptography==50.0.2
    gevent==26.9.0
    geventhttpclient==2.6.1
    greenlet==3.3.2
    grpcio==1.85.3
    grpcio-health-checking==1.81.1
    orjson==3.13.0
    protobuf==6.33.6
    pycparser==3.12
    python-rapidjson==1.25
    tritonclient==2.73.0
    zope.event==6.2
    zope.interface==8.7
    zstandard==0.25.0
)
# pip takes each --platform tag literally (manylinux_2_28 does not admit a wheel tagged only
# manylinux_2_24), so a wheel built for another glibc needs its own tag. The extra tags are
# tried only when the base ones find nothing, and come after them, so that the base ones
# win where a release has both.
BASE_PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64
                manylinux2014_x86_64 manylinux1_x86_64)
EXTRA_PLATFORMS=(manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64
                 manylinux_2_35_x86_64)

say() { echo "== $*"; }
die() { echo "!!! $*" >&2; exit 1; }

[ -f "$REPO/benchmarks/serving.py" ] || die "$REPO is not the repository root"
for tool in git tar xz; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
"$PYTHON" -m pip --version >/dev/null || die "$PYTHON has no pip (set PYTHON)"
if [ -e "$PREPARED" ] && [ -n "$(ls -A "$PREPARED")" ] && [ ! -d "$PREPARED/whl" ]; then
    # It is deleted and rebuilt below: refuse anything that is not an earlier kit.
    die "$PREPARED exists and holds no whl/: not replacing it (set PREPARED)"
fi

# Built in a scratch folder and moved into place at the end, so that a failed run leaves
# an earlier kit as it was.
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/edgecut-devkit.XXXXXX")"
trap 'rm -rf "$SCRATCH"' EXIT
KIT="$SCRATCH/kit"
mkdir -p "$KIT/whl" "$KIT/ppocr"

say "wheels for CPython 3.12, x86-64 -> whl/"
platform_flags() { local p; for p in "$@"; do printf -- '--platform\n%s\n' "$p"; done; }
mapfile -t BASE_FLAGS < <(platform_flags "${BASE_PLATFORMS[@]}")
mapfile -t EXTRA_FLAGS < <(platform_flags "${EXTRA_PLATFORMS[@]}")
for wheel in "${WHEELS[@]}"; do
    # One folder per wheel: exactly one file must come out of each download.
    one="$SCRATCH/one" && rm -rf "$one" && mkdir -p "$one"
    pip_download=("$PYTHON" -m pip download -q --disable-pip-version-check --no-deps
                  --only-binary=:all: --python-version 3.12 --implementation cp -d "$one")
    if ! "${pip_download[@]}" "${BASE_FLAGS[@]}" "$wheel" 2>"$SCRATCH/pip.err"; then
        echo "   $wheel: none for the base platforms; adding ${EXTRA_PLATFORMS[*]}"
        "${pip_download[@]}" "${BASE_FLAGS[@]}" "${EXTRA_FLAGS[@]}" "$wheel" \
            2>"$SCRATCH/pip.err" || { cat "$SCRATCH/pip.err" >&2; die "pip download $wheel"; }
    fi
    files=("$one"/*.whl)
    [ ${#files[@]} -eq 1 ] && [ -f "${files[0]}" ] || die "pip download $wheel gave: $(ls "$one")"
    echo "   $(basename "${files[0]}")"
    mv "${files[0]}" "$KIT/whl/"
done

say "nvidia-pytriton $PYTRITON_VERSION from $TRITON_WHEEL"
# find_triton unpacks the wheel beside it (downloading it first when missing) and answers
# the unpacked root.
TRITON_ROOT="$("$PYTHON" - "$REPO" "$TRITON_WHEEL" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, sys.argv[1])
from benchmarks.serving.triton import TritonUnavailable, find_triton

try:
    print(find_triton(Path(sys.argv[2]), download=True))
except TritonUnavailable as exc:
    sys.exit(f"!!! {exc}")
EOF
)"
[ -d "$TRITON_ROOT/nvidia_pytriton-$PYTRITON_VERSION.dist-info" ] \
    || die "$TRITON_ROOT is not nvidia-pytriton $PYTRITON_VERSION"
echo "   unpacked: $TRITON_ROOT"

say "triton.tar.xz: trimmed, stripped, xz -$XZ_LEVEL"
SERVER=pytriton/tritonserver
TRIM="$SCRATCH/triton"
mkdir -p "$TRIM/$SERVER/bin" "$TRIM/$SERVER/backends/python" \
         "$TRIM/$SERVER/python_backend_stubs/3.12" "$TRIM/nvidia_pytriton.libs"
cp "$TRITON_ROOT/$SERVER/bin/tritonserver" "$TRIM/$SERVER/bin/"
# Not backends/python/triton_python_backend_stub: it is the stub for Python 3.11, and
# benchmarks/serving/triton.py copies the 3.12 one there only when none is present.
cp "$TRITON_ROOT/$SERVER/backends/python/libtriton_python.so" \
   "$TRITON_ROOT/$SERVER/backends/python/triton_python_backend_utils.py" \
   "$TRIM/$SERVER/backends/python/"
# Only the stub for the device's Python 3.12 (it loads the system's libpython3.12.so.1.0).
cp "$TRITON_ROOT/$SERVER/python_backend_stubs/3.12/triton_python_backend_stub" \
   "$TRIM/$SERVER/python_backend_stubs/3.12/"
cp -r "$TRITON_ROOT/$SERVER/caches" "$TRIM/$SERVER/"
for lib in "$TRITON_ROOT"/nvidia_pytriton.libs/*; do
    case "$(basename "$lib")" in
        libpython3-*.13.so*) ;;   # 30 MiB, needed only by the 3.13 stub, which is not carried
        *) cp "$lib" "$TRIM/nvidia_pytriton.libs/" ;;
    esac
done
# NVIDIA's own binaries carry symbols (15 MiB of the 105 MiB left after trimming). The
# bundled third-party libraries are left as auditwheel wrote them: strip takes next to
# nothing from them, and makes some larger.
if command -v strip >/dev/null; then
    strip "$TRIM/$SERVER/bin/tritonserver" \
          "$TRIM/$SERVER/backends/python/libtriton_python.so" \
          "$TRIM/$SERVER/python_backend_stubs/3.12/triton_python_backend_stub" \
          "$TRIM/$SERVER"/caches/local/*.so \
          "$TRIM"/nvidia_pytriton.libs/libtritonserver-*.so
else
    echo "   strip is absent: the binaries go unstripped"
fi
chmod -R u=rwX,go=rX "$TRIM"
chmod 755 "$TRIM/$SERVER/bin/tritonserver" \
          "$TRIM/$SERVER/python_backend_stubs/3.12/triton_python_backend_stub"
tar -C "$TRIM" --sort=name --owner=0 --group=0 --numeric-owner -cf - \
    pytriton nvidia_pytriton.libs | xz -T1 "-$XZ_LEVEL" >"$KIT/triton.tar.xz"
echo "   $(du -sh "$TRIM" | cut -f1) unpacked, $(du -h "$KIT/triton.tar.xz" | cut -f1) packed"

say "ppocr/$PPOCR_CLS from the installed rapidocr-onnxruntime"
# find_spec locates the package without importing it (its import pulls in OpenCV), as
# edgecut.zoo.find_packaged_model does for benchmarks/serving/models.py.
MODEL="$("$PYTHON" - "models/$PPOCR_CLS" <<'EOF'
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

spec = importlib.util.find_spec("rapidocr_onnxruntime")
if spec is None or not spec.submodule_search_locations:
    sys.exit("!!! rapidocr-onnxruntime is not installed for this Python (pip install -e '.[test]')")
version = importlib.metadata.version("rapidocr-onnxruntime")
if version != "1.4.4":
    print(f"   rapidocr-onnxruntime is {version}, not 1.4.4: its classifier may differ",
          file=sys.stderr)
found = [p for p in (Path(r) / sys.argv[1] for r in spec.submodule_search_locations)
         if p.is_file()]
if not found:
    sys.exit(f"!!! rapidocr-onnxruntime {version} holds no {sys.argv[1]}")
print(found[0])
EOF
)"
cp "$MODEL" "$KIT/ppocr/"
echo "   $MODEL"

say "run scripts from $HERE"
for script in "${RUN_SCRIPTS[@]}"; do
    cp "$HERE/$script" "$KIT/"
done
chmod 755 "$KIT/run.sh" "$KIT/taskset"

say "-> $PREPARED"
chmod 755 "$KIT"   # mktemp made its parent 0700; the kit itself gets the usual mode
rm -rf "$PREPARED"
mkdir -p "$(dirname "$PREPARED")"
mv "$KIT" "$PREPARED"
PREPARED="$(cd "$PREPARED" && pwd)"

# The kit travels only as a carried path; it must not also travel (or be committed) as an
# untracked file of the working tree.
EXCLUDE="$(git -C "$REPO" rev-parse --path-format=absolute --git-path info/exclude)"
mkdir -p "$(dirname "$EXCLUDE")"
ensure_excluded() {
    grep -qxF "$1" "$EXCLUDE" 2>/dev/null || { echo "$1" >>"$EXCLUDE"; echo "   $1 added to $EXCLUDE"; }
}
ensure_excluded "/.dev/"
case "$PREPARED/" in
    "$REPO/.dev/") ;;
    "$REPO"/*) ensure_excluded "/${PREPARED#"$REPO"/}/" ;;
esac

say "size that travels (limit $TRAVEL_LIMIT_MIB MiB)"
# What the device call sends: tracked files, untracked files git does not ignore, and the
# carried folder.
TREE_BYTES="$(git -C "$REPO" ls-files -z --cached --others --exclude-standard \
    | (cd "$REPO" && "$PYTHON" -c '
import os, sys
names = {n for n in sys.stdin.buffer.read().split(b"\0") if n}
print(sum(os.lstat(n).st_size for n in names if os.path.lexists(n)))'))"
KIT_BYTES="$(du -sb "$PREPARED" | cut -f1)"
mib() { awk -v bytes="$1" 'BEGIN { printf "%.1f", bytes / 1048576 }'; }
echo "   working tree $(mib "$TREE_BYTES") MiB + $(basename "$PREPARED")/ $(mib "$KIT_BYTES") MiB" \
     "= $(mib $((TREE_BYTES + KIT_BYTES))) MiB"
OVER=0
if [ $((TREE_BYTES + KIT_BYTES)) -ge $((TRAVEL_LIMIT_MIB * 1024 * 1024)) ]; then
    echo "!!! over the $TRAVEL_LIMIT_MIB MiB limit: the device call would refuse it"
    OVER=1
fi

echo
if [ "$PREPARED" != "$REPO/.dev" ]; then
    echo "!!! $PREPARED is not $REPO/.dev: the call below carries .dev, so move it there first"
fi
echo "The device call, from the repository root (one run, under 600 s):"
echo "    command:   bash .dev/run.sh"
echo "    carry:     [\".dev\"]"
echo "    timeout_s: 600"
exit $OVER
