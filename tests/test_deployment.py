"""The deployment files: docker-compose.yaml, the Dockerfile and their match with what the e2e suite runs.

No Docker engine runs here, so the compose file is checked the way CI can: against the
Compose specification's JSON schema (``check-jsonschema --builtin-schema vendor.compose-spec``),
and against the distributed end-to-end suite (``tests/e2e/test_distributed.py``), which runs
the same Airflow commands as real processes: every Airflow service's command and every init
step must be one :mod:`tests.e2e.harness` runs, with options it passes too; the image's
Airflow, PostgreSQL and Redis are the versions that suite runs against.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from tests.e2e.harness import (
    FAB_AUTH_MANAGER,
    INIT_COMMANDS,
    PG_ADMIN_URL,
    SERVICE_COMMANDS,
    SERVICE_FLAGS,
)

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yaml, parsed (anchors and merge keys resolved)."""
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def airflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image built from the Dockerfile."""
    return {name: svc for name, svc in compose["services"].items() if svc.get("build") == "."}


def command_words(service: dict[str, Any]) -> list[str]:
    """A service's command as a word list (the image's entrypoint passes it to ``airflow``)."""
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(word) for word in command]


def init_steps(service: dict[str, Any]) -> list[list[str]]:
    """The ``airflow`` command lines of an init service's shell script (``entrypoint: /bin/bash``)."""
    words = command_words(service)
    assert service.get("entrypoint") == "/bin/bash", "the init service runs a bash script"
    assert len(words) == 2 and words[0].startswith("-") and "c" in words[0], words
    steps = []
    for line in words[1].splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            parts = shlex.split(line)
            assert parts[0] == "airflow", f"init step is not an airflow command: {line}"
            steps.append(parts[1:])
    return steps


def split_command(words: list[str], known: list[tuple[str, ...]]) -> tuple[tuple[str, ...], set[str]]:
    """The longest known sub-command ``words`` starts with, and the ``--options`` it uses."""
    matches = [cmd for cmd in known if tuple(words[: len(cmd)]) == cmd]
    assert matches, f"`airflow {' '.join(words)}` is not a command the distributed e2e suite runs"
    return max(matches, key=len), {w.split("=", 1)[0] for w in words if w.startswith("--")}


class TestComposeSchema:
    def test_compose_file_is_valid_against_the_compose_specification(self) -> None:
        tool = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
        result = subprocess.run(
            [tool, "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_schema_check_catches_a_broken_file(self, tmp_path: Path) -> None:
        broken = tmp_path / "docker-compose.yaml"
        broken.write_text("services:\n  web:\n    depends_on:\n      db:\n        condition: when_it_feels_like_it\n")
        tool = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
        result = subprocess.run(
            [tool, "--builtin-schema", "vendor.compose-spec", str(broken)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode != 0


class TestComposeTopology:
    def test_every_component_of_the_production_shape_is_there(self, compose: dict[str, Any]) -> None:
        services = airflow_services(compose)
        kinds: dict[tuple[str, ...], int] = {}
        for service in services.values():
            if service.get("entrypoint") != "/bin/bash":
                kind, _ = split_command(command_words(service), list(SERVICE_COMMANDS.values()))
                kinds[kind] = kinds.get(kind, 0) + 1
        assert kinds == {
            ("api-server",): 1,
            ("scheduler",): 1,
            ("dag-processor",): 1,
            ("triggerer",): 2,
            ("celery", "worker"): 1,
        }
        images = {svc["image"].split(":")[0] for svc in compose["services"].values() if "build" not in svc}
        assert {"postgres", "redis", "axllent/mailpit"} <= images

    def test_services_wait_for_healthy_dependencies(self, compose: dict[str, Any]) -> None:
        services = compose["services"]
        for name, service in services.items():
            if name != "airflow-init":
                assert "healthcheck" in service, f"{name} has no healthcheck"
            for dependency, rule in (service.get("depends_on") or {}).items():
                expected = "service_completed_successfully" if dependency == "airflow-init" else "service_healthy"
                assert rule["condition"] == expected, f"{name} -> {dependency}"
        for name in airflow_services(compose):
            depends = services[name]["depends_on"]
            assert {"postgres", "redis"} <= set(depends), name
            if name != "airflow-init":
                assert "airflow-init" in depends, name

    def test_one_configuration_for_every_airflow_component(self, compose: dict[str, Any]) -> None:
        envs = [svc["environment"] for svc in airflow_services(compose).values()]
        for key in (
            "AIRFLOW__CORE__EXECUTOR",
            "AIRFLOW__CORE__AUTH_MANAGER",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW_CONN_HITL_DEFAULT",
        ):
            assert len({env[key] for env in envs}) == 1, key
        env = envs[0]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CORE__AUTH_MANAGER"] == FAB_AUTH_MANAGER
        assert env["AIRFLOW__HITL__AUTO_MIGRATE"] == "false", "production migrates the store as a deploy step"
        assert env["AIRFLOW_CONN_HITL_DEFAULT"].startswith("postgresql://")
        assert "mailpit" in env["AIRFLOW_CONN_SMTP_DEFAULT"]


class TestComposeCommandsMatchTheE2eSuite:
    def test_service_commands_are_ones_the_harness_runs(self, compose: dict[str, Any]) -> None:
        by_command = {cmd: service for service, cmd in SERVICE_COMMANDS.items()}
        for name, service in airflow_services(compose).items():
            if service.get("entrypoint") == "/bin/bash":
                continue
            kind, flags = split_command(command_words(service), list(SERVICE_COMMANDS.values()))
            allowed = SERVICE_FLAGS[by_command[kind]]
            assert flags <= allowed, f"{name}: options {sorted(flags - allowed)} are never run by the e2e suite"

    def test_init_steps_are_ones_the_harness_runs_in_the_same_order(self, compose: dict[str, Any]) -> None:
        steps = init_steps(compose["services"]["airflow-init"])
        order = list(INIT_COMMANDS)
        positions = []
        for words in steps:
            kind, flags = split_command(words, order)
            assert flags <= INIT_COMMANDS[kind], f"`airflow {' '.join(words)}`: options not run by the e2e suite"
            positions.append(order.index(kind))
        assert positions == sorted(positions), "init steps run in another order than the harness runs them"
        assert [order[p] for p in positions[:2]] == [("db", "migrate"), ("hitl", "db", "migrate")]

    def test_a_command_the_suite_never_runs_is_caught(self) -> None:
        with pytest.raises(AssertionError, match="not a command the distributed e2e suite runs"):
            split_command(["webserver", "--port", "8080"], list(SERVICE_COMMANDS.values()))


class TestImagesMatchTheE2eSuite:
    def test_dockerfile_builds_on_the_airflow_the_suite_runs(self) -> None:
        match = re.search(r"^ARG AIRFLOW_IMAGE=apache/airflow:([\d.]+)-python([\d.]+)$", DOCKERFILE.read_text(), re.M)
        assert match, "Dockerfile must build FROM the official apache/airflow image"
        assert match.group(1) == version("apache-airflow")

    def test_dockerfile_installs_the_packages_the_suite_runs_with(self) -> None:
        text = DOCKERFILE.read_text()
        quoted = [Requirement(spec) for spec in re.findall(r'"([a-z][\w.\-]*[<>=!~][^"$]*)"', text)]
        specs = {req.name: req for req in quoted}
        assert "/opt/airflow-hitl" in text, "the image installs this package"
        for package in (
            "apache-airflow-providers-celery",
            "celery",
            "apache-airflow-providers-fab",
            "apache-airflow-providers-postgres",
        ):
            assert package in specs, f"Dockerfile does not install {package}"
            assert specs[package].specifier.contains(version(package)), (
                f"{package} {version(package)} (what the e2e suite runs) is outside {specs[package]}"
            )

    @pytest.mark.postgres
    def test_postgres_image_is_the_major_version_the_suite_runs_on(self, compose: dict[str, Any]) -> None:
        from sqlalchemy import create_engine, text

        engine = create_engine(PG_ADMIN_URL)
        try:
            with engine.connect() as conn:
                server = str(conn.execute(text("SHOW server_version")).scalar())
        finally:
            engine.dispose()
        tag = compose["services"]["postgres"]["image"].split(":")[1]
        assert tag.split(".")[0] == server.split(".")[0]

    def test_redis_image_is_the_major_version_the_suite_runs_on(self, compose: dict[str, Any]) -> None:
        redis_server = shutil.which("redis-server")
        assert redis_server, "redis-server is missing (scripts/bootstrap.sh installs it)"
        output = subprocess.run([redis_server, "--version"], capture_output=True, text=True, check=True).stdout
        local = re.search(r"v=(\d+)\.", output)
        assert local
        tag = compose["services"]["redis"]["image"].split(":")[1]
        assert tag.split(".")[0] == local.group(1)
