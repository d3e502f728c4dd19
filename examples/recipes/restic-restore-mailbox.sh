#!/bin/bash
# Restore one mailbox (or one account: any directory) from a restic snapshot made by
# restic-backup.sh into TARGET, then check it with `maildirfs verify`.
#
#   restic-restore-mailbox.sh SNAPSHOT MAILBOX TARGET
#
# MAILBOX is the path relative to the mail store, e.g. example.org/alice/Maildir/.Sent;
# SNAPSHOT is a restic snapshot id or "latest". TARGET must not exist yet. To put it back into
# a live store, see docs/OPERATIONS.md ("Restore one mailbox").
set -euo pipefail
MAILDIRFS=${MAILDIRFS:-maildirfs}
[ $# -eq 3 ] || { echo "usage: $0 SNAPSHOT MAILBOX TARGET" >&2; exit 2; }
snapshot=$1 mailbox=${2%/} target=$3
[ ! -e "$target" ] || { echo "$0: $target exists; give a new directory" >&2; exit 1; }
work=$(mktemp -d "${TMPDIR:-/tmp}/restore.XXXXXX")
trap 'rm -rf "$work"' EXIT
# The snapshot holds paths relative to the view, stored under the view's directory ("/").
restic restore "$snapshot" --target "$work" --include "/$mailbox"
found=$(find "$work" -path "*/$mailbox" -type d -print -quit)
[ -n "$found" ] || { echo "$0: $mailbox is not in snapshot $snapshot" >&2; exit 1; }
mv "$found" "$target"
"$MAILDIRFS" verify "$target"
