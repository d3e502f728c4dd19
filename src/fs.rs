//! The `fuser::Filesystem` adapter: each callback asks the snapshot or the source and turns the
//! answer into a reply. No Maildir knowledge lives here.
//!
//! The image never changes while mounted, so every TTL is long, listings come with attributes,
//! and the kernel keeps every page: by default there is no OPEN, RELEASE, OPENDIR or FLUSH
//! round trip at all (see [`ReadPath`]). Every write-type operation fails with `EROFS`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use lru::LruCache;
use parking_lot::Mutex;

use crate::snapshot::{Ino, Kind, NodeIdx, Snapshot};
use crate::source::{self, Opened, Source};

/// How long the kernel may cache entries, attributes and negative lookups: the image is
/// immutable, so anything long is right; one day keeps the numbers far from any overflow.
const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A file handle as given to the kernel (passthrough mode only; 0 means none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Fh(u64);

/// How file contents reach readers; decided when the kernel connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReadPath {
    /// No OPEN or RELEASE round trip at all (the kernel's no-open mode, entered by answering
    /// the first OPEN with `ENOSYS`): the kernel keeps every page it read, and a READ is served
    /// by `pread` on an fd from a small LRU cache.
    NoOpen = 0,
    /// Each open registers the source file with the kernel as a backing file, and reads go
    /// straight to it without passing through maildirfs (Linux >= 6.9, root).
    Passthrough = 1,
}

impl ReadPath {
    pub fn from_u8(v: u8) -> ReadPath {
        if v == ReadPath::Passthrough as u8 {
            ReadPath::Passthrough
        } else {
            ReadPath::NoOpen
        }
    }
}

/// Open fds kept for reads in no-open mode. Readers go through a tree file by file, so a few
/// dozen are plenty; the fd budget keeps room for them (`pin::RESERVE`).
const FD_CACHE: usize = 64;

/// Backing files registered with the kernel, one per inode while it is open (passthrough).
#[derive(Debug, Default)]
struct Backing {
    /// Open handles: the inode each one is for and its bytes.
    by_handle: HashMap<Fh, (Ino, Opened)>,
    /// One backing id per inode, with the number of handles using it.
    by_ino: HashMap<Ino, (Arc<BackingId>, usize)>,
}

/// The mounted filesystem.
#[derive(Debug)]
pub struct MaildirFs {
    snap: Arc<Snapshot>,
    source: Arc<Source>,
    /// Whether passthrough was asked for (`-o passthrough`).
    want_passthrough: bool,
    /// The `ReadPath` in use, shared with the mount summary.
    read_path: Arc<AtomicU8>,
    /// Passthrough handles and backing ids. Protected by this mutex.
    backing: Mutex<Backing>,
    /// No-open mode: fds for reads by inode, least recently used dropped first. Protected by
    /// this mutex.
    fds: Mutex<LruCache<Ino, Opened>>,
    /// Handles are never reused while mounted.
    next_fh: AtomicU64,
}

impl MaildirFs {
    pub fn new(snap: Arc<Snapshot>, source: Arc<Source>, want_passthrough: bool) -> MaildirFs {
        MaildirFs {
            snap,
            source,
            want_passthrough,
            read_path: Arc::new(AtomicU8::new(ReadPath::NoOpen as u8)),
            backing: Mutex::new(Backing::default()),
            fds: Mutex::new(LruCache::new(
                NonZeroUsize::new(FD_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            next_fh: AtomicU64::new(1),
        }
    }

    /// The read path in use, readable after the mount (for the summary).
    pub fn read_path(&self) -> Arc<AtomicU8> {
        Arc::clone(&self.read_path)
    }

    fn passthrough(&self) -> bool {
        self.read_path.load(Ordering::Relaxed) == ReadPath::Passthrough as u8
    }

    fn node(&self, ino: INodeNo) -> Result<NodeIdx, Errno> {
        self.snap.resolve(Ino(ino.0)).ok_or(Errno::ENOENT)
    }

    fn lookup_child(&self, parent: INodeNo, name: &OsStr) -> Result<NodeIdx, Errno> {
        let dir = self.node(parent)?;
        if !matches!(self.snap.node(dir).kind, Kind::Dir { .. }) {
            return Err(Errno::ENOTDIR);
        }
        if self.snap.is_unlistable(dir) {
            return Err(Errno::EIO);
        }
        self.snap.lookup(dir, name.as_bytes()).ok_or(Errno::ENOENT)
    }

    /// Passthrough open: the file, checked, registered as the inode's backing file (once per
    /// inode while open). Inline files, and files the kernel refuses, are read through us.
    fn open_passthrough(
        &self,
        ino: INodeNo,
        reply: &ReplyOpen,
    ) -> Result<(Fh, Option<Arc<BackingId>>), Errno> {
        let idx = self.node(ino)?;
        let opened = self.source.open(&self.snap, idx).map_err(|e| e.errno())?;
        let fh = Fh(self.next_fh.fetch_add(1, Ordering::Relaxed));
        let key = Ino(ino.0);
        let mut b = self.backing.lock();
        let id = match (&opened, b.by_ino.get_mut(&key)) {
            (Opened::Inline(_), _) => None,
            (Opened::File(_), Some((id, users))) => {
                *users += 1;
                Some(Arc::clone(id))
            }
            (Opened::File(f), None) => match reply.open_backing(f.as_fd()) {
                Ok(id) => {
                    let id = Arc::new(id);
                    b.by_ino.insert(key, (Arc::clone(&id), 1));
                    Some(id)
                }
                Err(e) => {
                    log::warn!("passthrough refused by the kernel ({e}); serving reads itself");
                    None
                }
            },
        };
        b.by_handle.insert(fh, (key, opened));
        Ok((fh, id))
    }

    /// The bytes to read for a request: the handle's in passthrough mode, else a cached fd.
    fn opened_for(&self, ino: INodeNo, fh: FileHandle, idx: NodeIdx) -> Result<Opened, Errno> {
        if fh.0 != 0 {
            return self
                .backing
                .lock()
                .by_handle
                .get(&Fh(fh.0))
                .map(|(_, o)| o.clone())
                .ok_or(Errno::EBADF);
        }
        let key = Ino(ino.0);
        if let Some(o) = self.fds.lock().get(&key) {
            return Ok(o.clone());
        }
        // Opened outside the lock: a slow open must not stall other readers.
        let opened = self.source.open(&self.snap, idx).map_err(|e| e.errno())?;
        self.fds.lock().put(key, opened.clone());
        Ok(opened)
    }

    fn read_node(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let idx = self.node(ino)?;
        let opened = self.opened_for(ino, fh, idx)?;
        let len = self.snap.node(idx).attr.size;
        let data = source::read_at(&opened, len, offset, size).map_err(|e| {
            let path = self.source.path().join(self.snap.rel_path(idx));
            self.source.failed(idx, &path, &e);
            Errno::from(e)
        })?;
        self.source.reads.fetch_add(1, Ordering::Relaxed);
        self.source
            .bytes_served
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    /// The directory at `ino`, its parent, and its children's index range.
    fn dir(&self, ino: INodeNo) -> Result<(NodeIdx, NodeIdx, std::ops::Range<u32>), Errno> {
        let dir = self.node(ino)?;
        let Kind::Dir { .. } = self.snap.node(dir).kind else {
            return Err(Errno::ENOTDIR);
        };
        if self.snap.is_unlistable(dir) {
            return Err(Errno::EIO);
        }
        Ok((dir, self.snap.node(dir).parent, self.snap.children(dir)))
    }

    /// The entry at listing position `pos`: `.`, `..`, then the children in name order.
    fn entry_at(
        &self,
        pos: u64,
        (dir, parent, children): &(NodeIdx, NodeIdx, std::ops::Range<u32>),
    ) -> Option<(NodeIdx, &[u8])> {
        match pos {
            0 => Some((*dir, b".")),
            1 => Some((*parent, b"..")),
            _ => {
                let c = children.start.checked_add(u32::try_from(pos - 2).ok()?)?;
                (c < children.end).then(|| (NodeIdx(c), self.snap.name(NodeIdx(c))))
            }
        }
    }
}

fn kind_of(snap: &Snapshot, idx: NodeIdx) -> FileType {
    match snap.node(idx).kind {
        Kind::Dir { .. } => FileType::Directory,
        Kind::File(_) => FileType::RegularFile,
        Kind::Symlink(_) => FileType::Symlink,
    }
}

impl Filesystem for MaildirFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        // Listings come with attributes and fill the dentry cache; lookups and directory reads
        // may run in parallel; symlink targets are cached: nothing can change.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            let _ = config.add_capabilities(cap);
        }
        if self.want_passthrough {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) => {
                    let _ = config.set_max_stack_depth(1);
                    self.read_path
                        .store(ReadPath::Passthrough as u8, Ordering::Relaxed);
                }
                Err(_) => log::warn!("the kernel has no FUSE passthrough; serving reads itself"),
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.lookup_child(parent, name) {
            Ok(idx) => reply.entry(&TTL, &self.snap.file_attr(idx), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(idx) => reply.attr(&TTL, &self.snap.file_attr(idx)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino).map(|idx| self.snap.node(idx).kind) {
            Ok(Kind::Symlink(i)) => reply.data(self.snap.inline(i)),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return reply.error(Errno::EROFS);
        }
        if !self.passthrough() {
            // ENOSYS puts the kernel in no-open mode for good: no OPEN, FLUSH or RELEASE
            // round trip for any file again, and every page read stays cached.
            return reply.error(Errno::ENOSYS);
        }
        let cache = FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH;
        match self.open_passthrough(ino, &reply) {
            Ok((fh, Some(id))) => {
                reply.opened_passthrough(FileHandle(fh.0), FopenFlags::empty(), &id)
            }
            Ok((fh, None)) => reply.opened(FileHandle(fh.0), cache),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.read_node(ino, fh, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush, ever: ENOSYS tells the kernel not to send FLUSH again (without an
        // OPEN reply there is no FOPEN_NOFLUSH to say it per file).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut b = self.backing.lock();
        if let Some((ino, _)) = b.by_handle.remove(&Fh(fh.0))
            && let Some((_, users)) = b.by_ino.get_mut(&ino)
        {
            *users -= 1;
            if *users == 0 {
                // The last handle: the kernel no longer needs the backing id.
                b.by_ino.remove(&ino);
            }
        }
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS: no OPENDIR/RELEASEDIR round trips from now on, and the kernel caches
        // listings (its no-opendir mode).
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.dir(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let mut pos = offset;
        while let Some((idx, name)) = self.entry_at(pos, &dir) {
            let ino = INodeNo(self.snap.ino_of(idx).0);
            if reply.add(
                ino,
                pos + 1,
                kind_of(&self.snap, idx),
                OsStr::from_bytes(name),
            ) {
                break;
            }
            pos += 1;
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let dir = match self.dir(ino) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let mut pos = offset;
        while let Some((idx, name)) = self.entry_at(pos, &dir) {
            let attr = self.snap.file_attr(idx);
            let name = OsStr::from_bytes(name);
            if reply.add(attr.ino, pos + 1, name, &TTL, &attr, Generation(0)) {
                break;
            }
            pos += 1;
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let t = &self.snap.totals;
        let blocks = t.bytes.div_ceil(4096);
        reply.statfs(blocks, 0, 0, self.snap.len() as u64, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.node(ino) {
            Ok(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    // Every write-type operation: the image is read-only.

    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _r: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, _m: u32, _u: u32, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _p: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _t: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _np: INodeNo,
        _nn: &OsStr,
        _f: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(&self, _req: &Request, _i: INodeNo, _np: INodeNo, _nn: &OsStr, reply: ReplyEntry) {
        reply.error(Errno::EROFS);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _wf: fuser::WriteFlags,
        _flags: OpenFlags,
        _lo: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _p: INodeNo,
        _n: &OsStr,
        _m: u32,
        _u: u32,
        _f: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _i: INodeNo,
        _n: &OsStr,
        _v: &[u8],
        _f: i32,
        _p: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _i: INodeNo, _n: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _l: u64,
        _m: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _i: INodeNo,
        _fh: FileHandle,
        _o: u64,
        _io: INodeNo,
        _fho: FileHandle,
        _oo: u64,
        _l: u64,
        _f: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }
}
