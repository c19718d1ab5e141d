#!/usr/bin/env bash
# Run the whole test suite as lanes of pytest side by side, then print each lane's report.
#
#   unit: every test neither e2e nor slow outside tests/api and tests/cli (the stores on SQLite
#         and PostgreSQL, the manager, operators, triggers, notifications, ...)
#   api:  the same for tests/api and tests/cli (the REST API through Airflow's app, the CLI): two
#         processes, so that the unit tests use both cores once the stacks' lanes are done
#   e2e:  the real-Airflow suites of tests/e2e (and any other e2e test outside the UI's), but for
#   stacks: the suites that start stacks of their own on both stores (standing approvals with two
#         api-servers, every triggerer stopped, parked gates) and the CeleryExecutor one (two
#         api-servers, two triggerers): mostly waiting, so a lane of their own
#   ui:   the Playwright pages (tests/ui) and the README walkthrough, then the slow tests that
#         are not e2e (`airflow dags test` runs, the 50-thread race, the OpenAPI fuzz, the CLI)
#   compat: the end-to-end gate and REST API suites again on the newest Airflow 3.1.x and 3.2.x,
#         each in its own virtualenv (scripts/test-airflow-versions.sh); HITL_COMPAT=0 leaves it out
#
# Together the first five lanes run every test exactly once. Most of an e2e test's time is spent waiting
# for Airflow's loops, so on two cores the lanes finish in a little over the longest one.
# Extra arguments go to every pytest (e.g. -x, -k). Exits non-zero if any lane failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
extra=("$@")
logs=$(mktemp -d "${TMPDIR:-/tmp}/hitl-tests.XXXXXX")
lanes=(unit api e2e stacks ui)
[ "${HITL_COMPAT:-1}" = 0 ] || lanes+=(compat)
# A lane is one or more pytest argument lists, separated by "|", run one after the other;
# one that starts with "script " is a script run with the extra arguments after "--".
# The suites of the stacks lane (each starts Airflow stacks of its own).
STACKS=(tests/e2e/test_standing_e2e.py tests/e2e/test_triggerer_stopped_e2e.py tests/e2e/test_parking_e2e.py
  tests/e2e/test_distributed.py)
declare -A args=(
  [unit]='tests -m "not e2e and not slow" --ignore=tests/api --ignore=tests/cli'
  [api]='tests/api tests/cli -m "not e2e and not slow"'
  [e2e]="tests -m e2e --ignore=tests/ui --ignore=tests/test_readme_walkthrough.py ${STACKS[*]/#/--ignore=}"
  [stacks]="${STACKS[*]} -m e2e"
  [ui]='tests/ui tests/test_readme_walkthrough.py -m e2e | tests -m "slow and not e2e"'
  [compat]='script scripts/test-airflow-versions.sh'
)
started=$(date +%s)
for lane in "${lanes[@]}"; do
  (
    status=0
    IFS='|' read -ra runs <<<"${args[$lane]}"
    for run in "${runs[@]}"; do
      # no:cacheprovider: the lanes must not write one .pytest_cache at once. --durations: each
      # lane's report names its slowest tests, where the run's time goes (the lanes share two cores).
      eval "set -- $run"
      if [ "$1" = script ]; then
        echo "----- $run -- ${extra[*]}" >>"$logs/$lane.log"
        bash "$2" -- "${extra[@]}" >>"$logs/$lane.log" 2>&1
      else
        echo "----- pytest $run ${extra[*]}" >>"$logs/$lane.log"
        "$PY" -m pytest -q -p no:cacheprovider --durations=10 "$@" "${extra[@]}" >>"$logs/$lane.log" 2>&1
      fi
      rc=$?
      # 5: no test collected, which is only fine for a filtered run (-k) that left a lane empty.
      if [ "$rc" != 0 ] && ! { [ "$rc" = 5 ] && [ ${#extra[@]} -gt 0 ]; }; then status=1; fi
    done
    echo $status >"$logs/$lane.rc"
    echo "[$lane] finished after $(($(date +%s) - started)) s with exit code $status"
  ) &
done
wait
status=0
for lane in "${lanes[@]}"; do
  echo
  echo "=============================== $lane: ${args[$lane]}"
  cat "$logs/$lane.log"
  [ "$(cat "$logs/$lane.rc" 2>/dev/null || echo 1)" = 0 ] || status=1
done
echo
echo "all lanes done in $(($(date +%s) - started)) s; exit $status"
rm -rf "$logs"
exit $status
