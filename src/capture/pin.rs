//! The pin budget. Every captured regular file is pinned with an fd (`O_RDONLY|O_NOATIME`, or
//! `O_PATH` where that is refused) so that its inode, and so its bytes, stay reachable whatever
//! happens to its name afterwards (rename, expunge, rename-replace); reads go to the pin. Hard links are not used: `link()` would change
//! the message's ctime and nlink, and Dovecot uses ctime as the save-date fallback.
//!
//! One fd per file costs about 250 bytes of kernel memory and counts against `RLIMIT_NOFILE`,
//! which is raised as far as the process may. What does not fit in the budget is served by
//! re-resolution instead (see `serve/source.rs`); the summary says how many of each.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sys;

/// fds kept free for everything else: FUSE channels (one per thread with `clone_fd`), directory
/// fds during capture, reopened files being read, the log file, the state file.
pub const RESERVE: usize = 256;

/// Pins take at most 1/this of the machine's memory by default (see
/// [`PinBudget::for_working_set`]).
pub const KERNEL_MEMORY_SHARE: u64 = 100;

/// The most kernel memory one pin was measured to hold (an inode with its dentry and open
/// file: 0.2 to 1.4 KB).
pub const KERNEL_BYTES_PER_PIN: u64 = 1400;

/// The machine's memory (`MemTotal`), if it can be read.
fn memory_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A pinned file: its fd, and its share of the budget, which it gives back when dropped, so
/// that no path (an error, a discarded capture, a file that turns out to be a FIFO) can lose
/// it.
#[derive(Debug)]
pub struct Pin {
    fd: OwnedFd,
    share: Share,
}

/// One pin's share of the budget: given back on drop unless handed to a [`PinSet`].
#[derive(Debug)]
struct Share(Option<Arc<PinBudget>>);

impl Drop for Share {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.release(1);
        }
    }
}

impl AsFd for Pin {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Pin {
    /// The fd alone, its share of the budget now `set`'s: a snapshot keeps a million pins as
    /// 4-byte fds and one set, instead of a million budget references.
    pub fn into_set(self, set: &mut PinSet) -> OwnedFd {
        let Pin { fd, mut share } = self;
        if let Some(b) = share.0.take() {
            match &set.budget {
                Some(mine) if !Arc::ptr_eq(mine, &b) => {
                    // Another budget's pin (never, in one capture): give that share back
                    // now rather than miscount either budget.
                    b.release(1);
                }
                Some(_) => set.held += 1,
                None => {
                    set.budget = Some(b);
                    set.held = 1;
                }
            }
        }
        fd
    }
}

/// The budget shares of many pins whose fds are kept elsewhere (a snapshot's): given back
/// all at once when the set is dropped. Its owner drops it after the fds (a struct's fields
/// drop in order), so the budget never counts an fd as free while it is still open.
#[derive(Debug, Default)]
pub struct PinSet {
    budget: Option<Arc<PinBudget>>,
    held: usize,
}

impl PinSet {
    /// Takes over the shares of `other` (the pins of a subtree built apart, joining this
    /// snapshot).
    pub fn absorb(&mut self, mut other: PinSet) {
        let Some(b) = other.budget.take() else {
            return;
        };
        match &self.budget {
            Some(mine) if !Arc::ptr_eq(mine, &b) => b.release(other.held),
            Some(_) => self.held += other.held,
            None => {
                self.budget = Some(b);
                self.held = other.held;
            }
        }
    }
}

impl Drop for PinSet {
    fn drop(&mut self) {
        if let Some(b) = self.budget.take() {
            b.release(self.held);
        }
    }
}

/// How many more files may be pinned.
#[derive(Debug)]
pub struct PinBudget {
    left: AtomicUsize,
    /// Pins held now.
    in_use: AtomicUsize,
    /// Pins adopted over the budget (see [`PinBudget::adopt`]), not yet paid back.
    overdrawn: AtomicUsize,
    /// fds open when the budget was made.
    base: usize,
    /// The soft `RLIMIT_NOFILE` in force, for the summary.
    pub limit: u64,
}

impl PinBudget {
    /// Raises the fd limit and sizes the budget from it.
    pub fn from_rlimit() -> PinBudget {
        let limit = sys::raise_nofile_limit();
        let used = sys::open_fd_count();
        let left = (limit as usize).saturating_sub(used + RESERVE);
        PinBudget {
            left: AtomicUsize::new(left),
            in_use: AtomicUsize::new(0),
            overdrawn: AtomicUsize::new(0),
            base: used,
            limit,
        }
    }

    /// The budget of a working set: what the fd limit leaves, at most `files` when given, and
    /// by default never more pins than [`KERNEL_MEMORY_SHARE`] of the machine's memory holds
    /// (a pin keeps its inode, dentry and file in kernel memory: up to about
    /// [`KERNEL_BYTES_PER_PIN`] bytes).
    pub fn for_working_set(files: Option<usize>) -> PinBudget {
        let b = PinBudget::from_rlimit();
        let cap = match files {
            Some(n) => n,
            None => memory_bytes().map_or(usize::MAX, |m| {
                (m / KERNEL_MEMORY_SHARE / KERNEL_BYTES_PER_PIN) as usize
            }),
        };
        let left = b.left.load(Ordering::Relaxed).min(cap);
        b.left.store(left, Ordering::Relaxed);
        b
    }

    /// A budget of exactly `n` pins (tests).
    pub fn fixed(n: usize) -> Arc<PinBudget> {
        Arc::new(PinBudget {
            left: AtomicUsize::new(n),
            in_use: AtomicUsize::new(0),
            overdrawn: AtomicUsize::new(0),
            base: sys::open_fd_count(),
            limit: n as u64,
        })
    }

    /// Pins `name` in `dir` if the budget allows; `d_type` is the entry's type from its
    /// listing (see `sys::pin_at`). `None` when over budget or the open fails (the name is gone:
    /// the caller falls back to re-resolution).
    pub fn pin(
        self: &Arc<Self>,
        dir: BorrowedFd<'_>,
        name: &std::ffi::OsStr,
        d_type: u8,
    ) -> Option<Pin> {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .ok()?;
        match sys::pin_at(dir, name, d_type == sys::DT_REG) {
            Ok(fd) => {
                self.in_use.fetch_add(1, Ordering::Relaxed);
                Some(Pin {
                    fd,
                    share: Share(Some(Arc::clone(self))),
                })
            }
            Err(_) => {
                self.left.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Counts `fd`, opened by the caller, as a pin: within the budget if there is room, else
    /// over it (a file that must be pinned whatever the budget: a `dovecot-uidlist` too large
    /// to hold in memory; without it a restore loses every UID). The overdraft is paid back
    /// first when pins are released.
    pub fn adopt(self: &Arc<Self>, fd: OwnedFd) -> Pin {
        if self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            self.overdrawn.fetch_add(1, Ordering::Relaxed);
        }
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Pin {
            fd,
            share: Share(Some(Arc::clone(self))),
        }
    }

    /// How many pins are held now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// How many more pins the budget allows.
    pub fn left(&self) -> usize {
        self.left.load(Ordering::Relaxed)
    }

    /// Whether no pin is left.
    pub fn exhausted(&self) -> bool {
        self.left.load(Ordering::Relaxed) == 0
    }

    /// Gives back the budget of `n` pins that were dropped (a `Pin`'s, a `PinSet`'s drop):
    /// the overdraft first.
    fn release(&self, n: usize) {
        self.in_use.fetch_sub(n, Ordering::Relaxed);
        let mut repaid = 0;
        let _ = self
            .overdrawn
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
                repaid = o.min(n);
                Some(o - repaid)
            });
        self.left.fetch_add(n - repaid, Ordering::Relaxed);
    }

    /// Sets aside up to `n` fds of the budget for directories held open for a while (an
    /// account's mailbox directories during its capture); returns how many, to give back with
    /// [`PinBudget::unhold`]. Those directories come before pins.
    pub fn hold(&self, n: usize) -> usize {
        let mut taken = 0;
        let _ = self
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                taken = n.min(left);
                Some(left - taken)
            });
        taken
    }

    /// Gives back `n` fds set aside by [`PinBudget::hold`], once those directories are closed.
    pub fn unhold(&self, n: usize) {
        self.left.fetch_add(n, Ordering::Relaxed);
    }

    /// Makes room in the fd table for `expected` more pins before a lock is taken (see
    /// `sys::grow_fd_table`), within the budget.
    pub fn reserve_table(&self, expected: usize, any_open: BorrowedFd<'_>) {
        let room = expected.min(self.left.load(Ordering::Relaxed));
        let top = self.base + self.in_use.load(Ordering::Relaxed) + room + RESERVE / 2;
        sys::grow_fd_table(top.min(self.limit.saturating_sub(1) as usize), any_open);
    }
}
