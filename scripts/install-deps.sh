#!/usr/bin/env bash
# System packages safehold and its test suite need (Debian/Ubuntu). Checks for the commands
# themselves, so any installed PostgreSQL version counts; installs only what is missing.
set -euo pipefail
missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have pg_dump && have pg_restore || missing+=(postgresql-client)
have initdb || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
have zstd || missing+=(zstd)
have file || missing+=(file)
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
