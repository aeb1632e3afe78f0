#!/usr/bin/env python
"""Officers' commands over HTTP on the embedded stack, against the `eventsourcing` library
running the same command sequence in-process (no HTTP) as a reference.

    python bench/commands.py            # 2,000 cases x 6 commands
    python bench/commands.py --quick    # 400 cases, under a minute

The stack is the real one: embedded PostgreSQL (fsync on) and broker, the cases service as its
own process (`yizhan serve cases`: API, SLA agent and timer) and the relay (`yizhan relay`).
32 concurrent clients each drive their own cases through accept → hand-off → receive →
hand-off → receive → decide, one HTTP request per command, and time each request; any status
but 200 counts as a failure. Each client is one keep-alive HTTP/1.1 connection; by default
a minimal client over asyncio streams (``KeepAlive``: under half of aiohttp's CPU, and client and
server share the machine's cores), ``--client aiohttp`` for aiohttp. Both send the same
requests (bearer token, JSON body).

Besides the figures it prints the CPU each process spent per command while driving (server,
PostgreSQL, relay, this client): steadier than throughput on a busy machine.
``--profile PATH`` samples the server with py-spy meanwhile (.svg, .txt collapsed, .json).
The limit: the same requests from the same clients to ``bench/limit_http.py`` (uvicorn and one
committed INSERT per request, nothing else) on the same PostgreSQL, after ours.
Last line: ``RESULT {"commands_per_s", "p50_ms", "p99_ms", "peer_commands_per_s",
"limit_commands_per_s", "limit_p99_ms"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from bench import libpq_params
from services.cases.bootstrap import bootstrap
from services.cases.domain import SubmitCase
from shared.auth import Principal, mint_token
from shared.contracts.cases import Actor, EncryptedApplicant
from shared.eventstore.migrate import ensure_service_role, migrate
from shared.logging import configure_logging, get_logger
from shared.reference import Reference, Role, load_reference
from shared.runtime import SERVICE_ROLE, EmbeddedKafka, EmbeddedPostgres, free_port
from shared.settings import Settings

log = get_logger("bench.commands")
CLIENTS = 32
MLG = "minimum_living_guarantee"
DOCS = ("id_card", "household_register", "application_form", "income_certificate",
        "property_declaration", "bank_account")
# (verb, whose turn: "clerk" | "town" | "county", body)
SEQUENCE: list[tuple[str, str, dict[str, Any]]] = [
    ("accept", "clerk", {}), ("hand-off", "clerk", {}), ("receive", "town", {}),
    ("hand-off", "town", {}), ("receive", "county", {}),
    ("decide", "county", {"outcome": "approved", "basis": "符合最低生活保障条件"}),
]


def people(ref: Reference, n_cases: int) -> list[tuple[str, str, str, str]]:
    """(station, clerk, township officer, county officer) for each case, spread over the city."""
    out = []
    stations = [u for u in ref.org if str(u.level) == "community"]
    for i in range(n_cases):
        station = stations[i % len(stations)].code
        clerk = ref.staff.duty_clerk(station).user_id
        town = next(m.user_id for m in ref.staff.at_unit(station[:9], Role.TOWNSHIP_OFFICER))
        county = next(m.user_id for m in ref.staff.at_unit(station[:6], Role.COUNTY_OFFICER))
        out.append((station, clerk, town, county))
    return out


async def submit_cases(settings: Settings, dsn: str, ref: Reference,
                       cast: list[tuple[str, str, str, str]]) -> list[uuid.UUID]:
    svc = await bootstrap(settings, dsn, ref=ref)
    ids = [uuid.uuid4() for _ in cast]

    async def submit(case_id: uuid.UUID, station: str, clerk: str) -> None:
        await svc.commands.handle(SubmitCase(
            case_id=case_id, at=datetime.now(UTC),
            actor=Actor(user_id=clerk, role=Role.STATION_CLERK, unit=station),
            tracking_no=f"KM-{case_id.hex[:10]}", service_code=MLG, visit_id=uuid.uuid4(),
            station=station,
            applicant=EncryptedApplicant(subject_id=str(case_id), id_hash="bench", encrypted={}),
            documents=DOCS), command_id=uuid.uuid4())

    sem = asyncio.Semaphore(32)

    async def bounded(*args: Any) -> None:
        async with sem:
            await submit(*args)

    await asyncio.gather(*(bounded(i, c[0], c[1]) for i, c in zip(ids, cast, strict=True)))
    await svc.close()
    return ids


class KeepAlive:
    """A minimal HTTP/1.1 client: one keep-alive connection over asyncio streams, one request at
    a time. It sends what aiohttp sends for ``post(json=…)`` (Host, Authorization, Content-Type
    application/json, Content-Length, the JSON body) and reads the status line, the headers and
    the Content-Length body of every response; at a fraction of aiohttp's CPU, which matters
    when client and server share two cores."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        return await self.request("POST", path, body, headers)

    async def request(self, method: str, path: str, body: bytes,
                      headers: dict[str, str]) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{head}"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                     .encode("latin-1") + body)
        status_line = await reader.readline()
        status = int(status_line.split(b" ", 2)[1])
        length, close = None, False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked responses are not expected here")
        if length is None:
            raise RuntimeError(f"no Content-Length in the response to {path}")
        content = await reader.readexactly(length)
        if close:
            await self.close()
        return status, content

    async def close(self) -> None:
        if self.streams is not None:
            writer = self.streams[1]
            self.streams = None
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def drive(base: str, settings: Settings, ref: Reference, ids: list[uuid.UUID],
                cast: list[tuple[str, str, str, str]], client_kind: str = "raw",
                ) -> tuple[list[float], int, float]:
    tokens: dict[str, str] = {}

    def token(user: str) -> str:
        if user not in tokens:
            m = ref.staff.member(user)
            tokens[user] = mint_token(Principal(user_id=user, role=str(m.role), unit=m.unit),
                                      settings)
        return tokens[user]

    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(ids)):
        queue.put_nowait(i)
    host, _, port = base.removeprefix("http://").rpartition(":")

    async def client(post: Callable[[str, bytes, dict[str, str]],
                                    Awaitable[tuple[int, bytes]]]) -> None:
        nonlocal failures
        while not queue.empty():
            i = queue.get_nowait()
            _, clerk, town, county = cast[i]
            who = {"clerk": clerk, "town": town, "county": county}
            for verb, role, body in SEQUENCE:
                started = time.perf_counter()
                status, _ = await post(f"/v1/cases/{ids[i]}/{verb}", json.dumps(body).encode(),
                                       {"Authorization": f"Bearer {token(who[role])}"})
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    failures += 1
                    log.warning("bench.command_failed", verb=verb, status=status)
                    break

    started = time.perf_counter()
    if client_kind == "aiohttp":
        connector = aiohttp.TCPConnector(limit=CLIENTS)
        async with aiohttp.ClientSession(base, connector=connector) as http:

            async def post(path: str, body: bytes, headers: dict[str, str]
                           ) -> tuple[int, bytes]:
                async with http.post(path, data=body, headers={
                        **headers, "Content-Type": "application/json"}) as response:
                    return response.status, await response.read()

            await asyncio.gather(*(client(post) for _ in range(CLIENTS)))
    else:
        connections = [KeepAlive(host, int(port)) for _ in range(CLIENTS)]
        try:
            await asyncio.gather(*(client(c.post) for c in connections))
        finally:
            for c in connections:
                await c.close()
    elapsed = time.perf_counter() - started
    return latencies, failures, elapsed


def peer(dsn: str, n_cases: int) -> float:
    """The same six commands per case through the eventsourcing library's PostgreSQL recorder,
    in-process: repository.get → aggregate method → save, 32 threads."""
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event

    class PeerCase(Aggregate):
        @event("Submitted")
        def __init__(self, station: str, service: str) -> None:
            self.station, self.service, self.status, self.unit = station, service, "new", station
            self.owner: str | None = None

        @event("Accepted")
        def accept(self, owner: str) -> None:
            self.status, self.owner = "accepted", owner

        @event("HandedOff")
        def hand_off(self, to_unit: str) -> None:
            self.status, self.unit = "handed_off", to_unit

        @event("Received")
        def receive(self, owner: str) -> None:
            self.status, self.owner = "in_review", owner

        @event("Decided")
        def decide(self, outcome: str, basis: str) -> None:
            self.status = outcome

    dbname, host, port, user, _ = libpq_params(dsn)  # as our side connects (socket or TCP)
    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": dbname,
           "POSTGRES_HOST": host, "POSTGRES_PORT": str(port),
           "POSTGRES_USER": user, "POSTGRES_PASSWORD": "x",
           "POSTGRES_POOL_SIZE": "40", "POSTGRES_MAX_OVERFLOW": "10",
           "CREATE_TABLE": "y"}
    app: Application[Any] = Application(env=env)
    ids = []
    for i in range(n_cases):
        case: PeerCase = PeerCase(station=f"5301020010{i % 100:02d}", service=MLG)
        app.save(case)
        ids.append(case.id)

    def one_case(case_id: uuid.UUID) -> int:
        steps: list[tuple[str, tuple[Any, ...]]] = [
            ("accept", ("clerk",)), ("hand_off", ("town",)), ("receive", ("officer",)),
            ("hand_off", ("county",)), ("receive", ("county-officer",)),
            ("decide", ("approved", "符合条件")),
        ]
        for method, args in steps:
            case: Any = app.repository.get(case_id)
            getattr(case, method)(*args)
            app.save(case)
        return len(steps)

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        done = sum(pool.map(one_case, ids))
    elapsed = time.perf_counter() - started
    app.close()
    return done / elapsed


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live descendants (and their reaped children),
    from /proc; 0 where /proc is not available."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        if p in stats:  # fields after the name: [11..14] = utime stime cutime cstime
            total += sum(int(x) for x in stats[p][11:15])
        todo.extend(children.get(p, ()))
    return total / tick


def start_profiler(path: str, pid: int) -> subprocess.Popen[bytes]:
    fmt = {".txt": "raw", ".json": "speedscope"}.get(Path(path).suffix, "flamegraph")
    spy = str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "--pid", str(pid), "--format", fmt, "-o", path,
                             "--rate", "200", "--nonblocking"], stdout=subprocess.DEVNULL)


@dataclass(frozen=True)
class Limit:
    per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms: float
    failures: int


def measure_limit(dsn: str, settings: Settings, ref: Reference, ids: list[uuid.UUID],
                  cast: list[tuple[str, str, str, str]], client_kind: str) -> Limit:
    """The same requests from the same clients to ``bench/limit_http.py``: uvicorn and one
    committed INSERT per request, nothing else (its docstring), on the same server."""
    port = free_port()
    server = subprocess.Popen([sys.executable, str(Path(__file__).with_name("limit_http.py")),
                               "--port", str(port), "--dsn", dsn])
    try:
        wait_http(f"http://127.0.0.1:{port}", server)
        before = cpu_seconds(server.pid)
        latencies, failures, elapsed = asyncio.run(
            drive(f"http://127.0.0.1:{port}", settings, ref, ids, cast, client_kind))
        used = cpu_seconds(server.pid) - before
    finally:
        server.terminate()
        server.wait(30)
    ordered = sorted(latencies)
    return Limit(len(latencies) / elapsed, statistics.median(ordered) * 1000,
                 ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
                 used * 1000 / max(1, len(latencies)), failures)


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cases", type=int, default=None)
    parser.add_argument("--no-relay", action="store_true", help="leave the relay out")
    parser.add_argument("--client", choices=["raw", "aiohttp"], default="raw",
                        help="HTTP client: raw keep-alive HTTP/1.1 over asyncio streams "
                             "(default: least CPU taken from the server) or aiohttp")
    parser.add_argument("--profile", metavar="PATH", default=None,
                        help="sample the server with py-spy while driving (PATH .svg "
                             "flamegraph, .txt collapsed stacks, .json speedscope)")
    args = parser.parse_args()
    configure_logging("console" if sys.stderr.isatty() else "json", "warning")
    n_cases = args.cases or (400 if args.quick else 2000)
    ref = load_reference()
    cast = people(ref, n_cases)
    with tempfile.TemporaryDirectory(prefix="yizhan-bench-cmd-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", durable=True).start()
        kafka = EmbeddedKafka(Path(tmp) / "kafka").start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            asyncio.run(migrate(pg.admin_url))
            asyncio.run(ensure_service_role(pg.admin_url, SERVICE_ROLE))
            service_dsn = pg.url(user=SERVICE_ROLE)
            port = free_port()
            env = {**os.environ, "DATABASE_URL": service_dsn, "DATABASE_ADMIN_URL": pg.admin_url,
                   "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                   "YIZHAN_CASES_PORT": str(port), "YIZHAN_LOG_LEVEL": "warning",
                   "YIZHAN_DB_POOL_MAX": "20"}
            yizhan = str(Path(sys.executable).with_name("yizhan"))
            profile = os.environ.get("BENCH_PROFILE_SERVER")  # a path: cProfile the server
            prefix = [sys.executable, "-m", "cProfile", "-o", profile] if profile else []
            procs.append(subprocess.Popen([*prefix, yizhan, "serve", "cases"], env=env))
            if not args.no_relay:
                procs.append(subprocess.Popen([yizhan, "relay"], env=env))
            settings = Settings()
            ids = asyncio.run(submit_cases(settings, service_dsn, ref, cast))
            base = f"http://127.0.0.1:{port}"
            wait_http(base, procs[0])
            log.warning("bench.driving", cases=n_cases, clients=CLIENTS, client=args.client)
            watched = {"server": procs[0].pid,
                       **({"postgres": pg.process.pid} if pg.process else {}),
                       **({"relay": procs[1].pid} if len(procs) > 1 else {})}
            cpu_before = {k: cpu_seconds(v) for k, v in watched.items()}
            client_before = time.process_time()
            spy = start_profiler(args.profile, procs[0].pid) if args.profile else None
            latencies, failures, elapsed = asyncio.run(
                drive(base, settings, ref, ids, cast, args.client))
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            cpu = {k: cpu_seconds(v) - cpu_before[k] for k, v in watched.items()}
            cpu["client"] = time.process_time() - client_before
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(30)
        log.warning("bench.limit", cases=n_cases)
        limit = measure_limit(pg.admin_url, settings, ref, ids, cast, args.client)
        log.warning("bench.peer", cases=n_cases)
        peer_cps = peer(pg.admin_url, n_cases)
        kafka.stop()
        pg.stop()
    cps = len(latencies) / elapsed
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(f"commands over HTTP   {len(latencies):>8,} in {elapsed:6.2f} s  "
          f"{cps:9,.0f}/s  (target ≥ 1,000/s: {'met' if cps >= 1000 else 'not met'})")
    print(f"latency              p50 {p50:6.1f} ms   p99 {p99:6.1f} ms  "
          f"(target p99 ≤ 50 ms: {'met' if p99 <= 50 else 'not met'})")
    print(f"peer (eventsourcing, in-process, no HTTP)  {peer_cps:9,.0f}/s   "
          f"ratio ours/peer {cps / peer_cps:5.2f}")
    print(f"limit (uvicorn + one INSERT per request)    {limit.per_s:9,.0f}/s   "
          f"ratio ours/limit {cps / limit.per_s:5.2f}   p50 {limit.p50_ms:5.1f} ms   "
          f"p99 {limit.p99_ms:5.1f} ms   server cpu {limit.server_cpu_ms:.2f} ms per request"
          + (f"   failed {limit.failures}" if limit.failures else ""))
    print(f"failed commands      {failures}")
    # CPU per command of each process while driving: steadier than throughput on a shared box
    print("cpu ms per command   " + "   ".join(
        f"{k} {v * 1000 / max(1, len(latencies)):.2f}" for k, v in cpu.items()))
    print("RESULT " + json.dumps({"commands_per_s": round(cps, 1), "p50_ms": round(p50, 2),
                                  "p99_ms": round(p99, 2),
                                  "peer_commands_per_s": round(peer_cps, 1),
                                  "limit_commands_per_s": round(limit.per_s, 1),
                                  "limit_p99_ms": round(limit.p99_ms, 2)}))


if __name__ == "__main__":
    main()
