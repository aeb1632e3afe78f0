"""problem+json errors name the field; tokens are checked; correlation ids travel."""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from shared.auth import CurrentPrincipal, Principal, mint_token
from shared.http import LoggedOnce, ProblemError, install
from shared.logging import current_correlation_id
from shared.settings import Settings

SETTINGS = Settings()


class Applicant(BaseModel):
    id_number: str = Field(pattern=r"^\d{17}[\dX]$")


class Body(BaseModel):
    service: str
    applicant: Applicant
    documents: list[str] = Field(max_length=2)


def build() -> TestClient:
    app = FastAPI()
    app.state.settings = SETTINGS
    install(app)

    @app.post("/things")
    def create(body: Body, who: CurrentPrincipal) -> dict[str, Any]:
        return {"by": who.user_id, "cid": current_correlation_id()}

    @app.get("/conflict")
    def conflict() -> None:
        raise ProblemError(409, "Conflict", "someone else wrote first", type_="/problems/x",
                           errors=[{"field": "If-Match", "message": "stale"}])

    @app.get("/search")
    def search(q: str = "", other: str = "") -> dict[str, str]:
        return {"q": q, "other": other}

    @app.get("/forbidden")
    def forbidden() -> None:
        raise ProblemError(403, "Outside your jurisdiction", "not yours")

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client() -> TestClient:
    return build()


def auth(user: str = "u1") -> dict[str, str]:
    token = mint_token(Principal(user_id=user, role="station_clerk", unit="530102001001"),
                       SETTINGS)
    return {"Authorization": f"Bearer {token}"}


def test_validation_errors_name_every_field(client: TestClient) -> None:
    response = client.post("/things", headers=auth(), json={
        "applicant": {"id_number": "123"}, "documents": ["a", "b", "c"]})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"service", "applicant.id_number", "documents"}


def test_a_missing_or_bad_token_is_401_problem(client: TestClient) -> None:
    body = {"service": "x", "applicant": {"id_number": "11010519491231002X"}, "documents": []}
    assert client.post("/things", json=body).status_code == 401
    bad = client.post("/things", json=body, headers={"Authorization": "Bearer nonsense"})
    assert bad.status_code == 401 and bad.headers["content-type"] == "application/problem+json"
    other = Settings(jwt_secret="another-secret-that-is-long-enough-32")
    forged = mint_token(Principal(user_id="x", role="auditor", unit="530100"), other)
    assert client.post("/things", json=body,
                       headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    expired = mint_token(Principal(user_id="x", role="auditor", unit="530100"), SETTINGS,
                         ttl_s=-120)
    assert client.post("/things", json=body,
                       headers={"Authorization": f"Bearer {expired}"}).status_code == 401


def test_correlation_id_is_taken_bound_and_echoed(client: TestClient) -> None:
    body = {"service": "x", "applicant": {"id_number": "11010519491231002X"}, "documents": []}
    response = client.post("/things", json=body,
                           headers={**auth("u7"), "X-Correlation-ID": "req-42"})
    assert response.json() == {"by": "u7", "cid": "req-42"}
    assert response.headers["X-Correlation-ID"] == "req-42"
    assert len(client.post("/things", json=body, headers=auth()).headers["X-Correlation-ID"]) == 32


def test_domain_problems_and_crashes_are_structured(client: TestClient) -> None:
    conflict = client.get("/conflict", headers={"X-Correlation-ID": "c-1"})
    assert conflict.status_code == 409
    assert conflict.json()["errors"] == [{"field": "If-Match", "message": "stale"}]
    assert conflict.json()["correlation_id"] == "c-1"
    boom = client.get("/boom")
    assert boom.status_code == 500 and "secret" not in boom.text
    assert boom.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(("query", "field"), [
    ("q=a%00b", "query:q"), ("other=x&q=%1F", "query:q"), ("q=%1b%5B2J", "query:q"),
    ("q=ok&other=%0b", "query:other"), ("a%00=1", "query"),
])
def test_a_control_character_in_a_query_is_a_422_naming_the_parameter(
    client: TestClient, query: str, field: str
) -> None:
    refused = client.get(f"/search?{query}")
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in refused.json()["errors"]] == [field]


def test_tabs_line_breaks_and_an_encoded_percent_in_a_query_pass(client: TestClient) -> None:
    answer = client.get("/search?q=a%09b%0D%0A&other=%2500")
    assert answer.json() == {"q": "a\tb\r\n", "other": "%00"}


def test_a_token_with_a_role_we_do_not_know_is_401_naming_the_role(client: TestClient) -> None:
    body = {"service": "x", "applicant": {"id_number": "11010519491231002X"}, "documents": []}
    token = mint_token(Principal(user_id="u1", role="superadmin", unit="530100"), SETTINGS)
    refused = client.post("/things", json=body, headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401
    assert refused.json()["errors"] == [{"field": "token:role",
                                         "message": "unknown role 'superadmin'"}]


class Exchange:
    """One request driven by hand through an ASGI app: how often the app took a body part."""

    def __init__(self, headers: list[tuple[bytes, bytes]], parts: list[bytes]) -> None:
        self.headers, self.parts, self.taken = headers, parts, 0
        self.sent: list[dict[str, Any]] = []

    async def run(self, app: Any) -> dict[str, Any]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/things", "raw_path": b"/things",
                 "query_string": b"", "root_path": "", "headers": self.headers,
                 "client": ("test", 1), "server": ("test", 80)}

        async def receive() -> dict[str, Any]:
            self.taken += 1
            if self.taken > len(self.parts):
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": self.parts[self.taken - 1],
                    "more_body": self.taken < len(self.parts)}

        async def send(message: dict[str, Any]) -> None:
            self.sent.append(message)

        await app(scope, receive, send)
        start = self.sent[0]
        return {"status": start["status"], "headers": dict(start["headers"]),
                "body": json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))}


def limited_app(max_body: int) -> FastAPI:
    app = FastAPI()
    app.state.settings = SETTINGS
    install(app, max_body=max_body)

    @app.post("/things")
    def create(body: Body, who: CurrentPrincipal) -> dict[str, Any]:
        return {"by": who.user_id}

    return app


async def test_a_body_declared_too_large_is_413_before_any_of_it_is_read() -> None:
    exchange = Exchange([(b"content-length", b"104857600"),
                         (b"content-type", b"application/json")], [b"{" * 1000])
    answer = await exchange.run(limited_app(1000))  # no token either: the size answers first
    assert (answer["status"], exchange.taken) == (413, 0)
    assert answer["headers"][b"content-type"] == b"application/problem+json"
    assert answer["headers"][b"connection"] == b"close"
    assert answer["body"]["errors"] == [{"field": "body", "message": "more than 1000 bytes"}]


async def test_a_streamed_body_is_cut_off_once_it_passes_the_limit() -> None:
    exchange = Exchange([(b"content-type", b"application/json"), *auth_raw()], [b" " * 400] * 10)
    answer = await exchange.run(limited_app(1000))
    assert (answer["status"], exchange.taken) == (413, 3)
    assert answer["body"]["errors"][0]["field"] == "body"


async def test_a_body_within_the_limit_is_served() -> None:
    body = json.dumps({"service": "x", "applicant": {"id_number": "11010519491231002X"},
                       "documents": []}).encode()
    exchange = Exchange([(b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode()), *auth_raw()],
                        [body[:10], body[10:]])
    answer = await exchange.run(limited_app(len(body)))
    assert (answer["status"], answer["body"]) == (200, {"by": "u1"})


def auth_raw() -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in auth().items()]


def test_every_problem_names_a_field_even_when_its_raiser_did_not(client: TestClient) -> None:
    cases = {
        "missing token": (client.post("/things", json={}), 401, "header:Authorization"),
        "bad token": (client.post("/things", json={}, headers={"Authorization": "Bearer x"}),
                      401, "header:Authorization"),
        "unknown route": (client.get("/nowhere"), 404, "path"),
        "wrong method": (client.delete("/things"), 405, "method"),
        "bare 403": (client.get("/forbidden"), 403, "token"),
        "crash": (client.get("/boom"), 500, "request"),
    }
    for what, (response, status, field) in cases.items():
        assert response.status_code == status, what
        assert response.headers["content-type"] == "application/problem+json", what
        errors = response.json()["errors"]
        assert [e["field"] for e in errors] == [field] and errors[0]["message"], what
    assert "POST" in cases["wrong method"][0].json()["errors"][0]["message"]


def test_a_body_that_is_not_json_names_the_body_and_the_character(client: TestClient) -> None:
    response = client.post("/things", content=b'{"service": "x",, }',
                           headers={**auth(), "Content-Type": "application/json"})
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "body"
    assert error["message"].startswith("invalid JSON at character 16: ")


OUTAGES: dict[str, Exception] = {
    "connection lost": asyncpg.exceptions.ConnectionDoesNotExistError(
        "connection was closed in the middle of operation"),
    "starting up": asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
    "pool closing": asyncpg.exceptions.InterfaceError("pool is closing"),
    "refused": ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
    "every address refused": OSError("Multiple exceptions: [Errno 111] Connect call failed"),
    "too many connections": asyncpg.exceptions.TooManyConnectionsError("too many clients"),
    "pool acquire timeout": TimeoutError(),
    # what connecting raises while the embedded server is down: its Unix socket is gone
    "socket file gone": FileNotFoundError(2, "No such file or directory"),
}


def failing_app(error: Exception) -> FastAPI:
    app = FastAPI()
    install(app)

    @app.post("/visits")
    async def visit() -> None:
        raise error

    return app


@pytest.mark.parametrize("what", list(OUTAGES))
def test_the_database_out_of_reach_is_a_503_logged_once_as_a_warning(
    what: str, caplog: pytest.LogCaptureFixture
) -> None:
    # raise_server_exceptions: had the error gone on past the app (where uvicorn logs it
    # again, "Exception in ASGI application"), the client would raise it here
    client = TestClient(failing_app(OUTAGES[what]), raise_server_exceptions=True)
    with caplog.at_level(logging.INFO):
        response = client.post("/visits")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"].isdigit()
    assert response.json()["errors"][0]["field"] == "request"
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.levelno, "http.unavailable" in r.getMessage()) for r in records] == [
        (logging.WARNING, True)]


def test_an_outage_met_in_a_plain_asgi_layer_is_a_503_too() -> None:
    app = FastAPI()

    def fast_path(inner: Any) -> Any:
        async def serve(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                raise ConnectionResetError("reset by peer")
            await inner(scope, receive, send)
        return serve

    install(app, inner=[fast_path])
    response = TestClient(app, raise_server_exceptions=True).get("/anything")
    assert response.status_code == 503 and response.headers["retry-after"]


@pytest.mark.parametrize("error", [FileNotFoundError("/etc/yizhan"), RuntimeError("bug"),
                                   asyncpg.exceptions.InterfaceError("cannot call it now")])
def test_other_failures_stay_500(error: Exception) -> None:
    response = TestClient(failing_app(error), raise_server_exceptions=False).post("/visits")
    assert response.status_code == 500


def test_a_genuine_500_is_logged_once_with_its_traceback(
    caplog: pytest.LogCaptureFixture
) -> None:
    # raise_server_exceptions: what leaves the served app, uvicorn logs a second time
    client = TestClient(LoggedOnce(failing_app(RuntimeError("bug"))),
                        raise_server_exceptions=True)
    with caplog.at_level(logging.INFO):
        response = client.post("/visits")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "http.unhandled" in errors[0].getMessage()
    assert errors[0].exc_info is not None


def test_an_error_raised_after_the_answer_began_is_not_swallowed() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-body")

    with pytest.raises(RuntimeError, match="mid-body"):
        TestClient(LoggedOnce(broken), raise_server_exceptions=True).get("/")


def test_a_500_carries_its_correlation_id_in_the_log_line_and_the_answer(
    caplog: pytest.LogCaptureFixture
) -> None:
    """The 500 tells the client "the correlation id identifies the logs": the one log line of
    the failure must hold that id, and the answer must echo it as every other answer does
    (Starlette answers a crash from outside the correlation middleware)."""
    client = TestClient(LoggedOnce(failing_app(RuntimeError("bug"))),
                        raise_server_exceptions=True)
    with caplog.at_level(logging.INFO):
        response = client.post("/visits", headers={"X-Correlation-ID": "req-500"})
    assert response.status_code == 500
    assert response.json()["correlation_id"] == "req-500"
    assert response.headers.get("X-Correlation-ID") == "req-500"
    (logged,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert isinstance(logged.msg, dict) and logged.msg.get("correlation_id") == "req-500"


async def test_a_correlation_id_beyond_ascii_reaches_the_logs_and_the_answer_unchanged(
) -> None:
    """Header bytes are UTF-8 from today's clients; read as Latin-1, an id beyond ASCII was
    replaced by a new one (or, 'é' read as the printable 'Ã©', bound for the logs and the
    event store, and so Kafka, as other text and echoed as other bytes)."""
    body = json.dumps({"service": "x", "applicant": {"id_number": "11010519491231002X"},
                       "documents": []}).encode()
    for sent in ("办件-é-1", "é-1"):
        exchange = Exchange([(b"content-type", b"application/json"), *auth_raw(),
                             (b"x-correlation-id", sent.encode())], [body])
        answer = await exchange.run(build().app)
        assert answer["status"] == 200
        assert answer["body"]["cid"] == sent
        assert answer["headers"][b"x-correlation-id"] == sent.encode()
