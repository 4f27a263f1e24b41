"""Can tritonserver and its Python backend run here? (seconds; before the benchmark)

    python3 triton_preflight.py TRITON_HOME WORKDIR [TIMEOUT_S]

Starts TRITON_HOME's tritonserver (unpinned) on a one-model repository whose model.py
imports numpy and onnxruntime the way the benchmark's does, waits for it to be ready (the
model loaded in the stub), tries one HTTP inference (informational) and stops it.
Exit 0: ready; 1: not (the log's tail is printed; the whole log is
WORKDIR/triton-preflight.log).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MODEL_PY = '''
import sys
sys.path[:0] = [p for p in SITE if p not in sys.path]
print("preflight stub: python", sys.version.split()[0], "prefix", sys.prefix, flush=True)
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils
print("preflight stub: numpy", np.__version__, "onnxruntime", ort.__version__, flush=True)


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "x").as_numpy()
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("y", x * 2)]))
        return out
'''

CONFIG = ('name: "pf"\nbackend: "python"\nmax_batch_size: 0\n'
          'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
          'output [ { name: "y" data_type: TYPE_FP32 dims: [ 2 ] } ]\n'
          'instance_group [ { count: 1 kind: KIND_CPU } ]\n')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    home, work = Path(sys.argv[1]), Path(sys.argv[2])
    timeout_s = float(sys.argv[3]) if len(sys.argv) > 3 else 45.0
    root = home / "pytriton" / "tritonserver"
    tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / tag / "triton_python_backend_stub"
    backend_stub = root / "backends" / "python" / "triton_python_backend_stub"
    if not stub.is_file():
        print(f"preflight: no Python backend stub for Python {tag}")
        return 1
    if not backend_stub.is_file():  # what benchmarks/serving/triton.py does too
        shutil.copy2(stub, backend_stub)
        backend_stub.chmod(0o755)
    repo = work / "preflight_repo"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "pf" / "1").mkdir(parents=True)
    (repo / "pf" / "config.pbtxt").write_text(CONFIG)
    (repo / "pf" / "1" / "model.py").write_text(
        MODEL_PY.replace("SITE", repr(site.getsitepackages())))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(home / "nvidia_pytriton.libs"), env.get("LD_LIBRARY_PATH")) if p)
    http, grpc = free_port(), free_port()
    log = work / "triton-preflight.log"
    cmd = [str(root / "bin" / "tritonserver"), f"--model-repository={repo}",
           f"--backend-directory={root / 'backends'}", f"--cache-directory={root / 'caches'}",
           f"--http-port={http}", "--http-address=127.0.0.1", f"--grpc-port={grpc}",
           "--grpc-address=127.0.0.1", "--allow-metrics=false",
           "--pinned-memory-pool-byte-size=0", "--log-verbose=0"]
    urllib.request.install_opener(urllib.request.build_opener(urllib.request.ProxyHandler({})))
    t0 = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    ok, why = False, "not ready in time"
    try:
        while time.monotonic() - t0 < timeout_s:
            if proc.poll() is not None:
                why = f"tritonserver exited {proc.returncode}"
                break
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready",
                                            timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.25)
        else:
            why = f"not ready after {timeout_s:.0f} s"
        if proc.poll() is None and time.monotonic() - t0 < timeout_s:
            # Ready (strict readiness: its model is loaded, so the stub and numpy are fine).
            ok = True
            print(f"preflight: ready after {time.monotonic() - t0:.1f} s")
            body = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
                                           "data": [1.5, -2.0]}]}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{http}/v2/models/pf/infer",
                                         data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=20) as r:
                    out = json.loads(r.read())["outputs"][0]
                print(f"preflight: one inference answered {out.get('data')} ([3.0, -4.0] "
                      f"expected): the Python backend returns output bytes here")
            except urllib.error.HTTPError as exc:
                print(f"preflight: one inference failed ({exc}: {exc.read()[:200]!r}); "
                      f"'output tensor shape does not match' is 2.51's Python backend "
                      f"without CUDA sending no output bytes (the benchmark counts those)")
            except Exception as exc:
                print(f"preflight: one inference failed: {exc}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
    if not ok:
        print(f"preflight: FAILED: {why}; last lines of {log}:")
    tail = log.read_text(errors="replace").strip().splitlines()
    for line in (tail[-25:] if not ok else [x for x in tail if "preflight stub" in x
                                            or "CUDA" in x or "GPU" in x][-8:]):
        print(f"    {line[:300]}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
