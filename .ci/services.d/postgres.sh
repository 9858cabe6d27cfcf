#!/usr/bin/env bash
# PostgreSQL with pg_stat_statements preloaded and the slow-query log on, as the
# database tests and `stackwatch db top` expect. Idempotent; restarts the cluster
# only when shared_preload_libraries has to change.
set -euo pipefail
url="${STACKWATCH_TEST_POSTGRES:-postgresql://postgres@127.0.0.1:5432/postgres}"
stackwatch=.venv/bin/stackwatch
"$stackwatch" db setup --database-url "$url"
preload=$(psql "$url" -tAc "SHOW shared_preload_libraries")
if [[ "$preload" != *pg_stat_statements* ]]; then
  echo "restarting PostgreSQL to load pg_stat_statements"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main restart
  for _ in $(seq 60); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  "$stackwatch" db setup --database-url "$url"
fi
