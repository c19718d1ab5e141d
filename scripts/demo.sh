#!/usr/bin/env bash
# Start a working demo: Airflow 3 (api-server, scheduler, triggerer, dag-processor) on
# http://localhost:${HITL_DEMO_PORT:-8080} with airflow-hitl and its example DAGs, on SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
bash scripts/bootstrap.sh

PORT=${HITL_DEMO_PORT:-8080}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$ROOT/.demo/airflow}
mkdir -p "$AIRFLOW_HOME/plugins"
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$AIRFLOW_HOME/plugins  # our plugin comes via its entry point
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__PARALLELISM=4
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=${HITL_DEMO_USERS:-admin:admin,alice:op,bob:op,carol:op,viewer:viewer}
export AIRFLOW__API__PORT=$PORT
export AIRFLOW__API__BASE_URL=http://localhost:$PORT
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://localhost:$PORT/execution/
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
export AIRFLOW__HITL__BASE_URL=http://localhost:$PORT
AIRFLOW="$ROOT/.venv/bin/airflow"

echo "migrating Airflow's metadata DB and the approval store under $AIRFLOW_HOME"
"$AIRFLOW" db migrate >/dev/null
"$AIRFLOW" hitl db migrate

echo
echo "airflow-hitl demo: http://localhost:$PORT  (Ctrl-C stops everything)"
echo "users and passwords ($AIRFLOW_HOME/simple_auth_manager_passwords.json.generated):"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
for component in api-server scheduler triggerer dag-processor; do
  setsid "$AIRFLOW" "$component" >"$AIRFLOW_HOME/$component.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 120); do
  if [ -f "$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated" ] && \
     curl -fs "http://localhost:$PORT/api/v2/monitor/health" >/dev/null 2>&1; then break; fi
  sleep 1
done
"$ROOT/.venv/bin/python" -c "import json,sys; [print(f'  {u}: {p}') for u,p in json.load(open(sys.argv[1])).items()]" \
  "$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
echo "logs: $AIRFLOW_HOME/*.log.  Trigger hitl_model_release, hitl_quorum or hitl_escalation to see a gate."
wait
