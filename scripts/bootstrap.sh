#!/usr/bin/env bash
# Creates .venv with safehold and its development tools at the exact versions of
# requirements.lock (idempotent; re-installs when pyproject.toml or the lock changes).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then "$python" -m venv .venv; fi
stamp=.venv/.safehold-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' -c requirements.lock
  touch "$stamp"
fi
