#!/usr/bin/env bash
# Installs Prometheus, promtool, Alertmanager and amtool from Debian's packages
# (`prometheus`, `prometheus-alertmanager`) when missing. Idempotent: with the
# tools present it changes nothing. The packages' services are never used: the
# tests start their own processes on loopback ports with their own data dirs,
# and containers without systemd do not start the packaged services.
set -euo pipefail

missing=()
for tool in prometheus promtool; do
  command -v "$tool" >/dev/null 2>&1 || { missing+=(prometheus); break; }
done
for tool in prometheus-alertmanager amtool; do
  command -v "$tool" >/dev/null 2>&1 || { missing+=(prometheus-alertmanager); break; }
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-prometheus: installing ${missing[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  # Keep packaged services from starting where an init system exists.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
fi

for tool in prometheus promtool prometheus-alertmanager amtool; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install-prometheus: $tool is still missing" >&2; exit 1; }
done
echo "install-prometheus: $(promtool --version 2>&1 | head -1); $(amtool --version 2>&1 | head -1)"
