#!/usr/bin/env bash
# Write the secrets docker-compose.yaml requires into .env beside it, each a fresh random value:
#
#   bash deploy/compose-env.sh        # then: docker compose up --build
#
# An existing .env is never overwritten (the database was initialised with its password); a
# variable missing from it is appended. The file is readable by its owner only. docker compose
# reads .env from the project directory by itself; a variable set in the shell wins over it.
set -euo pipefail
cd "$(dirname "$0")/.."
ENV_FILE=${ENV_FILE:-.env}

# 32 random bytes: hex for values that go into URLs, URL-safe base64 for the Fernet key.
hex() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }
fernet() { head -c 32 /dev/urandom | base64 | tr '+/' '-_'; }

umask 077
touch "$ENV_FILE"
added=()
add() {
  local name=$1 value=$2
  if ! grep -q "^$name=" "$ENV_FILE"; then
    printf '%s=%s\n' "$name" "$value" >>"$ENV_FILE"
    added+=("$name")
  fi
}
add POSTGRES_PASSWORD "$(hex)"
add AIRFLOW_FERNET_KEY "$(fernet)"
add AIRFLOW_JWT_SECRET "$(hex)"
add AIRFLOW_API_SECRET_KEY "$(hex)"
add AIRFLOW_HITL_SIGNING_KEY "$(hex)"
add AIRFLOW_HITL_AUDIT_KEY "$(hex)"
add _AIRFLOW_WWW_USER_PASSWORD "$(hex | head -c 20)"
if [ ${#added[@]} -gt 0 ]; then
  echo "$ENV_FILE: generated ${added[*]}"
else
  echo "$ENV_FILE: every secret is already set; nothing changed"
fi
echo "sign in as airflow with the _AIRFLOW_WWW_USER_PASSWORD of $ENV_FILE"
