# The demo's Airflow configuration: sourced by scripts/demo.sh, and by the README walkthrough
# test (tests/test_readme_walkthrough.py), which runs the README's commands against a stack
# started with exactly these settings. Needs ROOT (the repository); reads:
#   HITL_DEMO_PORT  api-server port (default 8080)
#   HITL_DEMO_HOST  address the api-server listens on (default 127.0.0.1; 0.0.0.0 to share it)
#   AIRFLOW_HOME    default $ROOT/.demo/airflow
# shellcheck shell=bash
HITL_DEMO_PORT=${HITL_DEMO_PORT:-8080}
HITL_DEMO_HOST=${HITL_DEMO_HOST:-127.0.0.1}
export AIRFLOW_HOME=${AIRFLOW_HOME:-$ROOT/.demo/airflow}

_hitl_free_port() {
  # A port nothing listens on now: the log servers must never fail because 8793/8794 are taken.
  "$ROOT/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/dags
export AIRFLOW__CORE__PLUGINS_FOLDER=$AIRFLOW_HOME/plugins # our plugin comes via its entry point
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__PARALLELISM=4
# The example DAGs are ready to run: a triggered run starts at once instead of waiting queued.
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False
export AIRFLOW__CORE__AUTH_MANAGER=airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=${HITL_DEMO_USERS:-admin:admin,alice:op,bob:op,carol:op,viewer:viewer}
export AIRFLOW__API__HOST=$HITL_DEMO_HOST
export AIRFLOW__API__PORT=$HITL_DEMO_PORT
export AIRFLOW__API__BASE_URL=http://localhost:$HITL_DEMO_PORT
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$HITL_DEMO_PORT/execution/
export AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=${HITL_DEMO_WORKER_LOG_PORT:-$(_hitl_free_port)}
export AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=${HITL_DEMO_TRIGGER_LOG_PORT:-$(_hitl_free_port)}
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=5
export AIRFLOW__HITL__BASE_URL=http://localhost:$HITL_DEMO_PORT
