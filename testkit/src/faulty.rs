//! A tiny FUSE filesystem, served by the test process, that holds two accounts' Maildirs and
//! can be told to misbehave under a capture: fail reads of chosen files with `EIO` (a disk
//! going bad, without device-mapper, which not every test machine has), or hold every read of
//! a control file until the test lets it go (a source that hangs, as a stuck NFS server does,
//! while the capture holds its locks). Mounted writable it also takes the files a capture
//! makes beside the mail, its `dovecot-uidlist.lock`, while the mail itself stays read-only.
//! maildirfs captures it as SOURCE.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

/// The names the tree holds, for the tests.
pub const BAD: &str = "Maildir/cur/1.bad:2,S";
pub const GOOD: &str = "Maildir/cur/2.good:2,S";
pub const NEW: &str = "Maildir/new/3.new";
/// The control file whose reads under its mailbox's lock a [`Stall`] holds.
pub const KEYWORDS: &str = "Maildir/dovecot-keywords";
/// The message of the second account, `other/Maildir`.
pub const OTHER: &str = "other/Maildir/cur/4.other:2,S";

/// A file created past this size is refused (`EFBIG`): a test's lock file is a few bytes, and
/// a stray `truncate` to a terabyte must not take the test process's memory.
const MAX_SIZE: u64 = 1 << 26;

/// One entry of the tree; its inode number is its index + 1. Entries are never removed, so
/// no number is given twice, and an unlinked file stays readable through an fd still open.
struct Node {
    parent: u64,
    name: Vec<u8>,
    /// `None` for a directory.
    data: Option<Vec<u8>>,
    /// Reads fail with `EIO` while this is set and `failing` is on.
    fails: bool,
    /// Made by a client of a writable mount: only these may be written, touched or unlinked.
    created: bool,
    /// Cleared by unlink: gone from lookups and listings.
    linked: bool,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Node {
    /// A node of the tree as mounted, dated the same so that repeated captures compare equal.
    fn original(parent: u64, name: &str, data: Option<&str>, fails: bool) -> Node {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Node {
            parent,
            name: name.as_bytes().to_vec(),
            perm: if data.is_some() { 0o644 } else { 0o755 },
            data: data.map(|d| d.as_bytes().to_vec()),
            fails,
            created: false,
            linked: true,
            uid: 0,
            gid: 0,
            atime: t,
            mtime: t,
            ctime: t,
        }
    }
}

/// What a mount is told to do, and the handles the test keeps to steer it.
#[derive(Clone, Default)]
pub struct Controls {
    /// Reads of [`BAD`] fail with `EIO` while this is set.
    pub failing: Arc<AtomicBool>,
    /// Holds reads of [`KEYWORDS`] while engaged. The filesystem keeps only a weak reference:
    /// a stall nobody else holds can never be released, so it never holds anything.
    pub stall: Arc<Stall>,
    /// Mount read-write and let clients create, write, touch and unlink new files.
    pub writable: bool,
}

/// The reads of [`KEYWORDS`] held while engaged, and whether it is.
#[derive(Default)]
struct Held {
    engaged: bool,
    /// Hold the reads made without the mailbox's lock too (the capture's warm-up read).
    unlocked_too: bool,
    /// Each reply with the bytes it is to get: the file never changes, so they can be cut
    /// when the read arrives, and answering needs no access to the tree.
    replies: Vec<(ReplyData, Vec<u8>)>,
}

/// A switch that holds reads of [`KEYWORDS`] unanswered: the reader blocks in read(2) while
/// the filesystem goes on answering everything else, since the session may have one thread
/// and so a handler must never wait.
///
/// Held reads are answered by [`Stall::release`], and in any case when the stall is dropped
/// or the filesystem's session ends. Dropping the `BackgroundSession` alone does not answer
/// them: its unmount fails (`EBUSY`, the reader has the file open), the session thread goes
/// on, and the mount stays until the test process exits. So release the stall before the
/// session is dropped; a test that panics first still drops its handle, which answers them.
#[derive(Default)]
pub struct Stall {
    held: Mutex<Held>,
}

impl Stall {
    pub fn new() -> Arc<Stall> {
        Arc::new(Stall::default())
    }

    /// From now on, every read of [`KEYWORDS`] made while its mailbox's
    /// `dovecot-uidlist.lock` exists is held.
    pub fn engage(&self) {
        self.held.lock().engaged = true;
    }

    /// From now on, every read of [`KEYWORDS`] is held, locked or not.
    pub fn engage_always(&self) {
        let mut held = self.held.lock();
        held.engaged = true;
        held.unlocked_too = true;
    }

    /// Stops holding and answers every held read with its data.
    pub fn release(&self) {
        let replies = {
            let mut held = self.held.lock();
            held.engaged = false;
            held.unlocked_too = false;
            std::mem::take(&mut held.replies)
        };
        // Answered outside the lock: a reply is a write to /dev/fuse, and the session thread
        // takes the lock for every read of the file.
        for (reply, data) in replies {
            reply.data(&data);
        }
    }

    /// How many reads are held right now.
    pub fn waiting(&self) -> usize {
        self.held.lock().replies.len()
    }

    /// Keeps `reply` if engaged; hands it back otherwise, to be answered at once. Checked and
    /// kept under one lock, so that a read arriving as the stall is released is never left
    /// behind.
    fn hold(&self, reply: ReplyData, data: Vec<u8>, locked: bool) -> Option<(ReplyData, Vec<u8>)> {
        let mut held = self.held.lock();
        if !held.engaged || !(locked || held.unlocked_too) {
            return Some((reply, data));
        }
        held.replies.push((reply, data));
        None
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        // Nobody is left to release the readers: answer them rather than leave them blocked.
        self.release();
    }
}

/// The filesystem: `Maildir/{cur,new,tmp}` with three messages, the first of which can fail,
/// and `dovecot-keywords`; `other/Maildir/{cur,new,tmp}` with one message.
pub struct Faulty {
    nodes: Mutex<Vec<Node>>,
    failing: Arc<AtomicBool>,
    stall: Weak<Stall>,
    writable: bool,
    /// The inode number of [`KEYWORDS`].
    keywords: u64,
}

impl Faulty {
    pub fn new(failing: Arc<AtomicBool>) -> Faulty {
        Faulty::with(Controls {
            failing,
            ..Controls::default()
        })
    }

    pub fn with(controls: Controls) -> Faulty {
        let mut nodes = Vec::new();
        let mut add = |parent, name, data, fails| {
            nodes.push(Node::original(parent, name, data, fails));
            nodes.len() as u64
        };
        let root = add(0, "", None, false);
        let maildir = add(root, "Maildir", None, false);
        let cur = add(maildir, "cur", None, false);
        let new = add(maildir, "new", None, false);
        add(maildir, "tmp", None, false);
        add(
            cur,
            "1.bad:2,S",
            Some("Subject: bad sector\n\nlost\n"),
            true,
        );
        add(cur, "2.good:2,S", Some("Subject: fine\n\nkept\n"), false);
        add(new, "3.new", Some("Subject: new\n\nalso kept\n"), false);
        let keywords = add(
            maildir,
            "dovecot-keywords",
            Some("0 $Forwarded\n1 Junk\n"),
            false,
        );
        let other = add(root, "other", None, false);
        let other_maildir = add(other, "Maildir", None, false);
        let other_cur = add(other_maildir, "cur", None, false);
        add(other_maildir, "new", None, false);
        add(other_maildir, "tmp", None, false);
        add(
            other_cur,
            "4.other:2,S",
            Some("Subject: other\n\nserved\n"),
            false,
        );
        Faulty {
            nodes: Mutex::new(nodes),
            failing: controls.failing,
            stall: Arc::downgrade(&controls.stall),
            writable: controls.writable,
            keywords,
        }
    }
}

/// The entry of `ino` in `nodes`.
fn node(nodes: &[Node], ino: u64) -> Option<&Node> {
    nodes.get(usize::try_from(ino.checked_sub(1)?).ok()?)
}

fn node_mut(nodes: &mut [Node], ino: u64) -> Option<&mut Node> {
    nodes.get_mut(usize::try_from(ino.checked_sub(1)?).ok()?)
}

/// The inode number of `name` in directory `parent`, if it is there.
fn child(nodes: &[Node], parent: u64, name: &OsStr) -> Option<u64> {
    let i = nodes
        .iter()
        .position(|n| n.linked && n.parent == parent && n.name == name.as_bytes())?;
    Some(i as u64 + 1)
}

fn attr(nodes: &[Node], ino: u64) -> Option<FileAttr> {
    let n = node(nodes, ino)?;
    let (kind, size) = match &n.data {
        None => (FileType::Directory, 0),
        Some(d) => (FileType::RegularFile, d.len() as u64),
    };
    Some(FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: n.atime,
        mtime: n.mtime,
        ctime: n.ctime,
        crtime: n.ctime,
        kind,
        perm: n.perm,
        nlink: u32::from(n.linked),
        uid: n.uid,
        gid: n.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    })
}

/// Node `ino` if it is a file that clients may change (one they created), or why not. Its
/// `data` is then `Some`.
fn changeable(nodes: &mut [Node], ino: u64) -> Result<&mut Node, Errno> {
    let n = node_mut(nodes, ino).ok_or(Errno::ENOENT)?;
    match &n.data {
        None => Err(Errno::EISDIR),
        Some(_) if !n.created => Err(Errno::EROFS),
        Some(_) => Ok(n),
    }
}

fn resize(data: &mut Vec<u8>, size: u64) -> Result<(), Errno> {
    if size > MAX_SIZE {
        return Err(Errno::EFBIG);
    }
    data.resize(size as usize, 0);
    Ok(())
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

const TTL: Duration = Duration::from_secs(1);

impl Filesystem for Faulty {
    fn lookup(&self, _r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let nodes = self.nodes.lock();
        match child(&nodes, parent.0, name).and_then(|ino| attr(&nodes, ino)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _r: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match attr(&self.nodes.lock(), ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _r: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut nodes = self.nodes.lock();
        let n = match changeable(&mut nodes, ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let data = n.data.get_or_insert_default();
        if let Some(size) = size {
            if let Err(e) = resize(data, size) {
                return reply.error(e);
            }
        }
        if let Some(mode) = mode {
            n.perm = (mode & 0o7777) as u16;
        }
        n.uid = uid.unwrap_or(n.uid);
        n.gid = gid.unwrap_or(n.gid);
        n.atime = atime.map_or(n.atime, time);
        n.mtime = mtime.map_or(n.mtime, time);
        n.ctime = ctime.unwrap_or_else(SystemTime::now);
        match attr(&nodes, ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn unlink(&self, _r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut nodes = self.nodes.lock();
        let Some(ino) = child(&nodes, parent.0, name) else {
            return reply.error(Errno::ENOENT);
        };
        let n = match changeable(&mut nodes, ino) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        n.linked = false;
        n.ctime = SystemTime::now();
        reply.ok();
    }

    fn rmdir(&self, _r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // Only files are ever created, so every directory is the original tree's.
        match child(&self.nodes.lock(), parent.0, name) {
            Some(_) => reply.error(Errno::EROFS),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn create(
        &self,
        r: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if !self.writable {
            return reply.error(Errno::EROFS);
        }
        if name.len() > 255 {
            return reply.error(Errno::ENAMETOOLONG);
        }
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let mut nodes = self.nodes.lock();
        match node(&nodes, parent.0) {
            Some(p) if p.linked && p.data.is_none() => {}
            Some(_) => return reply.error(Errno::ENOTDIR),
            None => return reply.error(Errno::ENOENT),
        }
        // The kernel looks the name up before it creates, and answers O_EXCL itself; a name
        // that is there all the same (a race, or a create without O_EXCL) is refused too, as
        // opening an existing file through create is more than a lock file needs.
        if child(&nodes, parent.0, name).is_some() {
            return reply.error(Errno::EEXIST);
        }
        let now = SystemTime::now();
        nodes.push(Node {
            parent: parent.0,
            name: name.as_bytes().to_vec(),
            data: Some(Vec::new()),
            fails: false,
            created: true,
            linked: true,
            perm: (mode & !umask & 0o7777) as u16,
            uid: r.uid(),
            gid: r.gid(),
            atime: now,
            mtime: now,
            ctime: now,
        });
        match attr(&nodes, nodes.len() as u64) {
            Some(a) => reply.created(
                &TTL,
                &a,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            None => reply.error(Errno::EIO),
        }
    }

    fn open(&self, _r: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            let mut nodes = self.nodes.lock();
            let n = match changeable(&mut nodes, ino.0) {
                Ok(n) => n,
                Err(e) => return reply.error(e),
            };
            let data = n.data.get_or_insert_default();
            // The kernel sends O_TRUNC as a setattr unless told otherwise; honoured here too,
            // should it ever pass the flag on.
            if flags.0 & libc::O_TRUNC != 0 {
                data.clear();
                n.mtime = SystemTime::now();
                n.ctime = n.mtime;
            }
        }
        // Direct I/O: every read reaches `read`, none is answered from the page cache.
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _r: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (bytes, locked) = {
            let nodes = self.nodes.lock();
            let Some(n) = node(&nodes, ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            // Whether the file's mailbox is locked now: a stall holds only the reads made
            // under the lock (the capture also reads control files before locking, to warm
            // the cache, and that read must go through).
            let locked = nodes
                .iter()
                .any(|o| o.linked && o.parent == n.parent && o.name == b"dovecot-uidlist.lock");
            let Some(data) = n.data.as_deref() else {
                return reply.error(Errno::EISDIR);
            };
            if n.fails && self.failing.load(Ordering::SeqCst) {
                return reply.error(Errno::EIO);
            }
            let start = usize::try_from(offset).map_or(data.len(), |o| o.min(data.len()));
            let end = start.saturating_add(size as usize).min(data.len());
            (data[start..end].to_vec(), locked)
        };
        // Held without the tree's lock, and without waiting: the session thread goes on.
        let reply = match self.stall.upgrade() {
            Some(stall) if ino.0 == self.keywords => stall.hold(reply, bytes, locked),
            _ => Some((reply, bytes)),
        };
        if let Some((reply, bytes)) = reply {
            reply.data(&bytes);
        }
    }

    fn write(
        &self,
        _r: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut nodes = self.nodes.lock();
        let n = match changeable(&mut nodes, ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let contents = n.data.get_or_insert_default();
        let end = offset.saturating_add(data.len() as u64);
        if end > contents.len() as u64 {
            if let Err(e) = resize(contents, end) {
                return reply.error(e);
            }
        }
        // `end` fits: it is at most the length, resized within `MAX_SIZE` if need be.
        contents[offset as usize..end as usize].copy_from_slice(data);
        n.mtime = SystemTime::now();
        n.ctime = n.mtime;
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _r: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _r: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Nothing is kept anywhere but here.
        reply.ok();
    }

    fn readdir(
        &self,
        _r: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = {
            let nodes = self.nodes.lock();
            let Some(dir) = node(&nodes, ino.0) else {
                return reply.error(Errno::ENOENT);
            };
            if dir.data.is_some() {
                return reply.error(Errno::ENOTDIR);
            }
            let up = if dir.parent == 0 { ino.0 } else { dir.parent };
            let mut entries = vec![
                (ino.0, FileType::Directory, b".".to_vec()),
                (up, FileType::Directory, b"..".to_vec()),
            ];
            for (i, n) in nodes.iter().enumerate() {
                if n.linked && n.parent == ino.0 {
                    let kind = match n.data {
                        None => FileType::Directory,
                        Some(_) => FileType::RegularFile,
                    };
                    entries.push((i as u64 + 1, kind, n.name.clone()));
                }
            }
            entries
        };
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, OsStr::from_bytes(&name)) {
                break;
            }
        }
        reply.ok();
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        // The session has ended: whatever is held would otherwise wait for a test that may
        // never release it.
        if let Some(stall) = self.stall.upgrade() {
            stall.release();
        }
    }
}

/// Serves a [`Faulty`] tree at `mountpoint`, read-only, until dropped; `failing` turns the
/// faults on.
pub fn mount(mountpoint: &Path, failing: Arc<AtomicBool>) -> fuser::BackgroundSession {
    mount_with(
        mountpoint,
        Controls {
            failing,
            ..Controls::default()
        },
    )
}

/// Serves a [`Faulty`] tree at `mountpoint` as `controls` say, until dropped.
pub fn mount_with(mountpoint: &Path, controls: Controls) -> fuser::BackgroundSession {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        if controls.writable {
            fuser::MountOption::RW
        } else {
            fuser::MountOption::RO
        },
        fuser::MountOption::FSName("faulty".to_owned()),
    ];
    fuser::spawn_mount(Faulty::with(controls), mountpoint, &config)
        .expect("mount the faulty source")
}
