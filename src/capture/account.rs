//! Account-at-once capture. For each account, every mailbox's `dovecot-uidlist.lock` is taken
//! with try-locks in sorted path order; if one is busy, all are released and the whole set is
//! tried again after a jittered back-off, until `--lock-timeout`. maildirfs never waits on a
//! lock while holding another, so it cannot deadlock with Dovecot or with itself.
//!
//! What the image takes of each mailbox is what was true under its locks: its control files,
//! read into memory, and its `new/` and `cur/`, listed with the listing check: the
//! directories' mtime and ctime (ns) must be the same before and after the listing, and no
//! base name may appear twice. The
//! lock does not stop deliveries (Dovecot's LDA try-locks and delivers anyway; Postfix and
//! procmail never lock) nor MUAs that rename without a lock, so the check is what catches
//! them. A listing that never settles keeps the union of base names seen.
//!
//! The costly parts, listing (about 1 µs an entry on ext4) and opening a pin per file, are done
//! *before* the locks are taken (`prepin`; it warms the caches too), with the listing check,
//! and the control files are read then. Under the locks, a mailbox whose `new/` and `cur/`
//! have the same stamps as when they were listed, and whose control files are the same files
//! with the same stamps, is taken as read: a change since shows in a ctime, given that none
//! had changed for `QUIET` before the read began (file times lag the clock by a tick) and
//! the filesystem is local. A mailbox that changed is listed again under the locks: each
//! listed (name, inode) is confirmed against its pre-pin, only names that are new get a pin,
//! and a pre-pin whose name is gone or names another inode now is dropped. So the locks are
//! held for a few `fstat`s per mailbox, or a listing of those that changed.
//!
//! Everything else (stat, reading other files) happens in `freeze` after the locks are gone.
//!
//! What an account's owner can plant cannot hurt the capture: control files are opened
//! `O_NONBLOCK|O_NOFOLLOW` and taken only when they are regular files; at most
//! [`ACCOUNT_CONTROL_BYTES`] of them are held in memory per account, and any but
//! `dovecot-uidlist` at most [`CONTROL_FILE_BYTES`] each; a `dovecot-uidlist` beyond what is
//! left is pinned and served from its pin at its captured length. Every operation under the
//! locks beats the account's [`Watch`], so a hung one is seen, and its locks released, by the
//! watchdog (`capture/watch.rs`).
//!
//! Invariant: when `capture_account` returns, none of its locks is held.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::capture::control_tree::{ControlDir, ControlPlaces};
use crate::capture::lock::{LockTemp, TryLock, UidlistLock, lock_content};
use crate::capture::pin::{Pin, PinBudget};
use crate::capture::watch::Watch;
use crate::error::{Error, Result};
use crate::maildir::Account;
use crate::maildir::filename::base_name;
use crate::maildir::names::{self, Place};
use crate::sys;

/// The most control-file bytes one account holds in memory (the sum over its mailboxes).
/// Real control files are a few KB; a `dovecot-uidlist` of a million messages is about 100 MB,
/// and is pinned instead once it does not fit.
pub const ACCOUNT_CONTROL_BYTES: usize = 16 << 20;

/// The largest control file other than `dovecot-uidlist` that is captured (keywords,
/// subscriptions, ACLs are a few KB); a larger one is left out of the image with a warning.
pub const CONTROL_FILE_BYTES: usize = 1 << 20;

/// How many times a mailbox is listed before the listing check gives up and keeps the union.
pub const MAX_LISTINGS: usize = 4;

/// How long an account's lock set is tried for, unless `--lock-timeout` says otherwise.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// How capture treats locks.
#[derive(Debug, Clone)]
pub struct LockPolicy {
    /// `--no-lock`: never take a lock.
    pub no_lock: bool,
    /// `--strict-lock`: an account whose locks cannot be had fails the capture.
    pub strict: bool,
    /// `--lock-timeout`: how long to keep retrying an account's lock set.
    pub timeout: Duration,
    /// Test-only: how long to keep the locks after listing (`MAILDIRFS_TEST_HOLD_MS`), so tests
    /// can observe the held set and Dovecot waiting.
    pub test_hold: Duration,
    /// Diagnostic and test only, never set by the command line: lock and capture each mailbox
    /// on its own, as a per-mailbox tool would (with `test_hold` as the gap between mailboxes).
    /// A message MOVEd between folders can then vanish from the image; the Dovecot tests use
    /// it to show that they can catch that.
    pub one_mailbox_at_a_time: bool,
    /// `--lock-host`: the host written into our locks instead of ours (see
    /// `lock::lock_content`).
    pub lock_host: Option<String>,
    /// `--control-dir`: where each mailbox's lock and control files are.
    pub places: Arc<ControlPlaces>,
}

impl Default for LockPolicy {
    /// Locks taken and waited for up to [`DEFAULT_LOCK_TIMEOUT`], an account that cannot be
    /// locked captured without them (with a warning), control files in the Maildir.
    fn default() -> LockPolicy {
        LockPolicy {
            no_lock: false,
            strict: false,
            timeout: DEFAULT_LOCK_TIMEOUT,
            test_hold: Duration::ZERO,
            one_mailbox_at_a_time: false,
            lock_host: None,
            places: Arc::default(),
        }
    }
}

/// One entry of a `new/` or `cur/` listing.
#[derive(Debug)]
pub struct Listed {
    /// The entry's file name in `new/` or `cur/`.
    pub name: Vec<u8>,
    /// Its inode number as the listing gave it: its pin, and freeze's `lstat`, are checked
    /// against it.
    pub ino: u64,
    /// Its type as the listing gave it (`DT_REG`, `DT_LNK`, ...); symlinks are never pinned.
    pub d_type: u8,
    /// The file's pin (if the budget allowed): one taken before the lock and confirmed by the
    /// listing under it, or one opened under the lock for a name that is new.
    pub pin: Option<Pin>,
}

/// A control file as captured under the lock.
#[derive(Debug)]
pub struct ControlFile {
    /// Its file name (one of `names::CONTROL_FILES`).
    pub name: Vec<u8>,
    /// Its captured bytes: in memory, or a pin for a `dovecot-uidlist` too large to hold.
    pub content: ControlContent,
    /// The file's `fstat` when captured; for a pinned one, its size is the captured length.
    pub stat: sys::Stat,
}

impl ControlFile {
    /// The bytes it holds in memory (none when pinned).
    fn inline_len(&self) -> usize {
        match &self.content {
            ControlContent::Inline(bytes) => bytes.len(),
            ControlContent::Pinned(_) => 0,
        }
    }
}

/// Where a control file's captured bytes are.
#[derive(Debug)]
pub enum ControlContent {
    /// Read into memory.
    Inline(Arc<[u8]>),
    /// A `dovecot-uidlist` too large for the account's memory cap: the fd it was opened with
    /// under the lock (a readable pin), served up to the captured size. It joins the pin
    /// budget when freeze places it in the image (`PinBudget::adopt`).
    Pinned(OwnedFd),
}

/// Why a control file is not in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftOut {
    /// Not a regular file (FIFO, socket, device, directory).
    Special,
    /// Larger than [`CONTROL_FILE_BYTES`], or than what was left of the account's
    /// [`ACCOUNT_CONTROL_BYTES`].
    TooLarge,
}

/// What is left of an account's [`ACCOUNT_CONTROL_BYTES`].
#[derive(Debug)]
pub struct ControlBudget {
    left: usize,
}

impl ControlBudget {
    /// A whole account's budget: [`ACCOUNT_CONTROL_BYTES`].
    pub fn new() -> ControlBudget {
        ControlBudget {
            left: ACCOUNT_CONTROL_BYTES,
        }
    }
}

impl Default for ControlBudget {
    fn default() -> ControlBudget {
        ControlBudget::new()
    }
}

/// What was captured of one mailbox.
#[derive(Debug, Default)]
pub struct MailboxCapture {
    /// Its control files as captured (those left out are in `left_out`).
    pub control: Vec<ControlFile>,
    /// The listing of `new/` (dotfiles and directories left out).
    pub new: Vec<Listed>,
    /// The listing of `cur/` (dotfiles and directories left out).
    pub cur: Vec<Listed>,
    /// False when the listing never settled and the union of base names was kept.
    pub settled: bool,
    /// Time spent pinning the listed files (part of the lock hold when locked).
    pub pin_time: Duration,
    /// `cur` or `new` when that directory could not be opened (permissions): listed as empty,
    /// and reported.
    pub unreadable: Vec<&'static [u8]>,
    /// Control files left out of the image, by name, and why.
    pub left_out: Vec<(&'static [u8], LeftOut)>,
    /// Whether its control files came from a separate control tree: copies of them in the
    /// Maildir are then stale, and the captured ones are served in its directory all the same.
    pub control_elsewhere: bool,
}

/// Where a mailbox's lock and control files are.
#[derive(Debug, Clone)]
pub enum ControlAt {
    /// In the mailbox's own directory (Dovecot's default).
    Mailbox,
    /// In a separate control tree's directory.
    Tree(ControlDir),
    /// In a control tree that has no directory for this mailbox yet: Dovecot has not opened
    /// it, so there is no uidlist to keep and no lock of Dovecot's to meet.
    Absent,
}

impl ControlAt {
    /// The directory holding control file `name`, and its path; `None` where there is none.
    fn file_dir<'a>(
        &'a self,
        mailbox: BorrowedFd<'a>,
        path: &'a Path,
        name: &[u8],
    ) -> Option<(BorrowedFd<'a>, &'a Path)> {
        match self {
            ControlAt::Mailbox => Some((mailbox, path)),
            ControlAt::Tree(dir) => Some(dir.file_dir(name)),
            ControlAt::Absent => None,
        }
    }

    /// The control files to read here: in a tree only those Dovecot keeps there.
    fn names(&self) -> &'static [&'static [u8]] {
        match self {
            ControlAt::Mailbox => names::CONTROL_FILES,
            ControlAt::Tree(_) => names::TREE_FILES,
            ControlAt::Absent => &[],
        }
    }
}

/// A mailbox directory opened for capture, with where its lock and control files are.
#[derive(Debug)]
struct Opened {
    rel: PathBuf,
    fd: Arc<OwnedFd>,
    control: ControlAt,
}

impl Opened {
    /// The directory holding its lock, with that directory's path; `None` where there is
    /// nothing to lock.
    fn lock_dir(&self, source: &Path) -> Option<(&Arc<OwnedFd>, PathBuf)> {
        match &self.control {
            ControlAt::Mailbox => Some((&self.fd, source.join(&self.rel))),
            ControlAt::Tree(dir) => Some((&dir.fd, dir.path.clone())),
            ControlAt::Absent => None,
        }
    }
}

/// What was captured of one account.
#[derive(Debug)]
pub struct AccountCapture {
    /// The account's root, relative to SOURCE (see [`Account::root`]).
    pub root: PathBuf,
    /// Keyed by mailbox path relative to SOURCE.
    pub mailboxes: HashMap<PathBuf, MailboxCapture>,
    /// `None` when every lock was held during the listing; otherwise why not.
    pub unlocked: Option<String>,
    /// From the first lock taken to the last released, for the successful round.
    pub lock_hold: Duration,
    /// The part of the hold spent pinning files.
    pub pin_time: Duration,
}

impl AccountCapture {
    /// Messages listed in the `new/` and `cur/` of its mailboxes.
    pub fn messages(&self) -> usize {
        self.mailboxes
            .values()
            .map(|m| m.new.len() + m.cur.len())
            .sum()
    }
}

/// How far a capture has come, for the progress line; updated by the capture workers.
#[derive(Debug, Default)]
pub struct Progress {
    /// Accounts to capture in this run, set as the capture starts.
    pub accounts_total: AtomicUsize,
    /// Accounts captured so far (those whose capture failed or hung are not counted).
    pub accounts_done: AtomicUsize,
    /// Messages listed in the accounts captured so far.
    pub messages: AtomicUsize,
    /// The accounts being captured now, with when each started. Protected by this mutex.
    running: parking_lot::Mutex<Vec<(String, Instant)>>,
}

impl Progress {
    /// `accounts 12/40, 30000 messages, 1.2 s, 25000 messages/s; now example.org/alice (0.3 s)`,
    /// naming the account that has been capturing longest, so that a stuck one shows.
    pub fn line(&self, elapsed: Duration) -> String {
        let messages = self.messages.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let now = self
            .running
            .lock()
            .iter()
            .min_by_key(|(_, since)| *since)
            .map(|(account, since)| {
                format!("; now {account} ({:.1} s)", since.elapsed().as_secs_f64())
            })
            .unwrap_or_default();
        format!(
            "capturing: accounts {}/{}, {} messages, {:.1} s, {:.0} messages/s{now}",
            self.accounts_done.load(Ordering::Relaxed),
            self.accounts_total.load(Ordering::Relaxed),
            messages,
            secs,
            if secs > 0.0 {
                messages as f64 / secs
            } else {
                0.0
            }
        )
    }

    /// An account's capture has started (`shown`: its path as the summary shows it).
    pub fn started(&self, shown: &str) {
        self.running.lock().push((shown.to_owned(), Instant::now()));
    }

    /// An account's capture has ended, however.
    pub fn finished(&self, shown: &str) {
        let mut running = self.running.lock();
        if let Some(i) = running.iter().position(|(a, _)| a == shown) {
            running.swap_remove(i);
        }
    }

    /// Counts one account captured.
    pub fn account_done(&self, c: &AccountCapture) {
        self.messages.fetch_add(c.messages(), Ordering::Relaxed);
        self.accounts_done.fetch_add(1, Ordering::Relaxed);
    }
}

fn cancelled(source: &Path) -> Result<()> {
    if crate::capture::lock::stopping() {
        return Err(Error::msg("capture interrupted", source, "stop signal"));
    }
    Ok(())
}

/// Captures one account. `root` is an fd on SOURCE and `source` its path (for messages). The
/// caller grows the fd table for the pins first (`PinBudget::reserve_table` with
/// [`expected_entries_all`]), as `workers::capture_accounts` does for all accounts at once.
/// `watch` is beaten after every operation; once the watchdog revokes it, the capture's locks
/// are gone and it ends with an error as soon as it can.
pub fn capture_account(
    root: BorrowedFd<'_>,
    source: &Path,
    account: &Account,
    policy: &LockPolicy,
    budget: &Arc<PinBudget>,
    watch: &Watch,
) -> Result<AccountCapture> {
    let held = budget.hold(account.mailboxes.len() + 2);
    let result = capture_account_with(root, source, account, policy, budget, watch);
    budget.unhold(held);
    result
}

fn capture_account_with(
    root: BorrowedFd<'_>,
    source: &Path,
    account: &Account,
    policy: &LockPolicy,
    budget: &Arc<PinBudget>,
    watch: &Watch,
) -> Result<AccountCapture> {
    let places = &*policy.places;
    // Open every mailbox directory once; the locks and listings all go through these fds.
    let mut dirs = Vec::with_capacity(account.mailboxes.len());
    let account_fd = sys::open_beneath(
        root,
        account.root.as_os_str(),
        sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY,
    );
    // Where a control tree is in use, the locks and control files are there; a place that
    // cannot be found or opened leaves the account without locks (or fails it, strictly).
    let mut cannot_lock = None;
    let tree = if places.template().is_some() {
        match places.open_account(root, source, &account.root) {
            Ok(Some(a)) => Some(a),
            Ok(None) => None,
            Err(e) => {
                cannot_lock = Some(e.to_string());
                None
            }
        }
    } else {
        None
    };
    for rel in &account.mailboxes {
        // Relative to the account's root where it could be opened: a mailbox deep below it is
        // not resolved from SOURCE again.
        let opened = match (&account_fd, rel.strip_prefix(&account.root)) {
            (Ok(base), Ok(below)) => sys::open_beneath(
                base.as_fd(),
                below.as_os_str(),
                sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY,
            ),
            _ => sys::open_beneath(
                root,
                rel.as_os_str(),
                sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY,
            ),
        };
        watch.beat();
        let control = if places.template().is_none() {
            ControlAt::Mailbox
        } else {
            let below = rel.strip_prefix(&account.root).unwrap_or(rel);
            match tree.as_ref().map(|t| t.mailbox(below)) {
                Some(Ok(Some(dir))) => ControlAt::Tree(dir),
                Some(Ok(None)) | None => ControlAt::Absent,
                Some(Err(e)) => {
                    cannot_lock.get_or_insert_with(|| e.to_string());
                    ControlAt::Absent
                }
            }
        };
        match opened {
            Ok(fd) => dirs.push(Opened {
                rel: rel.clone(),
                fd: Arc::new(fd),
                control,
            }),
            Err(e) => log::warn!(
                "mailbox {} vanished before capture: {e}",
                crate::error::escape_path(&source.join(rel))
            ),
        }
    }
    drop(account_fd);
    if !policy.one_mailbox_at_a_time {
        return capture_set(&dirs, source, account, policy, budget, watch, cannot_lock);
    }
    // Diagnostic mode: each mailbox under its own lock, one after another, with the test hold
    // as a gap between them.
    let mut whole: Option<AccountCapture> = None;
    for dir in &dirs {
        let solo = LockPolicy {
            test_hold: Duration::ZERO,
            ..policy.clone()
        };
        let part = capture_set(
            std::slice::from_ref(dir),
            source,
            account,
            &solo,
            budget,
            watch,
            cannot_lock.clone(),
        )?;
        match whole.as_mut() {
            None => whole = Some(part),
            Some(w) => {
                w.mailboxes.extend(part.mailboxes);
                w.lock_hold = w.lock_hold.max(part.lock_hold);
                w.unlocked = w.unlocked.take().or(part.unlocked);
            }
        }
        hold_for_test(policy.test_hold, source, watch)?;
    }
    whole.ok_or_else(|| {
        Error::msg(
            "cannot capture",
            source.join(&account.root),
            "no mailbox left",
        )
    })
}

/// Captures a set of mailboxes with all their locks held at once; `cannot_lock` says why
/// they cannot be taken at all, if so.
fn capture_set(
    dirs: &[Opened],
    source: &Path,
    account: &Account,
    policy: &LockPolicy,
    budget: &Arc<PinBudget>,
    watch: &Watch,
    cannot_lock: Option<String>,
) -> Result<AccountCapture> {
    let deadline = Instant::now() + policy.timeout;
    let content = lock_content(policy.lock_host.as_deref());
    let mut rng = Jitter::new();
    let mut backoff = Duration::from_millis(10);
    let mut why_unlocked: Option<String> = policy
        .no_lock
        .then(|| "--no-lock given".to_owned())
        .or(cannot_lock);
    // Before any lock: what the locked listing will confirm rather than open.
    let mut prepinned = prepin(dirs, budget, watch);
    let mut temps: Vec<Option<LockTemp>> = Vec::new();
    while why_unlocked.is_none() {
        cancelled(source)?;
        stalled(source, account, watch)?;
        // Before the hold: each lock's file made ready (again where the last round used it
        // up); one kept from a round before is touched, as a lock linked after a wait must
        // look as fresh as one just created.
        ready_locks(&mut temps, dirs, source, &content, watch);
        // A hold runs from the first lock created to the last removed, as Dovecot sees it.
        let started = Instant::now();
        match lock_all(dirs, &mut temps, source, &content, watch) {
            Ok(LockRound::All(locks)) => {
                let listed = list_all(dirs, source, budget, watch, &mut prepinned);
                if !policy.test_hold.is_zero() {
                    hold_for_test(policy.test_hold, source, watch)?;
                }
                if watch.revoked() {
                    // The watchdog released the locks while an operation hung: whatever was
                    // listed is not of one locked instant.
                    drop(locks);
                    // The discarded capture's pins give their budget back as they drop.
                    drop(listed);
                    return Err(stall_error(source, account));
                }
                // Each lock is checked to have been ours throughout as it is released.
                let lost = release_each(locks, watch);
                if let Some(l) = lost {
                    log::warn!(
                        "lock {} was overridden during capture; capturing the account again",
                        crate::error::escape_path(&l)
                    );
                    if Instant::now() >= deadline {
                        why_unlocked = Some(format!(
                            "lock {} kept being overridden",
                            crate::error::escape_path(&l)
                        ));
                    }
                    // The discarded capture's pins give their budget back as they drop.
                    drop(listed);
                    // Read again before the next round, which then holds its locks for a few
                    // `fstat`s again rather than for a listing.
                    prepinned = prepin(dirs, budget, watch);
                } else {
                    let lock_hold = started.elapsed();
                    let mailboxes = listed;
                    return Ok(AccountCapture {
                        root: account.root.clone(),
                        pin_time: mailboxes.values().map(|m| m.pin_time).sum(),
                        mailboxes,
                        unlocked: None,
                        lock_hold,
                    });
                }
            }
            Ok(LockRound::Busy(who)) => {
                if Instant::now() >= deadline {
                    why_unlocked = Some(format!(
                        "lock busy for {} s: {}",
                        policy.timeout.as_secs(),
                        who
                    ));
                }
            }
            Err(e) => {
                // A stop signal refuses new locks; that is no reason to capture without them.
                cancelled(source)?;
                stalled(source, account, watch)?;
                why_unlocked = Some(e.to_string());
            }
        }
        if why_unlocked.is_none() {
            // Release-all, then back off with jitter so two lockers do not stay in step.
            let sleep = rng
                .around(backoff)
                .min(deadline.saturating_duration_since(Instant::now()));
            std::thread::sleep(sleep);
            watch.beat();
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
    drop(temps);
    let why = why_unlocked.unwrap_or_default();
    let where_ = source.join(&account.root);
    if policy.strict {
        return Err(Error::msg("cannot lock account", where_, why));
    }
    if !policy.no_lock {
        log::warn!(
            "capturing {} without its locks: {why}",
            crate::error::escape_path(&where_)
        );
    }
    let mailboxes = list_all(dirs, source, budget, watch, &mut prepinned);
    stalled(source, account, watch)?;
    Ok(AccountCapture {
        root: account.root.clone(),
        pin_time: mailboxes.values().map(|m| m.pin_time).sum(),
        mailboxes,
        unlocked: Some(why),
        lock_hold: Duration::ZERO,
    })
}

/// The error of a capture the watchdog gave up on.
fn stall_error(source: &Path, account: &Account) -> Error {
    Error::msg(
        "capture stalled",
        source.join(&account.root),
        "an operation under its locks hung; locks released",
    )
}

fn stalled(source: &Path, account: &Account, watch: &Watch) -> Result<()> {
    if watch.revoked() {
        return Err(stall_error(source, account));
    }
    Ok(())
}

/// A generous estimate of how many entries a mailbox's `cur/` and `new/` hold, from their
/// directory sizes (ext4 uses well over 16 bytes per entry, tmpfs 20), without listing them.
fn expected_in(mailbox: BorrowedFd<'_>) -> usize {
    dir_bytes(mailbox) / 16
}

/// Bytes of directory a Maildir file name takes, about: an ext4 entry is 8 bytes and the name
/// rounded up to 4 (Maildir names run 40 to 90 bytes), and directory blocks are seldom full.
const DIR_BYTES_PER_MESSAGE: usize = 80;

/// About how many messages the mailboxes of `account` hold (to see whether it fits in the
/// working set before it is captured): within a factor of two on ext4, never listing.
pub fn likely_messages(root: BorrowedFd<'_>, account: &Account) -> usize {
    let flags = sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY;
    account
        .mailboxes
        .iter()
        .filter_map(|rel| sys::open_beneath(root, rel.as_os_str(), flags).ok())
        .map(|fd| dir_bytes(fd.as_fd()) / DIR_BYTES_PER_MESSAGE)
        .sum()
}

/// The sizes of a mailbox's `cur/` and `new/` directories.
fn dir_bytes(mailbox: BorrowedFd<'_>) -> usize {
    let mut bytes = 0u64;
    for sub in [names::CUR, names::NEW] {
        if let Ok(st) = sys::lstat_at(mailbox, OsStr::from_bytes(sub)) {
            bytes += st.st_size.max(0) as u64;
        }
    }
    bytes as usize
}

/// The estimated entries of every mailbox of `accounts`, opened beneath `root`, so that the fd
/// table can be grown once for all their pins before any lock is taken: a table growing under
/// the locks waits for an RCU grace period at each doubling, and stalls every other thread's
/// opens too.
pub fn expected_entries_all(root: BorrowedFd<'_>, accounts: &[Account]) -> usize {
    let flags = sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY;
    accounts
        .iter()
        .flat_map(|a| &a.mailboxes)
        .filter_map(|rel| sys::open_beneath(root, rel.as_os_str(), flags).ok())
        .map(|fd| expected_in(fd.as_fd()))
        .sum()
}

/// Makes each mailbox's lock ready before the locks are taken (see [`LockTemp`]), in the order
/// of `dirs`: `None` where none can be made (the lock is then created in place, which says why
/// it cannot be, if it cannot); one already ready is touched.
fn ready_locks(
    temps: &mut Vec<Option<LockTemp>>,
    dirs: &[Opened],
    source: &Path,
    content: &str,
    watch: &Watch,
) {
    temps.resize_with(dirs.len(), || None);
    for (slot, dir) in temps.iter_mut().zip(dirs) {
        let Some((fd, path)) = dir.lock_dir(source) else {
            continue;
        };
        match slot {
            Some(t) => t.touch(),
            None => {
                *slot = LockTemp::create(fd, &path, content)
                    .map_err(|e| log::debug!("{e}"))
                    .ok();
            }
        }
        watch.beat();
    }
}

enum LockRound {
    All(Vec<UidlistLock>),
    Busy(String),
}

/// One round: try-lock every mailbox in order; on the first busy one, release all. Each lock
/// taken is shown to `watch` at once, so the watchdog can release it if a later try hangs.
fn lock_all(
    dirs: &[Opened],
    temps: &mut [Option<LockTemp>],
    source: &Path,
    content: &str,
    watch: &Watch,
) -> Result<LockRound> {
    let mut held = Vec::with_capacity(dirs.len());
    let round = lock_each(dirs, temps, source, content, watch, &mut held);
    if !matches!(round, Ok(LockRound::All(_))) {
        release_each(held, watch);
    }
    round
}

/// Releases the locks one by one, each a heartbeat (an account may have thousands), and
/// returns the path of the first that was not ours any more (overridden, removed) when
/// released, if any.
fn release_each(locks: Vec<UidlistLock>, watch: &Watch) -> Option<PathBuf> {
    let mut lost = None;
    for l in locks {
        if !l.release_if_ours() && lost.is_none() {
            lost = Some(l.path().to_owned());
        }
        drop(l);
        watch.beat();
    }
    watch.released();
    lost
}

fn lock_each(
    dirs: &[Opened],
    temps: &mut [Option<LockTemp>],
    source: &Path,
    content: &str,
    watch: &Watch,
    held: &mut Vec<UidlistLock>,
) -> Result<LockRound> {
    for (dir, slot) in dirs.iter().zip(temps.iter_mut()) {
        let Some((fd, path)) = dir.lock_dir(source) else {
            continue;
        };
        let tried = UidlistLock::try_lock_prepared(slot, fd, &path, content)?;
        watch.beat();
        match tried {
            TryLock::Locked(l) => {
                if !watch.holding(l.handle()) {
                    return Err(Error::msg(
                        "capture stalled",
                        path,
                        "locks released by the watchdog",
                    ));
                }
                held.push(l);
            }
            TryLock::Busy(who) => {
                let path = path.join(names::UIDLIST_LOCK);
                return Ok(LockRound::Busy(format!(
                    "{} {who}",
                    crate::error::escape_path(&path)
                )));
            }
        }
    }
    Ok(LockRound::All(std::mem::take(held)))
}

/// Captures every mailbox of `dirs`, using (and so emptying) their pre-pins.
fn list_all(
    dirs: &[Opened],
    source: &Path,
    budget: &Arc<PinBudget>,
    watch: &Watch,
    prepinned: &mut HashMap<PathBuf, PrePinned>,
) -> HashMap<PathBuf, MailboxCapture> {
    let mut out = HashMap::with_capacity(dirs.len());
    let mut control = ControlBudget::new();
    for dir in dirs {
        if watch.revoked() {
            break;
        }
        let pre = prepinned.get_mut(&dir.rel);
        let captured = capture_mailbox_with(
            dir.fd.as_fd(),
            &source.join(&dir.rel),
            &dir.control,
            budget,
            &mut control,
            watch,
            pre,
        );
        match captured {
            Ok(m) => {
                out.insert(dir.rel.clone(), m);
            }
            Err(e) => log::warn!("{e}"),
        }
    }
    out
}

fn hold_for_test(hold: Duration, source: &Path, watch: &Watch) -> Result<()> {
    let end = Instant::now() + hold;
    while Instant::now() < end {
        cancelled(source)?;
        if watch.revoked() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
        watch.beat();
    }
    Ok(())
}

/// Reads the control files and lists `new/` and `cur/` of the mailbox open at `dir` (whose
/// path is `path`), with the listing check, then pins the listed files. Called under the
/// mailbox's lock where there is one. Control files are read where `at` says and held in
/// memory within `control` (the account's); `watch` is beaten after each operation.
pub fn capture_mailbox(
    dir: BorrowedFd<'_>,
    path: &Path,
    at: &ControlAt,
    budget: &Arc<PinBudget>,
    control: &mut ControlBudget,
    watch: &Watch,
) -> Result<MailboxCapture> {
    capture_mailbox_with(dir, path, at, budget, control, watch, None)
}

/// [`capture_mailbox`], confirming the files of `pre` (pinned before the lock) instead of
/// opening them again; those it does not use stay in `pre`, to be closed after the locks.
fn capture_mailbox_with(
    dir: BorrowedFd<'_>,
    path: &Path,
    at: &ControlAt,
    budget: &Arc<PinBudget>,
    control: &mut ControlBudget,
    watch: &Watch,
    pre: Option<&mut PrePinned>,
) -> Result<MailboxCapture> {
    let mut pre = pre;
    let control_elsewhere = !matches!(at, ControlAt::Mailbox);
    let unchanged = pre
        .as_mut()
        .and_then(|p| p.unchanged_control(dir, path, at, control));
    let (control, left_out) = match unchanged {
        Some(files) => (files, Vec::new()),
        None => read_control_files(dir, path, at, control, watch, log::Level::Warn),
    };
    watch.beat();
    if let Some(listing) = pre.as_mut().and_then(|p| p.unchanged_listing(dir)) {
        return Ok(MailboxCapture {
            control,
            new: listing.new,
            cur: listing.cur,
            settled: true,
            pin_time: Duration::ZERO,
            unreadable: Vec::new(),
            left_out,
            control_elsewhere,
        });
    }
    let mut unreadable = Vec::new();
    let new = open_messages_dir(dir, path, names::NEW, &mut unreadable)?;
    let cur = open_messages_dir(dir, path, names::CUR, &mut unreadable)?;
    watch.beat();
    if let Some(p) = pre.as_mut() {
        if p.listing.is_some() || p.by_name.iter().any(|m| !m.is_empty()) {
            log::debug!(
                "{} changed since it was read before its lock; listing it again",
                crate::error::escape_path(path)
            );
        }
        p.index();
    }
    let mut union: HashMap<Vec<u8>, (bool, Listed)> = HashMap::new();
    for _ in 0..MAX_LISTINGS {
        let before = (dir_stamp(&new, path)?, dir_stamp(&cur, path)?);
        let n = list_messages(&new, &path.join("new"), watch)?;
        let c = list_messages(&cur, &path.join("cur"), watch)?;
        let after = (dir_stamp(&new, path)?, dir_stamp(&cur, path)?);
        let unique = unique_bases(&n, &c);
        if before == after && unique {
            let mut m = MailboxCapture {
                control,
                new: n,
                cur: c,
                settled: true,
                pin_time: Duration::ZERO,
                unreadable,
                left_out,
                control_elsewhere,
            };
            pin_listed(&mut m, &new, &cur, budget, watch, pre);
            return Ok(m);
        }
        log::debug!(
            "{} changed during its listing; listing again",
            crate::error::escape_path(path)
        );
        for (in_cur, l) in n
            .into_iter()
            .map(|l| (false, l))
            .chain(c.into_iter().map(|l| (true, l)))
        {
            union.insert(base_name(&l.name).to_vec(), (in_cur, l));
        }
    }
    log::warn!(
        "{} kept changing during {MAX_LISTINGS} listings; keeping every message seen",
        crate::error::escape_path(path)
    );
    let (mut new_l, mut cur_l) = (Vec::new(), Vec::new());
    for (_, (in_cur, l)) in union {
        if in_cur { cur_l.push(l) } else { new_l.push(l) }
    }
    let mut m = MailboxCapture {
        control,
        new: new_l,
        cur: cur_l,
        settled: false,
        pin_time: Duration::ZERO,
        unreadable,
        left_out,
        control_elsewhere,
    };
    pin_listed(&mut m, &new, &cur, budget, watch, pre);
    Ok(m)
}

/// How many times `new/` and `cur/` are read again to find files that a client taking no lock
/// renamed between their listing and their pin (or, in freeze, their `lstat`).
pub const RELISTS: usize = 8;

/// Pins every listed regular file (symlinks need no pin: their target text is read at
/// freeze). A file renamed since the listing (a mail client flipping flags without a lock) is
/// found again by inode and base name and pinned under its new name; it keeps its captured
/// name in the image.
fn pin_listed(
    m: &mut MailboxCapture,
    new: &Option<OwnedFd>,
    cur: &Option<OwnedFd>,
    budget: &Arc<PinBudget>,
    watch: &Watch,
    mut pre: Option<&mut PrePinned>,
) {
    let started = Instant::now();
    for (in_cur, fd, list) in [(false, new, &mut m.new), (true, cur, &mut m.cur)] {
        let Some(fd) = fd else { continue };
        for l in list.iter_mut().filter(|l| l.d_type != sys::DT_LNK) {
            if watch.revoked() {
                break;
            }
            // Pinned before the lock as the file the listing under the lock shows: confirmed.
            if let Some(pin) = pre.as_mut().and_then(|p| p.take(in_cur, &l.name, l.ino)) {
                l.pin = Some(pin);
                continue;
            }
            l.pin = budget.pin(fd.as_fd(), OsStr::from_bytes(&l.name), l.d_type);
            watch.beat();
        }
    }
    // Relisting looks in both directories (a rename may move a file from new/ to cur/).
    let (Some(new), Some(cur)) = (new, cur) else {
        m.pin_time = started.elapsed();
        return;
    };
    for _ in 0..RELISTS {
        let unpinned = |l: &&mut Listed| l.pin.is_none() && l.d_type != sys::DT_LNK;
        if budget.exhausted()
            || watch.revoked()
            || !m
                .new
                .iter_mut()
                .chain(m.cur.iter_mut())
                .any(|l| unpinned(&l))
        {
            break;
        }
        let Ok(now) = CurrentNames::list(new.as_fd(), cur.as_fd(), &mut || watch.beat()) else {
            break;
        };
        watch.beat();
        for l in m.new.iter_mut().chain(m.cur.iter_mut()).filter(unpinned) {
            if let Some((in_cur, name)) = now.of(l) {
                let dir = if in_cur { cur } else { new };
                l.pin = budget.pin(dir.as_fd(), OsStr::from_bytes(name), l.d_type);
                watch.beat();
            }
        }
    }
    m.pin_time = started.elapsed();
}

/// One mailbox as read before its lock was taken: its listing with the files pinned, and its
/// control files. Under the lock, what has not changed since (the same directory and file
/// stamps, see [`Quiet`]) is taken as it is, and the lock is held for a few `fstat`s; what
/// has changed is listed or read again, the pins confirmed by (name, inode). The pins it still
/// holds close (and give back their budget) when it drops, which the capture lets happen after
/// the locks are released: closing the last fd of a message expunged meanwhile frees its
/// blocks, work that has no place under a lock.
#[derive(Debug, Default)]
struct PrePinned {
    /// The listing before the lock, if it passed the listing check in a quiet directory.
    listing: Option<PreListing>,
    /// The control files read before the lock, if every one was read whole from a quiet file
    /// (or is absent) and none was left out.
    control: Option<Vec<ControlFile>>,
    /// When the read began, less [`QUIET`].
    quiet: Quiet,
    /// By directory (`new/` 0, `cur/` 1) and name: the inode the pin holds, and the pin
    /// (filled by [`PrePinned::index`] when the listing has to be made again).
    by_name: [HashMap<Vec<u8>, (u64, Pin)>; 2],
    /// By directory and inode: the name pinned, to confirm a file renamed (a flag change,
    /// `new/` to `cur/`) while the lock was waited for, without opening it again.
    by_ino: [HashMap<u64, Vec<u8>>; 2],
    /// Pins the locked listing showed to be of another file now.
    stale: Vec<Pin>,
}

/// A listing made before the lock: `new/` and `cur/` with their stamps (the same before and
/// after it) and each file's pin where the budget allowed.
#[derive(Debug)]
struct PreListing {
    stamps: (DirStamp, DirStamp),
    new: Vec<Listed>,
    cur: Vec<Listed>,
}

/// How long a directory or control file must have been left alone, before its read began,
/// for the read to stand for one under the lock when the file's stamps are the same then.
/// File times come from a clock that may lag the change by a tick, be stepped back a little,
/// or (ext3, ext4 with small inodes) count whole seconds only; a change after the read began
/// has a ctime of at least `began - 1 s` in whole seconds, later than anything before
/// `began - QUIET`, so it shows.
const QUIET: Duration = Duration::from_secs(2);

/// A wall-clock time (s, ns) as file times give it: a file whose ctime is before it has not
/// changed since [`QUIET`] before a read began.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Quiet(sys::FileTime);

impl Quiet {
    fn before_now() -> Quiet {
        let now = std::time::SystemTime::now();
        Quiet(sys::FileTime::of(now.checked_sub(QUIET).unwrap_or(now)))
    }

    /// Whether `st` was last changed before this time.
    fn holds(self, st: &sys::Stat) -> bool {
        self.after(sys::FileTime::ctime(st))
    }

    /// Whether `t` is before this time.
    fn after(self, t: sys::FileTime) -> bool {
        t < self.0
    }
}

/// Filesystems whose `fstat` shows every change of a directory or file at once, in its
/// ctime: local ones (a network filesystem's attributes may be cached). Elsewhere every
/// mailbox is listed and read again under its lock.
fn stamps_are_live(fd: BorrowedFd<'_>) -> bool {
    const LOCAL: &[i64] = &[
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x2FC1_2FC1, // zfs
        0xF2F5_2010, // f2fs
    ];
    sys::fs_type(fd).is_ok_and(|t| LOCAL.contains(&t))
}

impl PrePinned {
    /// The listing made before the lock, if the mailbox's `new/` and `cur/` are still the same
    /// directories with the same stamps: nothing was added, removed or renamed in them since.
    /// Two `lstat`s under the lock (an open, `fstat` and close of each would be six).
    fn unchanged_listing(&mut self, mailbox: BorrowedFd<'_>) -> Option<PreListing> {
        let l = self.listing.as_ref()?;
        let now = (
            dir_stamp_at(mailbox, names::NEW)?,
            dir_stamp_at(mailbox, names::CUR)?,
        );
        (now == l.stamps).then(|| self.listing.take())?
    }

    /// The control files read before the lock, if each is still the same file with the same
    /// stamps (or still absent). Their bytes count against `control` as if read now.
    fn unchanged_control(
        &mut self,
        dir: BorrowedFd<'_>,
        path: &Path,
        at: &ControlAt,
        control: &mut ControlBudget,
    ) -> Option<Vec<ControlFile>> {
        let files = self.control.as_ref()?;
        let quiet = self.quiet;
        let same = at.names().iter().all(|&name| {
            let Some((dir, _)) = at.file_dir(dir, path, name) else {
                return true;
            };
            let now = sys::lstat_at(dir, OsStr::from_bytes(name));
            match (files.iter().find(|f| f.name == name), now) {
                (Some(f), Ok(st)) => same_version(&f.stat, &st) && quiet.holds(&st),
                (None, Err(e)) => sys::errno(&e) == Some(sys::Errno::ENOENT),
                _ => false,
            }
        });
        let bytes: usize = files.iter().map(ControlFile::inline_len).sum();
        if !same || bytes > control.left {
            self.control = None;
            return None;
        }
        control.left -= bytes;
        self.control.take()
    }

    /// Moves the pins of the listing made before the lock into the maps that confirm them
    /// against the listing made under it.
    fn index(&mut self) {
        let Some(listing) = self.listing.take() else {
            return;
        };
        for (d, list) in [listing.new, listing.cur].into_iter().enumerate() {
            for l in list {
                let Some(pin) = l.pin else { continue };
                self.by_ino[d].insert(l.ino, l.name.clone());
                if let Some((_, old)) = self.by_name[d].insert(l.name, (l.ino, pin)) {
                    self.stale.push(old);
                }
            }
        }
    }

    /// The pre-pin of the file the locked listing shows as `name` (inode `ino`) in `new/`
    /// or `cur/`: pinned under that name as that inode, or under another name with the same
    /// base name and inode. The pin kept the inode from being freed, so its number is still
    /// that file's. Two hash lookups, no syscall.
    fn take(&mut self, in_cur: bool, name: &[u8], ino: u64) -> Option<Pin> {
        let d = usize::from(in_cur);
        if let Some((pinned, _)) = self.by_name[d].get(name) {
            let pinned = *pinned;
            let (_, pin) = self.by_name[d].remove(name)?;
            if self.by_ino[d]
                .get(&pinned)
                .is_some_and(|n| n.as_slice() == name)
            {
                self.by_ino[d].remove(&pinned);
            }
            if pinned == ino {
                return Some(pin);
            }
            self.stale.push(pin);
        }
        for d in [d, 1 - d] {
            match self.by_ino[d].get(&ino) {
                Some(pinned) if base_name(pinned) == base_name(name) => {}
                _ => continue,
            }
            let pinned = self.by_ino[d].remove(&ino)?;
            return self.by_name[d].remove(&pinned).map(|(_, pin)| pin);
        }
        None
    }
}

/// Reads every mailbox of `dirs` before the locks are taken: its control files, and its
/// `new/` and `cur/` listed with the listing check and their files pinned within the budget,
/// so that under the locks what has not changed is only confirmed. A mailbox whose `new/` or
/// `cur/` cannot be listed is simply read under the lock (which says why).
fn prepin(dirs: &[Opened], budget: &Arc<PinBudget>, watch: &Watch) -> HashMap<PathBuf, PrePinned> {
    let mut out = HashMap::with_capacity(dirs.len());
    let mut control = ControlBudget::new();
    // One filesystem for the whole account (the walks never cross a mount point). A control
    // tree's files are judged by their stamps too: it is local if the Maildir is (Dovecot
    // keeps it beside the Maildir, or on local disk where the Maildir is on NFS: then the
    // Maildir's says no).
    let live = dirs.first().is_some_and(|d| stamps_are_live(d.fd.as_fd()));
    for Opened {
        rel,
        fd: mailbox,
        control: at,
    } in dirs
    {
        let mut pre = PrePinned {
            quiet: Quiet::before_now(),
            ..PrePinned::default()
        };
        // Read now, so that a read under the lock (if one is needed) finds them in the page
        // cache; kept only if they can stand for a read under the lock.
        // What it finds wrong is said by the read under the lock.
        let (files, left_out) = read_control_files(
            mailbox.as_fd(),
            rel,
            at,
            &mut control,
            watch,
            log::Level::Debug,
        );
        if live && left_out.is_empty() && files.iter().all(|f| pre.quiet.holds(&f.stat)) {
            pre.control = Some(files);
        } else {
            control.left += files.iter().map(ControlFile::inline_len).sum::<usize>();
        }
        pre.listing = pre_listing(mailbox.as_fd(), rel, budget, watch);
        if !live || pre.listing.as_ref().is_some_and(|l| !l.quiet(pre.quiet)) {
            // Its pins are still worth having: the locked listing confirms them.
            pre.index();
        }
        out.insert(rel.clone(), pre);
    }
    out
}

impl PreListing {
    /// Whether neither directory changed since `quiet`: then any change after the listing
    /// shows in their stamps.
    fn quiet(&self, quiet: Quiet) -> bool {
        let (n, c) = self.stamps;
        quiet.after(n.ctime) && quiet.after(c.ctime)
    }
}

/// Lists `new/` and `cur/` of the mailbox open at `mailbox` with the listing check and pins
/// the listed files within the budget; `None` when a directory cannot be listed or the
/// listing did not settle (the locked capture lists it then).
fn pre_listing(
    mailbox: BorrowedFd<'_>,
    rel: &Path,
    budget: &Arc<PinBudget>,
    watch: &Watch,
) -> Option<PreListing> {
    let new = sys::open_dir_at(mailbox, OsStr::from_bytes(names::NEW)).ok();
    let cur = sys::open_dir_at(mailbox, OsStr::from_bytes(names::CUR)).ok();
    let (new, cur) = (Some(new?), Some(cur?));
    let before = (dir_stamp(&new, rel).ok()?, dir_stamp(&cur, rel).ok()?);
    let mut n = list_messages(&new, rel, watch).ok()?;
    let mut c = list_messages(&cur, rel, watch).ok()?;
    let after = (dir_stamp(&new, rel).ok()?, dir_stamp(&cur, rel).ok()?);
    if before != after || !unique_bases(&n, &c) {
        return None;
    }
    for (fd, list) in [(&new, &mut n), (&cur, &mut c)] {
        let Some(fd) = fd else { continue };
        for l in list.iter_mut().filter(|l| l.d_type != sys::DT_LNK) {
            if budget.exhausted() || watch.revoked() {
                break;
            }
            let Some(pin) = budget.pin(fd.as_fd(), OsStr::from_bytes(&l.name), l.d_type) else {
                continue;
            };
            watch.beat();
            // Kept only as the inode the listing shows under this name (a file renamed
            // meanwhile is pinned again, or found, under the lock).
            if sys::fstat(pin.as_fd()).is_ok_and(|st| st.st_ino == l.ino) {
                l.pin = Some(pin);
            }
        }
    }
    Some(PreListing {
        stamps: after,
        new: n,
        cur: c,
    })
}

/// The current name of every entry of a mailbox's `new/` and `cur/`, by inode number, with
/// whether it is in `cur/`: where a message listed before is now.
#[derive(Debug, Default)]
pub struct CurrentNames(HashMap<u64, (bool, Vec<u8>)>);

impl CurrentNames {
    /// Lists `new/` and `cur/` again; `batch` is called after each `getdents64` call (the
    /// capture's heartbeat).
    pub fn list(
        new: BorrowedFd<'_>,
        cur: BorrowedFd<'_>,
        batch: &mut dyn FnMut(),
    ) -> std::io::Result<CurrentNames> {
        let mut out = HashMap::new();
        for (in_cur, fd) in [(false, new), (true, cur)] {
            for e in sys::read_dir_with(fd, batch)? {
                out.insert(e.ino, (in_cur, e.name));
            }
        }
        Ok(CurrentNames(out))
    }

    /// Where message `l` is now: in `cur/` or not, and its name; `None` if no entry is its
    /// inode under its base name (a flag change keeps both; an inode under another base name
    /// is another message in a freed inode).
    pub fn of(&self, l: &Listed) -> Option<(bool, &[u8])> {
        let (in_cur, name) = self.0.get(&l.ino)?;
        (base_name(name) == base_name(&l.name)).then_some((*in_cur, name.as_slice()))
    }

    /// Whether some entry is inode `ino`, under any name.
    pub fn has_inode(&self, ino: u64) -> bool {
        self.0.contains_key(&ino)
    }
}

/// Opens a mailbox's `new/` or `cur/`. One that is gone means the mailbox changed shape (an
/// error for the caller); one that is there but cannot be opened (its owner made it
/// unreadable) is recorded in `unreadable` and listed as empty (`None`), so that one user's
/// mode bits cannot stop the capture of everyone else's mail.
fn open_messages_dir(
    mailbox: BorrowedFd<'_>,
    path: &Path,
    sub: &'static [u8],
    unreadable: &mut Vec<&'static [u8]>,
) -> Result<Option<OwnedFd>> {
    match sys::open_dir_at(mailbox, OsStr::from_bytes(sub)) {
        Ok(fd) => Ok(Some(fd)),
        Err(e)
            if matches!(
                sys::errno(&e),
                Some(sys::Errno::ENOENT | sys::Errno::ENOTDIR)
            ) =>
        {
            Err(Error::io(
                "cannot open",
                path.join(OsStr::from_bytes(sub)),
                e,
            ))
        }
        Err(e) => {
            log::warn!(
                "cannot open {}: {e}; shown empty",
                crate::error::escape_path(&path.join(OsStr::from_bytes(sub)))
            );
            unreadable.push(sub);
            Ok(None)
        }
    }
}

/// A directory's change stamp: its inode, mtime and ctime; all zero for an unreadable one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct DirStamp {
    ino: u64,
    mtime: sys::FileTime,
    ctime: sys::FileTime,
}

/// The [`DirStamp`] of the directory open at `fd`.
fn dir_stamp(fd: &Option<OwnedFd>, path: &Path) -> Result<DirStamp> {
    let Some(fd) = fd else {
        return Ok(Default::default());
    };
    let st = sys::fstat(fd.as_fd()).map_err(|e| Error::io("cannot stat", path, e))?;
    Ok(stamp_of(&st))
}

fn stamp_of(st: &sys::Stat) -> DirStamp {
    DirStamp {
        ino: st.st_ino,
        mtime: sys::FileTime::mtime(st),
        ctime: sys::FileTime::ctime(st),
    }
}

/// The stamp of the directory `sub` of `mailbox` by its name, if it is a directory.
fn dir_stamp_at(mailbox: BorrowedFd<'_>, sub: &[u8]) -> Option<DirStamp> {
    let st = sys::lstat_at(mailbox, OsStr::from_bytes(sub)).ok()?;
    (sys::FileKind::of_mode(st.st_mode) == sys::FileKind::Directory).then(|| stamp_of(&st))
}

/// The entries of a `new/` or `cur/` that the image shows (no dotfiles, no directories).
fn list_messages(fd: &Option<OwnedFd>, path: &Path, watch: &Watch) -> Result<Vec<Listed>> {
    let Some(fd) = fd else {
        return Ok(Vec::new());
    };
    let entries = sys::read_dir_with(fd.as_fd(), &mut || watch.beat())
        .map_err(|e| Error::io("cannot list", path, e))?;
    Ok(entries
        .into_iter()
        .filter(|e| !names::is_hidden(&e.name, Place::MessageDir, false) && e.d_type != sys::DT_DIR)
        .map(|e| Listed {
            name: e.name,
            ino: e.ino,
            d_type: e.d_type,
            pin: None,
        })
        .collect())
}

/// Whether no base name appears twice across `new/` and `cur/`.
pub fn unique_bases(new: &[Listed], cur: &[Listed]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(new.len() + cur.len());
    new.iter()
        .chain(cur)
        .all(|l| seen.insert(base_name(&l.name)))
}

/// How many times a control file is read before one that keeps changing is served as last
/// read.
const CONTROL_READS: usize = 4;

/// Control files are read in chunks of this size, each a heartbeat for the watchdog.
const CONTROL_CHUNK: usize = 64 << 10;

/// Reads the mailbox's control files. Dovecot replaces them by rename under the lock, so one
/// read is normally enough; a tool writing one in place (or `--no-lock`) can change it during
/// the read, so a read counts only if the file's size, mtime and ctime are the same before and
/// after it and the bytes read are the size: else it is read again (by name: it may have
/// been replaced), up to `CONTROL_READS` times, and then served as last read, with a warning.
///
/// Each read takes at most the size `fstat` gave when the file was opened (a file that grows
/// while read stops there), within the caps: see [`ACCOUNT_CONTROL_BYTES`] and
/// [`CONTROL_FILE_BYTES`]. Returns what was captured and what was left out; what it finds wrong is logged at `level`.
fn read_control_files(
    mailbox: BorrowedFd<'_>,
    mailbox_path: &Path,
    place: &ControlAt,
    control: &mut ControlBudget,
    watch: &Watch,
    level: log::Level,
) -> (Vec<ControlFile>, Vec<(&'static [u8], LeftOut)>) {
    let mut out = Vec::new();
    let mut left_out = Vec::new();
    for &name in place.names() {
        let Some((dir, path)) = place.file_dir(mailbox, mailbox_path, name) else {
            continue;
        };
        let at = || crate::error::escape_path(&path.join(OsStr::from_bytes(name)));
        let mut last = None;
        let mut settled = false;
        for _ in 0..CONTROL_READS {
            // One copy at a time: the one read before is dropped before the next is read.
            last = None;
            let read = read_once(dir, name, control.left, watch);
            watch.beat();
            match read {
                Ok(Read::Absent) => break,
                Ok(Read::Special(kind)) => {
                    log::log!(level, "left out {}: {kind}, not a regular file", at());
                    left_out.push((name, LeftOut::Special));
                    break;
                }
                Ok(Read::TooLarge(stat, fd)) if name == names::UIDLIST => {
                    // Never left out: without it a restore loses every UID. Served from the
                    // fd it was opened with, at the size it had under the lock.
                    log::log!(
                        level,
                        "{} is {} bytes, more than the {} MiB held in memory per account; \
                         served from its pinned file at that length",
                        at(),
                        stat.st_size,
                        ACCOUNT_CONTROL_BYTES >> 20,
                    );
                    last = Some(ControlFile {
                        name: name.to_vec(),
                        content: ControlContent::Pinned(fd),
                        stat,
                    });
                    settled = true;
                    break;
                }
                Ok(Read::TooLarge(stat, _)) => {
                    log::log!(
                        level,
                        "left out {}: {} bytes, more than the {} bytes a control file may hold{}",
                        at(),
                        stat.st_size,
                        CONTROL_FILE_BYTES.min(control.left),
                        if control.left < CONTROL_FILE_BYTES {
                            " (what is left of the account's control-file memory)"
                        } else {
                            ""
                        }
                    );
                    left_out.push((name, LeftOut::TooLarge));
                    break;
                }
                Ok(Read::Bytes(stat, bytes, stable)) => {
                    last = Some(ControlFile {
                        name: name.to_vec(),
                        content: ControlContent::Inline(bytes.into()),
                        stat,
                    });
                    settled = stable;
                    if stable {
                        break;
                    }
                }
                Err(e) => {
                    log::log!(level, "cannot read {}: {e}", at());
                    break;
                }
            }
        }
        if let Some(c) = last {
            if let ControlContent::Inline(bytes) = &c.content {
                if !settled {
                    log::log!(
                        level,
                        "{} kept changing while read; serving the {} bytes last read",
                        at(),
                        bytes.len()
                    );
                }
                control.left -= bytes.len();
            }
            out.push(c);
        }
    }
    (out, left_out)
}

/// One look at a control file.
enum Read {
    /// No such file.
    Absent,
    /// Something other than a regular file: what it is.
    Special(&'static str),
    /// A regular file larger than may be read into memory: its stat and the open fd.
    TooLarge(sys::Stat, OwnedFd),
    /// The bytes, the stat after reading, and whether the file stayed the same meanwhile.
    Bytes(sys::Stat, Vec<u8>, bool),
}

/// One read of a control file of at most `room` bytes (and never more than
/// [`CONTROL_FILE_BYTES`] unless it is the uidlist). `O_NONBLOCK` keeps a FIFO from blocking
/// the open; `O_NOFOLLOW` refuses a symlink (`ELOOP`); only a regular file is read.
fn read_once(
    dir: BorrowedFd<'_>,
    name: &[u8],
    room: usize,
    watch: &Watch,
) -> std::io::Result<Read> {
    let (fd, before) = match sys::open_untrusted(dir, OsStr::from_bytes(name)) {
        Ok(opened) => opened,
        Err(e) if sys::errno(&e) == Some(sys::Errno::ENOENT) => {
            return Ok(Read::Absent);
        }
        // A socket cannot be opened at all.
        Err(e) if sys::errno(&e) == Some(sys::Errno::ENXIO) => {
            return Ok(Read::Special("a socket"));
        }
        Err(e) => return Err(e),
    };
    match sys::FileKind::of_mode(before.st_mode) {
        sys::FileKind::Regular => {}
        sys::FileKind::Fifo => return Ok(Read::Special("a FIFO")),
        sys::FileKind::Directory => return Ok(Read::Special("a directory")),
        sys::FileKind::Socket => return Ok(Read::Special("a socket")),
        _ => return Ok(Read::Special("a device")),
    }
    let size = before.st_size.max(0) as u64;
    let cap = if name == names::UIDLIST {
        room
    } else {
        room.min(CONTROL_FILE_BYTES)
    };
    if size > cap as u64 {
        return Ok(Read::TooLarge(before, fd));
    }
    let size = size as usize;
    let mut file = std::fs::File::from(fd);
    let mut bytes = vec![0u8; size];
    let mut got = 0;
    while got < size {
        let end = (got + CONTROL_CHUNK).min(size);
        match std::io::Read::read(&mut file, &mut bytes[got..end]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        watch.beat();
    }
    bytes.truncate(got);
    let after = sys::fstat(file.as_fd())?;
    let stable = same_version(&before, &after) && bytes.len() as i64 == after.st_size;
    Ok(Read::Bytes(after, bytes, stable))
}

/// Whether two stats of one file show the same version of its content.
fn same_version(a: &sys::Stat, b: &sys::Stat) -> bool {
    (a.st_ino, a.st_size) == (b.st_ino, b.st_size) && stamp_of(a) == stamp_of(b)
}

/// A small xorshift generator for back-off jitter; it needs no quality, only variety between
/// processes, so it is seeded from the clock and the pid.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Jitter(t ^ ((sys::getpid() as u64) << 32) | 1)
    }

    /// A duration uniformly in [d/2, 3d/2).
    fn around(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let ns = d.as_nanos() as u64;
        Duration::from_nanos(ns / 2 + self.0 % ns.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A store whose control files Dovecot keeps in a separate tree (`CONTROL=`), as 2.3 and
    /// 2.4 lay it out: INBOX's in `.INBOX/`, a folder's in its name, subscriptions above.
    fn store_with_control_tree(t: &Path) -> (PathBuf, LockPolicy) {
        let maildir = t.join("vmail/example.org/alice/Maildir");
        let ctl = t.join("control/example.org/alice");
        for d in [
            "cur",
            "new",
            "tmp",
            ".Archive/cur",
            ".Archive/new",
            ".Archive/tmp",
        ] {
            fs::create_dir_all(maildir.join(d)).unwrap();
        }
        fs::create_dir_all(t.join("vmail/example.org/bob/Maildir/cur")).unwrap();
        fs::create_dir_all(t.join("vmail/example.org/bob/Maildir/new")).unwrap();
        for d in [".INBOX", ".Archive"] {
            fs::create_dir_all(ctl.join(d)).unwrap();
        }
        fs::write(maildir.join("cur/1.a:2,S"), "a").unwrap();
        fs::write(maildir.join(".Archive/cur/2.b:2,"), "b").unwrap();
        // A copy from before the control tree: Dovecot never reads it again.
        fs::write(maildir.join("dovecot-uidlist"), "3 V1 N99\n").unwrap();
        fs::write(ctl.join(".INBOX/dovecot-uidlist"), "3 V7 N2\n1 :1.a\n").unwrap();
        fs::write(ctl.join(".INBOX/dovecot-keywords"), "0 $Label1\n").unwrap();
        fs::write(ctl.join(".Archive/dovecot-uidlist"), "3 V8 N2\n1 :2.b\n").unwrap();
        fs::write(ctl.join("subscriptions"), "V\t2\n\nArchive\n").unwrap();
        let template = format!("{}/control/%d/%n", t.display()).parse().unwrap();
        let policy = LockPolicy {
            no_lock: false,
            strict: true,
            timeout: Duration::from_millis(300),
            test_hold: Duration::ZERO,
            one_mailbox_at_a_time: false,
            lock_host: None,
            places: Arc::new(ControlPlaces::tree(template).unwrap()),
        };
        (t.join("vmail"), policy)
    }

    fn capture_all(src: &Path, policy: &LockPolicy) -> Result<Vec<AccountCapture>> {
        let root = fs::File::open(src).unwrap();
        let found = crate::maildir::discover(root.as_fd(), src, false, &Default::default())?;
        found
            .accounts
            .iter()
            .map(|a| {
                capture_account(
                    root.as_fd(),
                    src,
                    a,
                    policy,
                    &PinBudget::fixed(100),
                    &Watch::new(&a.root),
                )
            })
            .collect()
    }

    fn inline(m: &MailboxCapture, name: &[u8]) -> Option<Vec<u8>> {
        m.control
            .iter()
            .find(|c| c.name == name)
            .map(|c| match &c.content {
                ControlContent::Inline(b) => b.to_vec(),
                ControlContent::Pinned(_) => panic!("pinned"),
            })
    }

    #[test]
    fn control_files_come_from_the_control_tree() {
        let t = crate::testutil::TempDir::new("control-tree");
        let (src, policy) = store_with_control_tree(t.path());
        let all = capture_all(&src, &policy).unwrap();
        let alice = all
            .iter()
            .find(|a| a.root.ends_with("alice/Maildir"))
            .unwrap();
        assert_eq!(alice.unlocked, None);
        let inbox = &alice.mailboxes[Path::new("example.org/alice/Maildir")];
        assert!(inbox.control_elsewhere);
        assert_eq!(
            inline(inbox, b"dovecot-uidlist").unwrap(),
            b"3 V7 N2\n1 :1.a\n"
        );
        assert_eq!(inline(inbox, b"dovecot-keywords").unwrap(), b"0 $Label1\n");
        assert_eq!(
            inline(inbox, b"subscriptions").unwrap(),
            b"V\t2\n\nArchive\n"
        );
        let archive = &alice.mailboxes[Path::new("example.org/alice/Maildir/.Archive")];
        assert_eq!(
            inline(archive, b"dovecot-uidlist").unwrap(),
            b"3 V8 N2\n1 :2.b\n"
        );
        assert_eq!(inline(archive, b"subscriptions"), None);
        // Bob has no control directory yet: captured, with nothing to lock or keep.
        let bob = all
            .iter()
            .find(|a| a.root.ends_with("bob/Maildir"))
            .unwrap();
        assert_eq!(bob.unlocked, None);
        let m = bob.mailboxes.values().next().unwrap();
        assert!(m.control.is_empty() && m.control_elsewhere);
        // No lock left behind in either tree.
        let left = std::process::Command::new("find")
            .arg(t.path())
            .args(["-name", "*.lock"])
            .output()
            .unwrap();
        assert!(
            left.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&left.stdout)
        );
    }

    #[test]
    fn the_lock_is_taken_in_the_control_tree() {
        let t = crate::testutil::TempDir::new("control-tree");
        let (src, policy) = store_with_control_tree(t.path());
        // Dovecot holds Archive's lock where it keeps it: a live holder (this process).
        let lock = t
            .path()
            .join("control/example.org/alice/.Archive/dovecot-uidlist.lock");
        fs::write(&lock, crate::capture::lock::lock_content(None)).unwrap();
        let e = capture_all(&src, &policy).unwrap_err().to_string();
        assert!(e.contains(".Archive/dovecot-uidlist.lock"), "{e}");
        assert!(e.contains("control/example.org/alice"), "{e}");
        // Its holder's lock is left alone, and a lock in the Maildir keeps nobody out.
        assert!(lock.exists());
        fs::remove_file(&lock).unwrap();
        let in_maildir = src.join("example.org/alice/Maildir/.Archive/dovecot-uidlist.lock");
        fs::write(&in_maildir, crate::capture::lock::lock_content(None)).unwrap();
        assert!(capture_all(&src, &policy).is_ok());
    }

    fn l(name: &str) -> Listed {
        Listed {
            name: name.as_bytes().to_vec(),
            ino: 1,
            d_type: sys::DT_REG,
            pin: None,
        }
    }

    #[test]
    fn base_names_must_be_unique_across_new_and_cur() {
        assert!(unique_bases(&[l("a")], &[l("b:2,S")]));
        assert!(!unique_bases(&[l("a")], &[l("a:2,S")]));
        assert!(!unique_bases(&[], &[l("a:2,"), l("a:2,S")]));
    }

    #[test]
    fn captures_listing_and_control_files() {
        let t = crate::testutil::TempDir::maildir(
            "capture",
            &[
                ("new/1.a", "x"),
                ("cur/2.b:2,S", "y"),
                ("cur/.hidden", "z"),
                ("dovecot-uidlist", "3 V1 N3\n1 :1.a\n"),
            ],
        );
        let fd = fs::File::open(t.path()).unwrap();
        let m = capture_mailbox(
            fd.as_fd(),
            t.path(),
            &ControlAt::Mailbox,
            &PinBudget::fixed(1),
            &mut ControlBudget::new(),
            &Watch::new(Path::new("")),
        )
        .unwrap();
        assert!(m.settled);
        assert_eq!(m.new.len(), 1);
        assert_eq!(m.cur.len(), 1);
        assert_eq!(m.cur[0].name, b"2.b:2,S");
        // One pin in the budget: the first listed file (new/) got it.
        assert!(m.new[0].pin.is_some());
        assert!(m.cur[0].pin.is_none());
        assert_eq!(m.control.len(), 1);
        let ControlContent::Inline(bytes) = &m.control[0].content else {
            panic!("a small uidlist is held in memory")
        };
        assert_eq!(&**bytes, b"3 V1 N3\n1 :1.a\n");
    }

    #[test]
    fn pins_taken_before_the_lock_are_confirmed_or_dropped() {
        use std::os::unix::fs::MetadataExt;
        let t = crate::testutil::TempDir::maildir(
            "prepin",
            &[
                ("cur/1.kept:2,S", "kept"),
                ("cur/2.replaced:2,S", "old"),
                ("cur/3.renamed:2,", "renamed"),
                ("new/4.gone", "gone"),
            ],
        );
        let dir = Arc::new(OwnedFd::from(fs::File::open(t.path()).unwrap()));
        let dirs = vec![Opened {
            rel: PathBuf::new(),
            fd: Arc::clone(&dir),
            control: ControlAt::Mailbox,
        }];
        let budget = PinBudget::fixed(100);
        let watch = Watch::new(Path::new(""));
        let mut pre = prepin(&dirs, &budget, &watch);
        assert_eq!(budget.in_use(), 4);
        // Between the pre-pins and the lock: one name now names another file, one file is
        // renamed (a flag change), one is expunged.
        fs::remove_file(t.path().join("cur/2.replaced:2,S")).unwrap();
        fs::write(t.path().join("cur/2.replaced:2,S"), "new").unwrap();
        fs::rename(
            t.path().join("cur/3.renamed:2,"),
            t.path().join("cur/3.renamed:2,S"),
        )
        .unwrap();
        fs::remove_file(t.path().join("new/4.gone")).unwrap();
        let mut one = pre.remove(Path::new("")).unwrap();
        let m = capture_mailbox_with(
            dir.as_fd(),
            t.path(),
            &ControlAt::Mailbox,
            &budget,
            &mut ControlBudget::new(),
            &watch,
            Some(&mut one),
        )
        .unwrap();
        // One file opened under the lock (the replaced one); the renamed one was confirmed
        // by inode and base name, not opened again.
        assert_eq!(budget.in_use(), 5);
        assert!(m.new.is_empty());
        assert_eq!(m.cur.len(), 3);
        for l in &m.cur {
            // Every pin is the file the locked listing names, whatever was pinned before.
            let pin = l.pin.as_ref().expect("pinned");
            let name = std::str::from_utf8(&l.name).unwrap();
            let now = fs::metadata(t.path().join("cur").join(name)).unwrap();
            assert_eq!(sys::fstat(pin.as_fd()).unwrap().st_ino, now.ino(), "{name}");
        }
        // The pre-pins of the replaced and the expunged file are closed, and their budget
        // given back, when the pre-pins drop (after the locks, in a capture).
        drop(one);
        assert_eq!(budget.in_use(), 3);
    }

    #[test]
    fn a_quiet_mailbox_read_before_its_lock_is_only_confirmed_under_it() {
        use std::io::Write;
        let t = crate::testutil::TempDir::maildir(
            "quiet",
            &[
                ("cur/1.a:2,S", "a"),
                ("new/2.b", "b"),
                ("dovecot-uidlist", "3 V1 N3\n1 :1.a\n"),
            ],
        );
        // Left alone long enough that a later change shows in the stamps.
        std::thread::sleep(QUIET + Duration::from_millis(100));
        let dir = Arc::new(OwnedFd::from(fs::File::open(t.path()).unwrap()));
        let dirs = vec![Opened {
            rel: PathBuf::new(),
            fd: Arc::clone(&dir),
            control: ControlAt::Mailbox,
        }];
        let budget = PinBudget::fixed(100);
        let watch = Watch::new(Path::new(""));
        let capture = |pre: &mut PrePinned| {
            capture_mailbox_with(
                dir.as_fd(),
                t.path(),
                &ControlAt::Mailbox,
                &budget,
                &mut ControlBudget::new(),
                &watch,
                Some(pre),
            )
            .unwrap()
        };
        let uidlist = |m: &MailboxCapture| match &m.control[0].content {
            ControlContent::Inline(b) => b.to_vec(),
            ControlContent::Pinned(_) => panic!("a small uidlist is held in memory"),
        };

        // Nothing changed: the listing and control files read before the lock are the
        // capture, and no file is opened under it.
        let mut pre = prepin(&dirs, &budget, &watch)
            .remove(Path::new(""))
            .unwrap();
        assert!(pre.listing.is_some() && pre.control.is_some());
        assert_eq!(budget.in_use(), 2);
        let m = capture(&mut pre);
        assert_eq!(budget.in_use(), 2);
        assert!(
            pre.listing.is_none() && pre.control.is_none(),
            "taken as they were"
        );
        assert_eq!((m.new.len(), m.cur.len()), (1, 1));
        assert!(m.new[0].pin.is_some() && m.cur[0].pin.is_some());
        assert_eq!(uidlist(&m), b"3 V1 N3\n1 :1.a\n");
        drop((m, pre));

        // A delivery and a uidlist written in place (same size) after the read: both are
        // read again under the lock.
        let mut pre = prepin(&dirs, &budget, &watch)
            .remove(Path::new(""))
            .unwrap();
        fs::write(t.path().join("new/3.c"), "c").unwrap();
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(t.path().join("dovecot-uidlist"))
            .unwrap();
        f.write_all(b"3 V1 N4").unwrap();
        drop(f);
        let m = capture(&mut pre);
        assert_eq!((m.new.len(), m.cur.len()), (2, 1));
        assert!(m.new.iter().chain(&m.cur).all(|l| l.pin.is_some()));
        assert_eq!(uidlist(&m), b"3 V1 N4\n1 :1.a\n");
        // The pins taken before the lock were confirmed: only the new message was opened.
        drop(pre);
        assert_eq!(budget.in_use(), 3);
    }

    #[test]
    fn every_pin_gives_its_budget_back_when_dropped() {
        let t = crate::testutil::TempDir::maildir(
            "pin-budget",
            &[("cur/1.a:2,S", "a"), ("new/2.b", "b")],
        );
        // A FIFO among the messages: listed and pinned (as an `O_PATH` pin: it cannot be
        // opened for reading without blocking), then never served.
        let made = std::process::Command::new("mkfifo")
            .arg(t.path().join("cur/3.fifo:2,S"))
            .status()
            .unwrap();
        assert!(made.success());
        let budget = PinBudget::fixed(10);
        let fd = fs::File::open(t.path()).unwrap();
        let m = capture_mailbox(
            fd.as_fd(),
            t.path(),
            &ControlAt::Mailbox,
            &budget,
            &mut ControlBudget::new(),
            &Watch::new(Path::new("")),
        )
        .unwrap();
        assert_eq!(budget.in_use(), 3);
        drop(m);
        assert_eq!(budget.in_use(), 0);
        assert!(!budget.exhausted());
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let d = j.around(Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d < Duration::from_millis(150));
        }
    }
}
