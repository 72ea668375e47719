#!/usr/bin/env bash
# Database backup, as operators know it:
#   ./scripts/backup.sh
#   BACKUP_DIR=/path DB_HOST=prod-db ./scripts/backup.sh
#   0 2 * * * /opt/app/scripts/backup.sh >> /var/log/backup.log 2>&1
# Configured by BACKUP_DIR DB_HOST DB_PORT DB_NAME DB_USER (and PGPASSWORD/DB_PASSWORD or
# ~/.pgpass). Extra arguments go to 'safehold backup'. Exits 0 only when the backup is committed.
# Works the same from any folder (cron's is $HOME): this app folder's safehold.toml and ./backups
# are used; a relative BACKUP_DIR you set means your own working folder.
set -euo pipefail
exec "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/_safehold" backup "$@"
