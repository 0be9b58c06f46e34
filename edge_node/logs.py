"""Structured logs for the edge node: one JSON object a line, with request id and model version."""

from __future__ import annotations

import json
import logging
import time

_EXTRA = ("request_id", "model", "model_version", "cut", "status", "batch_rows")


class JsonFormatter(logging.Formatter):
    """``{"ts":…, "level":…, "logger":…, "msg":…, "request_id":…, "model_version":…}``."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for key in _EXTRA:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Set up the root logger once, from the entry point only."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
