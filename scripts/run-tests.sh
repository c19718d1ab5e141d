#!/usr/bin/env bash
# Run the whole test suite as three pytest processes side by side, then print each one's report.
#
#   unit: every test not marked e2e (stores on SQLite and PostgreSQL, API, CLI, operators, ...)
#   e2e:  the real-Airflow suites of tests/e2e (and any other e2e test outside the UI's)
#   ui:   the Playwright pages (tests/ui) and the README walkthrough
#
# The three together are every test exactly once. Most of an e2e test's time is spent waiting
# for Airflow's loops, so on two cores the three finish in a little over the time of the longest.
# Extra arguments go to every pytest (e.g. -x, -k). Exits non-zero if any part failed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
logs=$(mktemp -d "${TMPDIR:-/tmp}/hitl-tests.XXXXXX")
parts=(unit e2e ui)
declare -A args=(
  [unit]='tests -m "not e2e"'
  [e2e]='tests -m e2e --ignore=tests/ui --ignore=tests/test_readme_walkthrough.py'
  [ui]='tests/ui tests/test_readme_walkthrough.py -m e2e'
)
started=$(date +%s)
for part in "${parts[@]}"; do
  (
    eval "set -- ${args[$part]} \"\$@\""
    # no:cacheprovider: three processes must not write one .pytest_cache at once.
    "$PY" -m pytest -q -p no:cacheprovider "$@" >"$logs/$part.log" 2>&1
    echo $? >"$logs/$part.rc"
    echo "[$part] finished after $(($(date +%s) - started)) s with exit code $(cat "$logs/$part.rc")"
  ) &
done
wait
status=0
for part in "${parts[@]}"; do
  echo
  echo "=============================== $part: ${args[$part]}"
  cat "$logs/$part.log"
  rc=$(cat "$logs/$part.rc" 2>/dev/null || echo 1)
  # 5: no test collected, which is only fine for a filtered run (-k) that left a part empty.
  if [ "$rc" != 0 ] && ! { [ "$rc" = 5 ] && [ $# -gt 0 ]; }; then status=1; fi
done
echo
echo "all parts done in $(($(date +%s) - started)) s; exit $status"
rm -rf "$logs"
exit $status
