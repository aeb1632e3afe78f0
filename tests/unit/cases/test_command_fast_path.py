"""The commands' lean HTTP path (services/cases/fastpath.py) answers exactly as FastAPI does:
the same script of requests — well-formed commands, domain refusals, 412s, idempotent retries,
every kind of bad input — against an app with it and one without, byte for byte."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from services.cases import api
from services.cases.bootstrap import CasesService, build_app
from services.cases.domain import SubmitCase
from services.cases.fastpath import CommandFastPath, command_routes
from services.cases.handlers import CaseCommands
from shared.auth import Principal, mint_token
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.eventstore.memory import InMemoryEventStore
from shared.reference import CHINA_TZ, Reference, Role
from shared.settings import Settings

SETTINGS = Settings()
STATION, TOWNSHIP, COUNTY, OTHER_TOWNSHIP = "530102001001", "530102001", "530102", "530102002"
CLERK, CLERK_B = f"clerk.{STATION}.a", f"clerk.{STATION}.b"
TOWN, OTHER_TOWN = f"officer.{TOWNSHIP}.a", f"officer.{OTHER_TOWNSHIP}.a"
COUNTY_A, COUNTY_B = f"officer.{COUNTY}.a", f"officer.{COUNTY}.b"
DOCS = ("id_card", "household_register", "application_form", "income_certificate",
        "property_declaration", "bank_account")
CASES = [uuid.UUID(int=i + 1) for i in range(4)]


def clock() -> Iterator[datetime]:
    now = datetime(2026, 3, 2, 9, 0, tzinfo=CHINA_TZ)
    while True:
        now += timedelta(minutes=1)
        yield now


async def service(ref: Reference) -> CasesService:
    store = InMemoryEventStore()
    commands = CaseCommands(store, ref)
    ticks = clock()
    svc = CasesService(SETTINGS, store, ref, commands, lambda: next(ticks))
    for case_id in CASES:
        await commands.handle(SubmitCase(
            case_id=case_id, at=svc.clock(),
            actor=Actor(user_id=CLERK, role=Role.STATION_CLERK, unit=STATION),
            tracking_no=f"KM-{case_id.hex[-6:]}", service_code="minimum_living_guarantee",
            visit_id=case_id, station=STATION,
            applicant=EncryptedApplicant(subject_id="s", id_hash="hmac:00", encrypted={}),
            documents=DOCS), command_id=case_id)
    return svc


def token(ref: Reference, user: str, role: str | None = None) -> str:
    member = ref.staff.member(user)
    return mint_token(Principal(user_id=user, role=role or str(member.role), unit=member.unit),
                      SETTINGS)


def script(ref: Reference) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(verb path, user, headers, body) in order; ``None`` user: no Authorization header."""
    one, two, three, four = CASES
    steps: list[tuple[str, str | None, dict[str, str], Any]] = [
        (f"{one}/accept", CLERK, {}, {}),
        (f"{one}/accept", CLERK, {}, {}),  # refused: already accepted (409)
        (f"{one}/notes", CLERK_B, {}, {"text": "来电", "acting_for": CLERK}),
        (f"{one}/hand-off", CLERK, {"Idempotency-Key": "k-1"}, {"note": "转乡镇"}),
        (f"{one}/hand-off", CLERK, {"Idempotency-Key": "k-1"}, {"note": "转乡镇"}),  # retry
        (f"{one}/receive", OTHER_TOWN, {}, {}),  # another township: 403
        (f"{one}/receive", TOWN, {"If-Match": '"2"'}, {}),  # stale version: 412
        (f"{one}/receive", TOWN, {"If-Match": "W/\"7\""}, {}),
        (f"{one}/return", TOWN, {}, {"reasons": ["缺少收入证明"],
                                     "documents": ["income_certificate"]}),
        (f"{one}/request-documents", CLERK, {}, {}),
        (f"{one}/supply-documents", CLERK, {}, {"documents": ["income_certificate"]}),
        (f"{two}/accept", CLERK, {"Content-Type": "application/json; charset=utf-8"}, {}),
        (f"{two}/hand-off", CLERK, {}, {}),
        (f"{two}/receive", TOWN, {}, {}),
        (f"{two}/hand-off", TOWN, {}, {}),
        (f"{two}/receive", COUNTY_A, {}, {}),
        (f"{two}/decide", COUNTY_A, {}, {"outcome": "maybe"}),  # 422 naming the fields
        (f"{two}/decide", COUNTY_A, {}, {"outcome": "approved", "basis": "符合条件", "x": 1}),
        (f"{two}/decide", COUNTY_B, {}, {"outcome": "approved", "basis": "符合条件"}),  # 403
        (f"{two}/decide", COUNTY_A, {}, {"outcome": "approved", "basis": "符合条件"}),
        (f"{two}/reassign", COUNTY_A, {}, {"to_owner": COUNTY_B, "reason": "休假"}),
        (f"{two}/close", COUNTY_A, {}, {}),
        (f"{two}/reopen", COUNTY_A, {}, {"reason": "复核"}),
        (f"{three}/withdraw", CLERK, {}, {"reason": "申请人撤回"}),
        # bad input of every kind: FastAPI answers these
        (f"{four}/accept", None, {}, {}),
        (f"{four}/accept", CLERK, {"Authorization": "Basic abc"}, {}),
        (f"{four}/accept", CLERK, {"Authorization": "Bearer "}, {}),
        (f"{four}/accept", CLERK, {"Authorization": "Bearer not-a-token"}, {}),
        (f"{four}/accept", f"system:{CLERK}", {}, {}),
        (f"{four}/notes", CLERK, {"If-Match": "abc"}, {"text": "x"}),
        (f"{four}/notes", CLERK, {"Idempotency-Key": "k" * 201}, {"text": "x"}),
        (f"{four}/notes", CLERK, {}, {"text": ""}),
        (f"{four}/notes", CLERK, {}, b"{not json"),
        (f"{four}/notes", CLERK, {}, b""),
        (f"{four}/notes", CLERK, {}, b"null"),
        (f"{four}/notes", CLERK, {}, b"[" * 100_000 + b"]" * 100_000),  # too deep to parse
        (f"{four}/notes", CLERK, {}, ["x"]),
        (f"{four}/notes", CLERK, {"Content-Type": "text/plain"}, {"text": "x"}),
        (f"{four}/supply-documents", CLERK, {}, {"documents": []}),
        (f"{four}/return", CLERK, {}, {"reasons": [""]}),
        (f"{str(four).upper()}/accept", CLERK, {}, {}),
        (f"{four.hex}/accept", CLERK, {}, {}),
        ("not-a-uuid/accept", CLERK, {}, {}),
        (f"{four}/levitate", CLERK, {}, {}),
        (f"{four}/accept/", CLERK, {}, {}),
    ]
    out = []
    for path, user, headers, body in steps:
        sent = dict(headers)
        if user is not None and "Authorization" not in sent:
            role = None
            if user.startswith("system:"):
                role, user = "system", user.removeprefix("system:")
            sent["Authorization"] = f"Bearer {token(ref, user, role)}"
        sent.setdefault("Content-Type", "application/json")
        sent["X-Correlation-ID"] = f"cid-{len(out)}"
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        out.append((path, user or "", sent, raw))
    return out


async def run(app: Any, steps: list[tuple[str, str, dict[str, str], bytes]]
              ) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    answers = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cases") as client:
        for path, _, headers, body in steps:
            r = await client.post(f"/v1/cases/{path}", content=body, headers=headers)
            answers.append((r.status_code, list(r.headers.multi_items()), r.content))
    return answers


async def test_the_fast_path_answers_byte_for_byte_as_fastapi(
    ref: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = script(ref)
    served: list[bool] = []
    serve = CommandFastPath._serve

    async def counting(self: CommandFastPath, *args: Any) -> bool:
        done = await serve(self, *args)
        served.append(done)
        return done

    monkeypatch.setattr(CommandFastPath, "_serve", counting)
    fast_service = await service(ref)
    fast = await run(build_app(fast_service), steps)
    slow = await run(build_app(await service(ref), fast_path=False), steps)
    for step, a, b in zip(steps, fast, slow, strict=True):
        assert a == b, step[0]
    statuses = [status for status, _, _ in fast]
    assert statuses.count(200) == 17 and {403, 409, 412, 422, 400, 401, 404} <= set(statuses)
    # it served every well-formed command itself (the domain's refusals, 409s and 412s
    # included) and handed the rest on: bad tokens, headers and bodies, the system role
    assert (served.count(True), served.count(False)) == (23, 18)
    # the request's correlation id reached the event metadata
    accepted = (await fast_service.store.read_stream(f"case-{CASES[0]}"))[1]
    assert (accepted.type, accepted.metadata["correlation_id"]) == ("CaseAccepted", "cid-0")


def test_every_command_route_takes_the_fast_path() -> None:
    posts = {r.path.rsplit("/", 1)[1] for r in api.router.routes
             if getattr(r, "methods", None) == {"POST"}}
    assert set(command_routes(api.router)) == posts
