"""problem+json errors name the field; tokens are checked; correlation ids travel."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from shared.auth import CurrentPrincipal, Principal, mint_token
from shared.http import ProblemError, install
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
