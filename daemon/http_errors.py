"""Requests aiohttp's HTTP parser refuses, answered like every other refusal.

aiohttp answers a request it cannot parse (an over-long line, a NUL in a header, a
negative Content-Length) in ``text/plain`` and logs the exception at error level, whose
message quotes the raw request, bearer keys included. The API's listener uses this
request handler instead: the JSON ``{"error", "message"}`` body and one warning line that
names the problem, never a byte of the request.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = structlog.get_logger("lifecycled.http")


def _message(status: int, exc: BaseException | None) -> tuple[str, str]:
    if isinstance(exc, LineTooLong):
        return "bad_request", "A request line or header is longer than the server accepts."
    if isinstance(exc, BadHttpMethod):
        return "bad_request", "The request method is not valid HTTP."
    if status == HTTPStatus.INTERNAL_SERVER_ERROR:
        return "internal_error", "The request failed unexpectedly."
    if status == HTTPStatus.GATEWAY_TIMEOUT:
        return "timeout", "The request took too long."
    return "bad_request", "The request is not valid HTTP (malformed request line or headers)."


class JsonErrorRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        code, text = _message(status, exc)
        log.warning("http_request_refused", status=status, client=request.remote,
                    problem=type(exc).__name__ if exc else code)  # fmt: skip
        if request.writer.output_size > 0:
            raise ConnectionError("The response was partly sent; the connection is closed.")
        response = web.json_response({"error": code, "message": text}, status=status)
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    """aiohttp's low-level server with the request handler above."""

    def __call__(self) -> RequestHandler:
        kwargs: Any = self._kwargs
        return JsonErrorRequestHandler(self, loop=self._loop, **kwargs)


def use_json_errors(runner: web.AppRunner) -> None:
    """Make a set-up runner's server answer unparsable requests as above."""
    server = runner.server
    if server is None:
        raise RuntimeError("use_json_errors needs a runner after runner.setup()")
    server.__class__ = JsonErrorServer
