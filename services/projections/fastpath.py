"""A lean path for the read that follows every command: ``GET /v1/projections/cases/{case_id}``
(optionally ``?min_position=N``, read-your-writes).

Under load (an officer's screen re-reading the case after each command) FastAPI's per-request
machinery — routing through every route, solving the dependency tree, encoding the answer —
cost the projections process more CPU than the read itself, on the process that also applies
the live events. This plain ASGI layer serves a well-formed request itself, calling the very
endpoint function FastAPI would call with the same principal, and answers with the same bytes
and headers (a test holds it to that).

Anything it is not sure of (no or a refused token, a query string other than one canonical
``min_position``, a path that is not a canonical UUID, any other route) goes on to the FastAPI
app, so every error answer naming a field is FastAPI's own. A ``ProblemError`` raised by the
endpoint (403, 404, 504) is rendered by the same function as the app's handler; any other
exception propagates to the same server-error handler. The route stays declared in FastAPI, so
OpenAPI and /docs are unchanged.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi import Response
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.projections import api
from shared.auth import bearer_token, decode_token, settings_of_app
from shared.http import ProblemError, problem_of

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_MIN_POSITION = re.compile(rb"min_position=(0|[1-9][0-9]{0,17})")


class CaseReadFastPath:
    """Plain ASGI layer in front of the app (inside the correlation middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.prefix = api.router.prefix + "/cases/"
        route = next(r for r in api.router.routes if isinstance(r, APIRoute)
                     and r.endpoint is api.case_summary)
        # FastAPI takes the return annotation as the response model
        self.response = TypeAdapter[Any](route.response_model)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (scope["type"] == "http" and scope["method"] == "GET"
                and not scope.get("root_path") and await self._served(scope, receive, send)):
            await self.app(scope, receive, send)

    async def _served(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve the read, or return False (nothing sent) for the app to answer."""
        path: str = scope["path"]
        case_part = path[len(self.prefix):]
        if not (path.startswith(self.prefix) and _UUID.fullmatch(case_part)):
            return False
        query: bytes = scope["query_string"]
        min_position = None
        if query:
            found = _MIN_POSITION.fullmatch(query)
            if found is None:
                return False
            min_position = int(found[1])
        authorization = None
        for name, value in scope["headers"]:  # the first, as starlette's Headers.get
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        token = bearer_token(authorization)
        if token is None:
            return False
        app = scope["app"]
        try:
            who = decode_token(token, settings_of_app(app))
        except ProblemError:
            return False
        sub = Response()  # collects the headers the endpoint sets, as FastAPI's does
        del sub.headers["content-length"]
        try:
            result = await api.case_summary(
                case_id=uuid.UUID(case_part), who=who, reader=app.state.projections,
                response=sub, min_position=min_position)
        except ProblemError as refused:
            await problem_of(Request(scope), refused)(scope, receive, send)
            return True
        model = self.response  # checked and written as FastAPI does with a response_model
        content = model.dump_json(model.validate_python(result, from_attributes=True),
                                  by_alias=True)
        response = Response(content=content, media_type="application/json")
        response.headers.raw.extend(sub.headers.raw)
        await response(scope, receive, send)
        return True
