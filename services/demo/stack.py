"""Finding the running stack, or starting `yizhan up` for the demo's duration.

The demo talks only to the services' HTTP and Kafka interfaces, so it needs them running. If
all three answer ``/readyz`` on the configured ports, the demo uses them (a `yizhan up` in
another terminal, or a deployment). Otherwise it starts `yizhan up` as a subprocess with the
same environment (same data folder, same ports), waits until it is ready, and stops it with
SIGINT at the end — the data stays in the data folder, as with any `yizhan up`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from services.demo.client import Urls
from shared.logging import get_logger
from shared.runtime import die_with_parent

log = get_logger("yizhan.demo.stack")
UP_COMMAND = [sys.executable, "-c", "from services.cli import main; main()", "up"]


class StackDidNotStart(RuntimeError):
    """`yizhan up` exited or did not become ready in time; the message holds its log's tail."""


def ready(urls: Urls) -> bool:
    """Do intake, cases and projections all answer ``/readyz`` with 200?"""
    try:
        return all(httpx.get(f"{base}/readyz", timeout=2.0).status_code == 200
                   for base in (urls.intake, urls.cases, urls.projections))
    except httpx.HTTPError:
        return False


def _wait_ready(urls: Urls, proc: subprocess.Popen[bytes], log_file: Path,
                timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ready(urls):
            return
        time.sleep(0.5)
    tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
    raise StackDidNotStart(f"`yizhan up` not ready (exit={proc.poll()}):\n{tail}")


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_stack(urls: Urls, data_dir: Path, *, timeout_s: float = 180.0) -> Iterator[bool]:
    """Yield once the services answer; ``True`` if this call started `yizhan up` (and will
    stop it on exit), ``False`` if it was already running."""
    if ready(urls):
        yield False
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "demo-up.log"
    log.info("demo.starting_stack", log=str(log_file))
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(UP_COMMAND, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(os.environ),
                                preexec_fn=die_with_parent(signal.SIGINT))
    try:
        _wait_ready(urls, proc, log_file, timeout_s)
        yield True
    finally:
        _stop(proc)
