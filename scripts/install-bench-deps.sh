#!/usr/bin/env bash
# System packages the benchmarks in bench/ need beyond scripts/install-deps.sh (Debian/Ubuntu).
# Checks for the commands themselves, so any installed version counts; installs only what is
# missing:
#   pgbackrest           the PITR baseline of bench/bench_pitr.py (Debian 12: 2.45)
set -euo pipefail
missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have pgbackrest || missing+=(pgbackrest)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "error: missing system packages: ${missing[*]}" >&2
  echo "hint: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt run (unattended upgrades, a parallel install) instead of failing.
apt_opts=(-o DPkg::Lock::Timeout=600 -qq)
apt-get "${apt_opts[@]}" update
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null
