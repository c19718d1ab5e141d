"""The ``[hitl]`` options: one declaration, and everything that reads or documents them agrees with it."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_hitl.get_provider_info import get_provider_info
from airflow_hitl.notifications.config import NotifySettings
from airflow_hitl.settings import OPTIONS, SECTION, HitlSettings, conf_get, option

PACKAGE = Path(__file__).resolve().parents[1] / "airflow_hitl"
README = Path(__file__).resolve().parents[1] / "README.md"


def _conf_get_keys() -> set[str]:
    """Every literal option name passed to ``conf_get`` anywhere in the package."""
    keys: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "conf_get"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                keys.add(node.args[0].value)
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

    def test_every_option_is_in_the_readme(self):
        text = README.read_text()
        missing = [o.name for o in OPTIONS if f"`{o.name}`" not in text]
        assert not missing, f"options not documented in README.md: {missing}"


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
