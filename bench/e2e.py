#!/usr/bin/env python
"""End to end on the embedded stack: officers' commands over HTTP at a fixed rate, and how long
until each command's effect is visible in the township read model.

    python bench/e2e.py            # 200 commands/s for 60 s
    python bench/e2e.py --quick    # 200 commands/s for 20 s (under a minute in all)

`yizhan up` runs as a subprocess (embedded PostgreSQL with fsync on, memory broker; relay,
intake, cases and projections each in its own process) on a temporary data folder and free
ports. Setup opens cases over intake's HTTP API (SYNTHETIC applicants, labour exchange: decided
at the township) and waits until the projections have applied every event of the setup, so
that timing starts on a settled stack. Then a fixed-rate schedule sends, per case in turn,
hand-off (clerk) → receive (township officer) → notes (township officer) … one request per
command, and for each command a township supervisor asks the projections API for the case with
``min_position`` = the command's position, until the summary shows the command's version.
Visible latency = from the command's response to that read's answer. A command whose effect is
not visible within 10 s is lost. Also printed: p50 / p99 by 10-s window of the run. Last line:
``RESULT {"rate_per_s", "visible_p50_ms", "visible_p99_ms", "lost", …,
"limit_visible_p50_ms", "limit_visible_p99_ms"}``. Targets: visible_p99_ms ≤ 250, lost = 0.

The limit, measured after our stack has stopped, at the same rate for up to 20 s: the same hops
made of raw parts (``bench/limit_pipeline.py``: a committed row NOTIFYs, a LISTENing task
produces it to a topic of an embedded broker, a plain aiokafka consumer commits it into a view
table), on an embedded PostgreSQL (fsync on) and broker of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.commands import KeepAlive
from bench.limit_pipeline import PipelineLimit
from bench.limit_pipeline import measure as measure_pipeline
from services.demo.people import synthetic_applicant
from shared.auth import Principal, mint_token
from shared.logging import configure_logging, get_logger
from shared.reference import Reference, load_reference
from shared.runtime import EmbeddedKafka, EmbeddedPostgres, die_with_parent, free_port
from shared.settings import Settings

log = get_logger("bench.e2e")
RATE = 200
SERVICE = "labour_exchange"
DOCUMENTS = ["id_card", "application_form"]
STATIONS = ("530102001001", "530102001002", "530102002001", "530103001001")
VISIBLE_TIMEOUT_S = 10.0
LIMIT_SECONDS = 20.0  # the limit runs this long at most (the same rate)
UP = [sys.executable, "-c", "from services.cli import main; main()", "up"]


@dataclass
class Case:
    case_id: str
    clerk: str
    officer: str
    supervisor: str
    done: int = 0  # commands sent so far
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def next_command(self) -> tuple[str, str, dict[str, str]]:
        if self.done == 0:
            return "hand-off", self.clerk, {"note": "bench"}
        if self.done == 1:
            return "receive", self.officer, {}
        return "notes", self.officer, {"text": f"bench note {self.done}"}


@dataclass
class Results:
    command_ms: list[float] = field(default_factory=list)
    visible_ms: list[float] = field(default_factory=list)
    visible_at: list[float] = field(default_factory=list)  # when each command was sent (s)
    failed: int = 0
    lost: int = 0
    started: float = 0.0


class Tokens:
    def __init__(self, ref: Reference, settings: Settings) -> None:
        self.ref, self.settings, self.cache = ref, settings, {}  # type: ignore[var-annotated]

    def __call__(self, user: str) -> dict[str, str]:
        if user not in self.cache:
            m = self.ref.staff.member(user)
            self.cache[user] = mint_token(Principal(user_id=user, role=str(m.role),
                                                    unit=m.unit), self.settings)
        return {"Authorization": f"Bearer {self.cache[user]}"}


def start_stack(data_dir: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "DATABASE_ADMIN_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env |= {k: str(v) for k, v in ports.items()}
    env |= {"YIZHAN_DATA_DIR": str(data_dir), "YIZHAN_LOG_FORMAT": "json",
            "YIZHAN_LOG_LEVEL": "warning", "YIZHAN_DB_POOL_MAX": "40"}
    out = open(data_dir.parent / "up.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(UP, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            preexec_fn=die_with_parent(signal.SIGINT))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("yizhan up exited: see " + str(data_dir.parent / "up.log"))
        try:
            if all(httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=1).status_code == 200
                   for p in ports.values()):
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("yizhan up did not become ready")


async def open_cases(http: httpx.AsyncClient, base: str, ref: Reference, tokens: Tokens,
                     n: int) -> list[Case]:
    rng = random.Random(2026)
    gate = asyncio.Semaphore(16)

    async def one(i: int) -> Case:
        station = STATIONS[i % len(STATIONS)]
        clerk = ref.staff.duty_clerk(station).user_id
        body = {"station": station, "applicant": synthetic_applicant(rng, station),
                "services": [{"service_code": SERVICE, "documents": DOCUMENTS}]}
        async with gate:
            answer = await http.post(f"{base}/v1/visits", json=body, headers=tokens(clerk))
        answer.raise_for_status()
        township = station[:9]
        return Case(answer.json()["cases"][0]["case_id"], clerk,
                    f"officer.{township}.a", f"supervisor.{township}")

    return list(await asyncio.gather(*(one(i) for i in range(n))))


class Connections:
    """Keep-alive connections to one server, one request per connection at a time
    (``bench.commands.KeepAlive``: httpx cost this client most of a core at 100 commands/s,
    which then queued the very requests it timed)."""

    def __init__(self, base: str) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.idle: list[KeepAlive] = []
        self.slots = asyncio.Semaphore(128)  # as many connections as httpx's pool had

    async def request(self, method: str, path: str, body: Any,
                      headers: dict[str, str]) -> tuple[int, Any]:
        async with self.slots:
            return await self._request(method, path, body, headers)

    async def _request(self, method: str, path: str, body: Any,
                       headers: dict[str, str]) -> tuple[int, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        while True:
            reused = bool(self.idle)  # an idle connection the server may since have closed
            conn = self.idle.pop() if reused else KeepAlive(self.host, self.port)
            try:
                status, content = await conn.request(method, path, data, headers)
            except (OSError, IndexError, asyncio.IncompleteReadError):
                await conn.close()
                if reused:
                    continue
                raise
            self.idle.append(conn)
            return status, content


async def until_visible(proj: Connections, tokens: Tokens, case: Case,
                        position: int, version: int) -> float | None:
    """Seconds from now until the township read model shows ``version`` (None: lost)."""
    started = time.perf_counter()
    while time.perf_counter() - started < VISIBLE_TIMEOUT_S:
        try:
            status, content = await proj.request(
                "GET", f"/v1/projections/cases/{case.case_id}?min_position={position}", None,
                tokens(case.supervisor))
        except (OSError, RuntimeError, ValueError, IndexError,
                asyncio.IncompleteReadError) as exc:
            log.debug("bench.read_error", error=repr(exc))
            await asyncio.sleep(0.005)
            continue
        if status != 200:
            log.debug("bench.read_status", status=status, body=content[:200])
        if status == 200 and json.loads(content)["case"]["version"] >= version:
            return time.perf_counter() - started
        await asyncio.sleep(0.005)
    return None


async def one_command(cases: Connections, proj: Connections, tokens: Tokens, case: Case,
                      results: Results) -> None:
    async with case.lock:
        verb, user, body = case.next_command()
        sent = time.perf_counter()
        try:
            status, content = await cases.request(
                "POST", f"/v1/cases/{case.case_id}/{verb}", body, tokens(user))
        except (OSError, RuntimeError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            results.failed += 1
            log.warning("bench.command_error", verb=verb, error=repr(exc))
            return
        results.command_ms.append((time.perf_counter() - sent) * 1000)
        if status != 200:
            results.failed += 1
            log.warning("bench.command_failed", verb=verb, status=status,
                        body=content[:200].decode(errors="replace"))
            return
        case.done += 1
        done = json.loads(content)
    seen = await until_visible(proj, tokens, case, done["position"], done["version"])
    if seen is None:
        results.lost += 1
    else:
        results.visible_ms.append(seen * 1000)
        results.visible_at.append(sent)


async def at_rate(rate: int, count: int, cases: list[Case], cases_http: Connections,
                  proj_http: Connections, tokens: Tokens, results: Results) -> float:
    """``count`` commands at ``rate``, each followed to its visibility; the rate achieved."""
    started = time.perf_counter()
    tasks = []
    for i in range(count):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_command(
            cases_http, proj_http, tokens, cases[i % len(cases)], results)))
    sent_in = time.perf_counter() - started
    await asyncio.gather(*tasks)
    return count / sent_in


async def drive(ports: dict[str, int], seconds: float, rate: int,
                warm_pass: bool = False) -> tuple[Results, float]:
    ref, settings = load_reference(), Settings()
    tokens = Tokens(ref, settings)
    base = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        cases = await open_cases(http, base["YIZHAN_INTAKE_HTTP_PORT"], ref, tokens,
                                 n=rate * 2)
        log.warning("bench.cases_open", cases=len(cases))
        # Timing starts on a settled stack: the read models have applied the setup's events
        await settle(http, base["YIZHAN_PROJECTIONS_PORT"], tokens(cases[0].supervisor))
        cases_http = Connections(base["YIZHAN_CASES_PORT"])
        proj_http = Connections(base["YIZHAN_PROJECTIONS_PORT"])
        if warm_pass:  # one command per case, not counted: every case then known to cases
            warm = Results()
            await at_rate(rate, len(cases), cases, cases_http, proj_http, tokens, warm)
            log.warning("bench.warm_pass", commands=len(warm.command_ms),
                        command_p99_ms=round(pct(warm.command_ms, 0.99), 1),
                        visible_p99_ms=round(pct(warm.visible_ms, 0.99), 1))
        results = Results()
        results.started = time.perf_counter()
        achieved = await at_rate(rate, int(seconds * rate), cases, cases_http, proj_http,
                                 tokens, results)
    return results, achieved


async def settle(http: httpx.AsyncClient, base: str, headers: dict[str, str],
                 timeout_s: float = 60.0) -> None:
    """Wait (bounded) until the projection has caught up with the log's head."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = await http.get(f"{base}/v1/projections/status", headers=headers)
        if answer.status_code == 200 and answer.json()["projection"]["lag_events"] == 0:
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"the read models did not catch up with the setup in {timeout_s} s")


def pct(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 s instead of 60 s")
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--rate", type=int, default=RATE)
    parser.add_argument("--warm-pass", action="store_true",
                        help="first one command per case at the same rate, not counted (the "
                             "first command on a case the cases service has not loaded yet "
                             "is the slow one); the default counts from the first command")
    args = parser.parse_args()
    configure_logging("console" if sys.stderr.isatty() else "json",
                      os.environ.get("BENCH_LOG_LEVEL", "warning"))
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    ports = {"YIZHAN_CASES_PORT": free_port(), "YIZHAN_PROJECTIONS_PORT": free_port(),
             "YIZHAN_INTAKE_HTTP_PORT": free_port(), "YIZHAN_RELAY_PORT": free_port()}
    with tempfile.TemporaryDirectory(prefix="yizhan-bench-e2e-") as tmp:
        proc = start_stack(Path(tmp) / "data", ports)
        try:
            results, rate = asyncio.run(drive(ports, seconds, args.rate, args.warm_pass))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        limit = measure_limit(Path(tmp) / "limit", args.rate, min(seconds, LIMIT_SECONDS))
    report(results, rate, seconds, args.rate, limit)


def measure_limit(folder: Path, rate: int, seconds: float) -> PipelineLimit:
    """``bench/limit_pipeline.py`` at the same rate, on an embedded PostgreSQL (fsync on) and
    broker of its own, started once our stack has stopped."""
    log.warning("bench.limit", rate=rate, seconds=seconds)
    pg = EmbeddedPostgres(folder / "pg", durable=True).start()
    kafka = EmbeddedKafka(folder / "kafka").start()
    try:
        return asyncio.run(measure_pipeline(
            pg.admin_url, kafka.bootstrap_servers, rate=rate, seconds=seconds,
            fetch_max_wait_ms=Settings().kafka_fetch_max_wait_ms))
    finally:
        kafka.stop()
        pg.stop()


def report(results: Results, rate: float, seconds: float, asked: int,
           limit: PipelineLimit) -> None:
    p50, p99 = pct(results.visible_ms, 0.5), pct(results.visible_ms, 0.99)
    sent = len(results.command_ms)
    print(f"commands over HTTP  {sent:,} in {seconds:.0f} s at {rate:,.1f}/s (asked {asked}/s); "
          f"failed {results.failed}")
    print(f"command latency     p50 {statistics.median(results.command_ms):6.1f} ms   "
          f"p99 {pct(results.command_ms, 0.99):6.1f} ms")
    print(f"visible in township read model  p50 {p50:6.1f} ms   p99 {p99:6.1f} ms  "
          f"(target p99 ≤ 250 ms: {'met' if p99 <= 250 else 'not met'})")
    windows: dict[int, list[float]] = {}
    for at, ms in zip(results.visible_at, results.visible_ms, strict=True):
        windows.setdefault(int((at - results.started) // 10), []).append(ms)
    print("visible by 10-s window (p50 / p99 ms): " + ", ".join(
        f"{w * 10}s {pct(v, 0.5):.0f}/{pct(v, 0.99):.0f}" for w, v in sorted(windows.items())))
    print(f"lost                {results.lost}  (target 0: "
          f"{'met' if results.lost == 0 else 'not met'})")
    print(f"limit (raw parts: commit → LISTEN → produce → aiokafka consumer → commit; "
          f"bench/limit_pipeline.py) {limit.sent:,} rows at {asked}/s: visible p50 "
          f"{limit.visible_p50_ms:.1f} ms, p99 {limit.visible_p99_ms:.1f} ms, lost {limit.lost}; "
          f"ours / limit p50 {p50 / max(limit.visible_p50_ms, 0.001):.1f}, "
          f"p99 {p99 / max(limit.visible_p99_ms, 0.001):.1f}")
    print("RESULT " + json.dumps({
        "rate_per_s": round(rate, 1), "visible_p50_ms": round(p50, 1),
        "visible_p99_ms": round(p99, 1), "lost": results.lost, "failed": results.failed,
        "commands": sent, "command_p99_ms": round(pct(results.command_ms, 0.99), 1),
        "limit_visible_p50_ms": round(limit.visible_p50_ms, 1),
        "limit_visible_p99_ms": round(limit.visible_p99_ms, 1)}))


if __name__ == "__main__":
    main()
