#!/usr/bin/env bash
# System packages the benchmarks in bench/ need beyond scripts/install-deps.sh (Debian/Ubuntu).
# Checks for the commands themselves, so any installed version counts; installs only what is
# missing:
#   pgbackrest           the PITR baseline of bench/bench_pitr.py (Debian 12: 2.45)
#   docker-compose       the 'down' baseline of bench/bench_container_stops.py (Debian 12: 1.29)
set -euo pipefail
missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have pgbackrest || missing+=(pgbackrest)
have docker-compose || missing+=(docker-compose)
# shellcheck source=scripts/_apt-install.sh
. "$(dirname "$0")/_apt-install.sh"
apt_install_missing "${missing[@]}"
