#!/bin/sh
# PostgreSQL's first start: three databases, each owned by a role that can reach only it.
# The server connects as mlflow_app (runs, registry, auth), the sweep workers as optuna_app
# (studies); the superuser is kept for administration. Passwords come from the environment.
set -eu
: "${MLFLOW_DB_PASSWORD:?}" "${OPTUNA_DB_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v mlflow_pw="$MLFLOW_DB_PASSWORD" -v optuna_pw="$OPTUNA_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow_app LOGIN PASSWORD :'mlflow_pw';
CREATE ROLE optuna_app LOGIN PASSWORD :'optuna_pw';
CREATE DATABASE mlflow OWNER mlflow_app;
CREATE DATABASE mlflow_auth OWNER mlflow_app;
CREATE DATABASE optuna OWNER optuna_app;
REVOKE ALL ON DATABASE mlflow, mlflow_auth, optuna FROM PUBLIC;
GRANT CONNECT ON DATABASE mlflow, mlflow_auth TO mlflow_app;
GRANT CONNECT ON DATABASE optuna TO optuna_app;
SQL
