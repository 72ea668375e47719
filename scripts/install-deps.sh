#!/usr/bin/env bash
# System packages safehold and its test suite need (Debian/Ubuntu). Checks for the commands
# themselves, so any installed version counts; installs only what is missing:
#   postgresql(-client)  pg_dump/pg_restore, and initdb/pg_ctl for the sandbox and test cluster
#   zstd, file           operators' own tools, used by the tests to read backups as they would
#   age                  the standard age CLI: encrypted backups must open with it
#   docker.io            dockerd (+ containerd, runc) for the throwaway engine of the tests/demo
#   busybox-static       a static /bin/busybox: the whole rootfs of the local test image
#   libarchive-tools     bsdtar: the tests restore archives made by it, as operators hand them in
#   chromium             headless, renders the 'safehold report' page in the tests
#   cron                 the tests run the seed's crontab line under a real cron daemon
#   e2fsprogs            chattr: the chunk store tests make packs undeletable, as retention does
#   debootstrap          builds the container image's root file system from Debian's packages
#   docker-compose       the tests run the compose example beside a sample application
#   systemd              systemd-analyze verify checks the units 'schedule install --systemd' writes
#   zsh, fish            the tests load the shell completion scripts in the real shells
# No system Docker service is needed: the sandbox starts its own dockerd on a private socket.
set -euo pipefail
missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have pg_dump && have pg_restore || missing+=(postgresql-client)
have initdb || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
have zstd || missing+=(zstd)
have file || missing+=(file)
have age && have age-keygen || missing+=(age)
# An engine installed another way (Docker's docker-ce packages) counts; docker.io would conflict.
have dockerd && have containerd && have runc || missing+=(docker.io)
# The package, not the command: Debian's plain "busybox" is dynamic and useless in a bare image.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" \
  || missing+=(busybox-static)
have bsdtar || missing+=(libarchive-tools)
have chromium || have chromium-browser || missing+=(chromium)
have cron || missing+=(cron)
have chattr || missing+=(e2fsprogs)
have debootstrap || missing+=(debootstrap)
have docker-compose || missing+=(docker-compose)
have systemd-analyze || missing+=(systemd)
have zsh || missing+=(zsh)
have fish || missing+=(fish)
# shellcheck source=scripts/_apt-install.sh
. "$(dirname "$0")/_apt-install.sh"
apt_install_missing "${missing[@]}"
