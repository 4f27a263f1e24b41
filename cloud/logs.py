"""Structured request logs: one JSON object per inference call, on `edgecut.cloud.requests`.

Each record's message is already a JSON object, so any handler writes one JSON line per
call; `JsonLinesFormatter` adds the time, level and logger around other records too:

    {"event": "infer", "model": "chain_cnn.cut3", "version": 2, "device": "pi4-kitchen",
     "status": "OK", "queue_ms": 0.41, "compute_ms": 2.02, "request_ms": 3.3, "batch_rows": 4,
     "wire_bytes_in": 12544, "wire_bytes_out": 40, "id": "req-17"}

The level is the server's `request_log_level` (DEBUG by default: silent unless asked for;
failures are logged one level higher), so operators turn it on with the logging config:

    >>> configure_request_log(level=logging.INFO)                     # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

__all__ = ["REQUEST_LOGGER", "JsonLinesFormatter", "RequestLog", "configure_request_log",
           "configure_server_logs"]

REQUEST_LOGGER = "edgecut.cloud.requests"


class JsonLinesFormatter(logging.Formatter):
    """A record as one JSON line: time, level, logger, then its fields (or its message)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
        }
        fields = getattr(record, "edgecut_fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


class RequestLog:
    """Writes one record per call at `level` (None: off); failures one level higher."""

    def __init__(self, level: int | str | None = logging.DEBUG,
                 logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger(REQUEST_LOGGER)
        self._level = logging.getLevelName(level) if isinstance(level, str) else level
        if self._level is not None and not isinstance(self._level, int):
            raise ValueError(f"request_log_level must be a logging level, got {level!r}")

    @property
    def enabled(self) -> bool:
        """Whether successful calls are logged (callers skip building their fields if not)."""
        return self._level is not None and self._logger.isEnabledFor(self._level)

    def log(self, **fields: Any) -> None:
        """Log one call; `status` other than "OK" raises the level by one step."""
        if self._level is None:
            return
        level = self._level if fields.get("status", "OK") == "OK" else self._level + 10
        if not self._logger.isEnabledFor(level):
            return
        fields = {"event": "infer", **{k: _round(v) for k, v in fields.items() if v is not None}}
        self._logger.log(level, "%s", json.dumps(fields, separators=(",", ":"), default=str),
                         extra={"edgecut_fields": fields})


def configure_request_log(*, level: int = logging.INFO, stream: IO[str] | None = None
                          ) -> logging.Handler:
    """Send request logs as JSON lines to `stream` (stderr) at `level`; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLinesFormatter())
    logger = logging.getLogger(REQUEST_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def configure_server_logs(*, json_lines: bool = False, level: int = logging.INFO,
                          stream: IO[str] | None = None) -> logging.Handler:
    """What `edgecut serve` writes to stderr (or `stream`): every `edgecut` logger at `level`
    (models loaded and refused, reloads, control actions, drains; the request lines when the
    request log is on), one line each, as JSON (JsonLinesFormatter) or text. Returns the
    handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if json_lines else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("edgecut")
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value

