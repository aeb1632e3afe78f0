"""The server version check that runs before any migration."""

from __future__ import annotations

import pytest

from shared.eventstore.migrate import (
    MIN_SERVER_MAJOR,
    UnsupportedServer,
    require_supported_server,
)


def test_a_server_older_than_the_minimum_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedServer, match=r"PostgreSQL 16 or later .* this server is 15\.8"):
        require_supported_server(15, "15.8")


@pytest.mark.parametrize("major", [MIN_SERVER_MAJOR, MIN_SERVER_MAJOR + 2])
def test_the_minimum_and_newer_are_accepted(major: int) -> None:
    require_supported_server(major, f"{major}.0")
