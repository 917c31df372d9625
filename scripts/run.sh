#!/usr/bin/env bash
# Set up and run alarmrelay on its embedded defaults. Extra arguments go to `alarmrelay serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if .venv/bin/alarmrelay --help | grep -q ' serve'; then
  exec .venv/bin/alarmrelay serve "$@"
fi
# Until the service exists: decode a captured sample frame.
exec .venv/bin/alarmrelay frame decode '"ADM-CID"' 2>/dev/null || true
