//! The Dovecot uidlist dotlock, `<mailbox>/dovecot-uidlist.lock`, as an RAII guard.
//!
//! The protocol is Dovecot 2.3's `file-dotlock.c` as used by `maildir-uidlist.c`:
//! - created with `open(O_CREAT|O_EXCL)` (Dovecot's default `dotlock_use_excl = yes`);
//! - content `<pid>:<hostname>` with no newline, so a Dovecot on this host sees a live pid and
//!   waits instead of overriding, and overrides at once after a crash (dead pid);
//! - touched (mtime set to now) every [`TOUCH_INTERVAL`] while held, well inside Dovecot's
//!   `MAILDIR_LOCK_TOUCH_SECS` (10 s), so waiters that cannot check the pid never judge it stale;
//! - released only if the path still names the inode we created (`file_dotlock_delete()`)
//!   and it still holds what we wrote: a lock that was overridden and re-created, or rewritten
//!   in place, by someone else is never removed.
//!
//! A busy lock is overridden only where Dovecot itself would override it (`check_lock()`): it
//! names a dead pid on this host and is at least [`STALE_PID_CHECK`] old, or it has no usable
//! pid and neither it nor `dovecot-uidlist` changed for [`STALE_TIMEOUT`].

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::maildir::names::UIDLIST_LOCK;
use crate::sys;

/// How often a held lock is touched. Dovecot touches its own every 10 s
/// (`MAILDIR_LOCK_TOUCH_SECS`); half that leaves room for a slow wake-up.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(5);

/// Dovecot's `MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT` (120 s): a lock without a usable pid whose
/// file and `dovecot-uidlist` have not changed for this long is stale.
pub const STALE_TIMEOUT: Duration = Duration::from_secs(120);

/// Dovecot's `STALE_PID_CHECK_SECS` (2 s): the pid in a lock is checked only once the lock is
/// this old, so a lock being written is not judged by a half-written pid.
pub const STALE_PID_CHECK: Duration = Duration::from_secs(2);

/// A held `dovecot-uidlist.lock`. Dropping it releases the lock if it is still ours.
#[derive(Debug)]
pub struct UidlistLock {
    /// The mailbox directory that holds the lock.
    dir: Arc<OwnedFd>,
    /// The lock's full path, for messages only.
    path: PathBuf,
    /// Our fd on the lock file: its (dev, ino) is the identity of our lock, and the toucher
    /// touches through it.
    fd: Arc<OwnedFd>,
    dev: u64,
    ino: u64,
    /// What we wrote into it (`<pid>:<host>`).
    content: String,
}

/// The outcome of one try.
#[derive(Debug)]
pub enum TryLock {
    Locked(UidlistLock),
    /// Someone else holds it; the text says who, for the summary.
    Busy(String),
}

impl UidlistLock {
    /// Tries once to take the lock in the mailbox directory `dir` (whose path is `mailbox`),
    /// writing `content` (`<pid>:<host>`). Never waits. An error means the lock cannot be
    /// created at all (read-only source, permissions), not that it is busy.
    pub fn try_lock(dir: &Arc<OwnedFd>, mailbox: &Path, content: &str) -> Result<TryLock> {
        let path = mailbox.join(UIDLIST_LOCK);
        let name = OsStr::new(UIDLIST_LOCK);
        for _ in 0..2 {
            match sys::create_excl_at(dir.as_fd(), name) {
                Ok(fd) => return Self::finish(dir, path, fd, content).map(TryLock::Locked),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    match override_if_stale(dir, &path)? {
                        Staleness::Overridden => continue,
                        Staleness::Held(who) => return Ok(TryLock::Busy(who)),
                    }
                }
                Err(e) => return Err(Error::io("cannot create lock", path, e)),
            }
        }
        Ok(TryLock::Busy("re-created while we overrode it".to_owned()))
    }

    fn finish(dir: &Arc<OwnedFd>, path: PathBuf, fd: OwnedFd, content: &str) -> Result<Self> {
        let st = sys::fstat(fd.as_fd()).map_err(|e| Error::io("cannot stat lock", &path, e))?;
        let lock = UidlistLock {
            dir: Arc::clone(dir),
            path,
            fd: Arc::new(fd),
            dev: st.st_dev,
            ino: st.st_ino,
            content: content.to_owned(),
        };
        // From here on `lock` owns the file: an error below drops it, which removes it.
        let mut file = std::fs::File::from(
            lock.fd
                .try_clone()
                .map_err(|e| Error::io("cannot write lock", &lock.path, e))?,
        );
        std::io::Write::write_all(&mut file, content.as_bytes())
            .map_err(|e| Error::io("cannot write lock", &lock.path, e))?;
        toucher().register(&lock.fd);
        Ok(lock)
    }

    /// Whether the lock path still names the file we created, holding what we wrote: false
    /// once someone overrode it (a new file) or rewrote it in place with their own pid.
    pub fn is_ours(&self) -> bool {
        let same_file = match sys::lstat_at(self.dir.as_fd(), OsStr::new(UIDLIST_LOCK)) {
            Ok(st) => st.st_dev == self.dev && st.st_ino == self.ino,
            Err(_) => false,
        };
        same_file && self.still_says_ours()
    }

    /// Whether our lock file's content is still exactly what we wrote.
    fn still_says_ours(&self) -> bool {
        use std::os::unix::fs::FileExt;
        let Ok(fd) = self.fd.try_clone() else {
            // Out of fds: cannot tell; the file is ours by identity.
            return true;
        };
        let mut buf = vec![0u8; self.content.len() + 1];
        match std::fs::File::from(fd).read_at(&mut buf, 0) {
            Ok(n) => buf[..n] == *self.content.as_bytes(),
            Err(_) => true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UidlistLock {
    fn drop(&mut self) {
        toucher().unregister(&self.fd);
        // Dovecot's file_dotlock_delete(): unlink only if the path is still our inode. The
        // check and the unlink are not atomic; Dovecot accepts the same window.
        if self.is_ours() {
            if let Err(e) = sys::unlink_at(self.dir.as_fd(), OsStr::new(UIDLIST_LOCK)) {
                log::warn!(
                    "cannot remove our lock {}: {e}",
                    crate::error::escape_path(&self.path)
                );
            }
        } else {
            log::warn!(
                "our lock {} was overridden or removed by someone else; left alone",
                crate::error::escape_path(&self.path)
            );
        }
    }
}

enum Staleness {
    Overridden,
    Held(String),
}

/// Dovecot's `check_lock()` for a lock we found busy: override it (unlink, if it is still the
/// same file) when Dovecot would, else say who holds it.
fn override_if_stale(dir: &Arc<OwnedFd>, path: &Path) -> Result<Staleness> {
    let name = OsStr::new(UIDLIST_LOCK);
    let st = match sys::lstat_at(dir.as_fd(), name) {
        Ok(st) => st,
        // Released between our create and our look: free now.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Staleness::Overridden),
        Err(e) => return Err(Error::io("cannot stat lock", path, e)),
    };
    let content = read_small(dir, name).unwrap_or_default();
    let holder = String::from_utf8_lossy(&content).into_owned();
    let now = SystemTime::now();
    let mtime = time_of(st.st_mtime, st.st_mtime_nsec);
    let ctime = time_of(st.st_ctime, st.st_ctime_nsec);
    let age = now.duration_since(mtime).unwrap_or_default();
    let stale = match parse_holder(&content) {
        Some((pid, host)) if host == sys::hostname() => {
            age >= STALE_PID_CHECK && pid != sys::getpid() && !sys::process_exists(pid)
        }
        _ => {
            // No usable pid: stale when neither the lock nor the file it protects changed for
            // STALE_TIMEOUT.
            let mut last = mtime.max(ctime);
            if let Ok(u) = sys::lstat_at(dir.as_fd(), OsStr::new("dovecot-uidlist")) {
                last = last
                    .max(time_of(u.st_mtime, u.st_mtime_nsec))
                    .max(time_of(u.st_ctime, u.st_ctime_nsec));
            }
            now.duration_since(last).unwrap_or_default() > STALE_TIMEOUT
        }
    };
    if !stale {
        return Ok(Staleness::Held(format!(
            "held by {}",
            crate::error::escape_bytes(holder.as_bytes())
        )));
    }
    // Unlink only if the path still names the inode we judged.
    match sys::lstat_at(dir.as_fd(), name) {
        Ok(again) if again.st_ino == st.st_ino && again.st_dev == st.st_dev => {
            // ENOENT: another waiter overrode it first, which frees it just the same.
            let _ = sys::unlink_at(dir.as_fd(), name);
            log::warn!(
                "overrode stale lock {} ({}), as Dovecot would",
                crate::error::escape_path(path),
                crate::error::escape_bytes(holder.as_bytes())
            );
            Ok(Staleness::Overridden)
        }
        _ => Ok(Staleness::Overridden),
    }
}

/// Parses Dovecot's lock content `<pid>:<host>`.
pub fn parse_holder(content: &[u8]) -> Option<(i32, String)> {
    let s = std::str::from_utf8(content).ok()?;
    let (pid, host) = s.split_once(':')?;
    let pid: i32 = pid.parse().ok()?;
    (pid > 0).then(|| (pid, host.to_owned()))
}

fn read_small(dir: &Arc<OwnedFd>, name: &OsStr) -> std::io::Result<Vec<u8>> {
    let fd = sys::openat(dir.as_fd(), name, libc::O_RDONLY)?;
    let mut buf = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::from(fd), 4096),
        &mut buf,
    )?;
    Ok(buf)
}

fn time_of(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

/// The lock content this process writes: `<pid>:<host>`, with the host Dovecot sees
/// (`DOVECOT_HOSTNAME` or `gethostname()`), or `lock_host` when given (`--lock-host`).
///
/// Why `--lock-host`: Dovecot checks the pid in a lock only when the host in it is its own, and
/// then with `kill(pid, 0)` in *its* PID namespace. A maildirfs in another PID namespace (a
/// container) writing its own pid would be judged by an unrelated process there: overridden at
/// once if no such pid exists, or never if one does. A host name Dovecot does not recognise
/// makes it fall back to the 120 s no-change rule, which our 5 s touch keeps from firing.
pub fn lock_content(lock_host: Option<&str>) -> String {
    let host = lock_host.map_or_else(sys::hostname, str::to_owned);
    format!("{}:{}", sys::getpid(), host)
}

/// Whether this process is likely in another PID namespace than the host's init, where its
/// pid means nothing to a Dovecot outside (see [`lock_content`]).
pub fn in_other_pid_namespace() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/pid"),
        std::fs::read_link("/proc/1/ns/pid"),
    ) {
        (Ok(a), Ok(b)) => a != b,
        _ => false,
    }
}

/// Touches every held lock every [`TOUCH_INTERVAL`] from one background thread, so a hold
/// that is slowed down (a huge directory, a slow disk) never looks stale to Dovecot.
pub struct Toucher {
    /// The lock files held right now, touched each round. Protected by this mutex.
    held: Mutex<Vec<Arc<OwnedFd>>>,
    wake: Condvar,
}

impl Toucher {
    fn register(&self, fd: &Arc<OwnedFd>) {
        self.held.lock().push(Arc::clone(fd));
    }

    fn unregister(&self, fd: &Arc<OwnedFd>) {
        self.held.lock().retain(|h| !Arc::ptr_eq(h, fd));
    }

    fn run(&self, interval: Duration) {
        let mut held = self.held.lock();
        loop {
            self.wake.wait_for(&mut held, interval);
            for fd in held.iter() {
                if let Err(e) = sys::touch_fd(fd.as_fd()) {
                    log::warn!("cannot touch a held lock: {e}");
                }
            }
        }
    }
}

/// The process's one toucher, started on first use.
fn toucher() -> &'static Toucher {
    static TOUCHER: OnceLock<&'static Toucher> = OnceLock::new();
    TOUCHER.get_or_init(|| {
        let t: &'static Toucher = Box::leak(Box::new(Toucher {
            held: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("lock-toucher".to_owned())
            .spawn(move || t.run(touch_interval()));
        if let Err(e) = spawned {
            log::error!("cannot start the lock toucher: {e}");
        }
        t
    })
}

/// [`TOUCH_INTERVAL`], or `MAILDIRFS_TEST_TOUCH_MS` in tests that check the touching.
fn touch_interval() -> Duration {
    std::env::var("MAILDIRFS_TEST_TOUCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(TOUCH_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn dirfd(p: &Path) -> Arc<OwnedFd> {
        Arc::new(OwnedFd::from(fs::File::open(p).unwrap()))
    }

    #[test]
    fn lock_content_and_release() {
        let t = crate::testutil::TempDir::new("lock");
        let dir = dirfd(t.path());
        let lock = match UidlistLock::try_lock(&dir, t.path(), &lock_content(None)).unwrap() {
            TryLock::Locked(l) => l,
            TryLock::Busy(w) => panic!("busy: {w}"),
        };
        let lockfile = t.path().join(UIDLIST_LOCK);
        let content = fs::read(&lockfile).unwrap();
        assert_eq!(
            content,
            format!("{}:{}", std::process::id(), sys::hostname()).as_bytes()
        );
        assert!(!content.ends_with(b"\n"));
        // A second try while held is busy and names us.
        match UidlistLock::try_lock(&dir, t.path(), "1:x").unwrap() {
            TryLock::Busy(who) => assert!(who.contains(&std::process::id().to_string())),
            TryLock::Locked(_) => panic!("took a held lock"),
        }
        assert!(lock.is_ours());
        drop(lock);
        assert!(!lockfile.exists());
    }

    #[test]
    fn overridden_lock_is_not_removed() {
        let t = crate::testutil::TempDir::new("lock2");
        let dir = dirfd(t.path());
        let TryLock::Locked(lock) = UidlistLock::try_lock(&dir, t.path(), "1:h").unwrap() else {
            panic!("busy")
        };
        let lockfile = t.path().join(UIDLIST_LOCK);
        // Someone overrides: removes ours and creates their own.
        fs::remove_file(&lockfile).unwrap();
        fs::write(&lockfile, b"999999:elsewhere").unwrap();
        assert!(!lock.is_ours());
        drop(lock);
        assert_eq!(fs::read(&lockfile).unwrap(), b"999999:elsewhere");
    }

    #[test]
    fn live_foreign_lock_is_never_overridden() {
        let t = crate::testutil::TempDir::new("lock3");
        let dir = dirfd(t.path());
        let lockfile = t.path().join(UIDLIST_LOCK);
        // pid 1 is alive on every Linux system; make the lock old enough to be checked.
        fs::write(&lockfile, format!("1:{}", sys::hostname())).unwrap();
        let old = SystemTime::now() - Duration::from_secs(600);
        fs::File::options()
            .write(true)
            .open(&lockfile)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(matches!(
            UidlistLock::try_lock(&dir, t.path(), "2:h").unwrap(),
            TryLock::Busy(_)
        ));
        assert!(lockfile.exists());
    }

    #[test]
    fn dead_pid_on_this_host_is_overridden_like_dovecot() {
        let t = crate::testutil::TempDir::new("lock4");
        let dir = dirfd(t.path());
        let lockfile = t.path().join(UIDLIST_LOCK);
        // A pid far above pid_max's default cannot exist.
        fs::write(&lockfile, format!("2147483646:{}", sys::hostname())).unwrap();
        let old = SystemTime::now() - Duration::from_secs(10);
        fs::File::options()
            .write(true)
            .open(&lockfile)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let got = UidlistLock::try_lock(&dir, t.path(), &lock_content(None)).unwrap();
        assert!(matches!(got, TryLock::Locked(_)));
    }

    #[test]
    fn fresh_dead_pid_lock_waits_for_the_pid_check_age() {
        let t = crate::testutil::TempDir::new("lock5");
        let dir = dirfd(t.path());
        fs::write(
            t.path().join(UIDLIST_LOCK),
            format!("2147483646:{}", sys::hostname()),
        )
        .unwrap();
        assert!(matches!(
            UidlistLock::try_lock(&dir, t.path(), "1:h").unwrap(),
            TryLock::Busy(_)
        ));
    }

    #[test]
    fn lock_host_replaces_the_host_name() {
        assert_eq!(
            lock_content(Some("maildirfs.backup")),
            format!("{}:maildirfs.backup", std::process::id())
        );
    }

    #[test]
    fn parses_holder() {
        assert_eq!(parse_holder(b"123:mail"), Some((123, "mail".to_owned())));
        assert_eq!(parse_holder(b"123"), None);
        assert_eq!(parse_holder(b"x:mail"), None);
        assert_eq!(parse_holder(b""), None);
        assert_eq!(parse_holder(b"0:mail"), None);
    }
}
