"""Provider metadata (:mod:`airflow_hitl.get_provider_info`) as Airflow's providers manager reads it.

It must validate against Airflow's own schema, name this distribution and its version, and
every module, class and function it names must import. That its ``[hitl]`` options match
:data:`airflow_hitl.settings.OPTIONS` is checked in ``test_settings.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import airflow
import jsonschema
import pytest

from airflow_hitl import __version__
from airflow_hitl.cli.definition import get_hitl_cli_commands
from airflow_hitl.get_provider_info import get_provider_info
from airflow_hitl.plugins.hitl_plugin import HitlPlugin

DISTRIBUTION = "airflow-hitl"


@pytest.fixture(scope="module")
def info() -> dict[str, Any]:
    """The provider info, as Airflow gets it."""
    return get_provider_info()


def import_string(path: str) -> Any:
    """The object at dotted ``path`` (``package.module.name``), imported."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _entry_point(group: str) -> metadata.EntryPoint:
    [entry] = [e for e in metadata.entry_points(group=group) if e.dist and e.dist.name == DISTRIBUTION]
    return entry


def test_it_validates_against_airflows_provider_schema(info: dict[str, Any]) -> None:
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)


def test_the_schema_check_catches_a_broken_entry(info: dict[str, Any]) -> None:
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**info, "operators": [{"python-modules": "not a list"}]}, schema)


def test_it_names_this_distribution_and_its_version(info: dict[str, Any]) -> None:
    assert info["package-name"] == DISTRIBUTION == metadata.distribution(DISTRIBUTION).metadata["Name"]
    assert info["versions"][0] == __version__ == metadata.version(DISTRIBUTION)


def test_the_entry_point_airflow_reads_is_this_function() -> None:
    assert _entry_point("apache_airflow_provider").load() is get_provider_info


def test_every_module_it_lists_imports(info: dict[str, Any]) -> None:
    modules = [m for section in ("operators", "triggers") for entry in info[section] for m in entry["python-modules"]]
    assert modules == ["airflow_hitl.operators.approval", "airflow_hitl.triggers.approval"]
    for module in modules:
        assert importlib.import_module(module).__name__ == module


def test_the_cli_it_names_is_ours_and_the_plugin_comes_from_its_entry_point(info: dict[str, Any]) -> None:
    assert [import_string(path) for path in info["cli"]] == [get_hitl_cli_commands]
    assert "plugins" not in info
    assert _entry_point("airflow.plugins").load() is HitlPlugin


@pytest.mark.parametrize("lazy", ["True", "False"], ids=["lazy-providers", "eager-providers"])
def test_airflow_loads_the_plugin_once_without_an_import_error(lazy: str) -> None:
    # A fresh interpreter: the providers manager is a process-wide singleton that caches.
    code = (
        "import json\n"
        "from airflow import plugins_manager\n"
        "plugins, errors = plugins_manager._get_plugins()\n"
        "print(json.dumps({'names': [p.name for p in plugins], 'errors': errors}))\n"
    )
    env = {**os.environ, "AIRFLOW__CORE__LAZY_DISCOVER_PROVIDERS": lazy}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["names"].count(HitlPlugin.name) == 1
    assert loaded["errors"] == {}


def test_every_integration_named_by_a_module_is_declared(info: dict[str, Any]) -> None:
    declared = {i["integration-name"] for i in info["integrations"]}
    used = {entry["integration-name"] for section in ("operators", "triggers") for entry in info[section]}
    assert used <= declared


def test_airflows_providers_manager_knows_it() -> None:
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert manager.providers[DISTRIBUTION].version == __version__
    assert get_hitl_cli_commands in manager.cli_command_functions


def test_airflow_knows_our_secrets_as_sensitive(info: dict[str, Any]) -> None:
    # What makes Airflow mask them and read their _CMD/_SECRET (shown end to end in test_settings.py).
    from airflow.configuration import conf

    declared = {name for name, doc in info["config"]["hitl"]["options"].items() if doc["sensitive"]}
    assert declared == {"signing_key", "slack_signing_secret", "audit_key", "evidence_signing_key"}
    known = {key for section, key in conf.sensitive_config_values if section == "hitl"}
    assert known == declared
