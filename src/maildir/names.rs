//! Which names the image shows, hides or treats specially. The lists come from Dovecot 2.3's
//! source (lock suffixes, temp prefixes, trash directories) and from Postfix, Courier and NFS
//! (silly-rename files); see `docs/DESIGN.md`, "What the image hides".

/// The control files captured under the uidlist lock (read into memory, or for a large
/// uidlist pinned) and served as those bytes. They are what Dovecot rewrites only under its
/// locks, and what keeps UIDs, keywords and subscriptions intact on restore.
pub const CONTROL_FILES: &[&[u8]] = &[
    UIDLIST,
    b"dovecot-keywords",
    b"dovecot-acl",
    b"dovecot-shared",
    SUBSCRIPTIONS,
    b"maildirfolder",
];

/// The list of subscribed folders, in the account's root (or its control directory).
pub const SUBSCRIPTIONS: &[u8] = b"subscriptions";

/// The control files Dovecot keeps in a separate control tree when one is in use (the
/// others, e.g. `maildirfolder`, stay in the Maildir). A copy of one of these in the Maildir is
/// then stale: Dovecot never reads it.
pub const TREE_FILES: &[&[u8]] = &[UIDLIST, b"dovecot-keywords", SUBSCRIPTIONS];

/// The UID list: the one control file that is never left out of the image.
pub const UIDLIST: &[u8] = b"dovecot-uidlist";

/// The lock file Dovecot and maildirfs take on each mailbox's control directory.
pub const UIDLIST_LOCK: &str = "dovecot-uidlist.lock";

/// Subdirectories that make a directory a mailbox (both must exist).
pub const CUR: &[u8] = b"cur";
/// `new/`, the other of the two: where a delivery lands before a client has seen it.
pub const NEW: &[u8] = b"new";
/// Shown empty in every mailbox: it only ever holds deliveries in progress and lock temps.
pub const TMP: &[u8] = b"tmp";

/// Directories Dovecot renames a mailbox to while deleting it (Maildir++ and LAYOUT=fs).
const TRASH_DIRS: &[&[u8]] = &[b"..DOVECOT-TRASHED", b"..DOVECOT-TrasH"];

/// Where in a Maildir tree a name occurs; the rules differ per place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Inside a mailbox's `cur/` or `new/`: only messages live here.
    MessageDir,
    /// A mailbox directory itself (its control files, index files, subfolders).
    MailboxDir,
    /// Any other directory of the tree.
    Other,
}

/// Whether the image hides `name` found in a directory of kind `place`. `exclude_indexes` also
/// hides Dovecot's rebuildable index files.
pub fn is_hidden(name: &[u8], place: Place, exclude_indexes: bool) -> bool {
    match place {
        // Dovecot itself ignores dotfiles in cur/ and new/ (and NFS silly-renames start with
        // `.nfs`); every other name there is a message, whatever it looks like.
        Place::MessageDir => name.first() == Some(&b'.'),
        Place::MailboxDir => {
            // Link-mode dotlock temps and dovecot-acl-list temps: `temp.<host>.<pid>.*`.
            name.starts_with(b"temp.") || is_hidden_anywhere(name, exclude_indexes)
        }
        Place::Other => is_hidden_anywhere(name, exclude_indexes),
    }
}

fn is_hidden_anywhere(name: &[u8], exclude_indexes: bool) -> bool {
    if TRASH_DIRS.contains(&name) {
        return true;
    }
    if name.ends_with(b".lock") || name.ends_with(b".newlock") || name.ends_with(b".tmp") {
        return true;
    }
    if name.starts_with(b".temp.") || name.starts_with(b".nfs") {
        return true;
    }
    // `mailboxes.lock<16hex>`, `dovecot-vsize.lock<hex>` and other lock temps: `.lock`
    // followed only by hex digits.
    if let Some(pos) = find(name, b".lock") {
        let rest = &name[pos + 5..];
        if rest.iter().all(u8::is_ascii_hexdigit) {
            return true;
        }
    }
    // Quota temps `maildirsize<host>.<pid>.<hex>`; the real file is exactly `maildirsize`.
    if name.starts_with(b"maildirsize") && name.len() > b"maildirsize".len() {
        return true;
    }
    exclude_indexes && is_index_file(name)
}

/// Dovecot's index files: rebuildable, not covered by the uidlist lock.
pub fn is_index_file(name: &[u8]) -> bool {
    name.starts_with(b"dovecot.index")
        || name.starts_with(b"dovecot.list.index")
        || name == b"dovecot.mailbox.log"
}

/// Whether `name` is a control file read under the lock.
pub fn is_control_file(name: &[u8]) -> bool {
    CONTROL_FILES.contains(&name)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_names_per_place() {
        use Place::*;
        let cases: &[(&[u8], Place, bool, bool)] = &[
            // (name, place, exclude_indexes, hidden)
            (b"dovecot-uidlist.lock", MailboxDir, false, true),
            (b"dovecot-uidlist.tmp", MailboxDir, false, true),
            (b"dovecot-uidlist", MailboxDir, false, false),
            (b"dovecot-keywords.lock", MailboxDir, false, true),
            (b"dovecot.index.log.newlock", MailboxDir, false, true),
            (b"dovecot.index.tmp", MailboxDir, false, true),
            (b"dovecot.index.cache.lock", MailboxDir, false, true),
            (b"mailboxes.lock", Other, false, true),
            (b"mailboxes.lock0123456789abcdef", Other, false, true),
            (b"dovecot-vsize.lock", MailboxDir, false, true),
            (b".dovecot-box-sync.lock", MailboxDir, false, true),
            (b".dovecot-sync.lock", Other, false, true),
            (b".temp.host.123.0123456789abcdef", MailboxDir, false, true),
            (b"temp.host.123.0123456789abcdef", MailboxDir, false, true),
            (b"temp.host.123.0123456789abcdef", Other, false, false),
            (b"maildirsize", MailboxDir, false, false),
            (b"maildirsizehost.123.abc", MailboxDir, false, true),
            (b".nfs0000000001", MailboxDir, false, true),
            (b"..DOVECOT-TRASHED", MailboxDir, false, true),
            (b"..DOVECOT-TrasH", Other, false, true),
            (b".Sent", MailboxDir, false, false),
            (b"dovecot.index", MailboxDir, false, false),
            (b"dovecot.index", MailboxDir, true, true),
            (b"dovecot.index.log", MailboxDir, true, true),
            (b"dovecot.index.cache", MailboxDir, true, true),
            (b"dovecot.index.search.uids", MailboxDir, true, true),
            (b"dovecot.list.index.log", Other, true, true),
            (b"dovecot.mailbox.log", MailboxDir, true, true),
            (b"dovecot-uidlist", MailboxDir, true, false),
            (b"mail.lockheed.com", Other, false, false),
            // In cur/ and new/ only dotfiles are hidden: every other name is a message.
            (b"1.M1P2.host,S=5:2,S", MessageDir, false, false),
            (b"1.M1P2.weird.lock", MessageDir, false, false),
            (b".nfs0001", MessageDir, false, true),
            (b".hidden", MessageDir, false, true),
        ];
        for (name, place, excl, want) in cases {
            assert_eq!(
                is_hidden(name, *place, *excl),
                *want,
                "name {:?} place {place:?} exclude_indexes {excl}",
                String::from_utf8_lossy(name)
            );
        }
    }

    #[test]
    fn control_files() {
        assert!(is_control_file(b"dovecot-uidlist"));
        assert!(is_control_file(b"subscriptions"));
        assert!(!is_control_file(b"dovecot.index"));
        assert!(!is_control_file(b"dovecot-uidlist.lock"));
    }
}
