"""What keeps the web page safe to share: security headers, the access token, body and queue limits.

Plain ASGI middleware around the page's app (pipeline/commands/app.py), so that they hold for
every response, the errors included:

    SecurityHeaders   a content security policy that allows the page's own scripts, styles and
                      images only, no framing, nosniff, no referrer: on every response
    RequireToken      every /api/ call carries `Authorization: Bearer TOKEN` (constant-time
                      comparison), else 401; the page and its static files need none
    LimitBody         a request whose Content-Length is over the limit gets 413 before a byte of
                      its body is read; a body without one (chunked) is cut off with 413 as soon
                      as it passes the limit, so nothing over the limit is ever held or stored
    ModelQueue        at most `max_queue` requests wait for the model; the next gets 503

`read_body` reads a request's whole body into memory, within the limit and a time limit.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from fastapi import HTTPException, Request

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                           "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
           (b"cross-origin-resource-policy", b"same-origin")]
BODY_SECONDS = 60  # a body still arriving after this is refused (a slow client holding a place in the queue)


async def answer(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Send a JSON error response {"detail": ...} like FastAPI's own."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    """Add HEADERS to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class RequireToken:
    """401 for an /api/ call without `Authorization: Bearer <token>`; nothing to check when token is None."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.token is None or scope["type"] != "http" or not scope["path"].startswith("/api/"):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"").removeprefix(b"Bearer ").strip()
        if not hmac.compare_digest(given, self.token.encode()):
            return await answer(send, 401, "This page needs its access token: open it with the address that ends in "
                                           "#token=... (ask whoever started it).", [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The upload is larger than {limit // 2**20} MB: choose a smaller photo.")


class LimitBody:
    """413 for a body over `limit` bytes: from its Content-Length before reading, or while it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            if not length.isdigit():
                return await answer(send, 400, "The request's Content-Length is not a number.")
            return await answer(send, 413, BodyTooLarge(self.limit).detail)
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(self.limit)  # FastAPI answers it as any HTTPException: 413
            return message

        await self.app(scope, counted, send)


async def read_body(request: Request, seconds: float = BODY_SECONDS) -> bytes:
    """The request's whole body (LimitBody bounds its size); 408 when it takes longer than `seconds`."""
    body = bytearray()
    try:
        async with asyncio.timeout(seconds):
            async for chunk in request.stream():
                body += chunk
    except TimeoutError:
        raise HTTPException(408, "The upload took too long: try again, or choose a smaller photo.") from None
    return bytes(body)


class ModelQueue:
    """At most `max_queue` requests waiting for the model, besides the one it serves; the next gets 503."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue, self.admitted = max_queue, 0

    @contextlib.contextmanager
    def place(self) -> Iterator[None]:
        """Hold a place for the request's whole life (reading its body, waiting, the model's work)."""
        if self.admitted >= self.max_queue + 1:
            raise HTTPException(503, f"The page is busy ({self.admitted - 1} requests are waiting for the model): "
                                     "try again in a moment.", headers={"Retry-After": "2"})
        self.admitted += 1  # the event loop's thread only: no lock needed
        try:
            yield
        finally:
            self.admitted -= 1
