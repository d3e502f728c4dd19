//! The only module with `unsafe`: thin wrappers over the Linux syscalls maildirfs needs and
//! that std does not offer (directory-relative opens that never follow symlinks, `getdents64`,
//! `fstatat`, `fork`, signals, syslog; pipes and `flock`, which std has only since Rust 1.87
//! and 1.89, newer than the declared `rust-version`).
//!
//! Every wrapper returns `io::Result` with the OS error untouched; callers add the path. Every
//! fd comes back as an `OwnedFd`, so nothing here can leak one.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

/// The raw `stat` of a file, as captured. Re-exported so callers name one type.
pub type Stat = libc::stat;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC)`. `name` is one path component or a
/// relative path; symlinks in the last component are never followed.
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    loop {
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call; `dir` is a live
        // fd for the duration of the borrow. openat(2) returns a new fd or -1.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o666 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: openat just returned this fd to us and nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
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
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
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
    openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY)
}

/// Creates `name` in `dir` with `O_CREAT|O_EXCL` (the Dovecot dotlock create), mode 0666 minus
/// the umask.
pub fn create_excl_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    // Read-write: the holder reads its lock back to see that nobody rewrote it in place.
    openat(dir, name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL)
}

static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Opens the relative path `rel` beneath `root`: no component may be a symlink, `..` may not
/// leave `root`, and no mount point is crossed. Uses `openat2(RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)` where the kernel has it (Linux >= 5.6), otherwise
/// (and for paths longer than `PATH_MAX`) a component-by-component walk with `O_NOFOLLOW` that
/// rejects `..`.
pub fn open_beneath(root: BorrowedFd<'_>, rel: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
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

fn openat2_beneath(root: BorrowedFd<'_>, rel: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(rel)?;
    // SAFETY: open_how is plain old data; all-zero is a valid value that we then fill in.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_XDEV;
    loop {
        // SAFETY: openat2(2) takes a dirfd, a NUL-terminated path and a pointer to an open_how
        // of the given size; all three are valid for the duration of the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if ret >= 0 {
            // SAFETY: the syscall returned a new fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) });
        }
        let err = io::Error::last_os_error();
        // EAGAIN: a concurrent rename raced the lookup; the man page says to retry.
        if !matches!(err.raw_os_error(), Some(libc::EINTR) | Some(libc::EAGAIN)) {
            return Err(err);
        }
    }
}

fn open_walk(root: BorrowedFd<'_>, rel: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
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
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: `st` points to writable memory of the right size; fstat fills it on success.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat returned 0, so the struct is initialised.
    Ok(unsafe { st.assume_init() })
}

/// The CPUs this process may use, looked up once (the lookup reads cgroup files, and an
/// account captured on demand would pay for it each time).
pub fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The filesystem type (`f_type` of `fstatfs`) of the file open at `fd`.
pub fn fs_type(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` points to writable memory of the right size; fstatfs fills it on success.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs returned 0, so the struct is initialised.
    let st = unsafe { st.assume_init() };
    // `f_type` is i64 here, a narrower integer on some other targets.
    #[allow(clippy::useless_conversion)]
    Ok(i64::from(st.f_type))
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: the `lstat` of one entry of `dir`.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    let c = cstring(name)?;
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: valid dirfd, NUL-terminated name and writable stat buffer for the call.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat returned 0, so the struct is initialised.
    Ok(unsafe { st.assume_init() })
}

/// `readlinkat(dir, name)`: the target bytes of a symlink, never followed.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let c = cstring(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buf is writable for buf.len() bytes; readlinkat writes at most that many.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// `unlinkat(dir, name, 0)`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let c = cstring(name)?;
    // SAFETY: valid dirfd and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
}

/// A file without a name in directory `dir` (`O_TMPFILE`), read-write, mode 0666 less the
/// umask; it gets a name only through [`link_fd_at`].
pub fn tmpfile_in(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    openat(dir, OsStr::new("."), libc::O_TMPFILE | libc::O_RDWR)
}

/// Gives the file open as `fd` (an `O_TMPFILE` never linked) the name `name` in `dir`; fails
/// with `EEXIST` if the name exists, as `O_EXCL` would. `AT_EMPTY_PATH` where the process may
/// (`CAP_DAC_READ_SEARCH`), else through `/proc/self/fd`.
pub fn link_fd_at(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let n = cstring(name)?;
    let r = if EMPTY_PATH_REFUSED.load(Ordering::Relaxed) {
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    } else {
        // SAFETY: `fd` and `dir` are live for the borrows; both names are NUL-terminated and
        // outlive the call.
        cvt(unsafe {
            libc::linkat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                dir.as_raw_fd(),
                n.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })
    };
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) => {
            EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed);
            let proc = cstring(OsStr::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())))?;
            // SAFETY: as above; the /proc name is resolved to the open file itself.
            cvt(unsafe {
                libc::linkat(
                    libc::AT_FDCWD,
                    proc.as_ptr(),
                    dir.as_raw_fd(),
                    n.as_ptr(),
                    libc::AT_SYMLINK_FOLLOW,
                )
            })
            .map(drop)
        }
        other => other.map(drop),
    }
}

/// Reads into `buf` from `offset` only what the page cache holds (`preadv2(RWF_NOWAIT)`), and
/// says how many bytes: 0 when the first page is not cached (`EAGAIN`); `None` where the
/// filesystem cannot tell (`EOPNOTSUPP`: NFS, FUSE, ...).
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
    // SAFETY: a hint on a live fd; no memory is passed.
    let _ = unsafe {
        libc::posix_fadvise(
            fd.as_raw_fd(),
            from as libc::off_t,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
}

/// The size of a memory page.
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// Set once `linkat(AT_EMPTY_PATH)` was refused (no `CAP_DAC_READ_SEARCH`): every later link
/// goes through `/proc/self/fd` at once, not after a failed try under the locks.
static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);

/// Sets the atime and mtime of the open file to now (`futimens(fd, NULL)`), as Dovecot's
/// `file_dotlock_touch()` does with `utime()`.
pub fn touch_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a NULL times pointer means "now" for both timestamps.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), std::ptr::null()) }).map(drop)
}

/// One directory entry as `getdents64` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
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
    // SAFETY: lseek on a directory fd to offset 0 rewinds the getdents stream.
    if unsafe { libc::lseek(dir.as_raw_fd(), 0, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    read_dir_from_here(dir, batch)
}

/// [`read_dir`] of a directory just opened, whose offset is its start: without the rewind (a
/// walk of a store of small accounts opens and lists tens of thousands of directories once).
pub fn read_dir_once(dir: BorrowedFd<'_>) -> io::Result<Vec<DirEntry>> {
    read_dir_from_here(dir, &mut || ())
}

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
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates on success (we also
    // cap at the buffer length below).
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "localhost".to_owned();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Whether a process with this pid exists, by Dovecot's rule: `kill(pid, 0)` succeeding or
/// failing with anything but `ESRCH` (e.g. `EPERM`) counts as alive.
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 performs only the existence and permission check.
    let ret = unsafe { libc::kill(pid, 0) };
    ret == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Result of `fork()` as seen by the caller.
pub enum Fork {
    Parent(i32),
    Child,
}

/// `fork()`. Only call while the process has a single thread: the child continues with only
/// the calling thread, and any lock another thread held would stay locked forever.
pub fn fork() -> io::Result<Fork> {
    // SAFETY: maildirfs forks before it starts any thread (see `daemon`), so the child is a
    // complete copy of a single-threaded process.
    let pid = cvt(unsafe { libc::fork() })?;
    Ok(if pid == 0 {
        Fork::Child
    } else {
        Fork::Parent(pid)
    })
}

/// `waitpid(pid, 0)`, returning the raw status.
pub fn waitpid(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret >= 0 {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Waits at most `limit` for child `pid` to exit; its wait status, or `None` if it has not
/// exited by then (it is then left to init, which reaps it once it does).
pub fn waitpid_for(pid: i32, limit: std::time::Duration) -> Option<i32> {
    let end = std::time::Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: status is a valid out pointer; WNOHANG makes the call return at once.
        let ret = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if ret == pid {
            return Some(status);
        }
        if ret < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
        if std::time::Instant::now() >= end {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `setsid()`: leave the caller's session so its terminal's signals do not reach us.
pub fn setsid() -> io::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    cvt(unsafe { libc::setsid() }).map(drop)
}

/// `pipe2(O_CLOEXEC)`: the read end and the write end of a new pipe.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds: [libc::c_int; 2] = [-1; 2];
    // SAFETY: `fds` is a writable array of two ints, which pipe2 fills on success.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 returned 0, so both fds are new and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: `Ok(true)` if the exclusive lock is now held, `Ok(false)`
/// if another open file description holds a lock on the file. The lock belongs to the open
/// file description and goes when its last fd is closed.
pub fn try_flock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    try_flock(fd, libc::LOCK_EX)
}

/// `flock(fd, LOCK_SH | LOCK_NB)`: `Ok(true)` if a shared lock is now held, `Ok(false)` if
/// another open file description holds the exclusive lock. The lock belongs to the open file
/// description and goes when its last fd is closed.
pub fn try_flock_shared(fd: BorrowedFd<'_>) -> io::Result<bool> {
    try_flock(fd, libc::LOCK_SH)
}

fn try_flock(fd: BorrowedFd<'_>, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a live fd; no memory is passed.
        if unsafe { libc::flock(fd.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Points stdin, stdout and stderr at `/dev/null`, so the detached server holds none of the
/// caller's terminal, pipes or files.
pub fn detach_stdio() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for target in 0..=2 {
        // SAFETY: both fds are valid; dup2 atomically replaces `target`.
        cvt(unsafe { libc::dup2(null.as_raw_fd(), target) })?;
    }
    Ok(())
}

/// The signals that end a session cleanly.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

fn stop_sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset with valid signal numbers cannot fail.
    unsafe {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        let mut set = set.assume_init();
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and in every thread it starts
/// afterwards, so that only `wait_stop_signal` receives them.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_sigset();
    // SAFETY: set is initialised; the old-set pointer may be NULL.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// Waits for one of the stop signals (which must be blocked) and returns it.
pub fn wait_stop_signal() -> libc::c_int {
    let set = stop_sigset();
    loop {
        let mut sig = 0;
        // SAFETY: set is initialised and sig is a valid out pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            return sig;
        }
    }
}

/// Ends the process at once with `code`, without running exit handlers or waiting for
/// anything: for the signal thread when the main flow is stuck in a syscall. Nothing buffered
/// is lost (the log writes each line through), and the kernel closes every fd.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) takes an int and never returns; it is async-signal-safe and needs no
    // state of ours.
    unsafe { libc::_exit(code) }
}

/// `umount2(path, flags)`.
pub fn umount(path: &std::path::Path, flags: libc::c_int) -> io::Result<()> {
    let c = cstring(path.as_os_str())?;
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::umount2(c.as_ptr(), flags) }).map(drop)
}

/// `geteuid()`.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Sets the nice value of the calling thread (not the process: on Linux a thread's priority
/// is its own). Raising it is always allowed; lowering it needs `CAP_SYS_NICE`. (The
/// benchmark's lock watcher runs at -20, so that its own wake-ups do not stretch the holds it
/// times.)
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority changes only the scheduling priority of the thread `tid`.
    cvt(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) }).map(drop)
}

/// `getpid()`.
pub fn getpid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

/// Opens the syslog connection with ident `maildirfs`.
pub fn openlog() {
    static IDENT: &CStr = c"maildirfs";
    // SAFETY: IDENT is a static NUL-terminated string, so it outlives every later syslog call.
    unsafe { libc::openlog(IDENT.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
}

/// Sends one line to syslog at `priority`.
pub fn syslog(priority: libc::c_int, line: &str) {
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
        match openat(dir, name, READ_NOATIME | libc::O_NONBLOCK) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {}
            other => return other,
        }
    }
    openat(dir, name, libc::O_PATH)
}

/// Reading without touching atime: `O_NOATIME` needs ownership of the file or root.
const READ_NOATIME: libc::c_int = libc::O_RDONLY | libc::O_NOATIME;

/// `open(flags)` with [`READ_NOATIME`], and again with plain `O_RDONLY` where `O_NOATIME` is
/// refused (`EPERM`: neither owner nor root).
pub fn read_without_atime(
    mut open: impl FnMut(libc::c_int) -> io::Result<OwnedFd>,
) -> io::Result<OwnedFd> {
    match open(READ_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open(libc::O_RDONLY),
        other => other,
    }
}

/// Whether `fd` was opened with `O_PATH` (cannot be read).
pub fn is_path_fd(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GETFL only reads the open file's status flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_PATH != 0
}

/// Reopens a pinned inode for reading through `/proc/self/fd/N` (the kernel resolves that magic
/// link to the inode itself, whatever its name is now, or if it has none left).
pub fn reopen_pinned(pin: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = CString::new(format!("/proc/self/fd/{}", pin.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    loop {
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: open just returned this fd to us and nothing else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` as far as this process may: first towards `fs.nr_open`
/// (which needs `CAP_SYS_RESOURCE` above the hard limit), else to the hard limit. Returns the
/// soft limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    for target in [nr_open.max(lim.rlim_max), lim.rlim_max] {
        if target <= lim.rlim_cur {
            break;
        }
        let want = libc::rlimit {
            rlim_cur: target,
            rlim_max: target.max(lim.rlim_max),
        };
        // SAFETY: want is a valid rlimit; failure leaves the limit as it was.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            lim.rlim_cur = target;
            break;
        }
    }
    lim.rlim_cur
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
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd (>= n) that nothing else owns, or -1.
    let fd = unsafe { libc::fcntl(any_open.as_raw_fd(), libc::F_DUPFD_CLOEXEC, n) };
    if fd >= 0 {
        // SAFETY: `fd` was just created for us and is closed exactly once, here.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// Fixes glibc's mmap threshold at its default (128 KiB). Left dynamic, it rises after the
/// capture frees its large buffers, and then the FUSE library's 16 MiB request buffer (one per
/// worker) comes from the heap and is zeroed page by page instead of arriving as untouched
/// mmap'd pages: about 10 MB of resident memory per worker, for nothing.
pub fn fix_mmap_threshold() {
    // SAFETY: mallopt only changes allocator tuning; M_MMAP_THRESHOLD takes a byte count.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
}

/// Gives freed heap memory back to the kernel (`malloc_trim`): the capture's listings are
/// freed once the snapshot is built, and a mount lives for hours.
pub fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe { libc::malloc_trim(0) };
}
