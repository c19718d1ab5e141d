#!/usr/bin/env bash
# Start a working demo: Airflow 3 (api-server, scheduler, triggerer, dag-processor) on
# http://localhost:${HITL_DEMO_PORT:-8080} with airflow-hitl and the DAGs of dags/, on SQLite.
# Installs only what the demo runs (scripts/bootstrap.sh --demo: no test tools, no browser).
# Listens on 127.0.0.1 only (SimpleAuthManager, generated passwords); HITL_DEMO_HOST=0.0.0.0
# shares it. Ctrl-C or a TERM (to this script, or to the `make demo` running it) stops every
# process it started within about 10 s, then exits 0. tests/test_demo.py checks both.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
bash scripts/bootstrap.sh --demo

# shellcheck source=scripts/demo-env.sh
source scripts/demo-env.sh
PORT=$HITL_DEMO_PORT
URL=http://localhost:$PORT
mkdir -p "$AIRFLOW_HOME/plugins"
PY="$ROOT/.venv/bin/python"
AIRFLOW="$ROOT/.venv/bin/airflow"

# How the banner writes paths: relative to the repository when they are in it (the README's
# commands are run from there), else absolute.
shown() { case "$1" in "$ROOT"/*) echo "${1#"$ROOT"/}" ;; *) echo "$1" ;; esac; }

# Signed evidence (/hitl/api/v1/approvals/ID/evidence): a key of this demo home, made once and
# kept, so evidence fetched in an earlier run keeps verifying. Airflow reads it through the
# option's _CMD variant (the option is sensitive), so the key is in no process's environment.
EVIDENCE_KEY=$AIRFLOW_HOME/hitl-evidence-key.pem
if [ ! -s "$EVIDENCE_KEY" ]; then
  echo "generating the evidence signing key $(shown "$EVIDENCE_KEY")"
  (umask 077 && "$ROOT/.venv/bin/airflow-hitl" evidence keygen >"$EVIDENCE_KEY.new" 2>/dev/null &&
    mv "$EVIDENCE_KEY.new" "$EVIDENCE_KEY")
fi
AIRFLOW__HITL__EVIDENCE_SIGNING_KEY_CMD="cat $(printf '%q' "$EVIDENCE_KEY")"
export AIRFLOW__HITL__EVIDENCE_SIGNING_KEY_CMD
PASSWORDS=$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated

# One line for both migrations: Airflow's are silent here, and the store's own log line
# ("approval store migrated ...", INFO) would repeat what its command prints.
"$AIRFLOW" db migrate >/dev/null
AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING "$AIRFLOW" hitl db migrate

# Every component runs in a session of its own (setsid: its pid is the session id). Stopping
# signals every process of those sessions, not only their process groups: Airflow puts task
# runners and parsers in process groups of their own, which a group signal would miss.
sessions=()
# signal_sessions SIGNAL: send SIGNAL (TERM, KILL, or 0 to only look) to every live process of
# the components' sessions; prints how many there were.
signal_sessions() {
  "$PY" - "$1" "${sessions[@]}" <<'PY'
import os, signal, sys

number = 0 if sys.argv[1] == "0" else int(getattr(signal, "SIG" + sys.argv[1]))
sessions = {int(sid) for sid in sys.argv[2:]}
count = 0
for name in os.listdir("/proc"):
    if not name.isdigit():
        continue
    pid = int(name)
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        if fields[0] != "Z" and (int(fields[3]) in sessions or int(fields[2]) in sessions):
            count += 1
            os.kill(pid, number)
    except (OSError, IndexError, ValueError):
        pass  # gone meanwhile
print(count)
PY
}
stopping=0
stop() {
  [ "$stopping" = 1 ] && return
  stopping=1
  # A second Ctrl-C (or TERM) must not cut the stop short and leave components running.
  trap '' INT TERM
  echo
  echo "stopping the demo"
  if [ ${#sessions[@]} -gt 0 ]; then
    signal_sessions TERM >/dev/null
    local left=1
    for _ in $(seq 1 20); do
      left=$(signal_sessions 0)
      [ "$left" = 0 ] && break
      sleep 0.5
    done
    if [ "$left" != 0 ]; then
      echo "killing $left process(es) still running 10 s after TERM"
      signal_sessions KILL >/dev/null
    fi
  fi
  wait 2>/dev/null || true
  echo "demo stopped"
}
# Ctrl-C (INT) and kill (TERM) are how a demo ends: stop everything and report success. `make`
# passes a TERM on to this script; on Ctrl-C the terminal sends INT to both.
trap 'stop; exit 0' INT TERM
trap stop EXIT
for component in api-server scheduler triggerer dag-processor; do
  setsid "$AIRFLOW" "$component" >"$AIRFLOW_HOME/$component.log" 2>&1 </dev/null &
  sessions+=($!)
done

echo "starting Airflow on $URL (listening on $HITL_DEMO_HOST)"
up=0
for _ in $(seq 1 180); do
  if [ -f "$PASSWORDS" ] && curl -fs "$URL/api/v2/monitor/health" >/dev/null 2>&1; then up=1 && break; fi
  sleep 1
done
if [ "$up" != 1 ]; then
  echo "error: the api-server did not answer on $URL within 180 s; see $(shown "$AIRFLOW_HOME")/api-server.log" >&2
  exit 1
fi

# A demo home kept from an earlier run may hold the example DAGs paused: unpause them once parsed.
token=$(curl -fs -X POST "$URL/auth/token" -H 'content-type: application/json' \
  -d "$("$PY" -c 'import json,sys; print(json.dumps({"username": "admin", "password": json.load(open(sys.argv[1]))["admin"]}))' "$PASSWORDS")" \
  | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
for dag in $(sed -n 's/^ *dag_id="\([^"]*\)".*/\1/p' dags/*.py); do
  for _ in $(seq 1 120); do
    if curl -fs -X PATCH "$URL/api/v2/dags/$dag" -H "Authorization: Bearer $token" \
      -H 'content-type: application/json' -d '{"is_paused": false}' >/dev/null 2>&1; then break; fi
    sleep 1
  done
done

HOME_SHOWN=$(shown "$AIRFLOW_HOME")
case "$HOME_SHOWN" in /*) ;; *) HOME_SHOWN="\$PWD/$HOME_SHOWN" ;; esac
echo
echo "airflow-hitl demo: $URL  (Ctrl-C stops everything)"
echo "DAGs: $(shown "$AIRFLOW__CORE__DAGS_FOLDER")/ (AIRFLOW__CORE__DAGS_FOLDER): a DAG file saved there is parsed within about 5 s"
echo "users, roles and passwords ($(shown "$PASSWORDS")):"
"$PY" - "$PASSWORDS" "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS" <<'PY'
import json, sys
roles = dict(pair.split(":", 1) for pair in sys.argv[2].split(","))
for user, password in json.load(open(sys.argv[1])).items():
    print(f"  {user:<8} {roles.get(user, ''):<7} {password}")
PY
echo "logs: $(shown "$AIRFLOW_HOME")/*.log.  The README's \"Try it\" walks through a release approval step by step."
echo "the CLI, from the repository, with no virtualenv to activate:"
echo "  AIRFLOW_HOME=$HOME_SHOWN .venv/bin/airflow hitl approvals list"
echo "  AIRFLOW_HOME=$HOME_SHOWN .venv/bin/airflow hitl approvals approve ID --api-url $URL --username alice"
echo "  .venv/bin/airflow hitl evidence verify FILE --jwks-url $URL/hitl/api/v1/evidence/jwks.json"
wait
