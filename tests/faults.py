"""Helpers of the fault tests: JSON over HTTP without raising on errors, readiness."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tests.servers import Daemon


def http_json(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, decoded JSON body) of one request; error statuses are returned too."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def not_ready(d: Daemon) -> Any:
    """The body of ``/readyz`` while it answers 503, else None (also while not listening)."""
    try:
        status, body = http_json("GET", f"http://127.0.0.1:{d.metrics_port}/readyz")
    except OSError:  # URLError: not listening yet
        return None
    return body if status == 503 else None
