"""What stands between the network and the service: body limits and deadlines, keys, header timeouts.

- :class:`BodyGuard` (ASGI middleware): a request body is counted while it streams in, chunked
  uploads included, and refused with 413 as soon as it passes the limit (nothing larger is read or
  spooled to disk); a body that does not arrive within its deadline gets 408 (a client sending one
  byte every few seconds cannot hold a worker).
- :func:`key_matches`: the optional API key, compared in constant time.
- :class:`HeaderTimeoutProtocol`: uvicorn's h11 protocol with a deadline on the request line and
  headers, which uvicorn itself does not have: a connection that sends half a header and waits is
  closed after ``header_timeout`` seconds, so idle half-open connections cannot pile up.
- :func:`run`: uvicorn with those settings and a cap on concurrent connections.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Seconds a client has to send a whole request body.
BODY_TIMEOUT_S = 30.0
#: Seconds a connection has to send its request line and headers.
HEADER_TIMEOUT_S = 10.0
#: Connections and requests served at once; more get 503 from uvicorn.
MAX_CONNECTIONS = 64
#: Bytes allowed beyond the upload limit for the multipart framing around the file.
FRAMING_BYTES = 65536

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyGuard:
    """ASGI middleware: 413 past ``max_bytes`` (counted as the body streams), 408 past the deadline.

    The errors are raised from inside ``receive`` as :class:`fastapi.HTTPException`, so FastAPI's
    body parsing passes them through and its handler writes the JSON response.
    """

    def __init__(self, app: Callable, *, max_bytes: int, timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app, self.max_bytes, self.timeout_s = app, int(max_bytes), float(timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes + FRAMING_BYTES
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _reply(send, 413, _too_large(int(value), self.max_bytes))
                return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received = 0

        async def guarded() -> Message:
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise HTTPException(
                    408, f"the request body did not arrive within {self.timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large(received, self.max_bytes))
            return message

        await self.app(scope, guarded, send)


def _too_large(n: int, limit: int) -> str:
    return f"upload of {n:,} bytes or more is over the limit of {limit:,} bytes"


async def _reply(send: Send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented API key with the service's."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take too long."""

    header_timeout: float = HEADER_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        before = self.scope
        super().handle_events()
        if self.scope is not before:  # a request's line and headers arrived in full
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this keep-alive connection has its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def run(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str = "warning",
    header_timeout_s: float = HEADER_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> None:
    """Serve ``app`` with uvicorn: header deadline, keep-alive 5 s, at most ``max_connections``."""
    import uvicorn

    protocol = type("Protocol", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout_s})
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=protocol,
        timeout_keep_alive=5,
        limit_concurrency=max_connections,
        h11_max_incomplete_event_size=16 * 1024,
    )
