#!/usr/bin/env bash
# Install everything airflow-hitl needs on a fresh Debian machine: a virtualenv with
# Airflow 3, this package and its test tools, Debian's Chromium for the UI tests and
# Debian's redis-server for the distributed (CeleryExecutor) end-to-end tests.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
AIRFLOW_SPEC=${AIRFLOW_SPEC:-apache-airflow>=3.1,<4}

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/pip --disable-pip-version-check -q"
stamp="$VENV/.hitl-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing Airflow and airflow-hitl into $VENV (about a minute the first time)"
  # pipefail: a failed install fails the set-up (the filter only drops pip's noise about a missing index).
  $PIP install --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
  $PIP install "$AIRFLOW_SPEC" "apache-airflow-providers-standard" -e ".[test,dev]" 2>&1 | { grep -v "^WARNING: Location" || true; }
  "$VENV/bin/python" -c "import airflow, airflow_hitl, aiosmtpd, playwright" # fail loudly if the install did not take
  touch "$stamp"
fi

# jq and curl: the README's walkthrough (and its test) use them.
for tool in jq curl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
      echo "installing Debian's $tool"
      apt-get update -qq >/dev/null 2>&1 || true
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    else
      echo "warning: $tool is missing and cannot be installed here (need root and apt-get)" >&2
    fi
  fi
done

# Debian's Chromium for the browser tests: Playwright must never download its own.
if [ "${HITL_SKIP_CHROMIUM:-0}" != "1" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "installing Debian's chromium"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: chromium is missing and cannot be installed here (need root and apt-get)" >&2
  fi
fi

# Redis for the distributed e2e suite's Celery broker (.ci/run starts it).
if [ "${HITL_SKIP_REDIS:-0}" != "1" ] && ! command -v redis-server >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "installing Debian's redis-server"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "warning: redis-server is missing and cannot be installed here (need root and apt-get)" >&2
  fi
fi
