"""`yizhan` answers a configuration error or a user's mistake with one line per problem on stderr
and exit code 2: no traceback, and never the value of a setting (it may be a secret). Each
mistake is caught before a database is started or connected to; where the store must answer
(an unknown case), the store is a stub."""

from __future__ import annotations

import base64
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from services import audit_cli, cli
from services.intake.settings import IntakeSettings
from shared.audit import CaseNotFound
from shared.settings import Settings, get_settings

AUDITOR = "auditor.530100.a"
CLERK = "clerk.530102001001.a"
WHY = "court order 2026-3"
CASE = str(uuid.UUID(int=7))
SETTINGS_VARIABLES = ("YIZHAN_ENV", "YIZHAN_JWT_SECRET", "YIZHAN_CHECKPOINT_SIGNING_KEY",
                      "YIZHAN_CASES_PORT", "YIZHAN_INTAKE_MASTER_KEY", "YIZHAN_REFERENCE_DIR")


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A development environment without .env; main's logging and loop as the suite's own."""
    for name in SETTINGS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YIZHAN_EVENT_LOOP", "asyncio")
    monkeypatch.setenv("YIZHAN_LOG_FORMAT", "console")
    monkeypatch.setenv("YIZHAN_LOG_LEVEL", os.environ.get("YIZHAN_TEST_LOG_LEVEL", "warning"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def no_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mistake must stop the command before it starts or finds PostgreSQL."""
    @contextlib.contextmanager
    def refuse(*_: Any, **__: Any) -> Iterator[Any]:
        raise AssertionError("the command reached for the database")
        yield

    monkeypatch.setattr(cli, "endpoints", refuse)
    monkeypatch.setattr(audit_cli, "endpoints", refuse)


def yizhan(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        cli.main(list(argv))
    out, err = capsys.readouterr()
    code = ended.value.code
    return (code if isinstance(code, int) else 0), out, err


def test_a_short_jwt_secret_is_named_without_its_value(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIZHAN_JWT_SECRET", "short-secret-value")
    code, out, err = yizhan(capsys, "token", CLERK)
    assert code == 2 and out == ""
    assert err == ("configuration error: YIZHAN_JWT_SECRET: String should have at least 32 "
                   "characters\n")


def test_a_checkpoint_key_of_the_wrong_length_is_named_without_its_value(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    key = base64.b64encode(b"sixteen byte key").decode()
    monkeypatch.setenv("YIZHAN_CHECKPOINT_SIGNING_KEY", key)
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2 and key not in err
    assert err == ("configuration error: YIZHAN_CHECKPOINT_SIGNING_KEY: must decode to a "
                   "32-byte Ed25519 seed\n")


def test_a_port_that_is_no_number_is_one_line(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIZHAN_CASES_PORT", "abc")
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2
    assert err == ("configuration error: YIZHAN_CASES_PORT: Input should be a valid integer, "
                   "unable to parse string as an integer\n")


def test_every_bad_variable_gets_its_own_line(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIZHAN_CASES_PORT", "abc")
    monkeypatch.setenv("YIZHAN_JWT_SECRET", "short-secret-value")
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2
    assert [line.split(":")[1].strip() for line in err.splitlines()] == [
        "YIZHAN_CASES_PORT", "YIZHAN_JWT_SECRET"]


def test_production_with_the_development_secrets_is_one_line_naming_them(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIZHAN_ENV", "prod")
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("configuration error: YIZHAN_ENV=prod refuses")
    assert "YIZHAN_JWT_SECRET" in err and "YIZHAN_CHECKPOINT_SIGNING_KEY" in err


def test_an_intake_key_error_is_named_by_its_intake_variable(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        no_database: None) -> None:
    monkeypatch.setenv("YIZHAN_INTAKE_MASTER_KEY", "not-a-key")
    code, _, err = yizhan(capsys, "up")
    assert code == 2
    assert err == "configuration error: YIZHAN_INTAKE_MASTER_KEY: must be base64\n"


def test_broken_reference_data_is_a_configuration_error(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        no_database: None) -> None:
    monkeypatch.setenv("YIZHAN_REFERENCE_DIR", str(tmp_path / "nothing-here"))
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("configuration error: ") and "nothing-here" in err


def test_the_development_defaults_still_mint_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = yizhan(capsys, "token", CLERK)
    assert code == 0 and out.count(".") == 2 and "error" not in err


def test_an_unknown_case_is_one_line(capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def stub_endpoints(*_: Any, **__: Any) -> Iterator[Any]:
        yield SimpleNamespace(service_url="postgresql://stub/yizhan")

    async def no_such_case(_: str, case_id: uuid.UUID, **__: Any) -> str:
        raise CaseNotFound(f"no events of case {case_id}")

    monkeypatch.setattr(audit_cli, "endpoints", stub_endpoints)
    monkeypatch.setattr(audit_cli, "history", no_such_case)
    code, out, err = yizhan(capsys, "audit", "history", CASE, "--by", AUDITOR, "--reason", WHY)
    assert (code, out, err) == (2, "", f"error: no events of case {CASE}\n")


@pytest.mark.parametrize(("by", "reason", "problem"), [
    (CLERK, WHY, f"{CLERK} is not an auditor in the staff directory"),
    (AUDITOR, "x", "an audit read needs a reason (at least 3 characters)")])
def test_a_reader_who_is_no_auditor_or_gives_no_reason_is_stopped_first(
        capsys: pytest.CaptureFixture[str], no_database: None, by: str, reason: str,
        problem: str) -> None:
    code, _, err = yizhan(capsys, "audit", "history", CASE, "--by", by, "--reason", reason)
    assert (code, err) == (2, f"error: {problem}\n")


@pytest.mark.parametrize(("key", "problem"), [
    ("abc", "the public key is not base64"),
    ("AAAA", "the public key must be 32 bytes in base64, not 3")])
def test_a_mistyped_public_key_is_one_line_before_any_connection(
        capsys: pytest.CaptureFixture[str], no_database: None, key: str, problem: str) -> None:
    code, _, err = yizhan(capsys, "audit", "verify", "--from-checkpoint", "--public-key", key)
    assert (code, err) == (2, f"error: {problem}\n")


def test_verify_export_with_a_mistyped_public_key_is_one_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    Path("export.jsonl").write_text("{}\n", encoding="utf-8")
    code, _, err = yizhan(capsys, "audit", "verify-export", "export.jsonl", "--public-key",
                          "abc")
    assert (code, err) == (2, "error: the public key is not base64\n")


def test_an_export_without_its_case_or_period_is_one_line_before_any_connection(
        capsys: pytest.CaptureFixture[str], no_database: None) -> None:
    code, _, err = yizhan(capsys, "audit", "export", "--unit", "530129", "-o", "out.jsonl",
                          "--by", AUDITOR, "--reason", WHY)
    assert (code, err) == (2, "error: export needs --case, or --unit with --from and --to\n")


def test_verifying_a_missing_export_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = yizhan(capsys, "audit", "verify-export", "missing.jsonl")
    assert (code, out) == (2, "")
    assert err == "error: cannot read missing.jsonl: No such file or directory\n"


def test_a_file_that_is_no_export_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    Path("notes.txt").write_text("meeting at ten\n", encoding="utf-8")
    code, _, err = yizhan(capsys, "audit", "verify-export", "notes.txt")
    assert code == 2 and err.startswith("error: line 1 is not JSON")
    assert len(err.splitlines()) == 1


def test_a_binary_file_is_one_line_not_a_decoding_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    Path("scan.pdf").write_bytes(b"%PDF-1.7\n\xff\xfe\x00\x81binary")
    code, _, err = yizhan(capsys, "audit", "verify-export", "scan.pdf")
    assert code == 2 and err.startswith("error: line ") and "not UTF-8 text" in err
    assert len(err.splitlines()) == 1


class Other(BaseModel):
    number: int


def other_validation_error() -> ValidationError:
    try:
        Other.model_validate({"number": "abc"})
    except ValidationError as exc:
        return exc
    raise AssertionError("abc is a number?")


@pytest.mark.parametrize("bug", [RuntimeError("a bug"), other_validation_error()],
                         ids=["RuntimeError", "ValidationError of another model"])
def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, bug: Exception) -> None:
    def broken(*_: Any) -> int:
        raise bug

    monkeypatch.setattr(cli, "cmd_token", broken)
    with pytest.raises(type(bug)):
        cli.main(["token", CLERK])


def test_up_prints_where_each_service_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIZHAN_HTTP_HOST", "127.0.0.1")
    monkeypatch.setenv("YIZHAN_INTAKE_HTTP_HOST", "127.0.0.2")
    monkeypatch.setenv("YIZHAN_INTAKE_HTTP_PORT", "18002")
    urls = cli.service_urls(Settings(_env_file=None), IntakeSettings(_env_file=None))
    assert urls["intake"] == "http://127.0.0.2:18002"
    assert urls["cases"].startswith("http://127.0.0.1:")


def test_up_never_prints_a_database_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`yizhan up` on configured servers prints where PostgreSQL is: not the passwords in
    DATABASE_URL / DATABASE_ADMIN_URL (the output ends up in terminals and container logs)."""
    from services import supervisor
    from shared.stack import Endpoints

    @contextlib.contextmanager
    def configured(*_: Any, **__: Any) -> Iterator[Endpoints]:
        yield Endpoints("postgresql://owner:admin-s3cret@db.internal:5432/yizhan",
                        "postgresql://yizhan_app:app-s3cret@db.internal:5432/yizhan?sslmode=require",
                        "kafka.internal:9092", embedded=False)

    class Idle:
        def __init__(self, *_: Any, **__: Any) -> None: ...

        async def run(self, stop: Any) -> int:
            return 0

    async def migrated(_: Any) -> list[str]:
        return []

    monkeypatch.setattr(cli, "endpoints", configured)
    monkeypatch.setattr(cli, "prepare_database", migrated)
    monkeypatch.setattr(supervisor, "Supervisor", Idle)
    code, out, _ = yizhan(capsys, "up")
    assert code == 0
    assert "s3cret" not in out
    assert "db.internal:5432/yizhan" in out and "yizhan_app" in out


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u@/db?host=/tmp/x&port=5", "postgresql://u@/db?host=/tmp/x&port=5"),
    ("postgresql://u@h/db?password=pw&sslmode=require",
     "postgresql://u@h/db?password=***&sslmode=require"),
])
def test_a_printed_database_url_hides_only_its_password(url: str, shown: str) -> None:
    assert cli.without_password(url) == shown


@pytest.mark.parametrize(("session", "heartbeat"), [("6000", "6000"), ("6000", "10000")])
def test_a_heartbeat_not_below_the_session_timeout_is_refused_naming_both(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        session: str, heartbeat: str) -> None:
    """A consumer that heartbeats no more often than its session expires is dropped from its
    group again and again (Kafka's own clients refuse it; aiokafka and Faust do not)."""
    monkeypatch.setenv("YIZHAN_KAFKA_SESSION_TIMEOUT_MS", session)
    monkeypatch.setenv("YIZHAN_KAFKA_HEARTBEAT_INTERVAL_MS", heartbeat)
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("configuration error: YIZHAN_KAFKA_HEARTBEAT_INTERVAL_MS")
    assert "YIZHAN_KAFKA_SESSION_TIMEOUT_MS" in err


@pytest.mark.parametrize(("variable", "same_as"), [
    ("YIZHAN_TOPIC_INTAKE_SUBMISSIONS", "YIZHAN_TOPIC_CASE_EVENTS"),
    ("YIZHAN_TOPIC_INTAKE_REJECTED", "YIZHAN_TOPIC_CASE_EVENTS"),
    ("YIZHAN_TOPIC_INTAKE_REJECTED", "YIZHAN_TOPIC_INTAKE_SUBMISSIONS"),
])
def test_two_roles_on_one_topic_are_refused_naming_both(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        variable: str, same_as: str) -> None:
    """One topic for two roles started silently: other systems' submissions (personal data in
    the clear) among the case events, or rejections fed back to intake as submissions."""
    monkeypatch.setenv(same_as, "shared.topic")
    monkeypatch.setenv(variable, "shared.topic")
    code, _, err = yizhan(capsys, "token", CLERK)
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"configuration error: {variable}: ") and same_as in err


def test_a_witness_file_the_relay_cannot_append_to_stops_it_naming_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's checkpointer appends every signed checkpoint to the witness file. One it
    cannot write (a mistyped path, a volume not mounted) only logged a warning at every
    checkpoint: the relay ran 'ready', signing at every new event, with no witness at all."""
    import asyncio

    from shared.runtime import free_port
    from shared.stack import Endpoints

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("YIZHAN_CHECKPOINT_WITNESS_FILE", str(blocker / "witness.jsonl"))
    settings = Settings(_env_file=None)
    nowhere = Endpoints("postgresql://nobody@127.0.0.1:1/x", "postgresql://nobody@127.0.0.1:1/x",
                        f"127.0.0.1:{free_port()}", embedded=False)
    with pytest.raises(SystemExit) as stopped:
        asyncio.run(cli.serve_relay(settings, nowhere, asyncio.Event()))
    message = str(stopped.value.code)
    assert message.startswith("configuration error: YIZHAN_CHECKPOINT_WITNESS_FILE")
    assert str(blocker / "witness.jsonl") in message


def test_up_refuses_two_services_on_one_port_naming_both_variables(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        no_database: None) -> None:
    """`yizhan up` runs every service on this machine: two on one port left the second
    failing to bind and started again for ever, and 'all services ready' never came."""
    monkeypatch.setenv("YIZHAN_RELAY_PORT", "18010")
    monkeypatch.setenv("YIZHAN_INTAKE_HTTP_PORT", "18010")
    code, _, err = yizhan(capsys, "up")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("configuration error: ")
    assert "YIZHAN_INTAKE_HTTP_PORT" in err and "YIZHAN_RELAY_PORT" in err


@pytest.mark.parametrize("variable", ["YIZHAN_REFERENCE_DIR", "YIZHAN_INTAKE_SOURCES_FILE"])
def test_up_stops_on_broken_reference_data_before_any_server(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        no_database: None, variable: str) -> None:
    """Every service loads the reference data (intake also the source registry) as it starts:
    broken, `yizhan up` started the servers and then each service failed and was started
    again for ever."""
    monkeypatch.setenv(variable, str(tmp_path / "nothing-here"))
    code, _, err = yizhan(capsys, "up")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("configuration error: ") and "nothing-here" in err


def test_a_service_on_positions_kept_for_another_partition_count_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.consumer import PositionsKeptForAnotherPartitionCount

    def refused(*_: Any) -> int:
        raise PositionsKeptForAnotherPartitionCount("projections", "case.events", 3, 4)

    monkeypatch.setattr(cli, "cmd_serve", refused)  # the parser binds it when main builds it
    args = cli.build_parser().parse_args(["consumers", "repartition", "--partitions", "4"])
    assert (args.fn, args.partitions, args.topic) == (cli.cmd_repartition, 4, None)
    code, _, err = yizhan(capsys, "serve", "projections")
    assert code == 2
    assert err.splitlines() == [
        "error: consumer 'projections' kept its positions on case.events for 3 partitions, "
        "but the topic has 4: a stream's events would land on a partition whose stored "
        "position belongs to other streams (skipped as applied, or applied twice). Stop the "
        "relay, let every consumer catch up (`yizhan status`), stop the services, then run "
        "`yizhan consumers repartition --topic case.events --partitions 4` (README, \"Scaling "
        "out\")"]


@pytest.mark.parametrize("flag", ["--partitions", "--old-partitions"])
@pytest.mark.parametrize("value", ["0", "-3", "six"])
def test_repartition_refuses_a_partition_count_below_one_at_the_command_line(
    capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    # --partitions 0 fell back to YIZHAN_TOPIC_PARTITIONS (`or`), a negative one raised a
    # ValueError traceback, --old-partitions 0 was taken for a count
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["consumers", "repartition", flag, value])
    assert exited.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert f"argument {flag}: " in last
    assert ("not a whole number" if value == "six" else "a partition count is at least 1") in last
