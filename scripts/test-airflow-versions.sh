#!/usr/bin/env bash
# Run the seam's contract tests (tests/seam: the Airflow internals airflow-hitl relies on), then
# the end-to-end gate and REST API suites, on the oldest Airflow minors airflow-hitl supports
# (apache-airflow>=3.1,<4): the newest 3.1.x and 3.2.x, each in its own virtualenv
# (.venv-af31, .venv-af32; gitignored, reused while the pinned version stays the same).
#
#   scripts/test-airflow-versions.sh            # both versions
#   scripts/test-airflow-versions.sh 3.2        # one
#   scripts/test-airflow-versions.sh -- -k quorum   # arguments after -- go to pytest
#   HITL_COMPAT_SETUP_ONLY=1 scripts/...        # only create the virtualenvs
#
# Per-version pins (why they are here is in README "Airflow versions"):
#   3.2: fastapi<0.156.1 (Airflow 3.2's own api-server does not start with newer FastAPI).
set -euo pipefail
cd "$(dirname "$0")/.."

# The interpreter .venv was made from (the one bootstrap.sh chose), else python3.
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && .venv/bin/python -c 'import sys; print(sys._base_executable)' || echo python3)}
declare -A SPECS=(
  [3.1]="apache-airflow==3.1.8"
  [3.2]="apache-airflow==3.2.2 fastapi<0.156.1"
)
versions=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do versions+=("$1"); shift; done
[ $# -gt 0 ] && shift
pytest_args=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.1 3.2)

setup_venv() {
  local minor=$1 venv=".venv-af${1/./}" spec=${SPECS[$1]}
  local stamp="$venv/.hitl-installed"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$spec" ] && [ ! pyproject.toml -nt "$stamp" ]; then
    return
  fi
  echo "== creating $venv with $spec"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  # shellcheck disable=SC2086  # the spec is a list of requirements
  "$venv/bin/pip" install --disable-pip-version-check -q $spec apache-airflow-providers-standard \
    -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" - "$minor" <<'PY'
import sys
import airflow, airflow_hitl  # noqa: F401  (fail loudly when the install did not take)
assert airflow.__version__.startswith(sys.argv[1] + "."), f"expected Airflow {sys.argv[1]}, got {airflow.__version__}"
print("installed Airflow", airflow.__version__)
PY
  echo "$spec" >"$stamp"
}

status=0
for minor in "${versions[@]}"; do
  [ -n "${SPECS[$minor]:-}" ] || { echo "unknown version $minor (known: ${!SPECS[*]})" >&2; exit 2; }
  setup_venv "$minor"
  [ "${HITL_COMPAT_SETUP_ONLY:-0}" = "1" ] && continue
  venv=".venv-af${minor/./}"
  airflow_version=$("$venv/bin/python" -c 'import airflow; print("Airflow", airflow.__version__)')
  # The contract tests first, in a process of their own (their in-process metadata DB is not
  # the e2e stack's): seconds, and a failure names the internal that changed.
  # One Airflow stack per version serves both e2e files (the e2e fixture is session-scoped).
  for suite in "tests/seam" "tests/e2e/test_gates.py tests/e2e/test_api_e2e.py"; do
    echo "== $suite on $airflow_version"
    rc=0
    # shellcheck disable=SC2086  # the suite is a list of paths
    "$venv/bin/python" -m pytest $suite -q -p no:cacheprovider "${pytest_args[@]}" || rc=$?
    # 5: no test collected, which is only fine for a filtered run (-k) that selected none here.
    if [ "$rc" != 0 ] && ! { [ "$rc" = 5 ] && [ ${#pytest_args[@]} -gt 0 ]; }; then status=1; fi
  done
done
exit $status
