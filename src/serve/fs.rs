//! The `fuser::Filesystem` adapter: each callback asks [`Served`] (the view and the source,
//! tested without FUSE) and turns its answer into a reply; what is FUSE's own (the read path
//! chosen at init, passthrough's backing files, the kernel's notifier) lives here. No Maildir
//! knowledge lives here.
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
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use parking_lot::Mutex;

use crate::image::snapshot::Ino;
use crate::image::view::{Evicted, View};
use crate::serve::readahead::{PageStore, ReadAhead};
use crate::serve::served::{Entry, FileKey, Served};
use crate::serve::source::{Opened, Source};
use crate::sys;

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

/// The [`ReadPath`] in use, set once at init and read by the session for its summary.
#[derive(Debug, Clone, Default)]
pub struct SharedReadPath(Arc<AtomicU8>);

impl SharedReadPath {
    /// The read path in use (`NoOpen` until init chose another).
    pub fn get(&self) -> ReadPath {
        if self.0.load(Ordering::Relaxed) == ReadPath::Passthrough as u8 {
            ReadPath::Passthrough
        } else {
            ReadPath::NoOpen
        }
    }

    fn set(&self, path: ReadPath) {
        self.0.store(path as u8, Ordering::Relaxed);
    }
}

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
    served: Served,
    /// Whether passthrough was asked for (`-o passthrough`).
    want_passthrough: bool,
    /// The read path in use, shared with the session.
    read_path: SharedReadPath,
    /// Passthrough handles and backing ids. Protected by this mutex.
    backing: Mutex<Backing>,
    /// Handles are never reused while mounted.
    next_fh: AtomicU64,
}

impl MaildirFs {
    /// The filesystem serving `view`, its bytes read through `source`; `want_passthrough`
    /// asks the kernel for passthrough at init.
    pub fn new(view: Arc<View>, source: Arc<Source>, want_passthrough: bool) -> MaildirFs {
        MaildirFs {
            served: Served::new(view, source),
            want_passthrough,
            read_path: SharedReadPath::default(),
            backing: Mutex::new(Backing::default()),
            next_fh: AtomicU64::new(1),
        }
    }

    /// Where the read-ahead goes once the session's notifier exists ([`start_read_ahead`]).
    pub fn ahead_slot(&self) -> Arc<OnceLock<ReadAhead>> {
        self.served.ahead_slot()
    }

    /// The read path in use, readable after the mount (for the summary).
    pub fn read_path(&self) -> SharedReadPath {
        self.read_path.clone()
    }

    /// Passthrough open: the file, checked, registered as the inode's backing file (once per
    /// inode while open). Inline files, and files the kernel refuses, are read through us.
    fn open_passthrough(
        &self,
        ino: INodeNo,
        reply: &ReplyOpen,
    ) -> Result<(Fh, Option<Arc<BackingId>>), Errno> {
        let (key, opened) = self.served.open(Ino(ino.0))?;
        let fh = Fh(self.next_fh.fetch_add(1, Ordering::Relaxed));
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

    /// The bytes of an open handle (passthrough mode; 0: none, read through a cached fd).
    fn handle(&self, fh: FileHandle) -> Result<Option<Opened>, Errno> {
        if fh.0 == 0 {
            return Ok(None);
        }
        let b = self.backing.lock();
        let (_, opened) = b.by_handle.get(&Fh(fh.0)).ok_or(Errno::EBADF)?;
        Ok(Some(opened.clone()))
    }
}

/// A lookup's answer as the kernel takes it.
fn reply_entry(reply: ReplyEntry, r: Result<Entry, Errno>) {
    match r {
        Ok(e) => reply.entry(&TTL, &e.attr, Generation(e.generation)),
        Err(e) => reply.error(e),
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

/// `Filesystem` callbacks that answer `EROFS` whatever they are asked: each given by its
/// name, the types of its arguments after the request, and its reply's type.
macro_rules! read_only {
    ($($name:ident($($arg:ty),* $(,)?) -> $reply:ty;)*) => {
        $(fn $name(&self, _req: &Request, $(_: $arg,)* reply: $reply) {
            reply.error(Errno::EROFS);
        })*
    };
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
                    self.read_path.set(ReadPath::Passthrough);
                }
                Err(_) => log::warn!("the kernel has no FUSE passthrough; serving reads itself"),
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        self.served
            .lookup(Ino(parent.0), name, move |r| reply_entry(reply, r));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.served.attr(Ino(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.served.readlink(Ino(ino.0)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & sys::OFlag::O_TRUNC.bits() != 0 {
            return reply.error(Errno::EROFS);
        }
        if self.read_path.get() != ReadPath::Passthrough {
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
        let data = self
            .handle(fh)
            .and_then(|h| self.served.read(Ino(ino.0), h, offset, size));
        match data {
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
        self.served.list(Ino(ino.0), offset, move |r| match r {
            Ok(listing) => {
                for e in listing.entries() {
                    let name = OsStr::from_bytes(e.name);
                    if reply.add(INodeNo(e.ino.0), e.next, e.kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
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
        let view = Arc::clone(self.served.view());
        self.served.list(Ino(ino.0), offset, move |r| match r {
            Ok(listing) => {
                for e in listing.entries() {
                    let Some(entry) = listing.entry(&view, &e) else {
                        continue;
                    };
                    let (name, generation) =
                        (OsStr::from_bytes(e.name), Generation(entry.generation));
                    if reply.add(entry.attr.ino, e.next, name, &TTL, &entry.attr, generation) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
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
        let (blocks, files) = self.served.usage();
        reply.statfs(blocks, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self
            .served
            .access(Ino(ino.0), mask.contains(AccessFlags::W_OK))
        {
            Ok(()) => reply.ok(),
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

    // Every write-type operation: the image is read-only. A `ro` mount has the kernel
    // refuse most of them before they reach us; they are answered here too, in case the
    // mount is made writable (`mount -o remount,rw`).
    read_only! {
        setattr(
            INodeNo, Option<u32>, Option<u32>, Option<u32>, Option<u64>, Option<TimeOrNow>,
            Option<TimeOrNow>, Option<SystemTime>, Option<FileHandle>, Option<SystemTime>,
            Option<SystemTime>, Option<SystemTime>, Option<fuser::BsdFileFlags>
        ) -> ReplyAttr;
        mknod(INodeNo, &OsStr, u32, u32, u32) -> ReplyEntry;
        mkdir(INodeNo, &OsStr, u32, u32) -> ReplyEntry;
        unlink(INodeNo, &OsStr) -> ReplyEmpty;
        rmdir(INodeNo, &OsStr) -> ReplyEmpty;
        symlink(INodeNo, &OsStr, &std::path::Path) -> ReplyEntry;
        rename(INodeNo, &OsStr, INodeNo, &OsStr, RenameFlags) -> ReplyEmpty;
        link(INodeNo, INodeNo, &OsStr) -> ReplyEntry;
        write(
            INodeNo, FileHandle, u64, &[u8], fuser::WriteFlags, OpenFlags,
            Option<fuser::LockOwner>
        ) -> ReplyWrite;
        create(INodeNo, &OsStr, u32, u32, i32) -> ReplyCreate;
        setxattr(INodeNo, &OsStr, &[u8], i32, u32) -> ReplyEmpty;
        removexattr(INodeNo, &OsStr) -> ReplyEmpty;
        fallocate(INodeNo, FileHandle, u64, u64, i32) -> ReplyEmpty;
        copy_file_range(
            INodeNo, FileHandle, u64, INodeNo, FileHandle, u64, u64,
            fuser::CopyFileRangeFlags
        ) -> ReplyWrite;
    }
}
