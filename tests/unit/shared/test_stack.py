"""Finding the embedded servers a running `yizhan up` left in the data folder: a pid file is
trusted only while its pid still runs that server (a crash or a reboot leaves the file, and
the pid may run something else since)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.runtime import EmbeddedPostgres
from shared.stack import running_kafka, running_postgres


@pytest.fixture
def other_process() -> Iterator[int]:
    """A live process that is neither PostgreSQL nor the broker (a pid reused since)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def postmaster_pid(data_dir: Path, pid: int, port: int) -> Path:
    pidfile = data_dir / "postgres" / "pgdata" / "postmaster.pid"
    pidfile.parent.mkdir(parents=True)
    pidfile.write_text(f"{pid}\n{pidfile.parent}\n1700000000\n{port}\n/tmp\n127.0.0.1\n")
    return pidfile


def test_a_stale_postmaster_pid_naming_another_process_is_no_running_postgres(
    tmp_path: Path, other_process: int
) -> None:
    postmaster_pid(tmp_path, other_process, 54321)
    assert running_postgres(tmp_path) is None


def test_a_stale_broker_file_naming_another_process_is_no_running_broker(
    tmp_path: Path, other_process: int
) -> None:
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "broker.json").write_text(
        json.dumps({"pid": other_process, "port": 54322}))
    assert running_kafka(tmp_path) is None


def test_starting_postgres_clears_a_stale_pid_file_naming_another_process(
    tmp_path: Path, other_process: int
) -> None:
    pidfile = postmaster_pid(tmp_path, other_process, 54321)
    EmbeddedPostgres._clear_stale_pid(pidfile)  # no "another PostgreSQL already runs"
    assert not pidfile.exists()
