"""`yizhan up` as a subprocess: a short scenario over HTTP, SIGINT, start again, and every case
is still there (cases API and projections) and the new, empty broker was refilled by the relay
(every position of the log read back from ``case.events``). SYNTHETIC applicant."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.demo.people import synthetic_applicant
from shared.auth import Principal, mint_token
from shared.reference import load_reference
from shared.runtime import free_port
from shared.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
STATION = "530102001001"
CLERK, TOWN = "clerk.530102001001.a", "officer.530102001.a"
TOWN_B, COUNTY = "officer.530102001.b", "officer.530102.a"
UP = [sys.executable, "-c", "from services.cli import main; main()", "up"]


class Stack:
    """One `yizhan up` on a data folder and four free ports (intake, cases, projections, relay)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ports = {"YIZHAN_CASES_PORT": free_port(), "YIZHAN_PROJECTIONS_PORT": free_port(),
                      "YIZHAN_INTAKE_HTTP_PORT": free_port(), "YIZHAN_RELAY_PORT": free_port()}
        self.proc: subprocess.Popen[bytes] | None = None
        self.ref = load_reference()
        self.settings = Settings(_env_file=None)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self, timeout: float = 90) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "DATABASE_ADMIN_URL", "KAFKA_BOOTSTRAP_SERVERS")}
        env |= {k: str(v) for k, v in self.ports.items()}
        # The data folder named relative to the working directory, as the default `.yizhan` is
        env |= {"YIZHAN_DATA_DIR": self.data_dir.name, "YIZHAN_LOG_FORMAT": "json",
                "YIZHAN_LOG_LEVEL": "warning"}
        log = open(self.data_dir.parent / "up.log", "ab")  # noqa: SIM115 - kept for the child
        self.proc = subprocess.Popen(UP, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=self.data_dir.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_tail()
            if all(_ready(self.url(n)) for n in self.ports):
                return
            time.sleep(0.3)
        raise AssertionError("yizhan up not ready:\n" + self.log_tail())

    def interrupt(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        path = self.data_dir.parent / "up.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def auth(self, user: str) -> dict[str, str]:
        member = self.ref.staff.member(user)
        token = mint_token(Principal(user_id=user, role=str(member.role), unit=member.unit),
                           self.settings)
        return {"Authorization": f"Bearer {token}"}

    def broker(self) -> str:
        info = json.loads((self.data_dir / "kafka" / "broker.json").read_text())
        return f"127.0.0.1:{info['port']}"


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path / "data")
    try:
        yield running
    finally:
        running.kill()


def command(stack: Stack, case: str, verb: str, user: str, **body: Any) -> int:
    answer = httpx.post(f"{stack.url('YIZHAN_CASES_PORT')}/v1/cases/{case}/{verb}",
                        json=body, headers=stack.auth(user), timeout=10)
    assert answer.status_code == 200, answer.text
    return int(answer.json()["position"])


def scenario(stack: Stack) -> tuple[list[str], int]:
    """A visit with three services, then hand-off, receive, return, hand-off, receive, decide,
    close, and a backup acting. Returns the case ids and the last position."""
    applicant = synthetic_applicant(random.Random(7), STATION)
    visit = httpx.post(f"{stack.url('YIZHAN_INTAKE_HTTP_PORT')}/v1/visits", headers=stack.auth(
        CLERK), timeout=10, json={"station": STATION, "applicant": applicant, "services": [
            {"service_code": "minimum_living_guarantee", "documents": [
                "id_card", "household_register", "application_form", "income_certificate",
                "property_declaration", "bank_account"]},
            {"service_code": "legal_information", "documents": []},
            {"service_code": "job_referral", "documents": ["id_card"]}]})
    assert visit.status_code == 201, visit.text
    ids = {c["service_code"]: c["case_id"] for c in visit.json()["cases"]}
    mlg, legal, job = (ids["minimum_living_guarantee"], ids["legal_information"],
                       ids["job_referral"])
    command(stack, mlg, "hand-off", CLERK, note="e2e")
    command(stack, mlg, "receive", TOWN_B, acting_for=TOWN)
    command(stack, mlg, "return", TOWN, reasons=["复印件不清晰（测试）"])
    command(stack, mlg, "hand-off", CLERK)
    command(stack, mlg, "receive", TOWN)
    command(stack, mlg, "hand-off", TOWN)
    command(stack, mlg, "receive", COUNTY)
    command(stack, legal, "decide", CLERK, outcome="approved", basis="已解答（测试）")
    command(stack, legal, "close", CLERK)
    last = command(stack, job, "supply-documents", CLERK, documents=["application_form"])
    return [mlg, legal, job], last


def snapshot(stack: Stack, ids: list[str], position: int) -> dict[str, tuple[str, int]]:
    """Each case's (status, version) from the cases API, checked against the projections."""
    found = {}
    for case in ids:
        got = httpx.get(f"{stack.url('YIZHAN_CASES_PORT')}/v1/cases/{case}",
                        headers=stack.auth(CLERK), timeout=10)
        assert got.status_code == 200, got.text
        summary = httpx.get(
            f"{stack.url('YIZHAN_PROJECTIONS_PORT')}/v1/projections/cases/{case}",
            params={"min_position": position}, headers=stack.auth("supervisor.530100.a"),
            timeout=15)
        assert summary.status_code == 200, summary.text
        state = got.json()
        assert summary.json()["case"]["status"] == state["status"]
        assert summary.json()["case"]["version"] == state["version"]
        found[case] = (state["status"], state["version"])
    return found


async def positions_on_broker(bootstrap: str, partitions: int, head: int,
                              timeout: float = 30) -> set[int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    seen: set[int] = set()
    try:
        consumer.assign([TopicPartition("case.events", p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + timeout
        while len(seen & set(range(1, head + 1))) < head and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                seen |= {int(json.loads(r.value)["position"]) for r in records if r.value}
    finally:
        await consumer.stop()
    return seen


def test_up_keeps_every_case_across_a_restart_and_refills_the_broker(stack: Stack) -> None:
    stack.start()
    ids, position = scenario(stack)
    before = snapshot(stack, ids, position)
    assert stack.interrupt() == 0, stack.log_tail()

    stack.start()
    assert snapshot(stack, ids, position) == before
    status = httpx.get(f"{stack.url('YIZHAN_PROJECTIONS_PORT')}/v1/projections/status",
                       headers=stack.auth("supervisor.530100.a"), timeout=10).json()
    head = int(status["projection"]["head"])
    assert head >= position
    seen = asyncio.run(positions_on_broker(stack.broker(), stack.settings.topic_partitions,
                                           head))
    assert set(range(1, head + 1)) <= seen, f"missing {sorted(set(range(1, head + 1)) - seen)}"
    # the relay, in its own process, reports the same on its metrics endpoint
    metrics = httpx.get(f"{stack.url('YIZHAN_RELAY_PORT')}/metrics", timeout=10).text
    assert re.search(r"^yizhan_relay_leader 1$", metrics, re.MULTILINE), metrics
    relayed = re.search(r"^yizhan_relay_position (\d+)$", metrics, re.MULTILINE)
    assert relayed is not None and int(relayed[1]) >= head, metrics
    assert stack.interrupt() == 0


DEMO = [sys.executable, "-c", "from services.cli import main; main()", "demo"]


def test_the_demo_drives_a_day_through_up_and_prints_what_the_store_and_api_hold(
    stack: Stack,
) -> None:
    """`yizhan demo` on a running `up`: exit 0 only when its own checks pass (counts against
    the projections API, event count, verify, no failed request, no server error a retry got
    past); and the figures it prints are the store's and the API's, read here again."""
    stack.start()
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "DATABASE_ADMIN_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env |= {k: str(v) for k, v in stack.ports.items()}
    env |= {"YIZHAN_DATA_DIR": stack.data_dir.name, "YIZHAN_LOG_FORMAT": "json",
            "YIZHAN_LOG_LEVEL": "warning"}
    done = subprocess.run([*DEMO, "--days", "1", "--scale", "0.04", "--seed", "11"], env=env,
                          cwd=stack.data_dir.parent, capture_output=True, text=True,
                          timeout=150, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    assert "failed requests: 0" in out and "server errors" not in out, out
    grew = re.search(r"event store\s+([\d,]+) → ([\d,]+) events", out)
    cases = re.search(r"city cases\s+([\d,]+) → ([\d,]+) .*: match", out)
    assert grew is not None and cases is not None, out
    events_after, city_after = (int(m[2].replace(",", "")) for m in (grew, cases))
    # it ends as an audit does: the head signed (and witnessed), then the whole log verified
    audit = re.search(r"audit verify\s+OK: ([\d,]+) events to position ([\d,]+), ([\d,]+) "
                      r"signed checkpoint", out)
    assert audit is not None, out
    assert int(audit[2].replace(",", "")) == events_after and int(audit[3]) >= 1, out
    witnessed = (stack.data_dir / "checkpoint-witness.jsonl").read_text().splitlines()
    assert json.loads(witnessed[-1])["position"] == events_after
    status = httpx.get(f"{stack.url('YIZHAN_PROJECTIONS_PORT')}/v1/projections/status",
                       headers=stack.auth("supervisor.530100.a"), timeout=10).json()
    assert int(status["projection"]["head"]) == events_after
    counts = httpx.get(
        f"{stack.url('YIZHAN_PROJECTIONS_PORT')}/v1/projections/units/530100/counts",
        params={"min_position": events_after}, headers=stack.auth("supervisor.530100.a"),
        timeout=15)
    assert counts.status_code == 200, counts.text
    assert counts.json()["subtree_total"] == city_after, counts.text
    assert stack.interrupt() == 0
