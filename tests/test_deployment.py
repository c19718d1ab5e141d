"""The deployment files: docker-compose.yaml, the Dockerfile, deploy/helm/values.yaml and what the e2e suite runs.

No Docker engine runs here, so the compose file is checked the way CI can: against the
Compose specification's JSON schema (``check-jsonschema --builtin-schema vendor.compose-spec``),
and against the distributed end-to-end suite (``tests/e2e/test_distributed.py``), which runs
the same Airflow commands as real processes: every Airflow service's command and every init
step must be one :mod:`tests.e2e.harness` runs, with options it passes too; the image's
Airflow, PostgreSQL and Redis are the versions that suite runs against. No secret has a
default in either file: compose requires each (``${VAR:?message}``), the Helm values name
Kubernetes secrets only, and the Helm init container that makes pods wait for the approval
store's migration is run here as written, against a real PostgreSQL store.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
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
    create_database,
    drop_database,
)

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
HELM_VALUES = REPO / "deploy" / "helm" / "values.yaml"
COMPOSE_ENV_SCRIPT = REPO / "deploy" / "compose-env.sh"

#: Environment variables that carry a secret, by name.
SECRET_NAME = re.compile(r"SECRET|PASSWORD|FERNET|SIGNING_KEY|AUDIT_KEY|TOKEN", re.I)
#: A URL with a password in it: scheme://user:PASSWORD@host.
URL_PASSWORD = re.compile(r"://[^:/@\s]*:(?P<password>[^@\s]+)@")
#: A compose interpolation that is required: ${NAME:?message}.
REQUIRED = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}$")


def secret_values(env: dict[str, Any]) -> dict[str, str]:
    """The secrets of a compose environment: secret-named variables and the passwords in URLs."""
    found = {}
    for key, value in env.items():
        text = str(value)
        if SECRET_NAME.search(key):
            found[key] = text
        for match in URL_PASSWORD.finditer(text):
            found[f"{key} (URL password)"] = match.group("password")
    return found


def compose_without_comments() -> str:
    """docker-compose.yaml without its comment lines (which show the syntax they explain)."""
    return "\n".join(line for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#"))


def unrequired_secrets(compose: dict[str, Any]) -> list[str]:
    """Every secret of every service that is not exactly one required interpolation."""
    problems = []
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for key, value in secret_values(env).items():
            if not REQUIRED.match(value):
                problems.append(f"{name}: {key} = {value!r}")
    return problems


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


class TestComposeSecrets:
    def test_every_secret_is_required_and_none_has_a_default(self, compose: dict[str, Any]) -> None:
        assert unrequired_secrets(compose) == []
        # The ones that matter are all there (a renamed key would slip past the check above).
        env = compose["services"]["airflow-apiserver"]["environment"]
        for key in (
            "AIRFLOW__API_AUTH__JWT_SECRET",
            "AIRFLOW__API__SECRET_KEY",
            "AIRFLOW__CORE__FERNET_KEY",
            "AIRFLOW__HITL__SIGNING_KEY",
            "AIRFLOW__HITL__AUDIT_KEY",
        ):
            assert REQUIRED.match(env[key]), key
        assert REQUIRED.match(compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"])
        assert REQUIRED.match(compose["services"]["airflow-init"]["environment"]["_AIRFLOW_WWW_USER_PASSWORD"])

    def test_every_required_variable_says_how_to_set_it(self) -> None:
        messages = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?([^}]+)\}", compose_without_comments())
        assert messages
        for name, message in messages:
            assert name in message and "compose-env.sh" in message, (name, message)

    def test_the_check_catches_a_default_secret(self) -> None:
        guessable = {
            "services": {
                "a": {
                    "environment": {"AIRFLOW__API_AUTH__JWT_SECRET": "${AIRFLOW_JWT_SECRET:-change-this-jwt-secret}"}
                },
                "b": {"environment": {"AIRFLOW_CONN_X": "postgresql://airflow:airflow@postgres/x"}},
                "c": {"environment": ["POSTGRES_PASSWORD=airflow"]},
            }
        }
        assert len(unrequired_secrets(guessable)) == 3

    def test_compose_env_script_writes_every_required_variable_once(self, tmp_path: Path) -> None:
        env_file = tmp_path / ".env"
        env = {**os.environ, "ENV_FILE": str(env_file)}
        for _ in range(2):  # the second run must keep what the first wrote
            subprocess.run(["bash", str(COMPOSE_ENV_SCRIPT)], env=env, check=True, capture_output=True, timeout=60)
        first = env_file.read_text()
        values = dict(line.split("=", 1) for line in first.splitlines())
        required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", compose_without_comments()))
        assert required == set(values), "compose-env.sh and docker-compose.yaml name different variables"
        assert len(set(values.values())) == len(values), "two secrets got the same value"
        assert all(len(value) >= 20 for value in values.values())
        assert (env_file.stat().st_mode & 0o077) == 0, ".env must be readable by its owner only"
        from cryptography.fernet import Fernet

        Fernet(values["AIRFLOW_FERNET_KEY"])  # Airflow refuses a key that is not a Fernet key
        for value in (values["POSTGRES_PASSWORD"],):
            assert re.fullmatch(r"[0-9a-f]+", value), "it goes into URLs unquoted"


@pytest.fixture(scope="module")
def helm_values() -> dict[str, Any]:
    """deploy/helm/values.yaml, parsed (anchors resolved)."""
    return dict(yaml.safe_load(HELM_VALUES.read_text()))


#: The chart's sections of the components that read or write the approval store.
STORE_COMPONENTS = ("apiServer", "scheduler", "triggerer", "workers")


def wait_container(values: dict[str, Any], component: str) -> dict[str, Any]:
    """The init container of ``component`` that waits for the approval store's migration."""
    [container] = [c for c in values[component].get("extraInitContainers", []) if c["name"] == "wait-for-hitl-store"]
    return dict(container)


#: Chart values that hold a secret itself (the chart also takes each from a secret, by name).
SECRET_VALUE_KEYS = {"password", "pass", "fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"}


def written_secrets(values: Any, path: str = "") -> list[str]:
    """Where a Helm values tree writes a secret: a secret-holding key with a value, or a URL password."""
    if isinstance(values, dict):
        found = []
        for key, value in values.items():
            here = f"{path}.{key}" if path else str(key)
            if key in SECRET_VALUE_KEYS and value not in (None, ""):
                found.append(here)
            else:
                found += written_secrets(value, here)
        return found
    if isinstance(values, list):
        return [hit for index, item in enumerate(values) for hit in written_secrets(item, f"{path}[{index}]")]
    return [path] if URL_PASSWORD.search(str(values)) else []


class TestHelmValues:
    def test_names_the_chart_version_it_was_written_for_and_where_each_key_comes_from(self) -> None:
        text = HELM_VALUES.read_text()
        assert re.search(r"^# Written for chart version 1\.\d+\.\d+ ", text, re.M)
        # Every top-level key has a comment above it naming its source in the chart's docs.
        lines = text.splitlines()
        for number, line in enumerate(lines):
            if re.match(r"^[A-Za-z]\w*:", line):
                above = "\n".join(lines[max(0, number - 4) : number])
                assert re.search(r"\[(params|values|upgrade-3|containers)\]", above), line

    def test_no_secret_value_is_written_in_the_file(self, helm_values: dict[str, Any]) -> None:
        assert written_secrets(helm_values) == []
        # Ours come from a Kubernetes secret, by name.
        from_secrets = {item["envName"]: item for item in helm_values["secret"]}
        for env_name in ("AIRFLOW_CONN_HITL_DEFAULT", "AIRFLOW__HITL__SIGNING_KEY", "AIRFLOW__HITL__AUDIT_KEY"):
            assert from_secrets[env_name]["secretName"] and from_secrets[env_name]["secretKey"], env_name
        # The chart's guessable defaults are off: the admin/admin user and the bundled database.
        assert helm_values["createUserJob"]["defaultUser"]["enabled"] is False
        assert helm_values["postgresql"]["enabled"] is False
        assert helm_values["data"]["metadataSecretName"]

    def test_the_check_catches_a_written_secret(self) -> None:
        leaky = {
            "fernetKey": "abc",
            "data": {"metadataConnection": {"user": "postgres", "pass": "postgres"}},
            "env": [{"name": "X", "value": "postgresql://u:hunter2@db/x"}],
        }
        assert written_secrets(leaky) == ["fernetKey", "data.metadataConnection.pass", "env[0].value"]

    def test_every_store_component_waits_for_the_store_migration(self, helm_values: dict[str, Any]) -> None:
        image = helm_values["images"]["airflow"]
        for component in STORE_COMPONENTS:
            container = wait_container(helm_values, component)
            assert container["image"] == f"{image['repository']}:{image['tag']}", component
            assert "airflow hitl db check" in " ".join(container["args"]), component
            store = {e["name"]: e for e in container["env"]}["AIRFLOW_CONN_HITL_DEFAULT"]
            same = {e["envName"]: e for e in helm_values["secret"]}["AIRFLOW_CONN_HITL_DEFAULT"]
            assert store["valueFrom"]["secretKeyRef"] == {"name": same["secretName"], "key": same["secretKey"]}

    def test_the_init_container_waits_with_the_checks_own_wait(self, helm_values: dict[str, Any]) -> None:
        # `db check --wait` polls and reports itself: no shell loop around it to keep in step.
        for component in STORE_COMPONENTS:
            script = " ".join(wait_container(helm_values, component)["args"])
            assert re.search(r"\bairflow hitl db check --wait 600\b", script), script
            assert not re.search(r"\b(for|while|until|sleep)\b", script), script

    def test_the_migration_job_migrates_the_store_after_airflow(self, helm_values: dict[str, Any]) -> None:
        script = helm_values["migrateDatabaseJob"]["args"][-1]
        assert script.index("airflow db migrate") < script.index("airflow hitl db migrate")
        assert helm_values["config"]["hitl"]["auto_migrate"] == "False"

    @pytest.mark.postgres
    @pytest.mark.slow
    def test_the_init_container_waits_until_the_store_is_migrated(
        self, helm_values: dict[str, Any], tmp_path: Path
    ) -> None:
        # The init container's own command, run as written against a real, empty store.
        container = wait_container(helm_values, "apiServer")
        store_url = create_database("hitl_initwait")
        venv_bin = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "PATH": venv_bin + os.pathsep + env.get("PATH", ""),
                "AIRFLOW_HOME": str(tmp_path),
                "AIRFLOW_CONN_HITL_DEFAULT": store_url.replace("postgresql+psycopg://", "postgresql://"),
            }
        )
        try:
            waiting = subprocess.Popen(
                [*container["command"], *container["args"]],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                time.sleep(12)  # at least one check has failed by now: the store is empty
                assert waiting.poll() is None, (
                    f"it did not wait for the migration:\n{waiting.stdout.read() if waiting.stdout else ''}"
                )
                subprocess.run(
                    ["airflow", "hitl", "db", "migrate"], env=env, check=True, capture_output=True, timeout=120
                )
                output, _ = waiting.communicate(timeout=60)
            finally:
                if waiting.poll() is None:
                    waiting.kill()
            assert waiting.returncode == 0, output
            assert "run `airflow hitl db migrate`" in output  # what it printed while it waited
        finally:
            drop_database(store_url)


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
