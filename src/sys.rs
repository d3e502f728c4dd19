//! Thin wrappers over the Linux syscalls maildirfs needs and that std does not offer
//! (directory-relative opens that never follow symlinks, `getdents64`, `fstatat`, `fork`,
//! signals, syslog; pipes and `flock`, which std has only since Rust 1.87 and 1.89, newer than
//! the declared `rust-version`). They go through `nix`'s typed, safe bindings wherever nix has
//! one that keeps the contract here. The crate's only `unsafe` is in this module, for what nix
//! does not offer so: `getdents64` and `preadv2(RWF_NOWAIT)`, `setpriority`, the raw wait
//! status, syslog at a raw priority, `_exit`, closing the fd that grows the fd table, `mallopt`
//! and `malloc_trim`, and `fork`, which is unsafe in nix too.
//!
//! Every wrapper returns `io::Result` with the OS error untouched (a nix `Errno` becomes the
//! `io::Error` of the same raw OS error); callers add the path. Every fd comes back as an
//! `OwnedFd`, so nothing here can leak one.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicBool, Ordering};

pub use nix::errno::Errno;
pub use nix::fcntl::OFlag;
use nix::fcntl::{self, AtFlags, FcntlArg, OpenHow, ResolveFlag};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::stat::{self, Mode};
use nix::unistd::{self, Pid};

/// The raw `stat` of a file, as captured. Re-exported so callers name one type.
pub type Stat = libc::stat;

/// The error number of an I/O error, typed (`None` for an error that is not the kernel's).
pub fn errno(e: &io::Error) -> Option<Errno> {
    e.raw_os_error().map(Errno::from_raw)
}

/// What kind of file a `stat` or a directory entry shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
    /// A device, or anything else.
    Other,
}

impl FileKind {
    /// The kind of a file from its `st_mode`.
    pub fn of_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => FileKind::Other,
        }
    }
}

/// A directory entry's `d_type` (see [`DirEntry::d_type`]): a directory.
pub const DT_DIR: u8 = libc::DT_DIR;
/// A directory entry's `d_type`: a regular file.
pub const DT_REG: u8 = libc::DT_REG;
/// A directory entry's `d_type`: a symbolic link.
pub const DT_LNK: u8 = libc::DT_LNK;
/// A directory entry's `d_type`: not known (the filesystem does not fill it; `lstat` it).
pub const DT_UNKNOWN: u8 = libc::DT_UNKNOWN;

/// How much a syslog line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// `LOG_ERR`.
    Err,
    /// `LOG_WARNING`.
    Warning,
    /// `LOG_NOTICE`.
    Notice,
    /// `LOG_INFO`.
    Info,
    /// `LOG_DEBUG`.
    Debug,
}

/// A file time as `stat` gives it: seconds and nanoseconds since the epoch. Ordered, so that
/// two times compare as the instants they are.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileTime {
    /// Whole seconds (negative before 1970).
    pub sec: i64,
    /// Nanoseconds within the second, 0 to 999,999,999.
    pub nsec: u32,
}

impl FileTime {
    /// `st`'s modification time.
    pub fn mtime(st: &Stat) -> FileTime {
        FileTime::new(st.st_mtime, st.st_mtime_nsec)
    }

    /// `st`'s status-change time.
    pub fn ctime(st: &Stat) -> FileTime {
        FileTime::new(st.st_ctime, st.st_ctime_nsec)
    }

    /// `t`, as a file time (the epoch for a time before it).
    pub fn of(t: std::time::SystemTime) -> FileTime {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        FileTime {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }

    /// This time as a `SystemTime` (the epoch for a time before it).
    pub fn system_time(self) -> std::time::SystemTime {
        match u64::try_from(self.sec) {
            Ok(sec) => std::time::UNIX_EPOCH + std::time::Duration::new(sec, self.nsec),
            Err(_) => std::time::UNIX_EPOCH,
        }
    }

    fn new(sec: i64, nsec: i64) -> FileTime {
        FileTime {
            sec,
            nsec: nsec.clamp(0, 999_999_999) as u32,
        }
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The caller's `O_*` flags as nix's type, every bit kept as given.
fn oflag(flags: libc::c_int) -> OFlag {
    OFlag::from_bits_retain(flags)
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`. `name` is one path component or a
/// relative path; symlinks in the last component are never followed.
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlag) -> io::Result<OwnedFd> {
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    loop {
        match fcntl::openat(dir, name, flags, Mode::from_bits_truncate(0o666)) {
            Err(Errno::EINTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Opens `name` in `dir` for reading as a file someone else controls, and `fstat`s it: a
/// FIFO does not block the open (`O_NONBLOCK`), a symlink is refused (`ELOOP`), a terminal
/// never becomes ours (`O_NOCTTY`). The caller checks what the stat says it is before reading.
pub fn open_untrusted(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<(OwnedFd, Stat)> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
    )?;
    let st = fstat(fd_borrow(&fd))?;
    Ok((fd, st))
}

/// Opens a directory an admin named (SOURCE of `verify`, a control tree's fixed part):
/// symlinks in the admin's own path are followed, as a shell would; everything below it is
/// opened relative to this fd without following any. `ENOTDIR` for anything but a directory.
pub fn open_admin_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.is_dir() {
        Ok(OwnedFd::from(file))
    } else {
        Err(io::Error::from_raw_os_error(libc::ENOTDIR))
    }
}

/// Opens a directory component relative to `dir` without following a symlink.
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    openat(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
}

/// Creates `name` in `dir` with `O_CREAT|O_EXCL` (the Dovecot dotlock create), mode 0666 minus
/// the umask.
pub fn create_excl_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    // Read-write: the holder reads its lock back to see that nobody rewrote it in place.
    openat(dir, name, OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL)
}

static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Opens the relative path `rel` beneath `root`: no component may be a symlink, `..` may not
/// leave `root`, and no mount point is crossed. Uses `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` where the kernel has it (Linux >= 5.6), otherwise
/// (and for paths longer than `PATH_MAX`) a component-by-component walk with `O_NOFOLLOW` that
/// rejects `..`.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &OsStr, flags: OFlag) -> io::Result<OwnedFd> {
    if rel.is_empty() {
        return openat(root, OsStr::new("."), flags);
    }
    if !OPENAT2_MISSING.load(Ordering::Relaxed) {
        match openat2_beneath(root, rel, flags) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                OPENAT2_MISSING.store(true, Ordering::Relaxed);
            }
            // Longer than PATH_MAX: the walk opens one short component at a time.
            Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => {}
            other => return other,
        }
    }
    open_walk(root, rel, flags)
}

fn openat2_beneath(root: BorrowedFd<'_>, rel: &OsStr, flags: OFlag) -> io::Result<OwnedFd> {
    // The mode stays 0 (the kernel refuses any other without O_CREAT or O_TMPFILE).
    let how = OpenHow::new()
        .flags(flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    loop {
        match fcntl::openat2(root, rel, how) {
            // EAGAIN: a concurrent rename raced the lookup; the man page says to retry.
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

fn open_walk(root: BorrowedFd<'_>, rel: &OsStr, flags: OFlag) -> io::Result<OwnedFd> {
    let root_dev = fstat(root)?.st_dev;
    let parts: Vec<&[u8]> = rel
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    if parts.iter().any(|p| *p == b"..") {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    let Some((last, dirs)) = parts.split_last() else {
        return openat(root, OsStr::new("."), flags);
    };
    let mut cur: Option<OwnedFd> = None;
    for part in dirs {
        let base = cur.as_ref().map_or(root, |fd| fd_borrow(fd));
        let next = open_dir_at(base, OsStr::from_bytes(part))?;
        if fstat(fd_borrow(&next))?.st_dev != root_dev {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        cur = Some(next);
    }
    let base = cur.as_ref().map_or(root, |fd| fd_borrow(fd));
    let fd = openat(base, OsStr::from_bytes(last), flags)?;
    if fstat(fd_borrow(&fd))?.st_dev != root_dev {
        return Err(io::Error::from_raw_os_error(libc::EXDEV));
    }
    Ok(fd)
}

fn fd_borrow(fd: &OwnedFd) -> BorrowedFd<'_> {
    std::os::fd::AsFd::as_fd(fd)
}

/// `fstat(fd)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    Ok(stat::fstat(fd)?)
}

/// The CPUs this process may use, looked up once (the lookup reads cgroup files, and an
/// account captured on demand would pay for it each time).
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The filesystem type (`f_type` of `fstatfs`) of the file open at `fd`.
pub fn fs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let st = nix::sys::statfs::fstatfs(fd)?;
    // `f_type` is i64 here, a narrower integer on some other targets.
    #[allow(clippy::useless_conversion)]
    Ok(i64::from(st.filesystem_type().0))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: the `lstat` of one entry of `dir`.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    Ok(stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?)
}

/// `readlinkat(dir, name)`: the target bytes of a symlink, never followed. (nix sizes the
/// buffer from the link's `lstat` and grows it while the target fills it; the error is
/// `readlinkat`'s.)
pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    Ok(fcntl::readlinkat(dir, name)?.into_vec())
}

/// `unlinkat(dir, name, 0)`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(unistd::unlinkat(
        dir,
        name,
        unistd::UnlinkatFlags::NoRemoveDir,
    )?)
}

/// A file without a name in directory `dir` (`O_TMPFILE`), read-write, mode 0666 less the
/// umask; it gets a name only through [`link_fd_at`].
pub fn tmpfile_in(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    openat(dir, OsStr::new("."), OFlag::O_TMPFILE | OFlag::O_RDWR)
}

/// Gives the file open as `fd` (an `O_TMPFILE` never linked) the name `name` in `dir`; fails
/// with `EEXIST` if the name exists, as `O_EXCL` would. `AT_EMPTY_PATH` where the process may
/// (`CAP_DAC_READ_SEARCH`), else through `/proc/self/fd`.
pub fn link_fd_at(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let r = if EMPTY_PATH_REFUSED.load(Ordering::Relaxed) {
        Err(Errno::ENOENT)
    } else {
        unistd::linkat(fd, "", dir, name, AtFlags::AT_EMPTY_PATH)
    };
    match r {
        Err(Errno::ENOENT | Errno::EPERM) => {
            EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed);
            // The kernel resolves the /proc name to the open file itself.
            let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
            Ok(unistd::linkat(
                fcntl::AT_FDCWD,
                proc.as_str(),
                dir,
                name,
                AtFlags::AT_SYMLINK_FOLLOW,
            )?)
        }
        other => Ok(other?),
    }
}

/// Reads into `buf` from `offset` only what the page cache holds (`preadv2(RWF_NOWAIT)`), and
/// says how many bytes: 0 when the first page is not cached (`EAGAIN`); `None` where the
/// filesystem cannot tell (`EOPNOTSUPP`: NFS, FUSE, ...). By hand: nix has no `preadv2`.
pub fn pread_nowait(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Option<usize> {
    let mut done = 0;
    while done < buf.len() {
        let iov = libc::iovec {
            iov_base: buf[done..].as_mut_ptr().cast(),
            iov_len: buf.len() - done,
        };
        // SAFETY: `iov` describes the writable rest of `buf`, which outlives the call; `fd`
        // is live for the borrow.
        let n = unsafe {
            libc::preadv2(
                fd.as_raw_fd(),
                &iov,
                1,
                (offset + done as u64) as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error().raw_os_error();
            if done == 0 && matches!(e, Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)) {
                return None;
            }
            break;
        }
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    Some(done)
}

/// Drops the file's clean pages from `from` to its end from the page cache
/// (`POSIX_FADV_DONTNEED`); a hint, so any error is ignored.
pub fn drop_cached(fd: BorrowedFd<'_>, from: u64) {
    let _ = fcntl::posix_fadvise(
        fd,
        from as libc::off_t,
        0,
        fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// The size of a memory page.
pub fn page_size() -> u64 {
    match unistd::sysconf(unistd::SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) if n > 0 => n as u64,
        _ => 4096,
    }
}

/// Set once `linkat(AT_EMPTY_PATH)` was refused (no `CAP_DAC_READ_SEARCH`): every later link
/// goes through `/proc/self/fd` at once, not after a failed try under the locks.
static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);

/// Sets the atime and mtime of the open file to now, as Dovecot's `file_dotlock_touch()` does
/// with `utime()`: `futimens` with `UTIME_NOW` for both, which the kernel treats as a NULL
/// `times` (the same permission check: write access suffices).
pub fn touch_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    Ok(stat::futimens(fd, &now, &now)?)
}

/// One directory entry as `getdents64` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Its name in the directory, as bytes.
    pub name: Vec<u8>,
    /// Its inode number.
    pub ino: u64,
    /// `DT_*` from the directory; `DT_UNKNOWN` on filesystems that do not fill it.
    pub d_type: u8,
}

/// Lists a directory from its start with `getdents64`, skipping `.` and `..`. The fd's offset
/// is rewound first, so the same fd can be listed again for the listing check.
pub fn read_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    read_dir_with(dir, &mut || ())
}

thread_local! {
    /// Each thread's `getdents64` buffer, kept between listings: a store has a directory per
    /// mailbox and three below it, and zeroing a fresh 64 KiB buffer for each small one was
    /// the largest single cost of walking a store of many small accounts.
    static DIRENT_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The thread's `getdents64` buffer while a listing uses it; handed back on drop (a nested
/// listing meanwhile simply gets a buffer of its own).
struct DirentBuf(Vec<u8>);

impl DirentBuf {
    const LEN: usize = 64 * 1024;

    fn take() -> DirentBuf {
        let mut b = DIRENT_BUF.take();
        if b.len() < Self::LEN {
            b = vec![0u8; Self::LEN];
        }
        DirentBuf(b)
    }
}

impl Drop for DirentBuf {
    fn drop(&mut self) {
        DIRENT_BUF.set(std::mem::take(&mut self.0));
    }
}

/// [`read_dir`], calling `batch` after each `getdents64` call (a heartbeat for the stall
/// watchdog: a huge directory is many calls, and only one that hangs is a stall).
pub fn read_dir_with(dir: BorrowedFd<'_>, batch: &mut dyn FnMut()) -> io::Result<Vec<DirEntry>> {
    // Offset 0 of a directory fd is the start of its getdents stream.
    unistd::lseek(dir, 0, unistd::Whence::SeekSet)?;
    read_dir_from_here(dir, batch)
}

/// [`read_dir`] of a directory just opened, whose offset is its start: without the rewind (a
/// walk of a store of small accounts opens and lists tens of thousands of directories once).
pub fn read_dir_once(dir: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    read_dir_from_here(dir, &mut || ())
}

/// By hand: nix's `Dir` is `readdir(3)` on an fd it owns, with libc's buffer, so it could
/// neither keep the thread's buffer nor call `batch` per `getdents64`.
fn read_dir_from_here(dir: BorrowedFd<'_>, batch: &mut dyn FnMut()) -> io::Result<Vec<DirEntry>> {
    let mut out = Vec::new();
    let mut buf = DirentBuf::take();
    let buf = &mut buf.0;
    loop {
        // SAFETY: buf is writable for buf.len() bytes; getdents64 writes whole records into it.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Ok(out);
        }
        batch();
        let mut off = 0usize;
        let n = n as usize;
        while off < n {
            // linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, char d_name[].
            let rec = &buf[off..n];
            if rec.len() < 19 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap_or_default());
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().unwrap_or_default()) as usize;
            if reclen < 19 || reclen > rec.len() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let d_type = rec[18];
            let name_bytes = &rec[19..reclen];
            let len = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = &name_bytes[..len];
            if name != b"." && name != b".." {
                out.push(DirEntry {
                    name: name.to_vec(),
                    ino,
                    d_type,
                });
            }
            off += reclen;
        }
    }
}

/// The host name as Dovecot sees it: `DOVECOT_HOSTNAME` if set, else `gethostname()`.
pub fn hostname() -> String {
    if let Some(h) = std::env::var_os("DOVECOT_HOSTNAME") {
        return h.to_string_lossy().into_owned();
    }
    unistd::gethostname().map_or_else(
        |_| "localhost".to_owned(),
        |h| h.to_string_lossy().into_owned(),
    )
}

/// Whether a process with this pid exists, by Dovecot's rule: `kill(pid, 0)` succeeding or
/// failing with anything but `ESRCH` (e.g. `EPERM`) counts as alive.
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // No signal: only the existence and permission check.
    !matches!(
        nix::sys::signal::kill(Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}

/// Result of `fork()` as seen by the caller.
pub enum Fork {
    /// In the parent, with the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// `fork()`. Only call while the process has a single thread: the child continues with only
/// the calling thread, and any lock another thread held would stay locked forever.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: nix's `fork` is unsafe because the child of a multi-threaded process may only
    // call async-signal-safe functions; maildirfs forks before it starts any thread (see
    // `daemon`), so the child is a complete copy of a single-threaded process.
    Ok(match unsafe { unistd::fork() }? {
        unistd::ForkResult::Parent { child } => Fork::Parent(child.as_raw()),
        unistd::ForkResult::Child => Fork::Child,
    })
}

/// `waitpid(pid, &status, options)`: what it returned and the raw status. By hand: nix's
/// `waitpid` decodes the status into a `WaitStatus`, which cannot give the raw status back, and
/// fails with `EINVAL` (the child already reaped) for a signal outside its `Signal` enum, such
/// as a real-time one.
fn waitpid_raw(pid: i32, options: libc::c_int) -> io::Result<(libc::pid_t, i32)> {
    let mut status = 0;
    // SAFETY: `status` is a valid out pointer for the duration of the call.
    let ret = cvt(unsafe { libc::waitpid(pid, &mut status, options) })?;
    Ok((ret, status))
}

/// `waitpid(pid, 0)`, returning the raw status.
pub fn waitpid(pid: i32) -> io::Result<i32> {
    loop {
        match waitpid_raw(pid, 0) {
            Ok((_, status)) => return Ok(status),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Waits at most `limit` for child `pid` to exit; its wait status, or `None` if it has not
/// exited by then (it is then left to init, which reaps it once it does).
pub fn waitpid_for(pid: i32, limit: std::time::Duration) -> Option<i32> {
    let end = std::time::Instant::now() + limit;
    loop {
        // WNOHANG makes the call return at once (0 while the child runs).
        match waitpid_raw(pid, libc::WNOHANG) {
            Ok((ret, status)) if ret == pid => return Some(status),
            Err(e) if e.raw_os_error() != Some(libc::EINTR) => return None,
            _ => {}
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `setsid()`: leave the caller's session so its terminal's signals do not reach us.
pub fn setsid() -> io::Result<()> {
    unistd::setsid()?;
    Ok(())
}

/// `pipe2(O_CLOEXEC)`: the read end and the write end of a new pipe.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(true)` if the exclusive lock is now held, `Ok(false)`
/// if another open file description holds a lock on the file. The lock belongs to the open
/// file description and goes when its last fd is closed.
pub fn try_flock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    try_flock(fd, fcntl::FlockArg::LockExclusiveNonblock)
}

/// `flock(fd, LOCK_SH | LOCK_NB)`: `Ok(true)` if a shared lock is now held, `Ok(false)` if
/// another open file description holds the exclusive lock. The lock belongs to the open file
/// description and goes when its last fd is closed.
pub fn try_flock_shared(fd: BorrowedFd<'_>) -> io::Result<bool> {
    try_flock(fd, fcntl::FlockArg::LockSharedNonblock)
}

fn try_flock(fd: BorrowedFd<'_>, arg: fcntl::FlockArg) -> io::Result<bool> {
    loop {
        match flock(fd, arg) {
            Ok(()) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(Errno::EWOULDBLOCK) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

/// nix's `flock` on a borrowed fd. Its successor, `Flock`, takes the file by value and unlocks
/// when dropped; these locks are on fds the callers keep, and last as long as the open file
/// description, so the plain call (deprecated for that reason only) is the one that fits.
#[allow(deprecated)]
fn flock(fd: BorrowedFd<'_>, arg: fcntl::FlockArg) -> nix::Result<()> {
    fcntl::flock(fd.as_raw_fd(), arg)
}

/// Points stdin, stdout and stderr at `/dev/null`, so the detached server holds none of the
/// caller's terminal, pipes or files.
pub fn detach_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // dup2 atomically replaces each of them.
    unistd::dup2_stdin(&null)?;
    unistd::dup2_stdout(&null)?;
    unistd::dup2_stderr(&null)?;
    Ok(())
}

/// The signals that end a session cleanly.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

fn stop_sigset() -> SigSet {
    let mut set = SigSet::empty();
    for s in STOP_SIGNALS {
        set.add(s);
    }
    set
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and in every thread it starts
/// afterwards, so that only `wait_stop_signal` receives them.
pub fn block_stop_signals() -> io::Result<()> {
    // (pthread_sigmask fails only for an invalid `how`, which SIG_BLOCK is not.)
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&stop_sigset()), None)?;
    Ok(())
}

/// Waits for one of the stop signals (which must be blocked) and returns it.
pub fn wait_stop_signal() -> libc::c_int {
    let set = stop_sigset();
    loop {
        if let Ok(sig) = set.wait() {
            return sig as libc::c_int;
        }
    }
}

/// Ends the process at once with `code`, without running exit handlers or waiting for
/// anything: for the signal thread when the main flow is stuck in a syscall. Nothing buffered
/// is lost (the log writes each line through), and the kernel closes every fd. By hand: nix has
/// no `_exit`, and std's `exit` runs the exit handlers this must not wait for.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) takes an int and never returns; it is async-signal-safe and needs no
    // state of ours.
    unsafe { libc::_exit(code) }
}

/// `umount2(path, flags)`.
pub fn umount(path: &std::path::Path) -> io::Result<()> {
    Ok(nix::mount::umount2(path, nix::mount::MntFlags::empty())?)
}

/// `geteuid()`.
pub fn geteuid() -> u32 {
    unistd::geteuid().as_raw()
}

/// Sets the nice value of the calling thread (not the process: on Linux a thread's priority
/// is its own). Raising it is always allowed; lowering it needs `CAP_SYS_NICE`. (The
/// benchmark's lock watcher runs at -20, so that its own wake-ups do not stretch the holds it
/// times.) `setpriority` by hand: nix has none.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    let tid = unistd::gettid().as_raw();
    // SAFETY: setpriority takes no pointers; it changes only the scheduling priority of the
    // thread `tid`.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) }).map(drop)
}

/// `getpid()`.
pub fn getpid() -> i32 {
    unistd::getpid().as_raw()
}

/// Opens the syslog connection with ident `maildirfs`.
pub fn openlog() {
    // nix keeps the ident as given, which syslog goes on using: it takes only a `'static` one.
    static IDENT: &CStr = c"maildirfs";
    let _ = nix::syslog::openlog(
        Some(IDENT),
        nix::syslog::LogFlags::LOG_PID,
        nix::syslog::Facility::LOG_DAEMON,
    );
}

/// Sends one line to syslog at `priority`. By hand: nix's `Priority` is built only from its
/// `Severity` and `Facility` enums, not from the raw priority this takes.
pub fn syslog(priority: Priority, line: &str) {
    let priority = match priority {
        Priority::Err => libc::LOG_ERR,
        Priority::Warning => libc::LOG_WARNING,
        Priority::Notice => libc::LOG_NOTICE,
        Priority::Info => libc::LOG_INFO,
        Priority::Debug => libc::LOG_DEBUG,
    };
    let Ok(c) = CString::new(line.replace('\0', "\\0")) else {
        return;
    };
    // SAFETY: the format is a static "%s" and the argument a NUL-terminated string, so no
    // format directive in `line` is interpreted.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), c.as_ptr()) };
}

/// Pins `name` in `dir`: an fd that keeps the inode alive (and its bytes readable) after it is
/// renamed or unlinked, without touching its ctime or nlink. A regular file is opened
/// `O_RDONLY|O_NOATIME|O_NONBLOCK`, so reads need no reopen and never change atime; where
/// `O_NOATIME` is refused (neither owner nor root), and for anything not known to be a regular
/// file (`O_NONBLOCK` keeps a FIFO from blocking, but `O_PATH` never opens it at all), the pin
/// is `O_PATH`. Symlinks are never followed.
pub fn pin_at(dir: BorrowedFd<'_>, name: &OsStr, regular: bool) -> io::Result<OwnedFd> {
    if regular {
        match openat(dir, name, READ_NOATIME | OFlag::O_NONBLOCK) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            other => return other,
        }
    }
    openat(dir, name, OFlag::O_PATH)
}

/// Reading without touching atime: `O_NOATIME` needs ownership of the file or root.
const READ_NOATIME: OFlag = OFlag::O_RDONLY.union(OFlag::O_NOATIME);

/// `open(flags)` with [`READ_NOATIME`], and again with plain `O_RDONLY` where `O_NOATIME` is
/// refused (`EPERM`: neither owner nor root).
pub fn read_without_atime(
    mut open: impl FnMut(OFlag) -> io::Result<OwnedFd>,
) -> io::Result<OwnedFd> {
    match open(READ_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(OFlag::O_RDONLY),
        other => other,
    }
}

/// Whether `fd` was opened with `O_PATH` (cannot be read).
pub fn is_path_fd(fd: BorrowedFd<'_>) -> bool {
    fcntl::fcntl(fd, FcntlArg::F_GETFL).is_ok_and(|flags| oflag(flags).contains(OFlag::O_PATH))
}

/// Reopens a pinned inode for reading through `/proc/self/fd/N` (the kernel resolves that magic
/// link to the inode itself, whatever its name is now, or if it has none left).
pub fn reopen_pinned(pin: BorrowedFd<'_>, flags: OFlag) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", pin.as_raw_fd());
    let flags = flags | OFlag::O_CLOEXEC;
    loop {
        match fcntl::open(path.as_str(), flags, Mode::empty()) {
            Err(Errno::EINTR) => {}
            other => return other.map_err(io::Error::from),
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` as far as this process may: first towards `fs.nr_open`
/// (which needs `CAP_SYS_RESOURCE` above the hard limit), else to the hard limit. Returns the
/// soft limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((mut cur, max)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(max);
    for target in [nr_open.max(max), max] {
        if target <= cur {
            break;
        }
        // A failure leaves the limit as it was.
        if setrlimit(Resource::RLIMIT_NOFILE, target, target.max(max)).is_ok() {
            cur = target;
            break;
        }
    }
    cur
}

/// How many fds this process has open now.
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}

/// Grows this process's fd table to hold fd number `n`, by duplicating an open fd to the lowest
/// free number at or above `n` (`F_DUPFD`, which never replaces an open fd) and closing it
/// again. The kernel never shrinks the table, and growing it later, in a multi-threaded process,
/// waits for an RCU grace period (milliseconds) each time it doubles: doing it up front keeps
/// that wait out of the lock hold.
pub fn grow_fd_table(n: usize, any_open: BorrowedFd<'_>) {
    let Ok(n) = libc::c_int::try_from(n) else {
        return;
    };
    if let Ok(fd) = fcntl::fcntl(any_open, FcntlArg::F_DUPFD_CLOEXEC(n)) {
        // SAFETY: F_DUPFD_CLOEXEC just returned this new fd (>= n), which nothing else owns
        // (nix hands it back as a bare number); it is closed exactly once, here.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// Fixes glibc's mmap threshold at its default (128 KiB), by hand: nix has no `mallopt`. Left dynamic, it rises after the
/// capture frees its large buffers, and then the FUSE library's 16 MiB request buffer (one per
/// worker) comes from the heap and is zeroed page by page instead of arriving as untouched
/// mmap'd pages: about 10 MB of resident memory per worker, for nothing.
pub fn fix_mmap_threshold() {
    // SAFETY: mallopt only changes allocator tuning; M_MMAP_THRESHOLD takes a byte count.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
}

/// Gives freed heap memory back to the kernel (`malloc_trim`, by hand: nix has none): the
/// capture's listings are freed once the snapshot is built, and a mount lives for hours.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe { libc::malloc_trim(0) };
}
