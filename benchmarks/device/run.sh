#!/usr/bin/env bash
# The serving headline on the device machine, in one command (about 450 s):
#
#     bash .dev/run.sh          # from the repository root; carry [".dev"]
#
# .dev/ is the folder benchmarks/device/prepare.sh builds: this script and its helpers
# (copies of benchmarks/device/) beside the carried files (whl/, ppocr/, triton.tar.xz).
# Run as benchmarks/device/run.sh, it takes the carried files from PREPARED (default .dev/).
#
# 1. carried wheels -> /tmp/site (PYTHONPATH), then edgecut itself (no native transport)
# 2. a stand-in for rapidocr-onnxruntime holding only the PP-OCR classifier's .onnx
# 3. Triton 2.51 from the trimmed archive -> /tmp/triton-home, libpython3.12 located, and a
#    preflight start; on failure the benchmark runs with --no-triton
# 4. a 6 s check of the CPUs (is affinity enforced under gVisor? SCHED_BATCH?)
# 5. benchmarks/serving.py --sections headline, stopped at DEADLINE s so that the log and
#    whatever was measured (one JSON line per load) still come back
# 6. logs and JSON into $OUT
#
# Settings (environment; the defaults are the device's): PY, ROUNDS, LOAD_SECONDS,
# SERVER_CPUS, CLIENT_CPUS, DEADLINE, SITE, OUT, BENCH, TRITON_HOME, WORK, PREPARED, SRC,
# and EXTRA_ARGS (more flags for benchmarks/serving.py, split on spaces; for trials
# elsewhere).
set -u
set -o pipefail
export PYTHONUNBUFFERED=1

START=$SECONDS
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"   # this script and its helpers
repository_root() {  # the nearest folder at or above $1 that holds benchmarks/serving.py
    local dir="$1"
    while [ "$dir" != / ]; do
        [ -f "$dir/benchmarks/serving.py" ] && { echo "$dir"; return 0; }
        dir="$(dirname "$dir")"
    done
    return 1
}
SRC="${SRC:-$(repository_root "$HERE")}"   # the repository's working tree
if [ -z "$SRC" ]; then
    echo "!!! no folder above $HERE holds benchmarks/serving.py: set SRC"; exit 2
fi
# The carried files: beside this script when it is the prepared copy, else in SRC/.dev.
if [ -z "${PREPARED:-}" ]; then
    [ -d "$HERE/whl" ] && PREPARED="$HERE" || PREPARED="$SRC/.dev"
fi
PY="${PY:-python3}"
ROUNDS="${ROUNDS:-2}"
LOAD_SECONDS="${LOAD_SECONDS:-5}"
SERVER_CPUS="${SERVER_CPUS:-0}"
CLIENT_CPUS="${CLIENT_CPUS:-2,3,4,5}"
DEADLINE="${DEADLINE:-545}"              # s after start: the benchmark is stopped by then
SITE="${SITE:-/tmp/site}"
OUT="${OUT:-/tmp/out}"
BENCH="${BENCH:-/tmp/bench}"             # a copy of benchmarks/ (see step 5)
TRITON_HOME="${TRITON_HOME:-/tmp/triton-home}"
WORK="${WORK:-/tmp/work}"
JSON="$OUT/serving-device-headline.json"

mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1

step() { echo; echo "=== [$((SECONDS - START)) s] $*"; }
note() { echo "$*" | tee -a "$OUT/machine.txt"; }

step "machine"
note "kit: scripts $HERE, carried files $PREPARED, repository $SRC"
if [ ! -d "$PREPARED/whl" ]; then
    echo "!!! $PREPARED holds no whl/: build it with benchmarks/device/prepare.sh first"
    sleep 1   # let tee write the line
    exit 2
fi
note "date: $(date -u +%FT%TZ)"
note "uname: $(uname -srm)"
note "os: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
note "nproc: $(nproc)"
note "sched_getaffinity: $("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')"
note "python3: $(command -v "$PY") $("$PY" -c 'import sys; print(sys.version.split()[0], sys.base_prefix)')"
note "memory: $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
for tool in taskset xz zstd tar ldd readelf pkg-config nvidia-smi; do
    note "tool $tool: $(command -v "$tool" || echo ABSENT)"
done
command -v nvidia-smi >/dev/null && note "gpu: $(timeout 15 nvidia-smi -L 2>&1 | head -2)"
if ! command -v taskset >/dev/null; then
    # benchmarks/serving.py pins every process with `taskset -c LIST CMD`: a stand-in.
    echo "taskset is absent: using $HERE/taskset (os.sched_setaffinity, then exec)"
    mkdir -p /tmp/bin && cp "$HERE/taskset" /tmp/bin/taskset && chmod +x /tmp/bin/taskset
    export PATH="/tmp/bin:$PATH"
fi

step "1a. carried wheels -> $SITE"
mkdir -p "$SITE"
if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "$PREPARED"/whl/*.whl; then
    echo "wheels installed: $(ls "$PREPARED"/whl | wc -l)"
else
    echo "!!! pip install of the carried wheels FAILED (rc $?); going on with what is there"
fi
export PYTHONPATH="$SITE"

step "1b. edgecut itself -> $SITE (no native transport)"
# Built from a copy, so the working tree gets no build/ or egg-info.
rm -rf /tmp/src && mkdir -p /tmp/src
tar -C "$SRC" -cf - --exclude=__pycache__ --exclude='*.so' --exclude='*.egg-info' \
    pyproject.toml setup.py README.md MANIFEST.in \
    edgecut partitioner profiles protocol edge cloud simulations | tar -C /tmp/src -xf -
if pkg-config --exists grpc++ 2>/dev/null; then
    # It would build the C++ transport (minutes, and a 6th server per round): not this run.
    echo "pkg-config finds grpc++ here: EDGECUT_NATIVE=0 for this install (core transport only)"
    NATIVE_ENV=(env EDGECUT_NATIVE=0)
else
    echo "pkg-config finds no grpc++: setup.py skips the native transport by itself"
    NATIVE_ENV=(env -u EDGECUT_NATIVE)
fi
(cd /tmp/src && "${NATIVE_ENV[@]}" "$PY" -m pip install -q --no-index --no-deps \
    --no-build-isolation --no-compile --upgrade --target "$SITE" . >"$WORK/pip-edgecut.txt" 2>&1)
rc=$?
tail -15 "$WORK/pip-edgecut.txt"
[ $rc -eq 0 ] && echo "pip install . done" || echo "!!! pip install . FAILED (rc $rc)"
if ! (cd /tmp && "$PY" -c "import edgecut.cloud.core_frontend" 2>/dev/null); then
    # pyproject.toml's package-dir, by hand
    echo "!!! pip install . did not give an importable edgecut; copying the folders by hand"
    rm -rf "$SITE/edgecut"
    cp -r /tmp/src/edgecut "$SITE/edgecut"
    for sub in partitioner profiles protocol edge cloud simulations; do
        cp -r "/tmp/src/$sub" "$SITE/edgecut/$sub"
    done
fi
(cd /tmp && "$PY" - <<'EOF'
import importlib
import edgecut.cloud.core_frontend
from edgecut.cloud import native_server
print("edgecut from", edgecut.cloud.core_frontend.__file__)
print("native transport available:", native_server.available())
for name in ("grpc", "google.protobuf", "onnxruntime", "onnx", "numpy", "tritonclient.grpc",
             "tritonclient.http", "grpc_health.v1.health", "zstandard", "orjson",
             "cryptography", "aiohttp", "psutil", "rich", "ml_dtypes", "gevent"):
    try:
        m = importlib.import_module(name)
        top = importlib.import_module(name.split(".")[0])
        version = getattr(m, "__version__", None) or getattr(top, "__version__", "?")
        print(f"  {name:24s} {version:12s} {m.__file__}")
    except Exception as exc:
        print(f"  {name:24s} !!! FAILED: {type(exc).__name__}: {exc}")
EOF
) | tee -a "$OUT/machine.txt"

step "2. rapidocr-onnxruntime stand-in (only the classifier's .onnx)"
mkdir -p "$SITE/rapidocr_onnxruntime/models"
: > "$SITE/rapidocr_onnxruntime/__init__.py"
cp "$PREPARED/ppocr/ch_ppocr_mobile_v2.0_cls_infer.onnx" "$SITE/rapidocr_onnxruntime/models/"
(cd /tmp && "$PY" -c "
from edgecut.zoo import find_packaged_model
print('ppocr_cls from', find_packaged_model(relative_path='models/ch_ppocr_mobile_v2.0_cls_infer.onnx'))")

step "3. Triton 2.51 -> $TRITON_HOME"
TRITON_ARGS=(--no-triton)
TRITON_STATE="not tried"
rm -rf "$TRITON_HOME" && mkdir -p "$TRITON_HOME"
if tar -C "$TRITON_HOME" -xJf "$PREPARED/triton.tar.xz" 2>/dev/null \
    || "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
            "$PREPARED/triton.tar.xz" "$TRITON_HOME"; then
    echo "unpacked: $(du -sh "$TRITON_HOME" | cut -f1)"
    # The 3.12 stub NEEDs the system's libpython3.12.so.1.0.
    LIBPY=""
    cand="$("$PY" -c 'import sysconfig as s, os; print(os.path.join(s.get_config_var("LIBDIR") or "", s.get_config_var("INSTSONAME") or ""))')"
    [ -f "$cand" ] && case "$cand" in *libpython3.12.so*) LIBPY="$cand";; esac
    [ -z "$LIBPY" ] && LIBPY="$(ldconfig -p 2>/dev/null | awk '/libpython3\.12\.so\.1\.0/ {print $NF; exit}')"
    for d in /usr/lib/x86_64-linux-gnu /usr/lib /usr/local/lib /lib/x86_64-linux-gnu; do
        [ -z "$LIBPY" ] && [ -e "$d/libpython3.12.so.1.0" ] && LIBPY="$d/libpython3.12.so.1.0"
    done
    if [ -z "$LIBPY" ]; then
        LIBPY="$(timeout 20 find /usr /opt /root -maxdepth 7 -name 'libpython3.12.so.1.0' \
                 2>/dev/null | head -1)"
    fi
    if [ -n "$LIBPY" ]; then
        note "libpython3.12: $LIBPY"
        export LD_LIBRARY_PATH="$(dirname "$LIBPY")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        missing=""
        for f in "$TRITON_HOME"/pytriton/tritonserver/bin/tritonserver \
                 "$TRITON_HOME"/pytriton/tritonserver/backends/python/libtriton_python.so \
                 "$TRITON_HOME"/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub; do
            m="$(LD_LIBRARY_PATH="$TRITON_HOME/nvidia_pytriton.libs:$LD_LIBRARY_PATH" ldd "$f" 2>&1 | grep 'not found')"
            [ -n "$m" ] && missing="$missing $(basename "$f"): $m;"
        done
        [ -n "$missing" ] && echo "!!! ldd finds libraries missing:$missing"
        if timeout 90 "$PY" "$HERE/triton_preflight.py" "$TRITON_HOME" "$WORK" 45; then
            TRITON_ARGS=(--triton "$TRITON_HOME")
            TRITON_STATE="runs (preflight ready)"
        else
            echo "!!! Triton preflight failed; trying once more with the GPU hidden (CUDA_VISIBLE_DEVICES=)"
            cp "$WORK/triton-preflight.log" "$OUT/triton-preflight-1.log" 2>/dev/null
            if CUDA_VISIBLE_DEVICES= timeout 90 "$PY" "$HERE/triton_preflight.py" "$TRITON_HOME" "$WORK" 45; then
                export CUDA_VISIBLE_DEVICES=
                TRITON_ARGS=(--triton "$TRITON_HOME")
                TRITON_STATE="runs only with the GPU hidden (CUDA_VISIBLE_DEVICES=)"
            else
                TRITON_STATE="preflight failed twice: benchmark runs with --no-triton"
            fi
        fi
    else
        TRITON_STATE="libpython3.12.so.1.0 NOT FOUND: benchmark runs with --no-triton"
        echo "!!! libpython3.12.so.1.0 is absent on this machine (the 3.12 stub needs it):"
        echo "!!! Triton is skipped (--no-triton); the edgecut rows still come back"
    fi
else
    TRITON_STATE="archive did not unpack: benchmark runs with --no-triton"
    echo "!!! could not unpack $PREPARED/triton.tar.xz"
fi
note "triton: $TRITON_STATE"

step "4. CPUs: is affinity enforced? SCHED_BATCH?"
"$PY" "$HERE/check_cpu.py" "$WORK/check.env" | tee -a "$OUT/machine.txt"
AFFINITY_ENFORCED=unknown AFFINITY_RATIO=? UNPINNED_RATIO=? IDLE_FOREIGN=0 SCHED_BATCH_OK=?
[ -f "$WORK/check.env" ] && . "$WORK/check.env"
MAX_ATTEMPTS=()
if "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) > 0.05 else 1)" "$IDLE_FOREIGN"; then
    # /proc/stat calls an idle machine busy: every load would be measured 3 times.
    echo "/proc/stat shows ${IDLE_FOREIGN} of the CPU busy at idle: --max-attempts 1"
    MAX_ATTEMPTS=(--max-attempts 1)
fi
[ "$(uname -r)" = 4.4.0 ] && SANDBOX="gVisor, kernel 4.4.0" || SANDBOX="kernel $(uname -r)"
GPU_STATE="a GPU is visible to Triton (its models are KIND_CPU on CPU onnxruntime)"
[ -n "${CUDA_VISIBLE_DEVICES+x}" ] && [ -z "$CUDA_VISIBLE_DEVICES" ] && GPU_STATE="GPU hidden (CUDA_VISIBLE_DEVICES=)"
command -v nvidia-smi >/dev/null || GPU_STATE="no nvidia-smi"
MACHINE_NOTE="device machine: $(nproc)-core x86-64 ($SANDBOX); CPU-only serving, $GPU_STATE; CPU affinity enforced: ${AFFINITY_ENFORCED} (2 busy loops pinned to CPU 0 used ${AFFINITY_RATIO}x wall, unpinned ${UNPINNED_RATIO}x); SCHED_BATCH settable: ${SCHED_BATCH_OK}; edgecut core transport only (no native); Triton: ${TRITON_STATE}"
note "machine note: $MACHINE_NOTE"

step "5. headline: $ROUNDS rounds x ${LOAD_SECONDS} s loads, server CPUs $SERVER_CPUS, clients $CLIENT_CPUS"
# benchmarks/serving.py puts its repository root first on sys.path (and on the PYTHONPATH of
# every process it starts); there the folder edgecut/ would shadow the installed package,
# whose subpackages (edgecut.cloud, ...) live elsewhere in the tree. A copy of benchmarks/
# alone is a root without it.
rm -rf "$BENCH" && mkdir -p "$BENCH"
tar -C "$SRC" -cf - --exclude=__pycache__ --exclude=benchmarks/results benchmarks \
    | tar -C "$BENCH" -xf -
LEFT=$((DEADLINE - (SECONDS - START)))
echo "time left for the benchmark: $LEFT s"
rm -f "$OUT/headline-rows.jsonl"
(cd /tmp && timeout --signal=INT -k 25 "$LEFT" "$PY" "$HERE/serving_wrap.py" "$BENCH" \
    "$OUT/headline-rows.jsonl" -- \
    --sections headline --rounds "$ROUNDS" --seconds "$LOAD_SECONDS" \
    --server-cpus "$SERVER_CPUS" --client-cpus "$CLIENT_CPUS" "${TRITON_ARGS[@]}" \
    --no-variant-rows "${MAX_ATTEMPTS[@]}" --workdir "$WORK/bench" ${EXTRA_ARGS:-} \
    --machine-note "$MACHINE_NOTE" --out "$JSON")
rc=$?
case $rc in
    0) echo "benchmark done";;
    124|130|137) echo "!!! benchmark STOPPED at the deadline (rc $rc): see $OUT/headline-rows.jsonl";;
    *) echo "!!! benchmark FAILED (rc $rc)";;
esac

step "6. results -> $OUT"
for f in "$WORK/bench/triton.log" "$WORK/bench/endpoint-server.log" "$WORK/triton-preflight.log"; do
    [ -f "$f" ] && cp "$f" "$OUT/" && echo "copied $(basename "$f") ($(du -h "$f" | cut -f1))"
done
if [ -f "$JSON" ]; then
    "$PY" - "$JSON" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
h = d.get("headline") or {}
print("complete:", d.get("complete"), "| elapsed_s:", round(d.get("elapsed_s") or 0),
      "| triton_unavailable:", h.get("triton_unavailable"))
for r in h.get("rows", []):
    print(f"  {r['model']:10s} {'on ' if r['batching'] else 'off'} {r['server']:14s} "
          f"{r['protocol']:5s} {r['rows_per_s']:8.0f} rows/s  p99 {r['p99_ms']:7.1f} ms  "
          f"batch {r['mean_batch']:5.1f}  failed {r['failures']}  empty {r['empty_outputs']}")
for k, r in (h.get("ratios") or {}).items():
    print(f"  {k:45s} median {r['median']:.2f}  lowest {r['lowest']:.2f}  p99 {r['p99_median']:.2f}")
EOF
else
    echo "!!! no $JSON: the headline from the loads that finished (headline-rows.jsonl):"
    [ -s "$OUT/headline-rows.jsonl" ] && (cd /tmp && "$PY" "$HERE/serving_wrap.py" --summarise \
        "$BENCH" "$OUT/headline-rows.jsonl" "$OUT/serving-device-headline-partial.json")
fi
ls -la "$OUT"
step "end (rc $rc)"
sleep 1   # let tee write the last lines
exit $rc
