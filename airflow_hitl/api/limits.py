"""Request limits of the ``/hitl`` app, enforced before any route runs.

A body larger than ``[hitl] max_request_bytes`` is answered 413 as soon as that is known
(from ``Content-Length``, or while it streams in), never read whole. A JSON body Python
cannot parse into values (nested deeper than the interpreter's recursion limit, an integer
of thousands of digits) is a 422 naming the body, where FastAPI would answer 400.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airflow_hitl.settings import conf_getint

_BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 for oversized bodies, 422 for JSON that cannot become values."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        # The one option this needs: the whole HitlSettings is ~20 reads on every request.
        limit = conf_getint("max_request_bytes")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > limit:
            await _answer(send, 413, _too_large(limit))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, 413, _too_large(limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if "json" in headers.get("content-type", "") and body:
            problem = _unparsable(body)
            if problem:
                await _answer(send, 422, {"detail": [{"loc": ["body"], "msg": problem, "type": "json_invalid"}]})
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _too_large(limit: int) -> dict[str, Any]:
    return {"detail": f"request body is larger than {limit} bytes (`[hitl] max_request_bytes`)"}


def _unparsable(body: bytes) -> str | None:
    # Syntax errors are left to FastAPI (a 422 with the position); only what Python's parser
    # raises besides them is caught here.
    try:
        json.loads(body)
    except json.JSONDecodeError:
        return None
    except RecursionError:
        return "JSON is nested too deeply"
    except (ValueError, UnicodeDecodeError) as err:
        return f"JSON cannot be read: {err}"
    return None


async def _answer(send: Send, status: int, content: dict[str, Any]) -> None:
    payload = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
