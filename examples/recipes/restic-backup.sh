#!/bin/bash
# Back up a live mail store with restic through a frozen maildirfs view.
#
#   restic-backup.sh SOURCE [RESTIC BACKUP OPTIONS...]
#
# The repository and its password come from restic's own environment (RESTIC_REPOSITORY,
# RESTIC_PASSWORD_FILE, ...). The view is mounted at the same path every run when
# MAILDIRFS_MOUNTPOINT is set (restic then finds the parent snapshot and reads only what
# changed); paths inside the snapshot are relative to the view ("."), so a restore does not
# depend on where the view was mounted.
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

[ $# -ge 1 ] || { echo "usage: $0 SOURCE [restic backup options]" >&2; exit 2; }
source_dir=$1
shift
view_mount "$source_dir"
# Relative paths: snapshots list "./example.org/alice/Maildir/...".
(cd "$VIEW" && restic backup --host "${RESTIC_HOST:-$(hostname)}" --tag maildirfs "$@" .)
