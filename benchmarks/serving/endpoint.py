"""`python -m benchmarks.serving.endpoint`: edgecut's endpoint as its own process (the
benchmark starts it under `taskset -c 0`). Writes its port to `--port-file` (and with `--http`
the HTTP/REST port to the same name + `.http`), serves until SIGTERM, then drains. Without
`--tls` both bindings are plaintext. Per-call log lines are off (they are not what is measured).

glibc's allocator thresholds are raised as `edgecut serve` raises them
(edgecut.cloud.allocator.keep_large_buffers), so this is the endpoint as shipped; the
environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, set by the caller) can still
set them from the first allocation. `--glibc-defaults` leaves glibc as it is.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from edgecut.cloud.allocator import keep_large_buffers
from edgecut.cloud.repository import ModelRepository
from edgecut.cloud.server import serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--tls", type=Path, help="TLS files (default: plaintext gRPC and HTTP)")
    p.add_argument("--http", action="store_true", help="serve HTTP/REST too, on any free port")
    p.add_argument("--port-file", type=Path, required=True)
    p.add_argument("--workers", type=int, default=160)
    p.add_argument("--max-concurrent-rpcs", type=int, default=512)
    p.add_argument("--max-queue-size", type=int, default=512)
    p.add_argument("--no-share-weights", action="store_true",
                   help="ModelRepository(share_weights=False): onnxruntime pre-packs weights")
    p.add_argument("--glibc-defaults", action="store_true",
                   help="do not raise glibc's mmap/trim thresholds (edgecut serve does)")
    p.add_argument("--frontend", choices=("auto", "native", "core", "grpcio"), default="auto",
                   help="the endpoint's gRPC transport (create_server's frontend; auto: as shipped)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not args.glibc_defaults:
        keep_large_buffers()

    def started(server: object) -> None:
        # Which transport runs, for the record (see endpoint_frontend); then the port.
        frontend_file = args.port_file.with_name(args.port_file.name + ".frontend")
        frontend_file.write_text(server.frontend)  # type: ignore[attr-defined]
        if args.http:
            http_file = args.port_file.with_name(args.port_file.name + ".http")
            http_file.write_text(str(server.http_port))  # type: ignore[attr-defined]
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(server.port))  # type: ignore[attr-defined]
        tmp.rename(args.port_file)

    repository = ModelRepository(args.repository, intra_op_threads=1,
                                 share_weights=not args.no_share_weights)
    serve(repository, address="127.0.0.1:0", tls_dir=args.tls, workers=args.workers,
          intra_op_threads=1, max_concurrent_rpcs=args.max_concurrent_rpcs,
          max_queue_size=args.max_queue_size, request_log_level=None, on_started=started,
          grace_s=5.0, frontend=args.frontend,
          http_address="127.0.0.1:0" if args.http else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
