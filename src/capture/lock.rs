//! The Dovecot uidlist dotlock, `<mailbox>/dovecot-uidlist.lock`, as an RAII guard.
//!
//! The protocol is Dovecot 2.3's `file-dotlock.c` as used by `maildir-uidlist.c`:
//! - created with its content already in it, as Dovecot does with `dotlock_use_excl = no`, but
//!   from a file without a name: an `O_TMPFILE` in the mailbox ([`LockTemp`]), written before
//!   the locks are taken, and given the lock's name with `linkat()`, which fails if the lock
//!   exists, as `open(O_CREAT|O_EXCL)` (Dovecot's default) does. Nothing but the lock ever
//!   appears in the mailbox, and a process killed before the link leaves nothing. Where a
//!   file cannot be made or linked so (NFS, FUSE), the lock is created with `O_EXCL` and
//!   written;
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
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::maildir::names::{UIDLIST, UIDLIST_LOCK};
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
    held: Arc<Held>,
}

/// One lock file we created, shared by its guard, the toucher, and whoever may have to give
/// it up before the guard drops: the capture's stall watchdog ([`LockHandle`]) and the signal
/// thread ([`release_all`]).
#[derive(Debug)]
struct Held {
    /// The mailbox directory that holds the lock.
    dir: Arc<OwnedFd>,
    /// The lock's full path, for messages only.
    path: PathBuf,
    /// Our open lock file: its (dev, ino) is the identity of our lock, and the toucher
    /// touches through it.
    file: std::fs::File,
    dev: u64,
    ino: u64,
    /// What we wrote into it (`<pid>:<host>`).
    content: String,
    /// Where its release stands: [`HELD`], [`RELEASING`] (one caller is at it; any other
    /// returns at once rather than wait on a syscall that may hang) or [`RELEASED`].
    state: AtomicU8,
}

/// What one release did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The lock was still ours, and is removed.
    Removed,
    /// The path no longer names our lock (overridden, rewritten, removed): left alone.
    NotOurs,
    /// It could not be checked or removed (`EIO`, ...): still held, for a later try.
    Failed,
}

const HELD: u8 = 0;
const RELEASING: u8 = 1;
const RELEASED: u8 = 2;

/// Who releases a lock, and so how carefully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// The guard, at the end of a capture: the path must name our inode and hold our content.
    Checked,
    /// The watchdog or the signal thread, while a capture may be stuck on the same
    /// filesystem: our inode suffices (Dovecot's own rule), so nothing is read.
    Early,
}

/// A second handle on a held lock, that can release it early (the stall watchdog) while the
/// capture that took it is stuck. Releasing twice, or after the guard dropped, does nothing.
#[derive(Debug, Clone)]
pub struct LockHandle(Arc<Held>);

impl LockHandle {
    /// Releases the lock now if it is still held and still ours.
    pub fn release(&self) {
        self.0.release(Release::Early);
    }
}

/// The outcome of one try.
#[derive(Debug)]
pub enum TryLock {
    /// Taken: the guard releases it as it drops, if it is still ours.
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
                Err(e) if sys::errno(&e) == Some(sys::Errno::EEXIST) => {
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

    /// Tries once to take the lock by giving the file made ready in `slot` the lock's name; a
    /// file so linked is used up (`slot` is then empty: the next try needs a new one). Where
    /// it cannot be linked, or `slot` is empty, the lock is created in place as
    /// [`try_lock`](Self::try_lock) does. Never waits.
    pub fn try_lock_prepared(
        slot: &mut Option<LockTemp>,
        dir: &Arc<OwnedFd>,
        mailbox: &Path,
        content: &str,
    ) -> Result<TryLock> {
        let Some(temp) = slot.take() else {
            return Self::try_lock(dir, mailbox, content);
        };
        let path = mailbox.join(UIDLIST_LOCK);
        let name = OsStr::new(UIDLIST_LOCK);
        for _ in 0..2 {
            match sys::link_fd_at(temp.file.as_fd(), dir.as_fd(), name) {
                Ok(()) => {
                    let held = Held {
                        dir: Arc::clone(dir),
                        path,
                        file: temp.file,
                        dev: temp.dev,
                        ino: temp.ino,
                        content: content.to_owned(),
                        state: AtomicU8::new(HELD),
                    };
                    return UidlistLock::hold(held, false).map(TryLock::Locked);
                }
                Err(e) if sys::errno(&e) == Some(sys::Errno::EEXIST) => {
                    match override_if_stale(dir, &path)? {
                        Staleness::Overridden => continue,
                        Staleness::Held(who) => {
                            // Still unlinked: ready for the next round.
                            *slot = Some(temp);
                            return Ok(TryLock::Busy(who));
                        }
                    }
                }
                // It cannot be linked here (no hard links, no /proc for the fd): the lock is
                // created in place, and the file made ready goes.
                Err(_) => return Self::try_lock(dir, mailbox, content),
            }
        }
        *slot = Some(temp);
        Ok(TryLock::Busy("re-created while we overrode it".to_owned()))
    }

    fn finish(dir: &Arc<OwnedFd>, path: PathBuf, fd: OwnedFd, content: &str) -> Result<Self> {
        let st = sys::fstat(fd.as_fd()).map_err(|e| Error::io("cannot stat lock", &path, e))?;
        let held = Held {
            dir: Arc::clone(dir),
            path,
            file: std::fs::File::from(fd),
            dev: st.st_dev,
            ino: st.st_ino,
            content: content.to_owned(),
            state: AtomicU8::new(HELD),
        };
        Self::hold(held, true)
    }

    /// Registers a lock file just made ours, and writes our content into it unless it holds
    /// it already (a linked temp).
    fn hold(held: Held, write: bool) -> Result<Self> {
        let lock = UidlistLock {
            held: Arc::new(held),
        };
        // From here on `lock` owns the file. It is registered before it is written, so a stop
        // signal during the write removes it too; on an error it is removed by identity alone
        // (it may not hold our content yet).
        let held = &lock.held;
        let failed = if !registry().register(held) {
            Some(Error::msg("cannot take lock", &held.path, "stopping"))
        } else if write {
            std::os::unix::fs::FileExt::write_all_at(&held.file, held.content.as_bytes(), 0)
                .err()
                .map(|e| Error::io("cannot write lock", &held.path, e))
        } else {
            None
        };
        match failed {
            None => Ok(lock),
            Some(e) => {
                held.release(Release::Early);
                Err(e)
            }
        }
    }

    /// The lock file's path, for messages.
    pub fn path(&self) -> &Path {
        &self.held.path
    }

    /// Releases the lock, and says whether it was still ours, held by us without a break,
    /// until this release removed it (a second release does nothing and says false): the
    /// check a capture needs that its locks held throughout, made by the release itself
    /// rather than by an `lstat` and a read more under the locks. A lock that could not be
    /// removed is tried again as it drops.
    pub fn release_if_ours(&self) -> bool {
        self.held.release(Release::Checked) == Some(Outcome::Removed)
    }

    /// A handle that can release this lock early (see [`LockHandle`]).
    pub fn handle(&self) -> LockHandle {
        LockHandle(Arc::clone(&self.held))
    }
}

impl Held {
    /// Whether our lock file's content is still exactly what we wrote.
    fn still_says_ours(&self) -> bool {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; self.content.len() + 1];
        match self.file.read_at(&mut buf, 0) {
            Ok(n) => buf[..n] == *self.content.as_bytes(),
            // Cannot tell: the file is ours by identity.
            Err(_) => true,
        }
    }

    /// Dovecot's file_dotlock_delete(): unlink only if the path is still our inode (and, for
    /// [`Release::Checked`], still holds what we wrote). The check and the unlink are not
    /// atomic; Dovecot accepts the same window. Done once per lock, by whoever comes first (the
    /// guard, the watchdog, the signal thread); a check that fails for a reason that may pass
    /// (`EIO`, a timeout) leaves the lock held, for a later caller to try again.
    /// Returns what this call did, `None` when another caller released it or is at it.
    fn release(&self, how: Release) -> Option<Outcome> {
        if self
            .state
            .compare_exchange(HELD, RELEASING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let outcome = self.unlink_if_ours(how);
        let state = match outcome {
            Outcome::Failed => HELD,
            Outcome::Removed | Outcome::NotOurs => RELEASED,
        };
        self.state.store(state, Ordering::Release);
        Some(outcome)
    }

    fn unlink_if_ours(&self, how: Release) -> Outcome {
        let shown = || crate::error::escape_path(&self.path);
        let ours = match sys::lstat_at(self.dir.as_fd(), OsStr::new(UIDLIST_LOCK)) {
            Ok(st) => st.st_dev == self.dev && st.st_ino == self.ino,
            Err(e) if sys::errno(&e) == Some(sys::Errno::ENOENT) => false,
            Err(e) => {
                log::warn!("cannot check our lock {}: {e}; still held", shown());
                return Outcome::Failed;
            }
        };
        // An early release reads nothing: the lock file is on the filesystem that may be the
        // one hanging, and a Dovecot that overrode us made a new inode anyway.
        let ours = ours && (how == Release::Early || self.still_says_ours());
        if !ours {
            log::warn!(
                "our lock {} was overridden or removed by someone else; left alone",
                shown()
            );
            return Outcome::NotOurs;
        }
        match sys::unlink_at(self.dir.as_fd(), OsStr::new(UIDLIST_LOCK)) {
            Ok(()) => Outcome::Removed,
            // Removed between our check and our unlink: it was ours until then, and is gone.
            Err(e) if sys::errno(&e) == Some(sys::Errno::ENOENT) => Outcome::NotOurs,
            Err(e) => {
                log::warn!("cannot remove our lock {}: {e}", shown());
                Outcome::Failed
            }
        }
    }

    fn is_released(&self) -> bool {
        self.state.load(Ordering::Acquire) == RELEASED
    }
}

impl Drop for UidlistLock {
    fn drop(&mut self) {
        registry().unregister(&self.held);
        self.held.release(Release::Checked);
    }
}

/// A lock made ready before the locks of an account are taken: a file without a name in the
/// mailbox (`O_TMPFILE`), already holding our content. Taking the lock is then one `linkat()`
/// ([`UidlistLock::try_lock_prepared`]): a file created under the locks from a cold cache
/// made ext4 read its inode bitmap and table from the disk (0.3–2 ms for 8 mailboxes), and
/// this one was allocated and written before them. Never seen by anyone until linked;
/// dropped unlinked, it is gone with its fd.
#[derive(Debug)]
pub struct LockTemp {
    file: std::fs::File,
    dev: u64,
    ino: u64,
}

impl LockTemp {
    /// Makes the file in the mailbox directory `dir` (whose path is `mailbox`) and writes
    /// `content` into it. An error (a filesystem without `O_TMPFILE`) means none: the lock is
    /// then created in place.
    pub fn create(dir: &Arc<OwnedFd>, mailbox: &Path, content: &str) -> Result<LockTemp> {
        let fd = sys::tmpfile_in(dir.as_fd())
            .map_err(|e| Error::io("cannot make lock file", mailbox, e))?;
        let st =
            sys::fstat(fd.as_fd()).map_err(|e| Error::io("cannot make lock file", mailbox, e))?;
        let file = std::fs::File::from(fd);
        std::os::unix::fs::FileExt::write_all_at(&file, content.as_bytes(), 0)
            .map_err(|e| Error::io("cannot write lock file", mailbox, e))?;
        Ok(LockTemp {
            file,
            dev: st.st_dev,
            ino: st.st_ino,
        })
    }

    /// Sets the file's times to now: a lock linked from it after a wait must not look as old
    /// as the file to a Dovecot judging it by its mtime.
    pub fn touch(&self) {
        let _ = sys::touch_fd(self.file.as_fd());
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
        Err(e) if sys::errno(&e) == Some(sys::Errno::ENOENT) => {
            return Ok(Staleness::Overridden);
        }
        Err(e) => return Err(Error::io("cannot stat lock", path, e)),
    };
    if sys::FileKind::of_mode(st.st_mode) != sys::FileKind::Regular {
        // Something planted in the lock's place (a FIFO, a directory): no dotlock can ever be
        // taken there, and it is never ours to remove or open.
        return Err(Error::msg(
            "cannot take lock",
            path,
            "something other than a regular file is in its place",
        ));
    }
    let content = read_small(dir, name).unwrap_or_default();
    let holder = String::from_utf8_lossy(&content).into_owned();
    let now = SystemTime::now();
    let mtime = sys::FileTime::mtime(&st).system_time();
    let ctime = sys::FileTime::ctime(&st).system_time();
    let age = now.duration_since(mtime).unwrap_or_default();
    let stale = match parse_holder(&content) {
        Some((pid, host)) if host == sys::hostname() => {
            age >= STALE_PID_CHECK && pid != sys::getpid() && !sys::process_exists(pid)
        }
        _ => {
            // No usable pid: stale when neither the lock nor the file it protects changed for
            // STALE_TIMEOUT.
            let mut last = mtime.max(ctime);
            if let Ok(u) = sys::lstat_at(dir.as_fd(), OsStr::from_bytes(UIDLIST)) {
                let (m, c) = (sys::FileTime::mtime(&u), sys::FileTime::ctime(&u));
                last = last.max(m.system_time()).max(c.system_time());
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

/// The first 4 KiB of a lock file. `O_NONBLOCK` and the type check keep a FIFO swapped in
/// since the `lstat` from blocking the open (and us, with other locks of the account held).
fn read_small(dir: &Arc<OwnedFd>, name: &OsStr) -> std::io::Result<Vec<u8>> {
    let (fd, st) = sys::open_untrusted(dir.as_fd(), name)?;
    if sys::FileKind::of_mode(st.st_mode) != sys::FileKind::Regular {
        return Err(std::io::Error::from(sys::Errno::EINVAL));
    }
    let mut buf = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::fs::File::from(fd), 4096),
        &mut buf,
    )?;
    Ok(buf)
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

/// Every lock this process holds: touched every [`TOUCH_INTERVAL`] from one background
/// thread, so a hold that is slowed down (a huge directory, a slow disk) never looks stale to
/// Dovecot, and released all at once by [`release_all`] when a stop signal comes.
struct Registry {
    /// The locks held now, and whether the registry is closed. Protected by this mutex.
    state: Mutex<Registered>,
    wake: Condvar,
}

struct Registered {
    locks: Vec<Arc<Held>>,
    /// Set by [`release_all`]: no lock may be taken any more.
    closed: bool,
}

impl Registry {
    /// Adds a lock just created; false once the process is stopping (the caller then removes
    /// it).
    fn register(&self, held: &Arc<Held>) -> bool {
        let mut state = self.state.lock();
        if state.closed {
            return false;
        }
        state.locks.push(Arc::clone(held));
        true
    }

    fn unregister(&self, held: &Arc<Held>) {
        self.state.lock().locks.retain(|h| !Arc::ptr_eq(h, held));
    }

    fn run(&self, interval: Duration) {
        loop {
            // Touched outside the mutex: a touch that hangs (a wedged filesystem) must not
            // keep the signal thread from releasing every other lock.
            let held: Vec<Arc<Held>> = {
                let mut state = self.state.lock();
                self.wake.wait_for(&mut state, interval);
                state.locks.clone()
            };
            for h in held.iter().filter(|h| !h.is_released()) {
                if let Err(e) = sys::touch_fd(h.file.as_fd()) {
                    log::warn!(
                        "cannot touch our lock {}: {e}",
                        crate::error::escape_path(&h.path)
                    );
                }
            }
        }
    }
}

/// Releases every lock this process holds, at once, and refuses any new one: what a stop
/// signal does before anything else, so that no lock outlives the signal by more than the
/// few syscalls this takes, whatever the capturing threads are stuck in. Returns how many
/// locks were released.
pub fn release_all() -> usize {
    STOPPED.store(true, Ordering::Relaxed);
    let held = {
        let mut state = registry().state.lock();
        state.closed = true;
        std::mem::take(&mut state.locks)
    };
    for h in &held {
        h.release(Release::Early);
    }
    held.len()
}

/// Set once by [`release_all`], never cleared: the process is stopping. Kept apart from the
/// registry so that asking does not start the registry's thread.
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Whether a stop signal has released every lock: captures check it between tries and
/// accounts, and stop.
pub fn stopping() -> bool {
    STOPPED.load(Ordering::Relaxed)
}

/// The process's one registry, its toucher thread started on first use.
fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<&'static Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let r: &'static Registry = Box::leak(Box::new(Registry {
            state: Mutex::new(Registered {
                locks: Vec::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("lock-toucher".to_owned())
            .spawn(move || r.run(touch_interval()));
        if let Err(e) = spawned {
            log::error!("cannot start the lock toucher: {e}");
        }
        r
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
        assert!(lock.release_if_ours());
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
        assert!(!lock.release_if_ours());
        drop(lock);
        assert_eq!(fs::read(&lockfile).unwrap(), b"999999:elsewhere");
    }

    /// Writes a lock at `path` holding `content`, last changed `age` ago.
    fn plant(path: &Path, content: impl AsRef<[u8]>, age: Duration) {
        fs::write(path, content).unwrap();
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn live_foreign_lock_is_never_overridden() {
        let t = crate::testutil::TempDir::new("lock3");
        let dir = dirfd(t.path());
        let lockfile = t.path().join(UIDLIST_LOCK);
        // pid 1 is alive on every Linux system; make the lock old enough to be checked.
        plant(
            &lockfile,
            format!("1:{}", sys::hostname()),
            Duration::from_secs(600),
        );
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
        plant(
            &lockfile,
            format!("2147483646:{}", sys::hostname()),
            Duration::from_secs(10),
        );
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
    fn a_fifo_in_the_locks_place_is_neither_opened_nor_removed() {
        let t = crate::testutil::TempDir::new("lock6");
        let dir = dirfd(t.path());
        let lockfile = t.path().join(UIDLIST_LOCK);
        let made = std::process::Command::new("mkfifo")
            .arg(&lockfile)
            .status()
            .unwrap();
        assert!(made.success());
        // Opening it for reading would block for ever: an error comes back at once instead.
        let err = UidlistLock::try_lock(&dir, t.path(), "1:h").unwrap_err();
        assert!(err.to_string().contains("regular file"), "{err}");
        let st = fs::symlink_metadata(&lockfile).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&st.file_type()));
    }

    /// The names in `dir` other than `.` and `..`, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn prepared(dir: &Arc<OwnedFd>, at: &Path, content: &str) -> Option<LockTemp> {
        Some(LockTemp::create(dir, at, content).unwrap())
    }

    #[test]
    fn a_lock_made_ready_shows_only_once_linked_and_is_used_up() {
        use std::os::unix::fs::MetadataExt;
        let t = crate::testutil::TempDir::new("lock7");
        let dir = dirfd(t.path());
        let content = lock_content(None);
        let mut slot = prepared(&dir, t.path(), &content);
        // Made and written, and nothing in the mailbox yet.
        assert_eq!(names_in(t.path()), Vec::<String>::new());
        let TryLock::Locked(lock) =
            UidlistLock::try_lock_prepared(&mut slot, &dir, t.path(), &content).unwrap()
        else {
            panic!("busy")
        };
        assert!(slot.is_none(), "a linked file is used up");
        let lockfile = t.path().join(UIDLIST_LOCK);
        assert_eq!(names_in(t.path()), vec![UIDLIST_LOCK.to_owned()]);
        assert_eq!(fs::read(&lockfile).unwrap(), content.as_bytes());
        assert_eq!(fs::metadata(&lockfile).unwrap().nlink(), 1);
        // Held: a second try, linked or created, is busy and names us; the file made ready
        // for it stays ready.
        let mut other = prepared(&dir, t.path(), "1:x");
        match UidlistLock::try_lock_prepared(&mut other, &dir, t.path(), "1:x").unwrap() {
            TryLock::Busy(who) => assert!(who.contains(&content), "{who}"),
            TryLock::Locked(_) => panic!("took a held lock"),
        }
        assert!(other.is_some());
        match UidlistLock::try_lock(&dir, t.path(), "1:x").unwrap() {
            TryLock::Busy(who) => assert!(who.contains(&content), "{who}"),
            TryLock::Locked(_) => panic!("took a held lock"),
        }
        drop(other);
        assert!(lock.release_if_ours());
        assert!(!lockfile.exists());
        // Released once: a second release says nothing was held.
        assert!(!lock.release_if_ours());
        drop(lock);
        assert_eq!(names_in(t.path()), Vec::<String>::new());
    }

    #[test]
    fn a_lock_overridden_or_rewritten_while_held_is_not_ours_at_release() {
        let t = crate::testutil::TempDir::new("lock8");
        let dir = dirfd(t.path());
        let lockfile = t.path().join(UIDLIST_LOCK);
        let take = || {
            let mut slot = prepared(&dir, t.path(), "1:h");
            match UidlistLock::try_lock_prepared(&mut slot, &dir, t.path(), "1:h").unwrap() {
                TryLock::Locked(l) => l,
                TryLock::Busy(w) => panic!("busy: {w}"),
            }
        };
        let lock = take();
        fs::remove_file(&lockfile).unwrap();
        fs::write(&lockfile, b"999999:elsewhere").unwrap();
        assert!(!lock.release_if_ours());
        drop(lock);
        assert_eq!(fs::read(&lockfile).unwrap(), b"999999:elsewhere");
        // Rewritten in place, same inode: not ours either.
        fs::remove_file(&lockfile).unwrap();
        let lock = take();
        fs::write(&lockfile, b"999999:elsewhere").unwrap();
        assert!(!lock.release_if_ours());
        drop(lock);
        assert!(lockfile.exists());
    }

    #[test]
    fn a_lock_without_a_file_made_ready_is_created_in_place() {
        let t = crate::testutil::TempDir::new("lock9");
        let dir = dirfd(t.path());
        let mut slot = None;
        let TryLock::Locked(lock) =
            UidlistLock::try_lock_prepared(&mut slot, &dir, t.path(), "1:h").unwrap()
        else {
            panic!("busy")
        };
        assert_eq!(fs::read(t.path().join(UIDLIST_LOCK)).unwrap(), b"1:h");
        assert!(lock.release_if_ours());
        drop(lock);
        assert_eq!(names_in(t.path()), Vec::<String>::new());
    }

    #[test]
    fn an_early_release_of_a_linked_lock_removes_it() {
        let t = crate::testutil::TempDir::new("lock11");
        let dir = dirfd(t.path());
        let mut slot = prepared(&dir, t.path(), "1:h");
        let TryLock::Locked(lock) =
            UidlistLock::try_lock_prepared(&mut slot, &dir, t.path(), "1:h").unwrap()
        else {
            panic!("busy")
        };
        // The watchdog, while the capture that holds it is stuck.
        lock.handle().release();
        assert_eq!(names_in(t.path()), Vec::<String>::new());
        drop(lock);
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
