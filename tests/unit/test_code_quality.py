"""The linters are part of the suite, so README's one test command also keeps the code clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, check=False)


def test_ruff_finds_nothing() -> None:
    folders = [f for f in ("shared", "services", "tests", "bench") if (ROOT / f).is_dir()]
    done = run("ruff", "check", *folders)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_mypy_strict_on_shared_and_clean_on_services() -> None:
    done = run("mypy", "shared", "services")
    assert done.returncode == 0, done.stdout + done.stderr
