#!/usr/bin/env bash
# Prepare a point-in-time restore (docs/deploy.md, "Backup and restore"): the data directory is
# emptied and refilled from a base backup of backup.sh, and told to replay the archived WAL up to
# the target; the next start of the server does the replay, then opens the database for writes.
# Run it as the database's OS user, with the server stopped:
#
#   restore.sh BACKUP [--time '2025-01-31 14:05:00+00' | --name RESTORE_POINT]
#
# BACKUP is a folder name under BACKUP_DIR (the latest base backup taken before the target);
# without a target every archived segment is replayed (the latest state). Settings, with defaults:
#   PGDATA=/var/lib/postgresql/data  the data directory
#   BACKUP_DIR=/backups              where backup.sh keeps base backups
#   WAL_ARCHIVE=/wal-archive         where archive_command copied the WAL
set -euo pipefail

usage="usage: restore.sh BACKUP [--time TIMESTAMP | --name RESTORE_POINT]"
backup=${1:?$usage}
case "${2-}" in
  --time) target="recovery_target_time = '${3:?$usage}'" ;;
  --name) target="recovery_target_name = '${3:?$usage}'" ;;
  "") target="" ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
if [[ "${3-}" == *"'"* ]]; then
  echo "restore.sh: the target must not contain a quote" >&2
  exit 2
fi

data=${PGDATA:-/var/lib/postgresql/data}
source=${BACKUP_DIR:-/backups}/$backup
archive=${WAL_ARCHIVE:-/wal-archive}
if [[ ! -f "$source/base.tar.gz" || ! -f "$source/pg_wal.tar.gz" ]]; then
  echo "restore.sh: $source is not a complete base backup of backup.sh" >&2
  exit 1
fi
if [[ -f "$data/postmaster.pid" ]]; then
  echo "restore.sh: $data has a postmaster.pid: stop the server first" >&2
  exit 1
fi

find "$data" -mindepth 1 -delete
tar -xzf "$source/base.tar.gz" -C "$data"
tar -xzf "$source/pg_wal.tar.gz" -C "$data/pg_wal"
chmod 700 "$data"

# The recovery settings, replacing those of an earlier restore that the backup may carry. Without
# hot standby nothing connects before the replay has reached the target and the server has been
# promoted: clients (and health checks) see a database that is either not up or complete.
settings="$data/postgresql.auto.conf"
sed -i -E '/^(restore_command|recovery_target[a-z_]*|hot_standby) = /d' "$settings"
cat >>"$settings" <<EOF
restore_command = 'gunzip < $archive/%f > %p'
${target}
recovery_target_action = 'promote'
hot_standby = off
EOF
touch "$data/recovery.signal"
echo "restore of $backup prepared in $data${target:+ ($target)}: start the server to replay the WAL"
