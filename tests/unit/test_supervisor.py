"""`yizhan up`'s supervisor with stand-in children: a child that exits is started again after
its back-off, a child that stops on SIGINT stops cleanly, one that ignores it is killed."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from services.supervisor import ChildSpec, ServerSpec, Supervisor

pytestmark = pytest.mark.unit
PY = sys.executable


def child(name: str, code: str) -> ChildSpec:
    return ChildSpec(name, [PY, "-c", code])


async def run_for(supervisor: Supervisor, seconds: float) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await supervisor.run(stop)


async def test_a_child_that_exits_is_started_again_and_a_steady_one_is_left_alone(
    tmp_path: Path,
) -> None:
    starts = tmp_path / "starts"
    flaky = child("flaky", f"open({str(starts)!r}, 'a').write('x'); raise SystemExit(3)")
    steady = child("steady", "import time; time.sleep(60)")
    supervisor = Supervisor([flaky, steady], dict(os.environ), first_backoff_s=0.05,
                            max_backoff_s=0.2, poll_s=0.02, stop_timeout_s=5)
    assert await run_for(supervisor, 2.0) == 0  # steady stopped by SIGINT
    by_name = {c.spec.name: c for c in supervisor.children}
    wrote = len(starts.read_text())
    assert wrote >= 3  # started, exited, started again...
    # every start but maybe the last (stopped before it wrote) left its mark
    assert wrote <= by_name["flaky"].restarts + 1 <= wrote + 1
    assert by_name["steady"].restarts == 0


async def test_a_child_that_ignores_sigint_is_killed_after_the_timeout() -> None:
    stubborn = child("stubborn", "import signal, time; signal.signal(signal.SIGINT, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)")
    supervisor = Supervisor([stubborn], dict(os.environ), poll_s=0.02, stop_timeout_s=0.5)
    started = time.monotonic()
    assert await run_for(supervisor, 1.5) == 1  # had to be killed (its SIGINT ignored)
    assert time.monotonic() - started < 10
    (only,) = supervisor.children
    assert only.proc is not None and only.proc.returncode == -9


async def test_an_embedded_server_that_dies_is_started_again_in_place() -> None:
    """`yizhan up` started the embedded PostgreSQL and broker: when one died (the memory
    broker killed for its memory, say), every service kept retrying against nothing, and a
    service started again was told to run `yizhan up` first, until someone noticed."""
    import subprocess

    class Server:  # an EmbeddedKafka / EmbeddedPostgres stand-in
        def __init__(self) -> None:
            self.starts = 0
            self.process: subprocess.Popen[bytes] | None = None
            self.start()

        def start(self) -> None:
            self.starts += 1
            self.process = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])

    server = Server()
    supervisor = Supervisor([], dict(os.environ), poll_s=0.02,
                            servers=[ServerSpec.of("broker", server)])
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    try:
        await asyncio.sleep(0.2)
        assert server.starts == 1
        first = server.process
        assert first is not None
        first.kill()
        deadline = time.monotonic() + 5
        while server.starts < 2:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert server.starts == 2 and server.process is not first
        assert server.process is not None and server.process.poll() is None
    finally:
        stop.set()
        await running
        for proc in (first, server.process):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait()
