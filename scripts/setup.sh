#!/usr/bin/env bash
# Create .venv and install alarmrelay with its test tools. Re-runs are cheap: the install only
# happens again when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=.venv/.alarmrelay-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
  if ! .venv/bin/python -m pip install --quiet -e '.[test]' >.venv/install.log 2>&1; then
    cat .venv/install.log >&2; echo 'setup: pip install failed' >&2; exit 1
  fi
  echo "$want" > "$stamp"
fi
