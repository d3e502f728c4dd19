//! A tiny read-only FUSE filesystem, served by the test process, that holds one Maildir and
//! can be told to fail reads of chosen files with `EIO`: a disk going bad under a capture,
//! without device-mapper (not every test machine has it). maildirfs captures it as SOURCE.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

/// One entry of the tree; its inode number is its index + 1.
struct Node {
    parent: u64,
    name: &'static str,
    /// `None` for a directory.
    data: Option<Vec<u8>>,
    /// Reads fail with `EIO` while this is set and `failing` is on.
    fails: bool,
}

/// The filesystem: `Maildir/{cur,new,tmp}` with three messages, the first of which can fail.
pub struct Faulty {
    nodes: Vec<Node>,
    failing: Arc<AtomicBool>,
}

/// The names the tree holds, for the tests.
pub const BAD: &str = "Maildir/cur/1.bad:2,S";
pub const GOOD: &str = "Maildir/cur/2.good:2,S";
pub const NEW: &str = "Maildir/new/3.new";

impl Faulty {
    pub fn new(failing: Arc<AtomicBool>) -> Faulty {
        let dir = |parent, name| Node {
            parent,
            name,
            data: None,
            fails: false,
        };
        let file = |parent, name, body: &str, fails| Node {
            parent,
            name,
            data: Some(body.as_bytes().to_vec()),
            fails,
        };
        Faulty {
            nodes: vec![
                dir(0, ""),        // 1: root
                dir(1, "Maildir"), // 2
                dir(2, "cur"),     // 3
                dir(2, "new"),     // 4
                dir(2, "tmp"),     // 5
                file(3, "1.bad:2,S", "Subject: bad sector\n\nlost\n", true),
                file(3, "2.good:2,S", "Subject: fine\n\nkept\n", false),
                file(4, "3.new", "Subject: new\n\nalso kept\n", false),
            ],
            failing,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.nodes.get(ino.checked_sub(1)? as usize)?;
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let (kind, perm, size) = match &n.data {
            None => (FileType::Directory, 0o755, 0),
            Some(d) => (FileType::RegularFile, 0o644, d.len() as u64),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

const TTL: Duration = Duration::from_secs(1);

impl Filesystem for Faulty {
    fn lookup(&self, _r: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self
            .nodes
            .iter()
            .position(|n| n.parent == parent.0 && n.name.as_bytes() == name.as_bytes());
        match found.and_then(|i| self.attr(i as u64 + 1)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _r: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _r: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
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
        _lock: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let Some(n) = self.nodes.get(ino.0 as usize - 1) else {
            return reply.error(Errno::ENOENT);
        };
        if n.fails && self.failing.load(Ordering::SeqCst) {
            return reply.error(Errno::EIO);
        }
        let data = n.data.as_deref().unwrap_or_default();
        let start = (offset as usize).min(data.len());
        let end = (start + size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn readdir(
        &self,
        _r: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".to_owned()),
            (ino.0, FileType::Directory, "..".to_owned()),
        ];
        for (i, n) in self.nodes.iter().enumerate() {
            if n.parent == ino.0 {
                let kind = match n.data {
                    None => FileType::Directory,
                    Some(_) => FileType::RegularFile,
                };
                entries.push((i as u64 + 1, kind, n.name.to_owned()));
            }
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Serves a [`Faulty`] tree at `mountpoint` until dropped; `failing` turns the faults on.
pub fn mount(mountpoint: &Path, failing: Arc<AtomicBool>) -> fuser::BackgroundSession {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName("faulty".to_owned()),
    ];
    fuser::spawn_mount(Faulty::new(failing), mountpoint, &config).expect("mount the faulty source")
}
