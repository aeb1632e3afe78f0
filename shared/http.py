"""What every HTTP service shares: problem+json errors that name the field, correlation ids
from the request through the logs and the event store, and the health endpoints."""

from __future__ import annotations

import contextlib
import re
import socket
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from structlog.contextvars import bind_contextvars, reset_contextvars

from shared.inputs import control_problem
from shared.logging import CORRELATION_KEY, get_logger

log = get_logger(__name__)
PROBLEM = "application/problem+json"
CORRELATION_HEADER = "X-Correlation-ID"
MAX_BODY_DEFAULT = 1 << 20
RETRY_AFTER_S = 5  # what a 503 asks a client to wait: a database restart or a full pool
"""The request body a service takes unless it says otherwise (bytes): a command or a visit is
a few kilobytes; a bigger body is refused before it is read."""


class ProblemError(Exception):
    """Raise anywhere in a request to answer with problem+json (RFC 9457)."""

    def __init__(
        self, status: int, title: str, detail: str, *, type_: str = "about:blank",
        errors: Sequence[dict[str, Any]] = (), headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.type = status, title, detail, type_
        self.errors = list(errors)
        self.headers = headers or {}
        self.extra = extra


# What an error of each status is about when its raiser names nothing: every problem names a
# field (the product's rule), so a client can always point at what to change.
DEFAULT_FIELD = {400: "body", 401: "header:Authorization", 403: "token", 404: "path",
                 405: "method", 406: "header:Accept", 409: "path", 412: "header:If-Match",
                 413: "body", 415: "header:Content-Type", 422: "body", 504: "query:min_position"}


def problem_response(
    request: Request, status: int, title: str, detail: str, *, type_: str = "about:blank",
    errors: Sequence[dict[str, Any]] = (), headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """The problem+json answer; without ``errors``, one naming the status's default field
    (``DEFAULT_FIELD``, else ``request``) with ``detail`` as its message."""
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail,
                            "instance": request.url.path, **extra}
    body["errors"] = list(errors) or [{"field": DEFAULT_FIELD.get(status, "request"),
                                       "message": detail}]
    cid = getattr(request.state, "correlation_id", None)
    if cid:
        body["correlation_id"] = cid
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def field_name(loc: Sequence[Any]) -> str:
    """``("body", "applicant", "id_number")`` → ``"applicant.id_number"``; list indexes as [i]."""
    parts: list[str] = []
    for item in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else str(item))
    where = "".join(parts) or str(loc[0] if loc else "body")
    return f"{loc[0]}:{where}" if loc and loc[0] in ("query", "path", "header") else where


def _validation_error(error: dict[str, Any]) -> dict[str, Any]:
    if error.get("type") == "json_invalid":  # loc ("body", <character offset>): not a field
        loc = error.get("loc", ())
        at = loc[1] if len(loc) > 1 else "?"
        why = (error.get("ctx") or {}).get("error", "")
        return {"field": "body", "message": f"invalid JSON at character {at}: {why}",
                "type": "json_invalid"}
    return {"field": field_name(error.get("loc", ())), "message": error.get("msg", ""),
            "type": error.get("type", "")}


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [_validation_error(e) for e in exc.errors()]
    names = ", ".join(e["field"] for e in errors)
    return problem_response(request, 422, "Invalid request", f"invalid fields: {names}",
                            type_="/problems/validation", errors=errors)


def problem_of(request: Request, exc: ProblemError) -> JSONResponse:
    """The response a raised ``ProblemError`` gets (also for handlers outside the routes)."""
    return problem_response(request, exc.status, exc.title, exc.detail, type_=exc.type,
                            errors=exc.errors, headers=exc.headers, **exc.extra)


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_of(request, exc)


class BodyTooLarge(StarletteHTTPException):
    """The body streamed past the limit (raised from ``receive``). An ``HTTPException``
    because FastAPI passes those on when reading a body (anything else becomes a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds {limit} bytes")
        self.limit = limit


def too_large(request: Request, limit: int) -> JSONResponse:
    # Connection: close, so the server stops reading the body nobody will use
    return problem_response(request, 413, "Content too large",
                            f"the request body exceeds {limit} bytes", type_="/problems/too-large",
                            errors=[{"field": "body", "message": f"more than {limit} bytes"}],
                            headers={"Connection": "close"})


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, BodyTooLarge):
        return too_large(request, exc.limit)
    errors: list[dict[str, Any]] = []
    if exc.status_code == 404:  # the router's: no route has this path
        errors = [{"field": "path", "message": f"no route for {request.url.path}"}]
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        errors = [{"field": "method",
                   "message": f"{request.method} is not allowed here (allowed: {allowed})"}]
    return problem_response(request, exc.status_code, str(exc.detail), str(exc.detail),
                            errors=errors, headers=getattr(exc, "headers", None))


# The database is not there (down, restarting, out of connections, unreachable) rather than
# the request or the code being wrong.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08, incl. ConnectionDoesNotExistError
    asyncpg.exceptions.CannotConnectNowError, asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError, asyncpg.exceptions.TooManyConnectionsError,
    ConnectionError, TimeoutError,  # refused, reset; TimeoutError: a pool acquire timed out
    socket.gaierror,
)


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached now (answer 503, retry later)."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    if type(exc) is OSError:  # asyncio, when every address refused: "Multiple exceptions: …"
        return True  # (its subclasses of the file system, e.g. FileNotFoundError, are bugs)
    if isinstance(exc, FileNotFoundError) and exc.errno is not None and exc.filename is None:
        return True  # the server's Unix socket is gone (it is down): no path, unlike open()'s
    return isinstance(exc, asyncpg.exceptions.InterfaceError) and "clos" in str(exc)


def service_unavailable(request: Request, exc: BaseException) -> JSONResponse:
    log.warning("http.unavailable", path=request.url.path, error=repr(exc))
    detail = "the database cannot be reached; retry later"
    return problem_response(request, 503, "Service unavailable", detail,
                            type_="/problems/unavailable",
                            errors=[{"field": "request", "message": detail}],
                            headers={"Retry-After": str(RETRY_AFTER_S)})


_LOGGED = "yizhan.error_logged"


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Starlette calls this from outside every middleware, the correlation one included: the
    # id is no longer bound for the log, nor added to the answer's headers, so both are
    # done here (the answer tells the client that this id identifies the logs)
    cid = getattr(request.state, "correlation_id", None)
    log.exception("http.unhandled", path=request.url.path,
                  **({CORRELATION_KEY: cid} if cid else {}))
    request.scope[_LOGGED] = True  # see ``LoggedOnce``
    return problem_response(request, 500, "Internal error",
                            "the server failed; the correlation id identifies the logs",
                            headers={CORRELATION_HEADER: cid} if cid else None)


class LoggedOnce:
    """The outermost layer of a served app. Starlette raises an unexpected error on after the
    app's handler has answered the 500 (``http.unhandled``, with the traceback and the
    correlation id), and uvicorn then logged it a second time ("Exception in ASGI
    application"): an error already answered and logged ends here. Any other goes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:
            if not scope.get(_LOGGED):
                raise


_CORRELATION_NAME = CORRELATION_HEADER.lower().encode()


class CorrelationMiddleware:
    """Take ``X-Correlation-ID`` from the request (or make one), bind it for the logs and the
    event metadata, and echo it on the response. Plain ASGI (Starlette's BaseHTTPMiddleware
    costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope["headers"]:
            if name == _CORRELATION_NAME:
                # UTF-8, as clients send it (Starlette's Headers read Latin-1: 'é' became 'Ã©'
                # in the logs and the event store, and went back as other bytes)
                with contextlib.suppress(UnicodeDecodeError):
                    given = value.decode()
                break
        cid = given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["correlation_id"] = cid
        header = (_CORRELATION_NAME, cid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        tokens = bind_contextvars(**{CORRELATION_KEY: cid})
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            reset_contextvars(**tokens)


# A control character in a query string can only be percent-encoded (or a raw byte from a
# lax client); one search of the raw bytes spares parsing the query of every request.
_QUERY_CONTROL = re.compile(rb"%(?:0[0-8bBcCeEfF]|1[0-9a-fA-F])|[\x00-\x08\x0b\x0c\x0e-\x1f]")


def query_problems(query: bytes) -> list[dict[str, str]]:
    """The query parameters holding a control character (decoded as Starlette does), each
    as an ``errors`` entry naming ``query:<name>``."""
    if not _QUERY_CONTROL.search(query):
        return []
    problems: list[dict[str, str]] = []
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        in_name, in_value = control_problem(name), control_problem(value)
        if in_name is not None:
            problems.append({"field": "query", "message": f"a parameter name {in_name}"})
        elif in_value is not None:
            problems.append({"field": f"query:{name}", "message": in_value})
    return problems


class RequestGuard:
    """Refuse what no route can take before any of them (fast paths included) sees it:

    - a query parameter with a control character (a NUL reached PostgreSQL, which refused it:
      a 500) is a 422 naming it;
    - a body over ``max_body`` bytes is a 413 naming ``body``, at once when its Content-Length
      says so (nothing read, whoever sends it: a 100 MB body was read before the 401), else as
      soon as the bytes streamed in pass the limit (the rest is not read);
    - the database out of reach (``unavailable``) while serving is a 503 with Retry-After,
      logged once as a warning. Caught here, not in an exception handler: Starlette's
      server-error middleware re-raises what it handles, and uvicorn logged the traceback a
      second time (and a fast path's errors never reach FastAPI's handlers).

    Plain ASGI, inside the correlation middleware. (FastAPI's own ``max_body_size`` answers a
    plain-text 413 from outside the exception handlers and the correlation id.)"""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_DEFAULT) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["query_string"]:
            problems = query_problems(scope["query_string"])
            if problems:
                names = ", ".join(p["field"] for p in problems)
                response = problem_response(Request(scope), 422, "Invalid request",
                                            f"invalid fields: {names}",
                                            type_="/problems/validation", errors=problems)
                await response(scope, receive, send)
                return
        limit = self.max_body
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > limit:
                    await too_large(Request(scope), limit)(scope, receive, send)
                    return
                break
        taken = 0
        started = False

        async def limited() -> Message:
            nonlocal taken
            message = await receive()
            if message["type"] == "http.request":
                taken += len(message.get("body", b""))
                if taken > limit:
                    raise BodyTooLarge(limit)
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, limited, sending)
        except BodyTooLarge:  # from a layer that reads the body itself (a fast path)
            if started:
                raise
            await too_large(Request(scope), limit)(scope, receive, send)
        except Exception as exc:
            if started or not unavailable(exc):
                raise
            await service_unavailable(Request(scope), exc)(scope, receive, send)


def install(app: FastAPI, inner: Sequence[Callable[[ASGIApp], ASGIApp]] = (), *,
            max_body: int = MAX_BODY_DEFAULT) -> None:
    """Add the error handlers, the request guard (bodies up to ``max_body`` bytes) and the
    correlation middleware to ``app``; ``inner`` are plain ASGI layers that run inside the guard
    and the correlation middleware (their logs and responses carry the id), outermost
    first."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ProblemError, _problem)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)
    for layer in reversed(inner):  # each added one wraps those added before it
        app.add_middleware(layer)
    app.add_middleware(RequestGuard, max_body=max_body)
    app.add_middleware(CorrelationMiddleware)
