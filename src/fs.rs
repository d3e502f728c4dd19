//! The `fuser::Filesystem` adapter: each callback asks the snapshot or the source and turns the
//! answer into a reply. No Maildir knowledge lives here.
//!
//! The image never changes while mounted, so every TTL is long and every open keeps the page
//! cache. Every write-type operation fails with `EROFS`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow,
};
use parking_lot::Mutex;

use crate::snapshot::{Ino, Kind, NodeIdx, Snapshot};
use crate::source::{self, Opened, Source};

/// How long the kernel may cache entries, attributes and negative lookups: the image is
/// immutable, so anything long is right; one day keeps the numbers far from any overflow.
const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A file handle as given to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Fh(u64);

/// The mounted filesystem.
#[derive(Debug)]
pub struct MaildirFs {
    snap: Arc<Snapshot>,
    source: Arc<Source>,
    /// Open files by handle. Protected by this mutex; handles are never reused.
    handles: Mutex<HashMap<Fh, Opened>>,
    next_fh: AtomicU64,
}

impl MaildirFs {
    pub fn new(snap: Arc<Snapshot>, source: Arc<Source>) -> MaildirFs {
        MaildirFs {
            snap,
            source,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        }
    }

    fn node(&self, ino: INodeNo) -> Result<NodeIdx, Errno> {
        self.snap.resolve(Ino(ino.0)).ok_or(Errno::ENOENT)
    }

    fn lookup_child(&self, parent: INodeNo, name: &OsStr) -> Result<NodeIdx, Errno> {
        let dir = self.node(parent)?;
        if !matches!(self.snap.node(dir).kind, Kind::Dir { .. }) {
            return Err(Errno::ENOTDIR);
        }
        self.snap.lookup(dir, name.as_bytes()).ok_or(Errno::ENOENT)
    }

    fn open_node(&self, ino: INodeNo, flags: OpenFlags) -> Result<Fh, Errno> {
        if flags.acc_mode() != OpenAccMode::O_RDONLY || flags.0 & libc::O_TRUNC != 0 {
            return Err(Errno::EROFS);
        }
        let idx = self.node(ino)?;
        let opened = self.source.open(&self.snap, idx).map_err(|e| e.errno())?;
        let fh = Fh(self.next_fh.fetch_add(1, Ordering::Relaxed));
        self.handles.lock().insert(fh, opened);
        Ok(fh)
    }

    fn read_node(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let idx = self.node(ino)?;
        let opened = self
            .handles
            .lock()
            .get(&Fh(fh.0))
            .cloned()
            .ok_or(Errno::EBADF)?;
        let len = self.snap.node(idx).attr.size;
        source::read_at(&opened, len, offset, size).map_err(|e| {
            log::warn!(
                "read error on {}: {e}",
                crate::error::escape_path(&self.source.path().join(self.snap.rel_path(idx)))
            );
            Errno::from(e)
        })
    }

    /// Directory entries from position `offset` on: `.`, `..`, then the children.
    fn dir_entries(
        &self,
        ino: INodeNo,
        offset: u64,
    ) -> Result<Vec<(u64, NodeIdx, Vec<u8>)>, Errno> {
        let dir = self.node(ino)?;
        let Kind::Dir { .. } = self.snap.node(dir).kind else {
            return Err(Errno::ENOTDIR);
        };
        let parent = self.snap.node(dir).parent;
        let mut out = Vec::new();
        let specials = [(dir, b".".to_vec()), (parent, b"..".to_vec())];
        let children = self.snap.children(dir);
        let total = 2 + u64::from(children.end - children.start);
        for pos in offset..total {
            let (idx, name) = if pos < 2 {
                specials[pos as usize].clone()
            } else {
                let c = NodeIdx(children.start + (pos - 2) as u32);
                (c, self.snap.name(c).to_vec())
            };
            out.push((pos + 1, idx, name));
        }
        Ok(out)
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
        match self.open_node(ino, flags) {
            Ok(fh) => reply.opened(FileHandle(fh.0), FopenFlags::FOPEN_KEEP_CACHE),
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
        self.handles.lock().remove(&Fh(fh.0));
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino).map(|idx| self.snap.node(idx).kind) {
            Ok(Kind::Dir { .. }) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.dir_entries(ino, offset) {
            Ok(entries) => {
                for (next, idx, name) in entries {
                    let ino = INodeNo(self.snap.ino_of(idx).0);
                    if reply.add(
                        ino,
                        next,
                        kind_of(&self.snap, idx),
                        OsStr::from_bytes(&name),
                    ) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.dir_entries(ino, offset) {
            Ok(entries) => {
                for (next, idx, name) in entries {
                    let attr = self.snap.file_attr(idx);
                    let full = reply.add(
                        attr.ino,
                        next,
                        OsStr::from_bytes(&name),
                        &TTL,
                        &attr,
                        Generation(0),
                    );
                    if full {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
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
