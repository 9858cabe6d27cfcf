#!/usr/bin/env bash
# Installs and prepares what the tests need beyond PostgreSQL, Redis and RabbitMQ
# (which the machine runs already). Idempotent: a second run changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-prometheus.sh
if ! command -v wrk >/dev/null 2>&1; then
  echo "installing wrk (HTTP benchmark load generator) from Debian's packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
fi
for extra in .ci/services.d/*.sh; do
  [ -e "$extra" ] && bash "$extra"
done
exit 0
