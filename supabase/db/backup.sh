#!/usr/bin/env bash
# A base backup of the database for point-in-time restores (docs/deploy.md, "Backup and restore"):
# with the WAL segments the database's archive_command copies to $WAL_ARCHIVE, any moment since the
# oldest kept base backup can be restored (restore.sh). The compose file's `backup` service runs it;
# the backup drill (tests/stack/test_backup_drill.py) runs it against a local stack.
#
# Connects through libpq's variables (PGHOST, PGPORT, PGUSER, PGPASSWORD) as a role that may
# replicate. Settings, with their defaults:
#   BACKUP_DIR=/backups       one folder a base backup, named after its start (UTC)
#   WAL_ARCHIVE=/wal-archive  where archive_command copies the WAL
#   KEEP_DAYS=14              older base backups are deleted, with the archived WAL only they needed
set -euo pipefail

backups=${BACKUP_DIR:-/backups}
archive=${WAL_ARCHIVE:-/wal-archive}
keep_days=${KEEP_DAYS:-14}
name=$(date -u +%Y%m%dT%H%M%SZ)

# Tar files, compressed; the WAL written during the backup streamed into it (pg_wal.tar.gz), so a
# backup restores on its own even without the archive. A backup in progress, or one that failed,
# keeps its .partial name: restore.sh and the retention below never take it for a complete one.
pg_basebackup --pgdata="$backups/$name.partial" --format=tar --gzip --wal-method=stream \
  --checkpoint=fast --label="mycelium $name" --no-password
mv "$backups/$name.partial" "$backups/$name"
echo "base backup $backups/$name"

find "$backups" -mindepth 1 -maxdepth 1 -type d -mtime +"$keep_days" ! -name "$name" -exec rm -rf {} +
# The archived WAL older than the oldest remaining base backup's start restores nothing any more.
oldest=$(find "$backups" -mindepth 1 -maxdepth 1 -type d ! -name '*.partial' | sort | head -n 1)
first_segment=$(tar -xzOf "$oldest/base.tar.gz" backup_label |
  sed -n 's/^START WAL LOCATION: .* (file \([0-9A-F]\{24\}\))$/\1/p')
pg_archivecleanup "$archive" "$first_segment"
echo "WAL archive kept from $first_segment (the start of $oldest)"
