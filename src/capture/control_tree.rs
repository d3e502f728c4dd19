//! Opening the directories where Dovecot keeps each mailbox's lock and control files: the
//! mailbox's own directory, or a separate control tree's (see `maildir::control` for the
//! template and where INBOX's and a folder's files are in it).
//!
//! The template's fixed part is the admin's path and is opened once, at mount, following
//! symlinks as SOURCE's path is; everything below it (the domain and user directories, `.INBOX`)
//! is opened beneath that fd without following any, so an account's owner cannot point the
//! capture's locks or reads elsewhere. A home-relative template (`~/control`) is opened beneath
//! SOURCE, where the homes are.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::maildir::control::{self, Template};
use crate::sys;

/// Where the capture finds each mailbox's lock and control files.
#[derive(Debug, Default)]
pub struct ControlPlaces {
    tree: Option<Tree>,
}

#[derive(Debug)]
struct Tree {
    template: Template,
    /// The template's fixed directory and its fd; `None` for a home-relative template.
    base: Option<(PathBuf, OwnedFd)>,
}

/// A mailbox's control directory in a control tree.
#[derive(Debug, Clone)]
pub struct ControlDir {
    /// The directory, open: its lock and control files are opened relative to it.
    pub fd: Arc<OwnedFd>,
    /// Its path, for messages and lock names.
    pub path: PathBuf,
    /// INBOX's only: the account's control directory itself, where Dovecot keeps
    /// `subscriptions`.
    pub account: Option<(Arc<OwnedFd>, PathBuf)>,
}

/// An account's control directory, opened.
#[derive(Debug)]
pub struct AccountControl {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

impl ControlPlaces {
    /// Control files in each mailbox's own directory (Dovecot's default).
    pub fn in_maildir() -> ControlPlaces {
        ControlPlaces { tree: None }
    }

    /// A control tree after `template`; opens its fixed directory, which must exist.
    pub fn tree(template: Template) -> Result<ControlPlaces> {
        let base = match template.base() {
            None => None,
            Some(path) => {
                let fd = sys::open_admin_dir(&path)
                    .map_err(|e| Error::io("cannot open control directory", &path, e))?;
                Some((path, fd))
            }
        };
        Ok(ControlPlaces {
            tree: Some(Tree { template, base }),
        })
    }

    /// The template, when a control tree is in use.
    pub fn template(&self) -> Option<&Template> {
        self.tree.as_ref().map(|t| &t.template)
    }

    /// Opens the control directory of the account whose root is `account_root` (relative to
    /// SOURCE, open at `source_fd`). `Ok(None)` without a control tree, or when the account
    /// has no control directory yet (Dovecot makes it when it first opens the account: there
    /// is then no uidlist to keep and no lock of Dovecot's to meet).
    pub fn open_account(
        &self,
        source_fd: BorrowedFd<'_>,
        source: &Path,
        account_root: &Path,
    ) -> Result<Option<AccountControl>> {
        let Some(tree) = &self.tree else {
            return Ok(None);
        };
        let account_dir = source.join(account_root);
        let path = tree
            .template
            .expand(&account_dir)
            .map_err(|why| Error::msg("cannot place control directory", &account_dir, why))?;
        let (base_fd, below) = match &tree.base {
            Some((base, fd)) => (fd.as_fd(), path.strip_prefix(base).ok()),
            None => (source_fd, path.strip_prefix(source).ok()),
        };
        let Some(below) = below else {
            return Err(Error::msg(
                "cannot place control directory",
                &path,
                format!(
                    "outside {}",
                    crate::error::escape_path(tree.base.as_ref().map_or(source, |b| &b.0))
                ),
            ));
        };
        match sys::open_beneath(
            base_fd,
            below.as_os_str(),
            sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY,
        ) {
            Ok(fd) => Ok(Some(AccountControl {
                fd: Arc::new(fd),
                path,
            })),
            Err(e) if sys::errno(&e) == Some(sys::Errno::ENOENT) => {
                log::debug!(
                    "{} has no control directory {} yet",
                    crate::error::escape_path(&account_dir),
                    crate::error::escape_path(&path)
                );
                Ok(None)
            }
            Err(e) => Err(Error::io("cannot open control directory", &path, e)),
        }
    }
}

impl AccountControl {
    /// The control directory of the account's mailbox `below_account` (its path below the
    /// account's root, empty for INBOX); `None` when Dovecot has not made it yet.
    pub fn mailbox(&self, below_account: &Path) -> Result<Option<ControlDir>> {
        let rel = control::mailbox_dir(below_account);
        let path = self.path.join(&rel);
        match sys::open_beneath(
            self.fd.as_fd(),
            rel.as_os_str(),
            sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY,
        ) {
            Ok(fd) => Ok(Some(ControlDir {
                fd: Arc::new(fd),
                path,
                account: below_account
                    .as_os_str()
                    .is_empty()
                    .then(|| (self.fd.clone(), self.path.clone())),
            })),
            Err(e) if sys::errno(&e) == Some(sys::Errno::ENOENT) => Ok(None),
            Err(e) => Err(Error::io("cannot open control directory", &path, e)),
        }
    }
}

impl ControlDir {
    /// Where the control file `name` is: `subscriptions` of INBOX in the account's control
    /// directory, everything else in this one.
    pub fn file_dir(&self, name: &[u8]) -> (BorrowedFd<'_>, &Path) {
        match &self.account {
            Some((fd, path)) if name == crate::maildir::names::SUBSCRIPTIONS => {
                (fd.as_fd(), path.as_path())
            }
            _ => (self.fd.as_fd(), self.path.as_path()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(p: &Path) -> OwnedFd {
        OwnedFd::from(std::fs::File::open(p).unwrap())
    }

    #[test]
    fn opens_inbox_and_folders_where_dovecot_keeps_them() {
        let t = crate::testutil::TempDir::new("control-tree");
        let ctl = t.path().join("control");
        let src = t.path().join("vmail");
        for d in [
            "control/example.org/alice/.INBOX",
            "control/example.org/alice/.Archive",
            "vmail/example.org/alice/Maildir/cur",
        ] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        let template: Template = format!("{}/%d/%n", ctl.display()).parse().unwrap();
        let places = ControlPlaces::tree(template).unwrap();
        let acct = places
            .open_account(
                dir(&src).as_fd(),
                &src,
                Path::new("example.org/alice/Maildir"),
            )
            .unwrap()
            .unwrap();
        let inbox = acct.mailbox(Path::new("")).unwrap().unwrap();
        assert_eq!(inbox.path, ctl.join("example.org/alice/.INBOX"));
        assert_eq!(
            inbox.file_dir(b"subscriptions").1,
            ctl.join("example.org/alice")
        );
        assert_eq!(inbox.file_dir(b"dovecot-uidlist").1, inbox.path);
        let archive = acct.mailbox(Path::new(".Archive")).unwrap().unwrap();
        assert!(archive.account.is_none());
        assert!(acct.mailbox(Path::new(".Sent")).unwrap().is_none());
        // No control directory yet: nothing to lock.
        assert!(
            places
                .open_account(dir(&src).as_fd(), &src, Path::new("example.org/bob"))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn never_follows_a_symlink_below_the_fixed_part() {
        let t = crate::testutil::TempDir::new("control-tree");
        let elsewhere = t.path().join("elsewhere/.INBOX");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::create_dir_all(t.path().join("control/example.org")).unwrap();
        std::fs::create_dir_all(t.path().join("vmail/example.org/mallory/cur")).unwrap();
        std::os::unix::fs::symlink(
            t.path().join("elsewhere"),
            t.path().join("control/example.org/mallory"),
        )
        .unwrap();
        let src = t.path().join("vmail");
        let template: Template = format!("{}/control/%d/%n", t.path().display())
            .parse()
            .unwrap();
        let places = ControlPlaces::tree(template).unwrap();
        let opened = places.open_account(dir(&src).as_fd(), &src, Path::new("example.org/mallory"));
        assert!(opened.is_err(), "{opened:?}");
    }

    #[test]
    fn a_missing_fixed_part_is_an_error_naming_it() {
        let template: Template = "/nonexistent-control-tree/%d/%n".parse().unwrap();
        let e = ControlPlaces::tree(template).unwrap_err().to_string();
        assert!(e.contains("/nonexistent-control-tree"), "{e}");
    }
}
