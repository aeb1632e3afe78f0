"""A lean path for the officers' commands (``POST /v1/cases/{case_id}/{verb}``).

FastAPI's per-request machinery (routing through every route, solving the dependency tree,
validating and serialising through its compatibility layer) cost more CPU than deciding and
appending the command. This plain ASGI layer serves a well-formed command itself, calling the
very endpoint function FastAPI would call, with the same body model, principal, ``If-Match``
and ``Idempotency-Key`` handling, and answers with the same bytes and headers.

Anything it is not sure of (no or a refused token, a body that is not JSON or does not validate,
a bad header, a path that is not a canonical UUID, a route of another shape) goes on to the
FastAPI app with the body replayed, so every error answer — the problem+json naming the field —
is FastAPI's own. A domain refusal, a 409 or a 412 raised by the endpoint is rendered by the
same function as the app's ``ProblemError`` handler; any other exception propagates to the same
server-error handler. The routes stay declared in FastAPI, so OpenAPI and /docs are unchanged.
"""

from __future__ import annotations

import inspect
import json
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

from fastapi import APIRouter, Response
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.cases import api
from shared.auth import bearer_token, decode_token, settings_of_app
from shared.http import ProblemError, problem_of
from shared.reference import Role

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SHAPE = ["case_id", "body", "ctx", "response"]  # the signature of a command endpoint
_HEADERS = frozenset({b"authorization", b"content-type", b"if-match", b"idempotency-key"})


@dataclass(frozen=True)
class CommandRoute:
    endpoint: Callable[..., Awaitable[Any]]
    body: type[api.Body]
    status: int
    response: TypeAdapter[Any]  # serialises as FastAPI does: dump_json, by alias


def command_routes(router: APIRouter) -> dict[str, CommandRoute]:
    """The router's command endpoints by verb: POST ``{prefix}/{case_id}/{verb}`` taking
    ``(case_id, body, ctx, response)``; routes of any other shape are left to FastAPI."""
    found: dict[str, CommandRoute] = {}
    head = f"{router.prefix}/{{case_id}}/"
    for route in router.routes:
        if not (isinstance(route, APIRoute) and route.methods == {"POST"}
                and route.path.startswith(head) and "/" not in route.path[len(head):]
                and list(inspect.signature(route.endpoint).parameters) == _SHAPE
                and route.response_model is not None and not route.dependencies
                and isinstance(route.response_class, DefaultPlaceholder)):
            continue
        hints = get_type_hints(route.endpoint, include_extras=True)
        body = hints["body"]
        if not (hints["case_id"] is uuid.UUID and hints["ctx"] == api.Ctx
                and hints["response"] is Response and isinstance(body, type)
                and issubclass(body, api.Body)):
            continue
        found[route.path[len(head):]] = CommandRoute(
            route.endpoint, body, route.status_code or 200,
            TypeAdapter[Any](route.response_model))
    return found


class CommandFastPath:
    """Plain ASGI layer in front of the app (inside the correlation middleware)."""

    def __init__(self, app: ASGIApp, router: APIRouter = api.router) -> None:
        self.app = app
        self.prefix = router.prefix + "/"
        self.routes = command_routes(router)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        case_part, _, verb = path[len(self.prefix):].partition("/")
        route = self.routes.get(verb) if path.startswith(self.prefix) else None
        if route is None or not _UUID.fullmatch(case_part):
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        body = b""
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":  # a disconnect: the app deals with it
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                if await self._serve(route, uuid.UUID(case_part), body, scope, receive, send):
                    return
                break
        await self.app(scope, _replay(received, receive), send)

    async def _serve(self, route: CommandRoute, case_id: uuid.UUID, body: bytes, scope: Scope,
                     receive: Receive, send: Send) -> bool:
        """Serve the command, or return False (nothing sent) for the app to answer."""
        headers: dict[bytes, str] = {}
        for name, value in scope["headers"]:  # the first of each, as starlette's Headers.get
            if name in _HEADERS and name not in headers:
                headers[name] = value.decode("latin-1")
        content_type = headers.get(b"content-type")
        if_match, idempotency_key = headers.get(b"if-match"), headers.get(b"idempotency-key")
        if (not body or content_type is None
                or content_type.partition(";")[0].strip().lower() != "application/json"
                or (idempotency_key is not None
                    and len(idempotency_key) > api.IDEMPOTENCY_KEY_MAX)):
            return False
        token = bearer_token(headers.get(b"authorization"))
        if token is None:
            return False
        app = scope["app"]
        try:
            who = decode_token(token, settings_of_app(app))
            expected_version = api.parse_if_match(if_match)
            payload = route.body.model_validate(json.loads(body))
        # JSONDecodeError and ValidationError are ValueErrors; RecursionError is JSON nested
        # too deep to parse (FastAPI answers 400, not the 500 it was here)
        except (ProblemError, ValueError, RecursionError):
            return False
        if who.role == Role.SYSTEM:
            return False
        state = app.state
        ctx = api.CommandContext(who, state.case_commands, state.clock, expected_version,
                                 api.command_id_for(who, idempotency_key))
        sub = Response()  # collects the headers the endpoint sets (ETag), as FastAPI's does
        del sub.headers["content-length"]
        try:
            result = await route.endpoint(case_id=case_id, body=payload, ctx=ctx, response=sub)
        except ProblemError as refused:
            await problem_of(Request(scope), refused)(scope, receive, send)
            return True
        if isinstance(result, Response):  # returned as is, as FastAPI does
            await result(scope, receive, send)
            return True
        model = route.response  # checked and written as FastAPI does with a response_model
        content = model.dump_json(model.validate_python(result, from_attributes=True),
                                  by_alias=True)
        await send({"type": "http.response.start", "status": route.status, "headers": [
            (b"content-length", str(len(content)).encode()),
            (b"content-type", b"application/json"), *sub.headers.raw]})
        await send({"type": "http.response.body", "body": content})
        return True


def _replay(received: list[Message], receive: Receive) -> Receive:
    """``receive`` that first gives back the messages already taken."""
    pending = list(received)

    async def again() -> Message:
        return pending.pop(0) if pending else await receive()

    return again

