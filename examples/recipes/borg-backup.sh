#!/bin/bash
# Back up a live mail store with borg through a frozen maildirfs view.
#
#   borg-backup.sh SOURCE REPOSITORY [BORG CREATE OPTIONS...]
#
# The archive is named after the capture time; paths in it are relative to the view
# ("example.org/alice/Maildir/cur/..."), so `borg extract REPO::ARCHIVE example.org/alice`
# restores one account. Passphrase: borg's environment (BORG_PASSPHRASE, BORG_PASSCOMMAND).
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

[ $# -ge 2 ] || { echo "usage: $0 SOURCE REPOSITORY [borg create options]" >&2; exit 2; }
source_dir=$1 repo=$2
shift 2
view_mount "$source_dir"
(cd "$VIEW" && borg create --stats "$@" "$repo::mail-{utcnow:%Y-%m-%dT%H:%M:%S}" .)
