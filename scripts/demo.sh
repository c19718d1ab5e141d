#!/usr/bin/env bash
# Start a working demo: Airflow 3 (api-server, scheduler, triggerer, dag-processor) on
# http://localhost:${HITL_DEMO_PORT:-8080} with airflow-hitl and its example DAGs, on SQLite.
# Listens on 127.0.0.1 only (SimpleAuthManager, generated passwords); HITL_DEMO_HOST=0.0.0.0
# shares it. Ctrl-C stops every process it started and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
bash scripts/bootstrap.sh

# shellcheck source=scripts/demo-env.sh
source scripts/demo-env.sh
PORT=$HITL_DEMO_PORT
URL=http://localhost:$PORT
mkdir -p "$AIRFLOW_HOME/plugins"
AIRFLOW="$ROOT/.venv/bin/airflow"

# Signed evidence (/hitl/api/v1/approvals/ID/evidence): a key of this demo home, made once and
# kept, so evidence fetched in an earlier run keeps verifying. Airflow reads it through the
# option's _CMD variant (the option is sensitive), so the key is in no process's environment.
EVIDENCE_KEY=$AIRFLOW_HOME/hitl-evidence-key.pem
if [ ! -s "$EVIDENCE_KEY" ]; then
  echo "generating the evidence signing key $EVIDENCE_KEY"
  (umask 077 && "$ROOT/.venv/bin/airflow-hitl" evidence keygen >"$EVIDENCE_KEY.new" && mv "$EVIDENCE_KEY.new" "$EVIDENCE_KEY")
fi
AIRFLOW__HITL__EVIDENCE_SIGNING_KEY_CMD="cat $(printf '%q' "$EVIDENCE_KEY")"
export AIRFLOW__HITL__EVIDENCE_SIGNING_KEY_CMD
PASSWORDS=$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated

echo "migrating Airflow's metadata DB and the approval store under $AIRFLOW_HOME"
"$AIRFLOW" db migrate >/dev/null
"$AIRFLOW" hitl db migrate

pids=()
stopping=0
stop() {
  [ "$stopping" = 1 ] && return
  stopping=1
  echo
  echo "stopping the demo"
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
# Ctrl-C (INT) and kill (TERM) are how a demo ends: stop everything and report success.
trap 'stop; exit 0' INT TERM
trap stop EXIT
for component in api-server scheduler triggerer dag-processor; do
  setsid "$AIRFLOW" "$component" >"$AIRFLOW_HOME/$component.log" 2>&1 &
  pids+=($!)
done

echo "starting Airflow on $URL (listening on $HITL_DEMO_HOST)"
for _ in $(seq 1 180); do
  if [ -f "$PASSWORDS" ] && curl -fs "$URL/api/v2/monitor/health" >/dev/null 2>&1; then break; fi
  sleep 1
done

# A demo home kept from an earlier run may hold the example DAGs paused: unpause them once parsed.
token=$(curl -fs -X POST "$URL/auth/token" -H 'content-type: application/json' \
  -d "$("$ROOT/.venv/bin/python" -c 'import json,sys; print(json.dumps({"username": "admin", "password": json.load(open(sys.argv[1]))["admin"]}))' "$PASSWORDS")" \
  | "$ROOT/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
for dag in $(sed -n 's/^ *dag_id="\([^"]*\)".*/\1/p' dags/*.py); do
  for _ in $(seq 1 120); do
    if curl -fs -X PATCH "$URL/api/v2/dags/$dag" -H "Authorization: Bearer $token" \
      -H 'content-type: application/json' -d '{"is_paused": false}' >/dev/null 2>&1; then break; fi
    sleep 1
  done
done

echo
echo "airflow-hitl demo: $URL  (Ctrl-C stops everything)"
echo "users, roles and passwords ($PASSWORDS):"
"$ROOT/.venv/bin/python" - "$PASSWORDS" "$AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS" <<'PY'
import json, sys
roles = dict(pair.split(":", 1) for pair in sys.argv[2].split(","))
for user, password in json.load(open(sys.argv[1])).items():
    print(f"  {user:<8} {roles.get(user, ''):<7} {password}")
PY
echo "logs: $AIRFLOW_HOME/*.log.  The README's \"Try it\" walks through a release approval step by step."
echo "evidence: signed with $EVIDENCE_KEY; verify with"
echo "  airflow hitl evidence verify FILE --jwks-url $URL/hitl/api/v1/evidence/jwks.json"
wait
