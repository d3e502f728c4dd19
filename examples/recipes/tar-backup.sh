#!/bin/bash
# Write a tar archive of a live mail store through a frozen maildirfs view.
#
#   tar-backup.sh SOURCE ARCHIVE.tar[.gz|.zst]
#
# Paths in the archive are relative to the store. Numeric owners are kept, so a restore on
# another host keeps the mail users' ids (`tar --numeric-owner -xpf` to restore).
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

[ $# -eq 2 ] || { echo "usage: $0 SOURCE ARCHIVE" >&2; exit 2; }
source_dir=$1 archive=$2
case $archive in /*) ;; *) archive="$PWD/$archive" ;; esac
view_mount "$source_dir"
tar --numeric-owner --auto-compress -C "$VIEW" -cf "$archive" .
