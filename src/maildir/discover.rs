//! Finds the accounts and mailboxes of a tree. A *mailbox* is a directory with `cur/` and
//! `new/` subdirectories; an *account* is a mailbox not inside another mailbox, together with
//! every mailbox below it (Maildir++ `.Folder` directories and LAYOUT=fs subfolders). Where
//! Dovecot keeps INBOX in a folder of its own (`mail_inbox_path = ~/Maildir/.INBOX`, the
//! example Debian 13 gives), the directory holding that `.INBOX` mailbox is the account's
//! root, although it is no mailbox itself: all its folders are one account, locked at once.
//!
//! The walk opens each directory relative to its parent with `O_NOFOLLOW`, so it never leaves
//! SOURCE through a symlink, and it stays on SOURCE's filesystem (like `rsync -x`), logging
//! the mount points it does not enter (freeze counts them for the summary).
//!
//! It goes no deeper than [`MAX_DEPTH`] levels below an account's root mailbox (or below
//! SOURCE outside accounts): real Maildirs are a few levels deep, and a tree nested thousands
//! deep by an account's owner must cost neither time nor fds without bound. Freeze applies
//! the same limit, and says what it did not enter.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::maildir::names::{self, Place};
use crate::maildir::select::{Selection, Visibility};
use crate::sys;

/// How many levels below an account's root mailbox (or below SOURCE, outside accounts) are
/// searched and shown; deeper directories are shown empty, with a warning.
pub const MAX_DEPTH: usize = 256;

/// The depth of a subdirectory of a directory `depth` levels down: 1 below a directory that is
/// an account's root mailbox (depth counts from there), else one more.
pub fn child_depth(depth: usize, account_root: bool) -> usize {
    if account_root { 1 } else { depth + 1 }
}

/// INBOX kept as a Maildir++ folder: the directory holding a mailbox of this name is an
/// account's root.
pub const INBOX_FOLDER: &[u8] = b".INBOX";

/// One account: a top-level mailbox (or a directory holding a `.INBOX` mailbox) and the
/// mailboxes below it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Path of the account's root relative to SOURCE (empty when SOURCE is a Maildir): its
    /// top-level mailbox, or the directory holding its `.INBOX`.
    pub root: PathBuf,
    /// Every mailbox of the account relative to SOURCE, sorted by path bytes (the root first
    /// where it is a mailbox): the order in which their locks are taken.
    pub mailboxes: Vec<PathBuf>,
}

/// What the walk found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// The accounts found, sorted by their roots' path bytes.
    pub accounts: Vec<Account>,
    /// Directories that could not be opened or listed, not searched.
    pub unreadable: Vec<PathBuf>,
}

impl Discovery {
    /// How many mailboxes the accounts hold together.
    pub fn mailbox_count(&self) -> usize {
        self.accounts.iter().map(|a| a.mailboxes.len()).sum()
    }
}

/// Walks the tree under `root` (an fd on SOURCE; `source` is only for messages).
/// Only paths that `selection` shows are searched for accounts (see `maildir/select.rs`).
pub fn discover(
    root: BorrowedFd<'_>,
    source: &Path,
    exclude_indexes: bool,
    selection: &Selection,
) -> Result<Discovery> {
    let mut walk = Walk::new(root, source, exclude_indexes, selection)?;
    walk.visit(root, PathBuf::new(), None, 0)?;
    Ok(walk.finish())
}

/// The mailboxes of the account whose root mailbox is `rel`, found now (an account captured
/// on demand is searched again at its capture, so a folder created since the mount is
/// captured under its lock too). `Ok(None)` when `rel` is no longer a mailbox.
pub fn discover_account(
    root: BorrowedFd<'_>,
    source: &Path,
    rel: &Path,
    exclude_indexes: bool,
    selection: &Selection,
) -> Result<Option<Account>> {
    let mut walk = Walk::new(root, source, exclude_indexes, selection)?;
    let flags = sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY;
    let dir = if rel.as_os_str().is_empty() {
        root.try_clone_to_owned()
    } else {
        sys::open_beneath(root, rel.as_os_str(), flags)
    }
    .map_err(|e| Error::io("cannot open account", source.join(rel), e))?;
    if !walk.same_fs(&dir, rel) {
        return Ok(None);
    }
    walk.visit(dir.as_fd(), rel.to_path_buf(), None, 0)?;
    let found = walk.finish();
    Ok(found.accounts.into_iter().find(|a| a.root == rel))
}

impl<'a> Walk<'a> {
    /// A walk of the tree on SOURCE's filesystem (`root`).
    fn new(
        root: BorrowedFd<'_>,
        source: &'a Path,
        exclude_indexes: bool,
        selection: &'a Selection,
    ) -> Result<Walk<'a>> {
        let root_dev = sys::fstat(root)
            .map_err(|e| Error::io("cannot stat source", source, e))?
            .st_dev;
        Ok(Walk {
            source,
            root_dev,
            exclude_indexes,
            selection,
            out: Discovery::default(),
        })
    }

    /// Sorts what was found: mailboxes in lock order, accounts by path.
    fn finish(mut self) -> Discovery {
        for account in &mut self.out.accounts {
            account
                .mailboxes
                .sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
        }
        self.out.accounts.sort_by(|a, b| {
            a.root
                .as_os_str()
                .as_bytes()
                .cmp(b.root.as_os_str().as_bytes())
        });
        self.out
    }
}

struct Walk<'a> {
    source: &'a Path,
    root_dev: u64,
    exclude_indexes: bool,
    selection: &'a Selection,
    out: Discovery,
}

impl Walk<'_> {
    /// Visits the directory `dir` at `rel`; `account` is the index of the account it lies in,
    /// `depth` how many levels it is below that account's root (or below SOURCE).
    fn visit(
        &mut self,
        dir: BorrowedFd<'_>,
        rel: PathBuf,
        account: Option<usize>,
        depth: usize,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            // Freeze shows it empty and logs it.
            return Ok(());
        }
        let entries = match sys::read_dir(dir) {
            Ok(e) => e,
            Err(e) if rel.as_os_str().is_empty() => {
                return Err(Error::io("cannot read source", self.source, e));
            }
            Err(e) => {
                log::warn!("skipped unreadable directory {}: {e}", self.show(&rel));
                self.out.unreadable.push(rel);
                return Ok(());
            }
        };
        // A directory only on the way to selected ones is searched but is no mailbox itself.
        let shown = self.selection.visibility(&rel) == Visibility::Shown;
        let mailbox = shown && is_mailbox(dir, &entries);
        let inbox_root =
            shown && !mailbox && account.is_none() && lists_inbox_folder(dir, &entries);
        let below = child_depth(depth, (mailbox || inbox_root) && account.is_none());
        let account = if mailbox || inbox_root {
            let idx = account.unwrap_or_else(|| {
                self.out.accounts.push(Account {
                    root: rel.clone(),
                    mailboxes: Vec::new(),
                });
                self.out.accounts.len() - 1
            });
            if mailbox {
                self.out.accounts[idx].mailboxes.push(rel.clone());
            }
            Some(idx)
        } else {
            account
        };
        let place = if mailbox {
            Place::MailboxDir
        } else {
            Place::Other
        };
        for entry in &entries {
            let name = entry.name.as_slice();
            if mailbox && (name == names::CUR || name == names::NEW || name == names::TMP) {
                continue;
            }
            if names::is_hidden(name, place, self.exclude_indexes) {
                continue;
            }
            if !entry_is_dir(dir, entry) {
                continue;
            }
            let child_rel = rel.join(OsStr::from_bytes(name));
            if self.selection.visibility(&child_rel) == Visibility::Hidden {
                continue;
            }
            let child = match sys::open_dir_at(dir, OsStr::from_bytes(name)) {
                Ok(fd) => fd,
                Err(e) => {
                    log::warn!("skipped directory {}: {e}", self.show(&child_rel));
                    self.out.unreadable.push(child_rel);
                    continue;
                }
            };
            if !self.same_fs(&child, &child_rel) {
                continue;
            }
            self.visit(child.as_fd(), child_rel, account, below)?;
        }
        Ok(())
    }

    fn same_fs(&mut self, fd: &OwnedFd, rel: &Path) -> bool {
        match sys::fstat(fd.as_fd()) {
            Ok(st) if st.st_dev == self.root_dev => true,
            Ok(_) => {
                log::warn!(
                    "not entering {}: another filesystem is mounted there",
                    self.show(rel)
                );
                false
            }
            Err(e) => {
                log::warn!("skipped directory {}: {e}", self.show(rel));
                false
            }
        }
    }

    fn show(&self, rel: &Path) -> String {
        crate::error::escape_path(&self.source.join(rel))
    }
}

/// Whether a directory with these entries is a mailbox: it has `cur/` and `new/` directories.
pub fn is_mailbox(dir: BorrowedFd<'_>, entries: &[sys::DirEntry]) -> bool {
    let has = |want: &[u8]| {
        entries
            .iter()
            .any(|e| e.name == want && entry_is_dir(dir, e))
    };
    has(names::CUR) && has(names::NEW)
}

/// Whether the directory open at `dir` is a mailbox, found without listing it: whether its
/// `cur` and `new` are directories (never followed). The same answer as [`is_mailbox`] on its
/// listing, for two `lstat`s (one where `cur` is missing, as in most directories).
pub fn has_mailbox_dirs(dir: BorrowedFd<'_>) -> bool {
    let is_dir = |name: &[u8]| {
        sys::lstat_at(dir, OsStr::from_bytes(name))
            .is_ok_and(|st| sys::FileKind::of_mode(st.st_mode) == sys::FileKind::Directory)
    };
    is_dir(names::CUR) && is_dir(names::NEW)
}

/// Whether the directory open at `dir` (possibly `O_PATH`) holds INBOX as a `.INBOX` mailbox,
/// and so is an account's root though it is no mailbox: one more lookup, which fails at once
/// in most directories. `.INBOX` is never followed as a symlink.
pub fn holds_inbox_folder(dir: BorrowedFd<'_>) -> bool {
    sys::openat(
        dir,
        OsStr::from_bytes(INBOX_FOLDER),
        sys::OFlag::O_PATH | sys::OFlag::O_DIRECTORY,
    )
    .is_ok_and(|inbox| has_mailbox_dirs(inbox.as_fd()))
}

/// [`holds_inbox_folder`] of a directory listed as `entries`: only looked for where the listing
/// has a `.INBOX` directory.
pub fn lists_inbox_folder(dir: BorrowedFd<'_>, entries: &[sys::DirEntry]) -> bool {
    entries
        .iter()
        .any(|e| e.name == INBOX_FOLDER && entry_is_dir(dir, e))
        && holds_inbox_folder(dir)
}

/// Whether the directory open at `dir` is an account's root, found without listing it: a
/// mailbox, or a directory holding a `.INBOX` mailbox.
pub fn is_account_root(dir: BorrowedFd<'_>) -> bool {
    has_mailbox_dirs(dir) || holds_inbox_folder(dir)
}

/// Whether a directory entry is a directory, from `d_type` or, where the filesystem does not
/// fill it, from `lstat`.
pub fn entry_is_dir(dir: BorrowedFd<'_>, entry: &sys::DirEntry) -> bool {
    match entry.d_type {
        sys::DT_DIR => true,
        sys::DT_UNKNOWN => sys::lstat_at(dir, OsStr::from_bytes(&entry.name))
            .map(|st| sys::FileKind::of_mode(st.st_mode) == sys::FileKind::Directory)
            .unwrap_or(false),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn mkbox(p: &Path) {
        for d in ["cur", "new", "tmp"] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
    }

    fn rels(v: &[PathBuf]) -> Vec<String> {
        v.iter().map(|p| p.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn finds_accounts_maildirplusplus_and_layout_fs() {
        let t = crate::testutil::TempDir::new("discover");
        let root = t.path();
        // A virtual-users tree: two accounts with Maildir++ folders, one with LAYOUT=fs.
        mkbox(&root.join("example.org/alice/Maildir"));
        mkbox(&root.join("example.org/alice/Maildir/.Sent"));
        mkbox(&root.join("example.org/alice/Maildir/.Lists.rust"));
        mkbox(&root.join("example.org/alice/Maildir/..DOVECOT-TRASHED"));
        mkbox(&root.join("example.org/bob/mail"));
        mkbox(&root.join("example.org/bob/mail/Archive/2024"));
        fs::create_dir_all(root.join("example.org/bob/mail/Archive/notes")).unwrap();
        fs::create_dir_all(root.join("example.org/carol/sieve")).unwrap();
        let fd = fs::File::open(root).unwrap();
        let d = discover(fd.as_fd(), root, false, &Selection::default()).unwrap();
        assert_eq!(d.accounts.len(), 2);
        assert_eq!(d.accounts[0].root, Path::new("example.org/alice/Maildir"));
        assert_eq!(
            rels(&d.accounts[0].mailboxes),
            [
                "example.org/alice/Maildir",
                "example.org/alice/Maildir/.Lists.rust",
                "example.org/alice/Maildir/.Sent"
            ]
        );
        assert_eq!(
            rels(&d.accounts[1].mailboxes),
            ["example.org/bob/mail", "example.org/bob/mail/Archive/2024"]
        );
        assert_eq!(d.mailbox_count(), 5);
        // Each account found again by its root alone, as an account captured on demand is.
        for a in &d.accounts {
            let again = discover_account(fd.as_fd(), root, &a.root, false, &Selection::default())
                .unwrap()
                .unwrap();
            assert_eq!(&again, a);
        }
        let plain = Path::new("example.org/carol");
        assert!(
            discover_account(fd.as_fd(), root, plain, false, &Selection::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn inbox_kept_as_a_folder_makes_its_directory_the_accounts_root() {
        let t = crate::testutil::TempDir::new("discover-inbox");
        let root = t.path();
        // `mail_inbox_path = ~/Maildir/.INBOX`: Maildir/ itself has no cur/ or new/.
        mkbox(&root.join("example.org/alice/Maildir/.INBOX"));
        mkbox(&root.join("example.org/alice/Maildir/.Sent"));
        mkbox(&root.join("example.org/bob/Maildir/.Sent"));
        let fd = fs::File::open(root).unwrap();
        let d = discover(fd.as_fd(), root, false, &Selection::default()).unwrap();
        let roots: Vec<_> = d.accounts.iter().map(|a| a.root.clone()).collect();
        // Bob has no .INBOX: his folder stays an account of its own, as before.
        assert_eq!(
            rels(&roots),
            ["example.org/alice/Maildir", "example.org/bob/Maildir/.Sent"]
        );
        assert_eq!(
            rels(&d.accounts[0].mailboxes),
            [
                "example.org/alice/Maildir/.INBOX",
                "example.org/alice/Maildir/.Sent"
            ]
        );
        let again = discover_account(
            fd.as_fd(),
            root,
            Path::new("example.org/alice/Maildir"),
            false,
            &Selection::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(again, d.accounts[0]);
        let alice = fs::File::open(root.join("example.org/alice/Maildir")).unwrap();
        assert!(is_account_root(alice.as_fd()));
        let carol = fs::File::open(root.join("example.org")).unwrap();
        assert!(!is_account_root(carol.as_fd()));
        // A symlink named .INBOX is not followed.
        let elsewhere = root.join("elsewhere");
        mkbox(&elsewhere);
        fs::create_dir_all(root.join("mallory")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("mallory/.INBOX")).unwrap();
        let m = fs::File::open(root.join("mallory")).unwrap();
        assert!(!is_account_root(m.as_fd()));
    }

    #[test]
    fn source_may_be_one_maildir() {
        let t = crate::testutil::TempDir::new("discover1");
        mkbox(t.path());
        let fd = fs::File::open(t.path()).unwrap();
        let d = discover(fd.as_fd(), t.path(), false, &Selection::default()).unwrap();
        assert_eq!(d.accounts.len(), 1);
        assert_eq!(d.accounts[0].root, Path::new(""));
    }

    #[test]
    fn symlinked_mailbox_is_not_followed() {
        let t = crate::testutil::TempDir::new("discover2");
        let elsewhere = crate::testutil::TempDir::new("discover2-out");
        mkbox(elsewhere.path());
        std::os::unix::fs::symlink(elsewhere.path(), t.path().join("link")).unwrap();
        let fd = fs::File::open(t.path()).unwrap();
        let d = discover(fd.as_fd(), t.path(), false, &Selection::default()).unwrap();
        assert!(d.accounts.is_empty());
    }
}
