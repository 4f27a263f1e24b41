"""The link probe: a reserved model name every edgecut endpoint answers without a repository.

`edgecut profile network` times uploads and downloads against a running endpoint. An upload
needs no help (any ModelInfer carries bytes up), but nothing a stock endpoint serves returns a
large message on demand, so edgecut's endpoint answers ModelInfer for `PROBE_MODEL` itself: it
ignores the inputs and returns one UINT8 output, `PROBE_OUTPUT`, of the size the request's int64
parameter `PROBE_DOWNLOAD_PARAMETER` asks (at most the message limit). ServerMetadata lists
`PROBE_EXTENSION` so a client knows it may ask.
"""

from __future__ import annotations

PROBE_MODEL = "edgecut.probe"
PROBE_OUTPUT = "download"
PROBE_DOWNLOAD_PARAMETER = "edgecut_probe_download_bytes"
PROBE_EXTENSION = "edgecut_probe"
