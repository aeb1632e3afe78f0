"""docker-compose.yml checked against the settings (no Docker engine runs here): every
required variable set and valid, ports, topics and hosts consistent, every command one the
`yizhan` parser accepts, health checks on /readyz or /healthz, volumes declared."""

from __future__ import annotations

import base64
import binascii
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli import build_parser
from services.intake.settings import IntakeSettings
from shared.eventstore.migrate import MIN_SERVER_MAJOR
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
YIZHAN = ("migrate", "relay", "intake", "cases", "projections")
HTTP = {"intake": "intake_http_port", "cases": "cases_port", "projections": "projections_port",
        "relay": "relay_port"}
REQUIRED = ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "YIZHAN_ENV",
            "YIZHAN_JWT_SECRET", "YIZHAN_CHECKPOINT_SIGNING_KEY")
INTAKE_REQUIRED = ("YIZHAN_INTAKE_MASTER_KEY", "YIZHAN_INTAKE_ID_HASH_KEY",
                   "YIZHAN_INTAKE_QUARANTINE_KEY")
TEST_KEY = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM="  # 32 bytes, TEST ONLY
TEST_SECRETS = {"YIZHAN_DB_PASSWORD": "test-owner", "YIZHAN_SERVICE_DB_PASSWORD": "test-svc",
                "YIZHAN_JWT_SECRET": "t" * 40, "YIZHAN_CHECKPOINT_SIGNING_KEY": TEST_KEY,
                "YIZHAN_INTAKE_MASTER_KEY": TEST_KEY, "YIZHAN_INTAKE_ID_HASH_KEY": TEST_KEY,
                "YIZHAN_INTAKE_QUARANTINE_KEY": TEST_KEY,
                "YIZHAN_SOURCES_FILE": "/etc/yizhan/source_systems.toml"}
_VAR = re.compile(r"\$\{(\w+)(?::?[-?][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def interpolate(value: Any) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` with test secrets."""
    def one(match: re.Match[str]) -> str:
        name, spec = match.group(1), match.group(0)
        if name in TEST_SECRETS:
            return TEST_SECRETS[name]
        default = re.search(r":-([^}]*)\}$", spec)
        assert default is not None, f"{name} has no default and no test value"
        return default.group(1)

    return _VAR.sub(one, str(value))


def env_of(compose: dict[str, Any], service: str) -> dict[str, str]:
    env = compose["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment must be a mapping"
    return {k: interpolate(v) for k, v in env.items()}


def known_variables() -> set[str]:
    """Every environment variable the two settings classes read."""
    names: set[str] = set()
    for cls, prefix in ((Settings, "YIZHAN_"), (IntakeSettings, "YIZHAN_INTAKE_")):
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            choices = getattr(alias, "choices", None)
            names |= {str(c) for c in choices} if choices else {f"{prefix}{name}".upper()}
    return names


def test_every_yizhan_service_is_there_with_a_valid_command(compose: dict[str, Any]) -> None:
    parser = build_parser()
    for service in YIZHAN:
        spec = compose["services"][service]
        assert spec.get("build") or spec.get("image"), service
        args = parser.parse_args([str(a) for a in spec["command"]])  # exits if invalid
        assert callable(args.fn), service
    assert {"postgres", "kafka"} <= set(compose["services"])


def test_required_variables_are_set_and_valid(compose: dict[str, Any],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for service in YIZHAN:
        env = env_of(compose, service)
        needed = REQUIRED + (INTAKE_REQUIRED if service == "intake" else ())
        missing = [name for name in needed if not env.get(name)]
        assert not missing, f"{service} lacks {missing}"
        assert env["YIZHAN_ENV"] == "prod"
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings(_env_file=None)
        assert not settings.uses_dev_signing_key, service
        if service == "intake":
            assert not IntakeSettings(_env_file=None).uses_development_keys
        for name in env:
            monkeypatch.delenv(name)


def test_every_secret_file_is_required_from_the_environment(compose: dict[str, Any]) -> None:
    """No fallback to a file of the repository: the one there holds public development
    secrets, which production refuses."""
    for name, secret in compose["secrets"].items():
        found = re.fullmatch(r"\$\{(\w+):\?[^}]+\}", str(secret["file"]))
        assert found, f"secret {name}: {secret['file']} must be ${{VAR:?message}}"
        assert found[1] in compose_header(), f"the file's header must list {found[1]}"


def compose_header() -> str:
    """The comment the file opens with, which lists what must be set."""
    lines = (ROOT / "docker-compose.yml").read_text(encoding="utf-8").splitlines()
    return "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))


def test_no_unknown_yizhan_variables(compose: dict[str, Any]) -> None:
    known = known_variables()
    for service in YIZHAN:
        for name in env_of(compose, service):
            if name.startswith(("YIZHAN_", "DATABASE_", "KAFKA_")):
                assert name in known, f"{service}: {name} is read by no settings class"


def test_ports_hosts_and_health_checks_agree(compose: dict[str, Any]) -> None:
    for service, field in HTTP.items():
        env = env_of(compose, service)
        settings = Settings.model_validate({
            "cases_port": env["YIZHAN_CASES_PORT"],
            "projections_port": env["YIZHAN_PROJECTIONS_PORT"],
            "relay_port": env["YIZHAN_RELAY_PORT"]})
        intake = IntakeSettings.model_validate({"http_port": env["YIZHAN_INTAKE_HTTP_PORT"]})
        port = getattr(intake if service == "intake" else settings, field.replace(
            "intake_http_port", "http_port"))
        spec = compose["services"][service]
        published = {int(str(p).rsplit(":", 1)[1]) for p in spec.get("ports", [])}
        assert port in published, f"{service} listens on {port}, publishes {published}"
        check = " ".join(spec["healthcheck"]["test"])
        assert re.search(rf":{port}/(readyz|healthz)", check), f"{service}: {check}"
        host_var = "YIZHAN_INTAKE_HTTP_HOST" if service == "intake" else "YIZHAN_HTTP_HOST"
        assert env[host_var] == "0.0.0.0", f"{service} must listen on every interface"


def test_the_image_exposes_every_port_a_service_listens_on(compose: dict[str, Any]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    exposed = {int(port) for line in dockerfile.splitlines() if line.startswith("EXPOSE ")
               for port in line.split()[1:]}
    for service in HTTP:
        env = env_of(compose, service)
        port = int(env["YIZHAN_INTAKE_HTTP_PORT" if service == "intake"
                       else f"YIZHAN_{service.upper()}_PORT"])
        assert port in exposed, f"{service} listens on {port}; the Dockerfile exposes {exposed}"


def test_database_and_broker_addresses_point_at_their_services(
        compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]["environment"]
    kafka = compose["services"]["kafka"]["environment"]
    advertised = {u.split("://", 1)[1] for u in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for service in YIZHAN:
        env = env_of(compose, service)
        names = ("DATABASE_URL", "DATABASE_ADMIN_URL") if service == "migrate" else (
            "DATABASE_URL",)
        for name in names:
            assert re.fullmatch(rf"postgresql://\w+:[^@]+@postgres:5432/{pg['POSTGRES_DB']}",
                                env[name]), f"{service}: {name}"
        assert set(env["KAFKA_BOOTSTRAP_SERVERS"].split(",")) <= advertised
    owner = env_of(compose, "migrate")["DATABASE_ADMIN_URL"]
    assert owner.split("//")[1].startswith(pg["POSTGRES_USER"] + ":")


def test_only_the_migrate_one_shot_holds_owner_credentials(compose: dict[str, Any]) -> None:
    for service in YIZHAN:
        env = env_of(compose, service)
        if service == "migrate":
            assert "DATABASE_ADMIN_URL" in env
        else:
            assert "DATABASE_ADMIN_URL" not in env, f"{service} must not hold the owner's password"
            assert not Settings(_env_file=None, migrate_on_start=env.get(
                "YIZHAN_MIGRATE_ON_START", "true")).migrate_on_start, service


def test_topics_partitions_and_replication_are_consistent(compose: dict[str, Any]) -> None:
    defaults = Settings(_env_file=None)
    kafka = compose["services"]["kafka"]["environment"]
    brokers = [s for s, spec in compose["services"].items()
               if "apache/kafka" in str(spec.get("image", ""))]
    for service in YIZHAN:
        env = env_of(compose, service)
        assert env["YIZHAN_TOPIC_CASE_EVENTS"] == defaults.topic_case_events
        assert env["YIZHAN_TOPIC_INTAKE_SUBMISSIONS"] == defaults.topic_intake_submissions
        assert env["YIZHAN_TOPIC_INTAKE_REJECTED"] == defaults.topic_intake_rejected
        assert int(env["YIZHAN_TOPIC_PARTITIONS"]) == int(kafka["KAFKA_NUM_PARTITIONS"])
        assert int(env["YIZHAN_TOPIC_REPLICATION_FACTOR"]) <= len(brokers)
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics are made up front
    assert "broker" in kafka["KAFKA_PROCESS_ROLES"] and "controller" in kafka[
        "KAFKA_PROCESS_ROLES"], "KRaft: no ZooKeeper"


def test_the_kraft_cluster_id_is_a_base64url_uuid(compose: dict[str, Any]) -> None:
    """Kafka formats its storage only with a UUID's 16 bytes in base64url (`kafka-storage.sh
    random-uuid`); any other string stops the broker at its first start."""
    cluster_id = interpolate(compose["services"]["kafka"]["environment"]["CLUSTER_ID"])
    padded = cluster_id + "=" * (-len(cluster_id) % 4)
    try:
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except binascii.Error as exc:
        pytest.fail(f"CLUSTER_ID {cluster_id!r} is not base64url: {exc}")
    assert len(raw) == 16, f"CLUSTER_ID {cluster_id!r} decodes to {len(raw)} bytes, not 16"


def test_order_of_start_volumes_and_image(compose: dict[str, Any]) -> None:
    assert compose["services"]["migrate"]["depends_on"]["postgres"]["condition"] == (
        "service_healthy")
    for service in ("relay", "intake", "cases", "projections"):
        after = compose["services"][service]["depends_on"]
        assert after["migrate"]["condition"] == "service_completed_successfully"
        assert after["kafka"]["condition"] == "service_healthy"
    assert {"pgdata", "kafkadata"} <= set(compose["volumes"])
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "COPY data" in dockerfile, "the image needs data/ (reference data)"
    assert 'ENTRYPOINT ["yizhan"]' in dockerfile


def test_the_postgresql_image_is_one_the_migrations_accept(compose: dict[str, Any]) -> None:
    image = compose["services"]["postgres"]["image"]
    found = re.fullmatch(r"postgres:(\d+)(\.\d+)?(-[\w.-]+)?", image)
    assert found, f"unexpected PostgreSQL image {image}"
    assert int(found[1]) >= MIN_SERVER_MAJOR
