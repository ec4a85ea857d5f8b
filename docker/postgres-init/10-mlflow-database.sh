#!/bin/sh
# First start of the postgres container only: MLflow gets its own database (its tables clash with Dagster's).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE \"${MLFLOW_POSTGRES_DB:-mlflow}\" OWNER \"$POSTGRES_USER\""
