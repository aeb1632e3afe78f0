"""The demo's HTTP side: a clerk's visit to intake, an officer's command to cases, a
supervisor's read of the projections. Transport errors, 409 (busy) and 5xx are retried with
the same Idempotency-Key, so a retry never applies a command twice; every retried answer is
counted (``Api.retried``), so that a server error a retry got past is still reported."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx

from services.demo.cast import Tokens
from shared.logging import get_logger

log = get_logger("yizhan.demo")
RETRIES = 4


@dataclass(frozen=True)
class Urls:
    intake: str
    cases: str
    projections: str


@dataclass(frozen=True)
class Answer:
    """A response: status and JSON body (or the problem+json)."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def problem(self) -> str:
        return str(self.body.get("title") or self.body.get("detail") or self.status)


class Retried(NamedTuple):
    """An answer that was retried (status 0: a transport error, ``problem`` its kind)."""

    endpoint: str
    status: int
    problem: str

    def __str__(self) -> str:
        return f"{self.endpoint}: {self.status or 'transport error'} {self.problem}"


class Api:
    """One HTTP client for the three services, authenticating as any staff member."""

    def __init__(self, urls: Urls, tokens: Tokens, *, connections: int = 32) -> None:
        self.urls, self.tokens = urls, tokens
        limits = httpx.Limits(max_connections=connections,
                              max_keepalive_connections=connections)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(30.0), limits=limits)
        self.retried: Counter[Retried] = Counter()
        """Answers that were retried, by endpoint, status and problem."""

    async def close(self) -> None:
        await self.http.aclose()

    async def visit(self, clerk: str, body: dict[str, Any], key: str) -> Answer:
        return await self._post(f"{self.urls.intake}/v1/visits", clerk, body, key)

    async def command(self, case_id: str, verb: str, actor: str, body: dict[str, Any],
                      key: str) -> Answer:
        return await self._post(f"{self.urls.cases}/v1/cases/{case_id}/{verb}", actor, body,
                                key)

    async def case(self, case_id: str, reader: str) -> Answer:
        return await self._send("GET", f"{self.urls.cases}/v1/cases/{case_id}", reader)

    async def read(self, path: str, reader: str, **params: Any) -> Answer:
        """GET a projections path; a 504 (the projection is behind) is retried."""
        return await self._send("GET", f"{self.urls.projections}{path}", reader,
                                params=params)

    async def _post(self, url: str, user: str, body: dict[str, Any], key: str) -> Answer:
        return await self._send("POST", url, user, json=body, key=key)

    async def _send(self, method: str, url: str, user: str, *, key: str | None = None,
                    **kwargs: Any) -> Answer:
        headers = self.tokens.header(user)
        if key is not None:
            headers["Idempotency-Key"] = key
        for attempt in range(RETRIES + 1):
            try:
                response = await self.http.request(method, url, headers=headers, **kwargs)
            except httpx.TransportError as exc:
                if attempt == RETRIES:
                    return Answer(599, {"title": f"transport error: {exc!r}"})
                self.retried[Retried(f"{method} {_route_of(url)}", 0, type(exc).__name__)] += 1
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            if _retryable(response) and attempt < RETRIES:
                answer = Answer(response.status_code, _json(response))
                self.retried[Retried(f"{method} {_route_of(url)}", answer.status,
                                     answer.problem)] += 1
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            return Answer(response.status_code, _json(response))
        raise AssertionError("unreachable")


def _route_of(url: str) -> str:
    """``/v1/cases/<id>/decide`` → ``/v1/cases/{id}/decide``: one key per endpoint."""
    path = httpx.URL(url).path
    return "/".join("{id}" if len(part) >= 32 or part.isdigit() else part
                    for part in path.split("/"))


def _retryable(response: httpx.Response) -> bool:
    """5xx, 504 and a 409 concurrency clash may pass on retry; a 409 naming a domain rule
    will not."""
    if response.status_code >= 500:
        return True
    if response.status_code != 409:
        return False
    return str(_json(response).get("title", "")) in ("Conflict", "Precondition failed")


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"title": response.text[:200]}
    return body if isinstance(body, dict) else {"items": body}
