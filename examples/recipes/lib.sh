# Shared by the recipes: mount SOURCE on a fresh (or given) mount point, and unmount it however
# the recipe ends. Source it, then call `view_mount SOURCE`; the view's path is in $VIEW.
#
#   MAILDIRFS             the maildirfs binary (default: maildirfs from PATH)
#   MAILDIRFS_MOUNTPOINT  where to mount (default: /run/maildirfs-view-<checksum of SOURCE>,
#                         the same every run, made and removed by the recipe)
#   MAILDIRFS_OPTIONS     extra options for `maildirfs mount`, split at blanks, no quoting and
#                         no wildcard expansion (e.g. "--exclude-indexes --include=example.org/*")

MAILDIRFS=${MAILDIRFS:-maildirfs}
VIEW=
VIEW_MADE=

view_umount() {
    if [ -n "$VIEW" ]; then
        # Always unmount, even after a failed backup: the view holds pins on the store.
        if out=$("$MAILDIRFS" umount "$VIEW" 2>&1); then
            echo "$out" >&2
        else
            # "not mounted" is fine: the mount itself failed.
            case $out in *": not mounted"*) ;; *) echo "$out" >&2 ;; esac
        fi
        if [ -n "$VIEW_MADE" ]; then rmdir "$VIEW" 2>/dev/null || true; fi
        VIEW=
    fi
}

view_mount() {
    source_dir=$1
    if [ -n "${MAILDIRFS_MOUNTPOINT:-}" ]; then
        VIEW=$MAILDIRFS_MOUNTPOINT
        mkdir -p "$VIEW"
    else
        # The same directory for the same SOURCE every run: restic and borg key their caches
        # on the path, so an unchanged message is not read again.
        base=/run
        [ -w "$base" ] || base=${TMPDIR:-/tmp}
        abs=$(cd "$source_dir" && pwd -P)
        VIEW="$base/maildirfs-view-$(printf '%s' "$abs" | cksum | cut -d' ' -f1)"
        mkdir -p "$VIEW"
        VIEW_MADE=1
    fi
    trap view_umount EXIT
    trap 'exit 130' INT TERM
    local opts=()
    read -r -a opts <<< "${MAILDIRFS_OPTIONS:-}"
    "$MAILDIRFS" mount "${opts[@]}" "$source_dir" "$VIEW"
}
