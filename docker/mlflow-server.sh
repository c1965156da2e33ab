#!/bin/sh
# The MLflow tracking server of a stx team deployment: PostgreSQL backend, proxied S3
# artifacts (clients need no S3 credentials), basic auth. The one definition of its
# settings: docker-compose.yml runs this script, and tests/deploy runs it natively.
#
# Required environment:
#   MLFLOW_BACKEND_STORE_URI      postgresql+psycopg://USER:PASSWORD@HOST:5432/mlflow (read by
#                                 mlflow from the environment: never on a command line, so
#                                 never visible in `ps`)
#   MLFLOW_AUTH_DB_URI            postgresql+psycopg://USER:PASSWORD@HOST:5432/mlflow_auth
#   MLFLOW_ARTIFACTS_DESTINATION  s3://BUCKET/PREFIX (read from the environment too)
#   MLFLOW_ADMIN_USER, MLFLOW_ADMIN_PASSWORD   the auth app's admin (from an env file)
#   MLFLOW_FLASK_SERVER_SECRET_KEY              CSRF key of the auth app (same on every replica)
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY    object-store credentials (server side only)
# Optional:
#   MLFLOW_S3_ENDPOINT_URL    MinIO or another S3
#   MLFLOW_HOST (0.0.0.0), MLFLOW_PORT (5000), MLFLOW_WORKERS (2)
#   MLFLOW_ALLOWED_HOSTS      Host headers the server accepts (DNS-rebinding protection):
#                             add the names clients use, e.g. "mlflow-host,mlflow-host:5000"
#   MLFLOW_DEFAULT_PERMISSION what every user may do on resources nobody granted them:
#                             READ (default), EDIT, MANAGE or NO_PERMISSIONS (docs/deploy.md)
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?}" "${MLFLOW_AUTH_DB_URI:?}" "${MLFLOW_ARTIFACTS_DESTINATION:?}"
: "${MLFLOW_ADMIN_USER:?}" "${MLFLOW_ADMIN_PASSWORD:?}" "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}"

# refuse the placeholders of env.example: a server reachable by a team must not run on them
for name in MLFLOW_BACKEND_STORE_URI MLFLOW_AUTH_DB_URI MLFLOW_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY \
            AWS_SECRET_ACCESS_KEY; do
  eval "value=\${$name:-}"
  case "$value" in
    *change-me*) echo "mlflow-server.sh: $name still holds a change-me placeholder from env.example; set a real secret" >&2
                 exit 2 ;;
  esac
done
permission="${MLFLOW_DEFAULT_PERMISSION:-READ}"
case "$permission" in
  READ|EDIT|MANAGE|NO_PERMISSIONS) ;;
  *) echo "mlflow-server.sh: MLFLOW_DEFAULT_PERMISSION must be READ, EDIT, MANAGE or NO_PERMISSIONS (got $permission)" >&2
     exit 2 ;;
esac

auth_ini="${MLFLOW_AUTH_CONFIG_PATH:-${TMPDIR:-/tmp}/mlflow-auth-$$.ini}"
umask 077
cat > "$auth_ini" <<INI
[mlflow]
default_permission = ${permission}
database_uri = ${MLFLOW_AUTH_DB_URI}
admin_username = ${MLFLOW_ADMIN_USER}
admin_password = ${MLFLOW_ADMIN_PASSWORD}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$auth_ini" MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION
exec mlflow server \
  --app-name basic-auth \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-0.0.0.0}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-2}" \
  --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-localhost,127.0.0.1,mlflow,mlflow:5000,localhost:5000,127.0.0.1:5000}"
