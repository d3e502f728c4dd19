#!/bin/bash
# rsnapshot-style rotation with rsync --link-dest through a frozen maildirfs view: each run
# makes DEST/<UTC time>/, hard-linking every message unchanged since the previous run, points
# DEST/latest at it, and keeps the newest KEEP (default 7).
#
#   rsync-rotate.sh SOURCE DEST [KEEP]
set -euo pipefail
here=$(dirname "$0")
. "$here/lib.sh"

[ $# -ge 2 ] || { echo "usage: $0 SOURCE DEST [KEEP]" >&2; exit 2; }
source_dir=$1 dest=$2 keep=${3:-7}
mkdir -p "$dest"
view_mount "$source_dir"
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
partial="$dest/.partial-$stamp"
link=()
if [ -d "$dest/latest/" ]; then link=(--link-dest="$(cd "$dest/latest/" && pwd -P)"); fi
# -H keeps hard links; -x stays on the view. A copy only becomes a snapshot when complete.
rsync -aHx --delete "${link[@]}" "$VIEW/" "$partial/"
mv "$partial" "$dest/$stamp"
ln -sfn "$stamp" "$dest/latest"
# Oldest first; names sort by time. Keep the newest $keep.
ls -1d "$dest"/[0-9]*Z 2>/dev/null | head -n -"$keep" | while read -r old; do rm -rf "$old"; done
