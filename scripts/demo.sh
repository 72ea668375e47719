#!/usr/bin/env bash
# safehold's main job on an embedded default: a sandbox PostgreSQL with sample data is started,
# backed up, listed, restored side by side and compared. Nothing needs to be configured.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/install-deps.sh
./scripts/bootstrap.sh
exec .venv/bin/safehold demo "$@"
