#!/bin/sh
# Refuse to start with missing or example secrets (docker/.env copied unchanged), then exec the command.
# AWS_SECRET_ACCESS_KEY is checked where set (compose: LLAMADUO_S3_SECRET_KEY; an instance role sets none).
for v in "$PREFECT_SERVER_API_AUTH_STRING" "$PREFECT_API_AUTH_STRING" "$POSTGRES_PASSWORD" "$AWS_SECRET_ACCESS_KEY"; do
  case "$v" in
    *change-me*) echo "refusing to start: docker/.env still holds the example value 'change-me'" >&2; exit 1 ;;
  esac
done
if [ -z "$PREFECT_SERVER_API_AUTH_STRING$PREFECT_API_AUTH_STRING" ]; then
  echo "refusing to start: PREFECT_AUTH_STRING is empty" >&2; exit 1
fi
exec "$@"
