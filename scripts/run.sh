#!/usr/bin/env bash
# Set up and run alarmrelay on its embedded defaults (embedded PostgreSQL under ./var, DC-09 on
# 127.0.0.1:10009 TCP+UDP, HTTP on 127.0.0.1:8080). Extra arguments go to `alarmrelay serve`.
# MQTT ingest connects to 127.0.0.1:1883 when a broker runs there and keeps retrying otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/alarmrelay serve "$@"
