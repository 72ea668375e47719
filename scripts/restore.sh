#!/usr/bin/env bash
# Restore, as operators know it:
#   ./scripts/restore.sh --list
#   ./scripts/restore.sh --database ./backups/db_backup_20241201_120000.sql
#   ./scripts/restore.sh --volume user-data:./backups/volume_user-data_20241201_120000.tar.gz
#   ./scripts/restore.sh --database ./backups/db_backup_latest.sql   # the newest good backup,
#     also when it is zstd or encrypted (the fixed names always mean the newest; see README)
# The database is restored into a staging database, checked, then swapped in; the replaced one is
# kept as <name>_pre_restore_<time>. Extra arguments go to 'safehold restore' (see --help).
# From any folder: this app folder's safehold.toml and ./backups are used; FILE arguments are
# relative to your working folder, as in any command.
set -euo pipefail
exec "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/_safehold" restore "$@"
