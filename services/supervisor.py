"""`yizhan up`'s supervisor: every service in its own process, as in production.

One process per service (cases, intake, projections, relay) — the same `yizhan serve …` /
`yizhan relay` commands an operator runs, on the servers `yizhan up` started. In one process
they shared one event loop: under 200 commands/s the HTTP handlers took most of it and the
projection worker, waiting its turn for every database round trip, fell seconds behind. Apart,
each has its own loop and the machine's cores.

- Children inherit stdout/stderr (no pipe to copy through this process); each names itself in
  every log line (``service=…``).
- A child that exits on its own is started again after a back-off (1 s, doubling to 30 s, reset
  once it has run for a minute), like a container with ``restart: unless-stopped``.
- Stop: SIGINT to every child, then SIGKILL to those still running after ``stop_timeout_s``.
- Each child gets SIGTERM if this process dies without stopping them (``die_with_parent``).
- The embedded servers `yizhan up` started (PostgreSQL, the memory broker) are started again
  in place, on the same port and data folder, when one exits: the services reconnect, and the
  relay refills an empty broker from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from shared.kafka import describe_topics, recreate_topic
from shared.logging import get_logger
from shared.runtime import EmbeddedKafka, die_with_parent
from shared.stack import record_kafka

log = get_logger("yizhan.up")
YIZHAN = [sys.executable, "-c", "from services.cli import main; main()"]


@dataclass(frozen=True)
class ChildSpec:
    name: str
    argv: Sequence[str]


@dataclass(frozen=True)
class ServerSpec:
    """A server this process started and keeps running: ``running()`` says whether it is,
    ``restart()`` (blocking) starts it again."""

    name: str
    running: Callable[[], bool]
    restart: Callable[[], None]

    @classmethod
    def of(cls, name: str, server: Any, *, topics: Mapping[str, int] | None = None,
           replication_factor: int = 1) -> ServerSpec:
        """For an ``EmbeddedPostgres`` or ``EmbeddedKafka`` (started again on its port; the
        broker's pid recorded anew for the services that look for it, and ``topics`` created
        at once on the new, empty broker: a client naming one in a metadata request first
        would have it created with the broker's own partition count)."""
        def running() -> bool:
            return server.process is not None and server.process.poll() is None

        def restart() -> None:
            if server.process is not None:
                server.process.wait()  # (reaped)
            server.start()
            if isinstance(server, EmbeddedKafka):
                if topics:
                    asyncio.run(_create_topics(server.bootstrap_servers, topics,
                                               replication_factor))
                record_kafka(server)

        return cls(name, running, restart)


async def _create_topics(bootstrap: str, topics: Mapping[str, int],
                         replication_factor: int) -> None:
    """Every topic with its partition count on a new broker (one a client got created first,
    with the broker's own count, made again: a new broker holds nothing to lose)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        found = await describe_topics(admin)
        for name, partitions in topics.items():
            if found.get(name) != partitions:
                await recreate_topic(admin, name, partitions, replication_factor)
    finally:
        await admin.close()


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = 1.0
    restart_at: float | None = None


def yizhan_children() -> list[ChildSpec]:
    """The services of `yizhan up`, each as the command an operator would run."""
    return [
        ChildSpec("relay", [*YIZHAN, "relay"]),
        *(ChildSpec(name, [*YIZHAN, "serve", name])
          for name in ("cases", "intake", "projections")),
    ]


class Supervisor:
    """Start ``specs`` as child processes, keep them running until ``stop``, then stop them."""

    def __init__(
        self, specs: Sequence[ChildSpec], env: Mapping[str, str], *,
        stop_timeout_s: float = 20.0, first_backoff_s: float = 1.0, max_backoff_s: float = 30.0,
        stable_after_s: float = 60.0, poll_s: float = 0.2, servers: Sequence[ServerSpec] = (),
    ) -> None:
        self.servers = list(servers)
        self.first_backoff_s = first_backoff_s
        self.children = [_Child(spec, backoff_s=first_backoff_s) for spec in specs]
        self.env = dict(env)
        self.stop_timeout_s = stop_timeout_s
        self.max_backoff_s = max_backoff_s
        self.stable_after_s = stable_after_s
        self.poll_s = poll_s

    def _start(self, child: _Child) -> None:
        child.proc = subprocess.Popen(
            list(child.spec.argv), env=self.env,
            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(signal.SIGTERM),
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("up.started", service=child.spec.name, pid=child.proc.pid,
                 restarts=child.restarts)

    def _check(self, child: _Child, now: float) -> None:
        if child.proc is None:
            if child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._start(child)
            return
        code = child.proc.poll()
        if code is None:
            return
        ran = now - child.started_at
        child.backoff_s = self.first_backoff_s if ran >= self.stable_after_s else child.backoff_s
        child.proc = None
        child.restart_at = now + child.backoff_s
        log.error("up.exited", service=child.spec.name, code=code, ran_s=round(ran, 1),
                  restart_in_s=child.backoff_s)
        child.backoff_s = min(child.backoff_s * 2, self.max_backoff_s)

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set; then stop every child. 0 if all stopped by themselves on
        SIGINT, 1 if one had to be killed."""
        try:
            for child in self.children:
                self._start(child)
            while not stop.is_set():
                for server in self.servers:
                    if not server.running():
                        await self._restart_server(server)
                now = time.monotonic()
                for child in self.children:
                    self._check(child, now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)
        finally:
            killed = await asyncio.get_running_loop().run_in_executor(None, self._stop_all)
        return 1 if killed else 0

    async def _restart_server(self, server: ServerSpec) -> None:
        log.error("up.server_exited", server=server.name, action="starting it again")
        try:
            await asyncio.get_running_loop().run_in_executor(None, server.restart)
        except Exception as exc:  # tried again at the next check
            log.error("up.server_restart_failed", server=server.name, error=repr(exc))
        else:
            log.info("up.server_restarted", server=server.name)

    def _stop_all(self) -> list[str]:
        """SIGINT to every child, wait, SIGKILL the rest; the names of those killed."""
        running = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
        for child in running:
            assert child.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + self.stop_timeout_s
        killed = []
        for child in running:
            assert child.proc is not None
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                killed.append(child.spec.name)
                log.error("up.killed", service=child.spec.name,
                          after_s=self.stop_timeout_s)
                child.proc.kill()
                child.proc.wait()
            else:
                log.info("up.stopped", service=child.spec.name, code=child.proc.returncode)
        return killed
