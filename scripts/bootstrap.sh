#!/usr/bin/env bash
# Install what airflow-hitl needs on a fresh Debian machine. Safe to run again: it only
# installs what is missing.
#
#   scripts/bootstrap.sh          everything (make install, make test, CI): a virtualenv with
#                                 Airflow 3, this package and its test, dev and docs extras;
#                                 Debian's Chromium for the UI tests and redis-server for the
#                                 distributed (CeleryExecutor) end-to-end tests; jq and curl.
#   scripts/bootstrap.sh --demo   what `make demo` runs and nothing else: Airflow 3, the standard
#                                 provider (the example DAGs' @task), this package and its own
#                                 dependencies; jq and curl (the README's walkthrough uses them).
#
# Stamps in the virtualenv say what was installed: $VENV/.hitl-installed (everything, holding
# the extras) and $VENV/.hitl-installed-demo. A stamp older than pyproject.toml no longer
# counts. Everything covers the demo; a demo install leaves the rest to the next full run.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=full
case "${1:-}" in
  "") ;;
  --demo) MODE=demo ;;
  *) echo "usage: $0 [--demo]" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
AIRFLOW_SPEC=${AIRFLOW_SPEC:-apache-airflow>=3.1,<4}
EXTRAS=test,dev,docs
full_stamp="$VENV/.hitl-installed"
demo_stamp="$VENV/.hitl-installed-demo"

# A stamp counts while pyproject.toml (the dependencies) is not newer than it.
stamp_current() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/pip --disable-pip-version-check -q"
pip_install() {
  # pipefail: a failed install fails the set-up (the filter only drops pip's noise about a missing index).
  $PIP install "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}

if [ "$MODE" = full ]; then
  # The full stamp also names the extras, so adding one to this script installs it.
  if ! stamp_current "$full_stamp" || [ "$(cat "$full_stamp")" != "$EXTRAS" ]; then
    echo "installing Airflow, airflow-hitl and its $EXTRAS extras into $VENV (a few minutes the first time)"
    pip_install --upgrade pip
    pip_install "$AIRFLOW_SPEC" "apache-airflow-providers-standard" -e ".[$EXTRAS]"
    # Fail loudly if the install did not take.
    "$VENV/bin/python" -c "import airflow, airflow.providers.standard, airflow_hitl, aiosmtpd, playwright, mkdocs"
    echo "$EXTRAS" >"$full_stamp"
  fi
elif ! stamp_current "$full_stamp" && ! stamp_current "$demo_stamp"; then
  echo "installing Airflow and airflow-hitl into $VENV (about a minute the first time)"
  pip_install --upgrade pip
  pip_install "$AIRFLOW_SPEC" "apache-airflow-providers-standard" -e .
  "$VENV/bin/python" -c "import airflow, airflow.providers.standard, airflow_hitl"
  touch "$demo_stamp"
fi

# A Debian package, installed with apt-get when missing (needs root); otherwise a warning.
apt_install() {
  local command=$1 package=$2
  command -v "$command" >/dev/null 2>&1 && return
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "installing Debian's $package"
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null
  else
    echo "warning: $command is missing and cannot be installed here (need root and apt-get)" >&2
  fi
}

# jq and curl: the README's walkthrough (and its test) use them, the demo script uses curl.
apt_install jq jq
apt_install curl curl
[ "$MODE" = demo ] && exit 0

# Debian's Chromium for the browser tests: Playwright must never download its own.
[ "${HITL_SKIP_CHROMIUM:-0}" = "1" ] || apt_install chromium chromium
# Redis for the distributed e2e suite's Celery broker (.ci/run starts it).
[ "${HITL_SKIP_REDIS:-0}" = "1" ] || apt_install redis-server redis-server
