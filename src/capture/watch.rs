//! The stall watchdog's view of one account's capture: a heartbeat and the locks held.
//!
//! Everything a capture does while it holds an account's locks (open, read a control file,
//! list a directory, pin a file) is bounded by the disk, and a disk can hang: a FUSE or NFS
//! source that stops answering, a FIFO where a file was. Dovecot never takes over a lock that
//! names a live pid on its own host, so a hung capture would block that user's every flag
//! change, move and expunge for as long as maildirfs runs. So the capturing thread beats the
//! account's [`Watch`] after each operation, and the thread that hands out the accounts
//! (`workers::capture_accounts`) checks every running capture's heartbeat: one that has not
//! moved for the stall timeout is *revoked* — its locks are released at once from that
//! thread, whatever the capturing thread is stuck in, and the account fails with `EIO` in the view.
//!
//! Invariant: after [`Watch::revoke`] returns, no lock registered with the watch is held, and
//! none can be registered any more (the capture discards what it made).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::capture::lock::LockHandle;

/// The default `--stall-timeout`: how long one operation under an account's locks may take
/// before the locks are given up. A single syscall on a healthy disk, even a cold one, takes
/// milliseconds; a huge directory is listed in many calls, each a heartbeat.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One account's capture as the watchdog sees it.
#[derive(Debug)]
pub struct Watch {
    account: PathBuf,
    started: Instant,
    /// Bumped after every operation; the watchdog compares it between its checks.
    beats: AtomicU64,
    /// Set once the watchdog gave up on this capture.
    revoked: AtomicBool,
    /// The locks held right now. Protected by this mutex, which also orders a lock being
    /// added against a revoke: a lock added after the revoke is released at once.
    locks: Mutex<Vec<LockHandle>>,
}

impl Watch {
    /// A watch for the capture of the account at `account` (relative to SOURCE).
    pub fn new(account: &Path) -> Watch {
        Watch {
            account: account.to_path_buf(),
            started: Instant::now(),
            beats: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
            locks: Mutex::new(Vec::new()),
        }
    }

    /// One operation done.
    pub fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    /// How many operations are done so far: the watchdog compares it between its checks.
    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// The account being captured, relative to SOURCE.
    pub fn account(&self) -> &Path {
        &self.account
    }

    /// How long the capture has been running.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether the watchdog gave up on this capture.
    pub fn revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// Records a lock just taken. Returns false (and releases it) if the capture was revoked.
    pub fn holding(&self, lock: LockHandle) -> bool {
        let mut locks = self.locks.lock();
        if self.revoked() {
            lock.release();
            return false;
        }
        locks.push(lock);
        true
    }

    /// Whether the capture holds any lock now.
    pub fn holds_locks(&self) -> bool {
        !self.locks.lock().is_empty()
    }

    /// The capture released its locks itself (a busy round, or the end of the hold).
    pub fn released(&self) {
        self.locks.lock().clear();
    }

    /// Gives up this capture: releases every lock it holds now, from the calling thread.
    pub fn revoke(&self) {
        let held = {
            let mut locks = self.locks.lock();
            self.revoked.store(true, Ordering::Release);
            std::mem::take(&mut *locks)
        };
        for l in &held {
            l.release();
        }
    }
}

/// How the watchdog follows one running capture between checks.
#[derive(Debug)]
pub struct Heartbeat {
    seen: u64,
    since: Instant,
}

impl Heartbeat {
    /// Starts following `watch` from its beats now.
    pub fn new(watch: &Watch) -> Heartbeat {
        Heartbeat {
            seen: watch.beats(),
            since: Instant::now(),
        }
    }

    /// How long the capture has gone without a beat, as of now.
    pub fn silent_for(&mut self, watch: &Watch) -> Duration {
        let now = watch.beats();
        if now != self.seen {
            self.seen = now;
            self.since = Instant::now();
        }
        self.since.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_resets_the_silence() {
        let w = Watch::new(Path::new("a"));
        let mut h = Heartbeat::new(&w);
        std::thread::sleep(Duration::from_millis(30));
        assert!(h.silent_for(&w) >= Duration::from_millis(30));
        w.beat();
        assert!(h.silent_for(&w) < Duration::from_millis(30));
    }

    #[test]
    fn a_revoked_watch_takes_no_more_locks() {
        let t = crate::testutil::TempDir::new("watch");
        let dir = std::sync::Arc::new(std::os::fd::OwnedFd::from(
            std::fs::File::open(t.path()).unwrap(),
        ));
        let take =
            || match crate::capture::lock::UidlistLock::try_lock(&dir, t.path(), "1:h").unwrap() {
                crate::capture::lock::TryLock::Locked(l) => l,
                crate::capture::lock::TryLock::Busy(w) => panic!("busy: {w}"),
            };
        let lockfile = t.path().join(crate::maildir::names::UIDLIST_LOCK);
        let w = Watch::new(Path::new("a"));
        let first = take();
        assert!(w.holding(first.handle()));
        w.revoke();
        // Released by the revoke, while its guard is still alive.
        assert!(!lockfile.exists());
        assert!(w.revoked());
        drop(first);
        let second = take();
        assert!(!w.holding(second.handle()));
        assert!(!lockfile.exists());
    }
}
