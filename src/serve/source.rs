//! Reading the image's bytes back from SOURCE, for the FUSE adapter and for tests without FUSE.
//!
//! A pinned file (see `capture/pin.rs`) is reopened through its pin: it is the captured inode whatever
//! happened to its name. An unpinned one is opened through the one SOURCE directory fd with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` (or an `O_NOFOLLOW` walk), so nothing outside SOURCE
//! is ever opened, and the opened file's (dev, ino) must be the captured one before a byte is
//! served. A message renamed after capture is found again by its base name and inode in its
//! mailbox's `cur/` or `new/`, or in another folder of its account (a Dovecot MOVE); a file
//! that is gone fails with `ENOENT` and a log line, never with other bytes.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result, escape_path};
use crate::image::snapshot::{Content, Ino, Kind, NodeIdx, SYNTHETIC_INO, Snapshot};
use crate::maildir::filename::base_name;
use crate::maildir::names;
use crate::sys;

/// SOURCE, open, with the counters of what serving found.
#[derive(Debug)]
pub struct Source {
    root: OwnedFd,
    path: PathBuf,
    /// Files that could not be served because they were gone from SOURCE, by node id (a reader,
    /// or the kernel's readahead, may ask for one several times: it counts once). Protected by
    /// this mutex.
    vanished: Mutex<HashSet<Ino>>,
    /// Files that failed to open or read for another reason (`EACCES`, `EIO`), by node: each
    /// is logged once however often it is asked for.
    errors: Mutex<HashSet<Ino>>,
    /// When the search for a gone message last found nothing, by node. Protected by this
    /// mutex. A search lists every folder of the account, and a reader (or the kernel's
    /// readahead) asks for a missing file again and again: one search a second per file.
    missed: Mutex<std::collections::HashMap<Ino, std::time::Instant>>,
    /// Messages served from a new name after a rename in the live tree.
    pub refound: AtomicU64,
    /// Bytes read from SOURCE for the kernel, and READ requests answered.
    pub bytes_served: AtomicU64,
    /// READ requests answered.
    pub reads: AtomicU64,
    /// Files and bytes read ahead into the kernel's cache (`serve/readahead.rs`), and READs that
    /// still reached maildirfs for files of a read-ahead window (too late, or wasted).
    pub ahead_files: AtomicU64,
    /// Bytes of the files counted in `ahead_files` (a window's marker is not).
    pub ahead_bytes: AtomicU64,
    /// READs that reached maildirfs for a file inside a read-ahead window other than its
    /// marker.
    pub ahead_late: AtomicU64,
}

/// An open file of the image.
#[derive(Debug, Clone)]
pub enum Opened {
    /// A file of SOURCE, checked to be the captured inode.
    File(Arc<File>),
    /// Bytes held in the snapshot.
    Inline(Arc<[u8]>),
}

impl Source {
    /// SOURCE, open as `root`, at `path` (for messages), with every counter at 0.
    pub fn new(root: OwnedFd, path: PathBuf) -> Source {
        Source {
            root,
            path,
            vanished: Mutex::new(HashSet::new()),
            errors: Mutex::new(HashSet::new()),
            missed: Mutex::new(std::collections::HashMap::new()),
            refound: AtomicU64::new(0),
            bytes_served: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            ahead_files: AtomicU64::new(0),
            ahead_bytes: AtomicU64::new(0),
            ahead_late: AtomicU64::new(0),
        }
    }

    /// SOURCE's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The serving counters now.
    pub fn live(&self) -> crate::serve::counters::Live {
        crate::serve::counters::Live {
            vanished: self.vanished() as u64,
            read_errors: self.errors() as u64,
            refound: self.refound.load(Ordering::Relaxed),
            bytes_served: self.bytes_served.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            ahead_files: self.ahead_files.load(Ordering::Relaxed),
            ahead_bytes: self.ahead_bytes.load(Ordering::Relaxed),
            ahead_late: self.ahead_late.load(Ordering::Relaxed),
            view: crate::image::view::Counts::default(),
        }
    }

    /// How many files could not be served because they were gone.
    pub fn vanished(&self) -> usize {
        self.vanished.lock().len()
    }

    /// Opens the bytes of regular-file node `idx`.
    pub fn open(&self, snap: &Snapshot, idx: NodeIdx) -> Result<Opened> {
        self.open_as(snap, idx, true)
    }

    /// [`Source::open`] for a file no reader has asked for yet (the read-ahead): a file gone or
    /// unreadable is neither logged nor counted; the reader's own READ will be.
    pub fn open_quiet(&self, snap: &Snapshot, idx: NodeIdx) -> Result<Opened> {
        self.open_as(snap, idx, false)
    }

    fn open_as(&self, snap: &Snapshot, idx: NodeIdx, report: bool) -> Result<Opened> {
        let content = match snap.node(idx).kind {
            Kind::File(c) => c,
            Kind::Dir { .. } => {
                return Err(Error::io(
                    "cannot open",
                    snap.rel_path(idx),
                    errno(sys::Errno::EISDIR),
                ));
            }
            Kind::Symlink(_) => {
                return Err(Error::io(
                    "cannot open",
                    snap.rel_path(idx),
                    errno(sys::Errno::ELOOP),
                ));
            }
        };
        if let Content::Inline(i) = content {
            return Ok(Opened::Inline(Arc::clone(snap.inline(i))));
        }
        let ino = snap.node(idx).attr.ino;
        let links = || std::iter::once(idx).chain(snap.links(ino).filter(move |&l| l != idx));
        // A pinned inode is the captured file whatever happened to its name since.
        for link in links() {
            if let Some(pin) = snap.pin(link) {
                // A readable pin is the captured inode itself: share it. An `O_PATH` one is
                // reopened for reading and checked.
                let opened = if sys::is_path_fd(pin) {
                    reopen(pin).and_then(|fd| self.check(snap, link, fd))
                } else {
                    pin.try_clone_to_owned().map(File::from)
                };
                match opened {
                    Ok(f) => return Ok(Opened::File(Arc::new(f))),
                    Err(_) if !report => {}
                    Err(e) => log::warn!(
                        "cannot reopen pinned {}: {e}",
                        escape_path(&self.path.join(snap.rel_path(link)))
                    ),
                }
            }
        }
        // Unpinned (over the fd budget): try the captured path of every link to this inode,
        // then (for messages) look for a renamed file; a message's content never changes, only
        // its name.
        let mut last = None;
        for link in links() {
            match self.open_checked(snap, link) {
                Ok(f) => return Ok(Opened::File(Arc::new(f))),
                Err(e) => last = Some(e),
            }
        }
        let gone = last.as_ref().is_none_or(is_gone);
        if content == Content::Message && gone {
            for link in links() {
                if let Some(f) = self.refind_message(snap, link) {
                    // Counted once, by the open made for a reader.
                    if report {
                        self.refound.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(Opened::File(Arc::new(f)));
                }
            }
        }
        let err = last.unwrap_or_else(|| errno(sys::Errno::ENOENT));
        let path = self.path.join(snap.rel_path(idx));
        if !report {
            return Err(Error::io("cannot open", path, err));
        }
        if !is_gone(&err) {
            // Still there but not readable now (a mailbox made unreadable, an I/O error): the
            // reader gets that error, the log names the file once.
            self.failed(snap.ino_of(idx), &path, &err);
            return Err(Error::io("cannot open", path, err));
        }
        if self.vanished.lock().insert(snap.ino_of(idx)) {
            log::warn!(
                "{} is gone from the source since capture ({err}); read fails with ENOENT",
                escape_path(&path)
            );
        }
        Err(Error::io("file vanished", path, errno(sys::Errno::ENOENT)))
    }

    /// Counts and logs (once per file) an error other than the file being gone: the file is
    /// reported, the reader gets the error, and serving goes on.
    pub fn failed(&self, ino: Ino, path: &Path, err: &std::io::Error) {
        if self.errors.lock().insert(ino) {
            log::warn!("cannot read {}: {err}", escape_path(path));
        }
    }

    /// How many files have failed to open or read with an error other than being gone.
    pub fn errors(&self) -> usize {
        self.errors.lock().len()
    }

    /// Opens the node's captured path and checks it is the captured inode.
    fn open_checked(&self, snap: &Snapshot, idx: NodeIdx) -> std::io::Result<File> {
        let rel = snap.rel_path(idx);
        let fd = open_read(self.root.as_fd(), rel.as_os_str())?;
        self.check(snap, idx, fd)
    }

    /// Checks that `fd` is the file captured as node `idx`. The inode number alone is not
    /// enough: a freed inode number is soon reused by a new file. A message's content, size and
    /// mtime (its INTERNALDATE) never change, so they must match too; other files may only
    /// have grown (append-only logs), and only the captured length is ever served.
    fn check(&self, snap: &Snapshot, idx: NodeIdx, fd: OwnedFd) -> std::io::Result<File> {
        self.check_as(snap, idx, fd, false)
    }

    /// [`Source::check`]; with `copy`, a message may also be another inode with the same
    /// size and mtime (the caller has matched its base name): a copy of it, as a client's
    /// or a migration's copy-and-delete move makes (Dovecot sets a copy's mtime to the
    /// message's received date, and a file in `cur/` or `new/` is whole: it was written in
    /// `tmp/` first).
    fn check_as(
        &self,
        snap: &Snapshot,
        idx: NodeIdx,
        fd: OwnedFd,
        copy: bool,
    ) -> std::io::Result<File> {
        let st = sys::fstat(fd.as_fd())?;
        let node = snap.node(idx);
        let want = node.attr.ino.0;
        let is_message = matches!(node.kind, Kind::File(Content::Message));
        let ino_ok = want >= SYNTHETIC_INO || st.st_ino == want || (copy && is_message);
        let size = st.st_size.max(0) as u64;
        let same_content = match node.kind {
            Kind::File(Content::Message) => {
                let (now, then) = (sys::FileTime::mtime(&st), node.attr.mtime());
                size == node.attr.size && (now.sec, now.nsec) == (then.sec, then.nsec)
            }
            _ => size >= node.attr.size,
        };
        if st.st_dev != snap.source_dev
            || !ino_ok
            || !same_content
            || sys::FileKind::of_mode(st.st_mode) != sys::FileKind::Regular
        {
            return Err(errno(sys::Errno::ESTALE));
        }
        Ok(File::from(fd))
    }

    /// Finds an unpinned message that is gone from its captured path: by base name and inode in
    /// its own mailbox's `cur/` then `new/` (a flag change, `new/` to `cur/`), then in the other
    /// mailboxes of its account (Dovecot's MOVE hard-links a message into the destination
    /// folder under the same base name, then expunges it from the source). The file found must
    /// pass [`Source::check`]: same inode, size and mtime, so never other bytes.
    fn refind_message(&self, snap: &Snapshot, idx: NodeIdx) -> Option<File> {
        if self
            .missed
            .lock()
            .get(&snap.ino_of(idx))
            .is_some_and(|t| t.elapsed() < SEARCH_AGAIN_AFTER)
        {
            return None;
        }
        let found = self.search_account(snap, idx);
        if found.is_none() {
            self.missed
                .lock()
                .insert(snap.ino_of(idx), std::time::Instant::now());
        }
        found
    }

    fn search_account(&self, snap: &Snapshot, idx: NodeIdx) -> Option<File> {
        let messages_dir = snap.node(idx).parent;
        let mailbox = snap.node(messages_dir).parent;
        let found = self.search_mailbox(snap, idx, mailbox).or_else(|| {
            snap.account_mailboxes(mailbox)
                .into_iter()
                .filter(|&m| m != mailbox)
                .find_map(|m| self.search_mailbox(snap, idx, m))
        });
        if let Some((f, at)) = found {
            log::info!(
                "{} was renamed or moved after capture; serving it from {}",
                escape_path(&self.path.join(snap.rel_path(idx))),
                escape_path(&self.path.join(at))
            );
            return Some(f);
        }
        None
    }

    /// Looks for message `idx` in the `cur/` and `new/` of the mailbox node `mailbox`: by its
    /// inode (a rename, a hard link under any name), else by its base name (a copy); the
    /// file and where it was found.
    fn search_mailbox(
        &self,
        snap: &Snapshot,
        idx: NodeIdx,
        mailbox: NodeIdx,
    ) -> Option<(File, PathBuf)> {
        let base = base_name(snap.name(idx));
        let want_ino = snap.node(idx).attr.ino.0;
        let mbox_rel = snap.rel_path(mailbox);
        let flags = sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY;
        let mfd = sys::open_beneath(self.root.as_fd(), mbox_rel.as_os_str(), flags).ok()?;
        for sub in [names::CUR, names::NEW] {
            let Ok(dir) = sys::open_dir_at(mfd.as_fd(), OsStr::from_bytes(sub)) else {
                continue;
            };
            let Ok(entries) = sys::read_dir(dir.as_fd()) else {
                continue;
            };
            for e in entries {
                let same_inode = e.ino == want_ino;
                if !same_inode && base_name(&e.name) != base {
                    continue;
                }
                let Ok(fd) = open_read(dir.as_fd(), OsStr::from_bytes(&e.name)) else {
                    continue;
                };
                if let Ok(f) = self.check_as(snap, idx, fd, !same_inode) {
                    let at = mbox_rel
                        .join(OsStr::from_bytes(sub))
                        .join(OsStr::from_bytes(&e.name));
                    return Some((f, at));
                }
            }
        }
        None
    }
}

/// How soon a message that could not be found is looked for again.
const SEARCH_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Reopens a pinned inode for reading, without touching atime where allowed.
fn reopen(pin: std::os::fd::BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    sys::read_without_atime(|flags| sys::reopen_pinned(pin, flags))
}

/// Opens for reading without touching atime where allowed.
fn open_read(dir: std::os::fd::BorrowedFd<'_>, rel: &OsStr) -> std::io::Result<OwnedFd> {
    sys::read_without_atime(|flags| sys::open_beneath(dir, rel, flags))
}

/// Reads up to `size` bytes at `offset` of an opened file whose captured length is `len`:
/// nothing past the captured length is ever served.
pub fn read_at(opened: &Opened, len: u64, offset: u64, size: u32) -> std::io::Result<Vec<u8>> {
    let end = len.min(offset.saturating_add(u64::from(size)));
    if offset >= end {
        return Ok(Vec::new());
    }
    let want = (end - offset) as usize;
    match opened {
        Opened::Inline(bytes) => Ok(bytes[offset as usize..end as usize].to_vec()),
        Opened::File(f) => {
            let mut buf = vec![0u8; want];
            let mut done = 0;
            while done < want {
                match f.read_at(&mut buf[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            buf.truncate(done);
            Ok(buf)
        }
    }
}

/// Whether an open error means the captured file is no longer at its captured path (removed,
/// replaced, or a directory on the way swapped for a symlink or a mount), rather than there
/// but unreadable.
fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        sys::errno(e),
        Some(
            sys::Errno::ENOENT
                | sys::Errno::ESTALE
                | sys::Errno::ENOTDIR
                | sys::Errno::ELOOP
                | sys::Errno::EXDEV
        )
    )
}

fn errno(code: sys::Errno) -> std::io::Error {
    std::io::Error::from(code)
}
