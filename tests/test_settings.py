"""The ``[hitl]`` options: one declaration, and everything that reads or documents them agrees with it."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from airflow_hitl.exceptions import ConfigInvalid
from airflow_hitl.get_provider_info import get_provider_info
from airflow_hitl.notifications.config import NotifySettings
from airflow_hitl.settings import (
    OPTIONS,
    SECTION,
    HitlSettings,
    check_options,
    conf_get,
    conf_getboolean,
    conf_getfloat,
    conf_getint,
    option,
    option_value,
)

PACKAGE = Path(__file__).resolve().parents[1] / "airflow_hitl"
#: Builds the docs site's pages; its ``configuration_page()`` is the configuration page as the site shows it.
DOCS_GENERATOR = Path(__file__).resolve().parents[1] / "docs" / "gen_pages.py"


#: The functions that read one option (its name the first argument) or several (a tuple of names).
READERS = ("conf_get", "conf_getboolean", "conf_getint", "conf_getfloat", "option_value", "read_options")


def _conf_get_keys() -> set[str]:
    """Every literal option name passed to a reader of :data:`READERS` anywhere in the package."""
    keys: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in READERS):
                continue
            if not node.args:
                continue
            first = node.args[0]
            names = first.elts if isinstance(first, (ast.Tuple, ast.List)) else [first]
            keys.update(n.value for n in names if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return keys


class TestOneDeclaration:
    def test_names_are_unique(self):
        names = [o.name for o in OPTIONS]
        assert len(names) == len(set(names))

    def test_provider_info_documents_every_option_as_declared(self):
        documented = get_provider_info()["config"][SECTION]["options"]
        assert list(documented) == [o.name for o in OPTIONS]
        for declared in OPTIONS:
            doc = documented[declared.name]
            assert doc["type"] == declared.type
            assert doc["description"] == declared.description
            # Airflow runs defaults through str.format, which turns doubled braces back into one.
            assert doc["default"].format() == declared.default

    def test_every_option_read_in_the_package_is_declared(self):
        read = _conf_get_keys()
        assert read, "the scan found no conf_get call: it is looking in the wrong place"
        assert read <= {o.name for o in OPTIONS}, read - {o.name for o in OPTIONS}

    @pytest.mark.parametrize("view", [HitlSettings, NotifySettings], ids=["store", "notify"])
    def test_typed_views_have_no_defaults_of_their_own(self, view):
        # A default on a dataclass field would be a second declaration that can drift.
        for field in dataclasses.fields(view):
            assert field.default is dataclasses.MISSING, field.name
            assert field.default_factory is dataclasses.MISSING, field.name

    def test_defaults_parse_as_their_declared_type(self):
        parse = {"integer": int, "float": float, "boolean": lambda v: v in {"True", "False"}, "string": str}
        for declared in OPTIONS:
            assert parse[declared.type](declared.default) is not False, declared.name

    def test_every_option_is_in_the_docs(self):
        text = runpy.run_path(str(DOCS_GENERATOR), run_name="gen_pages")["configuration_page"]()
        missing = [o.name for o in OPTIONS if f"`{o.name}`" not in text]
        assert not missing, f"options not documented in docs/configuration.md: {missing}"


class TestReading:
    def test_environment_overrides_the_default(self, monkeypatch):
        monkeypatch.setenv("AIRFLOW__HITL__POLL_INTERVAL", "7.5")
        assert conf_get("poll_interval") == "7.5"
        assert HitlSettings.load().poll_interval == 7.5

    def test_default_when_unset(self, monkeypatch):
        monkeypatch.delenv("AIRFLOW__HITL__NOTIFY_MAX_RETRIES", raising=False)
        assert NotifySettings.load().max_retries == int(option("notify_max_retries").default)

    def test_unknown_option_is_refused(self):
        with pytest.raises(KeyError):
            conf_get("no_such_option")

    def test_airflow_sees_the_declared_defaults(self, tmp_path):
        # Through Airflow's own CLI, in a fresh AIRFLOW_HOME: the provider's config reaches `airflow config`.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__HITL__")}
        env["AIRFLOW_HOME"] = str(tmp_path)
        out = subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "config", "get-value", SECTION, "link_max_age"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )
        assert out.stdout.strip().splitlines()[-1] == option("link_max_age").default


AIRFLOW = str(Path(sys.executable).with_name("airflow"))
#: The secrets of ``[hitl]``: declared sensitive, so Airflow masks them and reads their ``_CMD``/``_SECRET``.
SECRETS = ("signing_key", "slack_signing_secret", "audit_key", "evidence_signing_key")


def _fresh_env(home: Path, **variables: str) -> dict[str, str]:
    """This environment without any ``[hitl]`` setting, over a fresh ``AIRFLOW_HOME``, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__HITL__")}
    env["AIRFLOW_HOME"] = str(home)
    env.update(variables)
    return env


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter: Airflow's config and its providers manager are process-wide singletons.
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)


def _python_json(code: str, env: dict[str, str]) -> Any:
    """What ``code`` (a real Airflow, its providers loaded as in any Airflow process) prints last, as JSON."""
    done = _run([sys.executable, "-c", code], env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


class TestSecrets:
    def test_every_secret_and_only_they_are_declared_sensitive(self):
        looks_secret = {o.name for o in OPTIONS if re.search("key|secret|password|token", o.name)}
        # Public keys are published in the JWKS; everything else with such a name is a secret.
        assert looks_secret - {"evidence_previous_public_keys"} == set(SECRETS)
        assert {o.name for o in OPTIONS if o.sensitive} == set(SECRETS)
        documented = get_provider_info()["config"][SECTION]["options"]
        assert {name for name, doc in documented.items() if doc["sensitive"] is True} == set(SECRETS)
        assert all(doc["sensitive"] is False for name, doc in documented.items() if name not in SECRETS)

    def test_airflow_masks_them(self, tmp_path):
        values = {f"AIRFLOW__HITL__{name.upper()}": f"s3cret-{name}" for name in SECRETS}
        env = _fresh_env(tmp_path, **values, AIRFLOW__HITL__BASE_URL="https://airflow.example.com")
        listed = _run([AIRFLOW, "config", "list", "--section", SECTION, "--show-values", "--hide-sensitive"], env)
        assert listed.returncode == 0, listed.stderr[-3000:]
        for name in SECRETS:
            assert f"{name} = < hidden >" in listed.stdout
        assert "s3cret" not in listed.stdout
        assert "base_url = https://airflow.example.com" in listed.stdout
        # Airflow's own reading of its config (what its UI's config page shows) agrees.
        shown = _python_json(
            "import json\n"
            "from airflow.configuration import conf\n"
            "print(json.dumps(conf.as_dict(display_sensitive=False)['hitl']))",
            env,
        )
        assert {name: shown[name] for name in SECRETS} == dict.fromkeys(SECRETS, "< hidden >")
        assert shown["base_url"] == "https://airflow.example.com"

    def test_cmd_is_what_they_read_as(self, tmp_path):
        commands = {f"AIRFLOW__HITL__{name.upper()}_CMD": f"echo s3cret-{name}" for name in SECRETS}
        # Airflow runs a command only for an option declared sensitive: base_url's is ignored.
        env = _fresh_env(tmp_path, **commands, AIRFLOW__HITL__BASE_URL_CMD="echo https://elsewhere.example.com")
        read = _python_json(
            "import json\n"
            "from airflow_hitl.settings import conf_get\n"
            f"print(json.dumps({{name: conf_get(name) for name in {[*SECRETS, 'base_url']!r}}}))",
            env,
        )
        # The command's line break is not part of the secret.
        assert read == {**{name: f"s3cret-{name}" for name in SECRETS}, "base_url": option("base_url").default}
        shown = _run([AIRFLOW, "config", "get-value", SECTION, "signing_key"], env)
        assert shown.stdout.strip().splitlines()[-1] == "s3cret-signing_key"

    def test_secret_is_read_from_the_secrets_backend(self, tmp_path):
        (tmp_path / "hitl_test_backend.py").write_text(
            "from airflow.secrets import BaseSecretsBackend\n"
            "class ConfigBackend(BaseSecretsBackend):\n"
            "    def get_config(self, key):\n"
            "        return {'hitl/signing': 'from-the-backend'}.get(key)\n"
        )
        env = _fresh_env(
            tmp_path,
            AIRFLOW__SECRETS__BACKEND="hitl_test_backend.ConfigBackend",
            AIRFLOW__HITL__SIGNING_KEY_SECRET="hitl/signing",
            PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        )
        read = _python_json(
            "import json\nfrom airflow_hitl.settings import conf_get\nprint(json.dumps(conf_get('signing_key')))", env
        )
        assert read == "from-the-backend"

    def test_a_command_that_fails_is_an_error_not_the_default(self, monkeypatch):
        monkeypatch.setenv("AIRFLOW__HITL__SIGNING_KEY_CMD", "sh -c 'echo s3cret-in-output; exit 3'")
        with pytest.raises(ConfigInvalid, match=r"^invalid \[hitl\] signing_key: Airflow could not read it$") as err:
            conf_get("signing_key")
        assert err.value.options == ["signing_key"]
        assert "s3cret" not in str(err.value)


#: Raw values and what Airflow's conf.getboolean / getint / getfloat make of them (None: an error).
BOOLEANS = [
    ("True", True),
    ("t", True),
    (" TRUE ", True),
    ("1", True),
    ("false", False),
    ("F", False),
    ("0", False),
    ("False # off for now", False),
    ("Ture", None),
    ("yes", None),
    ("on", None),
    ("", None),
]
INTEGERS = [("10", 10), (" 7 ", 7), ("1e3", 1000), ("2.0", 2), ("-4", -4), ("2.5", None), ("five", None), ("", None)]
FLOATS = [("2.5", 2.5), ("3", 3.0), (" 1e-1 ", 0.1), ("-1", -1.0), ("fast", None), ("", None)]


class TestTypes:
    @pytest.mark.parametrize(
        ("key", "reader", "getter", "raw", "expected"),
        [
            *(
                pytest.param("auto_migrate", conf_getboolean, "getboolean", raw, want, id=f"bool-{raw!r}")
                for raw, want in BOOLEANS
            ),
            *(pytest.param("pool_size", conf_getint, "getint", raw, want, id=f"int-{raw!r}") for raw, want in INTEGERS),
            *(
                pytest.param("poll_interval", conf_getfloat, "getfloat", raw, want, id=f"float-{raw!r}")
                for raw, want in FLOATS
            ),
        ],
    )
    def test_read_as_airflow_reads_them(self, monkeypatch, key, reader, getter, raw, expected):
        from airflow.configuration import conf
        from airflow.exceptions import AirflowConfigException

        monkeypatch.setenv(f"AIRFLOW__HITL__{key.upper()}", raw)
        if expected is None:
            with pytest.raises(AirflowConfigException):
                getattr(conf, getter)(SECTION, key)
            with pytest.raises(ConfigInvalid) as err:
                reader(key)
            assert err.value.options == [key]
            assert f"[hitl] {key}: {raw!r} is not" in str(err.value)
        else:
            assert reader(key) == expected == getattr(conf, getter)(SECTION, key)
            assert type(reader(key)) is type(expected)

    @pytest.mark.parametrize("raw", ["nan", "inf", "-Infinity"])
    def test_numbers_must_be_finite(self, monkeypatch, raw):
        # Stricter than Airflow here: an infinite timeout or a NaN interval breaks what reads it.
        monkeypatch.setenv("AIRFLOW__HITL__STORE_CONNECT_TIMEOUT", raw)
        with pytest.raises(ConfigInvalid, match=r"store_connect_timeout: .* is not a finite number"):
            HitlSettings.load()

    def test_a_misspelt_boolean_is_never_a_default(self, monkeypatch):
        monkeypatch.setenv("AIRFLOW__HITL__AUTO_MIGRATE", "Ture")
        with pytest.raises(ConfigInvalid) as err:
            HitlSettings.load()
        assert str(err.value) == (
            "invalid [hitl] auto_migrate: 'Ture' is not a boolean (Airflow reads true/false, t/f or 1/0, in any case)"
        )

    def test_every_bad_option_is_named_at_once(self, monkeypatch):
        monkeypatch.setenv("AIRFLOW__HITL__AUTO_MIGRATE", "Ture")
        monkeypatch.setenv("AIRFLOW__HITL__POOL_SIZE", "five")
        monkeypatch.setenv("AIRFLOW__HITL__NOTIFY_RETRY_BACKOFF", "soon")
        with pytest.raises(ConfigInvalid) as err:
            HitlSettings.load()
        assert err.value.options == ["auto_migrate", "pool_size"]
        with pytest.raises(ConfigInvalid) as err:
            check_options()
        assert err.value.options == ["auto_migrate", "pool_size", "notify_retry_backoff"]

    def test_every_default_reads_as_its_type(self, monkeypatch):
        for name in [k for k in os.environ if k.startswith("AIRFLOW__HITL__")]:
            monkeypatch.delenv(name)
        check_options()
        assert option_value("auto_migrate") is True and option_value("pool_size") == 5

    def test_a_reader_of_another_type_is_a_programming_error(self):
        with pytest.raises(TypeError, match="auto_migrate is declared boolean"):
            conf_getint("auto_migrate")


class TestAMisspeltOptionStopsEachComponent:
    def test_db_check_exits_1_with_one_line_naming_it(self, tmp_path):
        env = _fresh_env(tmp_path, AIRFLOW__HITL__AUTO_MIGRATE="Ture")
        done = _run([AIRFLOW, "hitl", "db", "check"], env)
        assert done.returncode == 1, done.stdout + done.stderr
        named = [line for line in done.stderr.splitlines() if "auto_migrate" in line]
        assert named == [
            "error: invalid [hitl] auto_migrate: 'Ture' is not a boolean (Airflow reads true/false, t/f or 1/0, "
            "in any case)"
        ]

    def test_the_operator_fails_at_parse_time_and_at_run_time(self, monkeypatch):
        from airflow_hitl.manager import ApprovalManager
        from airflow_hitl.operators.approval import ApprovalOperator

        monkeypatch.setenv("AIRFLOW__HITL__AUTO_MIGRATE", "Ture")
        with pytest.raises(ConfigInvalid, match=r"\[hitl\] auto_migrate"):
            ApprovalOperator(task_id="gate", title="Ship it")
        with pytest.raises(ConfigInvalid, match=r"\[hitl\] auto_migrate"):
            ApprovalManager()


def test_nothing_reads_config_at_import_time():
    # Deployments and tests change [hitl] after the package is imported: every read happens at use.
    script = """
import importlib, pkgutil
import airflow_hitl, airflow_hitl.settings as settings
reads = []
original = settings.conf_get
settings.conf_get = lambda key: reads.append(key) or original(key)
for info in pkgutil.walk_packages(airflow_hitl.__path__, "airflow_hitl."):
    if ".migrations.versions" not in info.name and not info.name.endswith("migrations.env"):
        importlib.import_module(info.name)
print("READS", sorted(set(reads)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert "READS []" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
