//! The `fuser::Filesystem` adapter: each callback asks the view (`image/view.rs`) and the source and
//! turns the answer into a reply. No Maildir knowledge lives here.
//!
//! An account's snapshot stays the same while it is in the working set, so every TTL is long,
//! listings come with attributes, and the kernel keeps every page: by default there is no
//! OPEN, RELEASE, OPENDIR or FLUSH round trip at all (see [`ReadPath`]). A request inside an
//! account not captured yet is answered by the capture thread once it is captured (the FUSE
//! thread goes on with other requests). When an account leaves the working set the kernel is
//! told to forget its names (`inval_entry`) and its root's listing (`inval_inode`); its files'
//! pages stay, for a message captured again as the same file keeps its node id and
//! generation. Every write-type operation fails with `EROFS`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use lru::LruCache;
use parking_lot::Mutex;

use crate::image::snapshot::{Ino, Kind, NodeIdx, Snapshot};
use crate::image::view::{At, Evicted, View};
use crate::serve::readahead::{PageStore, ReadAhead};
use crate::serve::source::{self, Opened, Source};

/// How long the kernel may cache entries, attributes and negative lookups: a captured account
/// does not change until it leaves the working set, and then the kernel is told; one day
/// keeps the numbers far from any overflow.
const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The readahead asked of the kernel for one file (large files; small ones are read ahead
/// across files by `serve/readahead.rs`).
pub const MAX_READAHEAD: u32 = 1 << 20;

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

/// A file as the kernel knows it: its node id and generation (another capture may serve
/// another file under the same node id, with another generation).
type FileKey = (Ino, u64);

/// Backing files registered with the kernel, one per inode while it is open (passthrough).
#[derive(Debug, Default)]
struct Backing {
    /// Open handles: the file each one is for and its bytes.
    by_handle: HashMap<Fh, (FileKey, Opened)>,
    /// One backing id per file, with the number of handles using it.
    by_ino: HashMap<FileKey, (Arc<BackingId>, usize)>,
}

/// The mounted filesystem.
#[derive(Debug)]
pub struct MaildirFs {
    view: Arc<View>,
    source: Arc<Source>,
    /// Whether passthrough was asked for (`-o passthrough`).
    want_passthrough: bool,
    /// The `ReadPath` in use, shared with the mount summary.
    read_path: Arc<AtomicU8>,
    /// Passthrough handles and backing ids. Protected by this mutex.
    backing: Mutex<Backing>,
    /// No-open mode: fds for reads by file, least recently used dropped first. Protected by
    /// this mutex.
    fds: Mutex<LruCache<FileKey, Opened>>,
    /// Handles are never reused while mounted.
    next_fh: AtomicU64,
    /// The read-ahead across files, once the kernel's notifier exists (no-open mode only).
    ahead: Arc<OnceLock<ReadAhead>>,
}

/// A directory listing to answer: the directory, its parent's node id (for `..`).
type Listing = (At, Ino);

impl MaildirFs {
    pub fn new(view: Arc<View>, source: Arc<Source>, want_passthrough: bool) -> MaildirFs {
        MaildirFs {
            view,
            source,
            want_passthrough,
            read_path: Arc::new(AtomicU8::new(ReadPath::NoOpen as u8)),
            backing: Mutex::new(Backing::default()),
            fds: Mutex::new(LruCache::new(
                NonZeroUsize::new(FD_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            next_fh: AtomicU64::new(1),
            ahead: Arc::new(OnceLock::new()),
        }
    }

    /// Where the read-ahead goes once the session's notifier exists ([`start_read_ahead`]).
    pub fn ahead_slot(&self) -> Arc<OnceLock<ReadAhead>> {
        Arc::clone(&self.ahead)
    }

    /// The read path in use, readable after the mount (for the summary).
    pub fn read_path(&self) -> Arc<AtomicU8> {
        Arc::clone(&self.read_path)
    }

    fn passthrough(&self) -> bool {
        self.read_path.load(Ordering::Relaxed) == ReadPath::Passthrough as u8
    }

    fn node(&self, ino: INodeNo) -> Result<At, Errno> {
        self.view.node(Ino(ino.0)).map_err(Errno::from_i32)
    }

    /// Runs `then` with the directory at `ino` ready to read: at once, or, for an account
    /// not captured yet, on the capture thread once it is.
    fn with_dir(&self, ino: INodeNo, then: impl FnOnce(Result<Listing, Errno>) + Send + 'static) {
        let dir = match self.node(ino) {
            Ok(d) => d,
            Err(e) => return then(Err(e)),
        };
        if !matches!(dir.snap.node(dir.idx).kind, Kind::Dir { .. }) {
            return then(Err(Errno::ENOTDIR));
        }
        if dir.snap.is_unlistable(dir.idx) {
            return then(Err(Errno::EIO));
        }
        let parent = self.view.parent_ino(&dir);
        match self.view.deferred(&dir) {
            None => then(Ok((dir, parent))),
            Some(account) => self.view.with_account(
                account,
                Box::new(move |r| {
                    then(
                        r.map(|snap| {
                            let at = At {
                                snap,
                                idx: NodeIdx::ROOT,
                            };
                            (at, parent)
                        })
                        .map_err(Errno::from_i32),
                    )
                }),
            ),
        }
    }

    /// [`MaildirFs::with_dir`] for a READDIR at `offset`: the listing and the position to
    /// continue at.
    fn with_listing(
        &self,
        ino: INodeNo,
        offset: u64,
        then: impl FnOnce(Result<(Listing, u64), Errno>) + Send + 'static,
    ) {
        self.with_dir(ino, move |r| {
            then(r.and_then(|l| {
                let pos = position(&l.0.snap, offset)?;
                Ok((l, pos))
            }))
        });
    }

    /// Passthrough open: the file, checked, registered as the inode's backing file (once per
    /// inode while open). Inline files, and files the kernel refuses, are read through us.
    fn open_passthrough(
        &self,
        ino: INodeNo,
        reply: &ReplyOpen,
    ) -> Result<(Fh, Option<Arc<BackingId>>), Errno> {
        let at = self.node(ino)?;
        let opened = self.source.open(&at.snap, at.idx).map_err(|e| e.errno())?;
        // The kernel reads the backing file itself, and no READ reaches us: an opened file
        // counts as read for the working set (the backing fd keeps it readable whatever
        // becomes of the account).
        at.snap.mark_read(at.idx);
        let fh = Fh(self.next_fh.fetch_add(1, Ordering::Relaxed));
        let key = (Ino(ino.0), at.snap.generation(at.idx));
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
    fn opened_for(&self, fh: FileHandle, at: &At) -> Result<Opened, Errno> {
        if fh.0 != 0 {
            return self
                .backing
                .lock()
                .by_handle
                .get(&Fh(fh.0))
                .map(|(_, o)| o.clone())
                .ok_or(Errno::EBADF);
        }
        let key = (at.snap.ino_of(at.idx), at.snap.generation(at.idx));
        if let Some(o) = self.fds.lock().get(&key) {
            return Ok(o.clone());
        }
        // Opened outside the lock: a slow open must not stall other readers.
        let opened = self.source.open(&at.snap, at.idx).map_err(|e| e.errno())?;
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
        let at = self.node(ino)?;
        if let Some(ahead) = self.ahead.get() {
            // Before this read, so that the files after it are read while it is.
            ahead.on_read(&at.snap, at.idx, offset);
        }
        let opened = self.opened_for(fh, &at)?;
        let len = at.snap.node(at.idx).attr.size;
        let data = source::read_at(&opened, len, offset, size).map_err(|e| {
            let path = self.source.path().join(at.snap.rel_path(at.idx));
            self.source.failed(at.snap.ino_of(at.idx), &path, &e);
            Errno::from(e)
        })?;
        if offset + data.len() as u64 >= len {
            at.snap.mark_read(at.idx);
        }
        self.source.reads.fetch_add(1, Ordering::Relaxed);
        self.source
            .bytes_served
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }
}

/// The kernel's page cache, reached through the session's notifier (`FUSE_NOTIFY_STORE`).
struct KernelStore(fuser::Notifier);

impl PageStore for KernelStore {
    fn store(&self, ino: Ino, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.store(INodeNo(ino.0), offset, data)
    }
}

/// Starts the read-ahead across files into `slot` (see `serve/readahead.rs`), unless `off`
/// (`--no-read-ahead`). Passthrough mode needs none: the kernel reads the source files itself.
pub fn start_read_ahead(
    slot: &OnceLock<ReadAhead>,
    source: &Arc<Source>,
    notifier: fuser::Notifier,
    read_path: ReadPath,
    off: bool,
) {
    if off || read_path == ReadPath::Passthrough {
        return;
    }
    match ReadAhead::start(Arc::clone(source), Box::new(KernelStore(notifier))) {
        Ok(ahead) => {
            let _ = slot.set(ahead);
        }
        Err(e) => log::warn!("cannot start the read-ahead: {e}; reading file by file"),
    }
}

/// Tells the kernel, from a thread of its own, to forget what it caches of the accounts
/// that leave the working set. Never from a FUSE thread or a capture thread: the kernel
/// takes the parent directory's lock for an invalidation, and a request holding it may be
/// waiting for one of those.
pub fn notify_evictions(view: &View, notifier: fuser::Notifier) {
    let (tx, rx) = std::sync::mpsc::channel::<Evicted>();
    let spawned = std::thread::Builder::new()
        .name("invalidate".to_owned())
        .spawn(move || {
            for e in rx {
                // ENOENT: the kernel had nothing cached. Any error only leaves the
                // kernel's entries to their TTL; nothing served changes.
                let _ = notifier.inval_inode(INodeNo(e.dir.0), 0, 0);
                let _ = notifier.inval_entry(INodeNo(e.parent.0), OsStr::from_bytes(&e.name));
            }
        });
    match spawned {
        Ok(_) => {
            let tx = Mutex::new(tx);
            view.on_evict(Box::new(move |e| {
                let _ = tx.lock().send(e);
            }));
        }
        Err(e) => log::warn!("cannot start the invalidation thread: {e}"),
    }
}

/// A directory offset as given to the kernel: the capture the listing was made in (its
/// snapshot's epoch), and the position after the entry.
fn offset_of(snap: &Snapshot, next: u64) -> u64 {
    (u64::from(snap.epoch) << 32) | next
}

/// The position an offset from the kernel continues at; `ESTALE` if the listing was begun in
/// another capture of the account (continuing it would skip or repeat entries).
fn position(snap: &Snapshot, offset: u64) -> Result<u64, Errno> {
    if offset == 0 {
        return Ok(0);
    }
    if offset >> 32 != u64::from(snap.epoch) {
        return Err(Errno::ESTALE);
    }
    Ok(offset & 0xffff_ffff)
}

/// The entry at listing position `pos`: `.`, `..`, then the children in name order; with the
/// node (`None` for `..`, whose node id is given).
fn entry_at(dir: &At, parent: Ino, pos: u64) -> Option<(Ino, Option<NodeIdx>, &[u8])> {
    let snap = &dir.snap;
    match pos {
        0 => Some((snap.ino_of(dir.idx), Some(dir.idx), b".")),
        1 => Some((parent, None, b"..")),
        _ => {
            let children = snap.children(dir.idx);
            let c = children.start.checked_add(u32::try_from(pos - 2).ok()?)?;
            (c < children.end).then(|| {
                let c = NodeIdx(c);
                (snap.ino_of(c), Some(c), snap.name(c))
            })
        }
    }
}

fn kind_of(snap: &Snapshot, idx: Option<NodeIdx>) -> FileType {
    // No node: a directory of the skeleton not captured yet.
    idx.map_or(FileType::Directory, |i| snap.node(i).kind.file_type())
}

/// Answers a lookup of `name` in directory `dir`.
fn reply_lookup(view: &View, dir: &At, name: &OsStr, reply: ReplyEntry) {
    match dir.snap.lookup(dir.idx, name.as_bytes()) {
        Some(idx) => {
            let c = view.shown(At {
                snap: Arc::clone(&dir.snap),
                idx,
            });
            let generation = Generation(c.snap.generation(c.idx));
            reply.entry(&TTL, &c.snap.file_attr(c.idx), generation)
        }
        None => reply.error(Errno::ENOENT),
    }
}

impl Filesystem for MaildirFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_READAHEAD);
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
        let name = name.to_owned();
        let view = Arc::clone(&self.view);
        self.with_dir(parent, move |r| match r {
            Ok((dir, _)) => reply_lookup(&view, &dir, &name, reply),
            Err(e) => reply.error(e),
        });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino).map(|at| self.view.shown(at)) {
            Ok(at) => reply.attr(&TTL, &at.snap.file_attr(at.idx)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.node(ino) {
            Ok(at) => match at.snap.node(at.idx).kind {
                Kind::Symlink(i) => reply.data(at.snap.inline(i)),
                _ => reply.error(Errno::EINVAL),
            },
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
        if let Some((key, _)) = b.by_handle.remove(&Fh(fh.0)) {
            if let Some((_, users)) = b.by_ino.get_mut(&key) {
                *users -= 1;
                if *users == 0 {
                    // The last handle: the kernel no longer needs the backing id.
                    b.by_ino.remove(&key);
                }
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
        self.with_listing(ino, offset, move |r| {
            let ((dir, parent), mut pos) = match r {
                Ok(l) => l,
                Err(e) => return reply.error(e),
            };
            while let Some((ino, idx, name)) = entry_at(&dir, parent, pos) {
                let kind = kind_of(&dir.snap, idx);
                let next = offset_of(&dir.snap, pos + 1);
                if reply.add(INodeNo(ino.0), next, kind, OsStr::from_bytes(name)) {
                    break;
                }
                pos += 1;
            }
            reply.ok();
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let view = Arc::clone(&self.view);
        self.with_listing(ino, offset, move |r| {
            let ((dir, parent), mut pos) = match r {
                Ok(l) => l,
                Err(e) => return reply.error(e),
            };
            while let Some((ino, idx, name)) = entry_at(&dir, parent, pos) {
                // `..` of an account's root lies in the skeleton.
                let at = match idx {
                    Some(idx) => Some(At {
                        snap: Arc::clone(&dir.snap),
                        idx,
                    }),
                    None => view.node(ino).ok(),
                };
                let Some(at) = at.map(|at| view.shown(at)) else {
                    pos += 1;
                    continue;
                };
                let attr = at.snap.file_attr(at.idx);
                let generation = Generation(at.snap.generation(at.idx));
                let next = offset_of(&dir.snap, pos + 1);
                let name = OsStr::from_bytes(name);
                if reply.add(attr.ino, next, name, &TTL, &attr, generation) {
                    break;
                }
                pos += 1;
            }
            reply.ok();
        });
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
        let blocks = self.view.bytes().div_ceil(4096);
        let files = self.view.entries() as u64;
        reply.statfs(blocks, 0, 0, files, 0, 4096, 255, 4096);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::snapshot::{Attr, Builder, Stamp, Totals};

    fn snap(epoch: u32) -> Snapshot {
        let t = Stamp::default();
        let root = Attr::new(Ino(50), 0, t, t, 0o755, 0, 0);
        Builder::for_account(std::path::PathBuf::from("a"), Ino(50), root, 0, 1, 0, epoch)
            .finish(Totals::default())
    }

    #[test]
    fn a_listing_continues_only_in_the_capture_it_began_in() {
        let (first, again) = (snap(1), snap(2));
        let off = offset_of(&first, 7);
        assert_eq!(position(&first, off), Ok(7));
        assert_eq!(position(&again, off), Err(Errno::ESTALE));
        // Offset 0 starts a listing in any capture.
        assert_eq!(position(&again, 0), Ok(0));
        // The account's root is served under its own node id.
        assert_eq!(first.ino_of(NodeIdx::ROOT), Ino(50));
    }
}
