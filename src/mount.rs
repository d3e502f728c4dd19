//! `maildirfs mount`: the whole flow, discover -> lock -> capture -> freeze -> serve, plus the
//! checks that run before it and the summary after it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::capture::{self, AccountCapture, LockPolicy};
use crate::daemon::{self, Notifier, Outcome};
use crate::error::{Error, Result, escape_path};
use crate::freeze::{self, FreezeReport};
use crate::fs::{MaildirFs, ReadPath};
use crate::maildir;
use crate::options::CaptureMode;
use crate::options::MountOptions;
use crate::pin::PinBudget;
use crate::report::{AccountHold, Live, MountReport};
use crate::runtime::{self, StateFile};
use crate::snapshot::{Ino, Totals};
use crate::source::Source;
use crate::sys;
use crate::view::{AccountId, AccountImage, Capturer, Limits, View};
use crate::watch::{Heartbeat, Watch};

/// SOURCE and MOUNTPOINT after the checks: SOURCE open once (every later access is relative
/// to this fd), MOUNTPOINT absolute.
#[derive(Debug)]
pub struct Checked {
    pub source_fd: OwnedFd,
    pub source: PathBuf,
    pub mountpoint: PathBuf,
}

/// The checks that give an admin a clear error before anything is forked or locked.
pub fn check(opts: &MountOptions) -> Result<Checked> {
    let source = std::path::absolute(&opts.source)
        .map_err(|e| Error::io("cannot open source", &opts.source, e))?;
    // The admin's own path may be a symlink (e.g. /var/vmail -> /srv/vmail); everything below
    // it is opened without following symlinks.
    let file = std::fs::File::open(&source)
        .map_err(|e| Error::io("cannot open source", &opts.source, e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot open source", &opts.source, e))?;
    if !meta.is_dir() {
        return Err(Error::msg(
            "cannot use source",
            &opts.source,
            "not a directory",
        ));
    }
    let source_fd = OwnedFd::from(file);
    sys::read_dir(source_fd.as_fd())
        .map_err(|e| Error::io("cannot read source", &opts.source, e))?;

    let mountpoint = std::fs::canonicalize(&opts.mountpoint)
        .map_err(|e| Error::io("cannot use mount point", &opts.mountpoint, e))?;
    let mmeta = std::fs::metadata(&mountpoint)
        .map_err(|e| Error::io("cannot use mount point", &opts.mountpoint, e))?;
    if !mmeta.is_dir() {
        return Err(Error::msg(
            "cannot use mount point",
            &opts.mountpoint,
            "not a directory",
        ));
    }
    if let Some(m) = runtime::find_mount(&mountpoint) {
        return Err(Error::msg(
            "cannot use mount point",
            &opts.mountpoint,
            format!("already mounted ({} from {})", m.fstype, m.source),
        ));
    }
    if mountpoint.starts_with(&source) {
        return Err(Error::msg(
            "cannot use mount point",
            &opts.mountpoint,
            "inside the source tree",
        ));
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| Error::io("cannot mount: FUSE unavailable", "/dev/fuse", e))?;
    Ok(Checked {
        source_fd,
        source,
        mountpoint,
    })
}

/// Runs `maildirfs mount`: returns the summary line to print (detached mode), or serves until
/// unmounted (foreground).
pub fn run(opts: &MountOptions) -> Result<Option<String>> {
    let checked = check(opts)?;
    if opts.foreground {
        crate::logging::init(opts.verbosity, opts.log_file.as_deref(), false)?;
        serve(opts, checked, &mut Notifier::foreground())?;
        return Ok(None);
    }
    // Open the log file before forking, so a bad path is an error the caller sees.
    crate::logging::init(opts.verbosity, opts.log_file.as_deref(), true)?;
    match daemon::detach(opts.progress, |n| serve(opts, checked, n))? {
        Outcome::Ready(summary) => Ok(Some(summary)),
        Outcome::Failed(err) => Err(Error::relayed(err)),
    }
}

/// What one capture produced.
pub struct Captured {
    /// When the capture started (UTC, ISO 8601).
    pub started_at: String,
    /// The view to serve: the skeleton and the accounts captured at mount.
    pub view: Arc<View>,
    /// What freeze noticed in the skeleton and the accounts captured at mount.
    pub report: FreezeReport,
    /// The accounts captured at mount.
    pub accounts: Vec<AccountSummary>,
    /// Counts of what was captured at mount (accounts: all the view holds).
    pub totals: Totals,
    /// Accounts left to be captured when first read.
    pub on_demand: usize,
    pub elapsed: Duration,
    /// The soft `RLIMIT_NOFILE` the pins had to fit in.
    pub fd_limit: u64,
    /// How many files the working set may keep pinned.
    pub working_set: usize,
    /// Whether --include/--exclude chose the accounts.
    pub selected: bool,
    /// The lock holds of the captures made after the mount (on demand).
    pub later: Arc<LaterHolds>,
    /// The control tree in use, as the summary names it (`None`: in the Maildir).
    pub control_dir: Option<String>,
}

/// Where the capture finds the locks and control files, from `--control-dir` or, by default,
/// from Dovecot's own settings when `doveconf` is installed and they describe SOURCE; with
/// how the summary names the control tree in use.
fn control_places(
    opts: &MountOptions,
    source: &Path,
) -> Result<(crate::control_tree::ControlPlaces, Option<String>)> {
    use crate::control_tree::ControlPlaces;
    use crate::maildir::control;
    use crate::options::ControlDir;
    match &opts.control_dir {
        ControlDir::InMaildir => Ok((ControlPlaces::in_maildir(), None)),
        ControlDir::Tree(t) => Ok((ControlPlaces::tree(t.clone())?, Some(t.as_str().to_owned()))),
        ControlDir::Learn => {
            let learned = control::from_doveconf();
            let Some((learned, text)) = learned
                .as_ref()
                .and_then(|l| Some((l, l.control.as_deref()?)))
            else {
                return Ok((ControlPlaces::in_maildir(), None));
            };
            if !learned.describes(source) {
                log::warn!(
                    "doveconf says Dovecot keeps control files in {text}, but its mail path {} does not \
                     show that {} is its store: not used (give --control-dir {text} if it is, \
                     or --control-dir maildir)",
                    learned.mail_path,
                    escape_path(source)
                );
                return Ok((ControlPlaces::in_maildir(), None));
            }
            let template: control::Template = text.parse().map_err(|why: String| {
                Error::msg(
                    "cannot use doveconf's control directory",
                    source,
                    format!("{why}; give --control-dir TEMPLATE, or --control-dir maildir"),
                )
            })?;
            log::info!("control files in {text}, as doveconf says");
            Ok((
                ControlPlaces::tree(template)?,
                Some(format!("{text} (from doveconf)")),
            ))
        }
    }
}

impl Captured {
    /// The status report of this capture mounted as `checked`, before any serving.
    /// (`reads` and `summary` are filled in once the kernel has connected.)
    pub fn report_for(&self, checked: &Checked) -> MountReport {
        let t = &self.totals;
        let longest = self.accounts.iter().max_by_key(|a| a.lock_hold);
        MountReport {
            pid: sys::getpid() as u32,
            source: escape_path(&checked.source),
            mountpoint: escape_path(&checked.mountpoint),
            captured_at: self.started_at.clone(),
            capture_seconds: self.elapsed.as_secs_f64(),
            accounts: t.accounts as u64,
            mailboxes: t.mailboxes as u64,
            messages: t.messages as u64,
            bytes: t.bytes,
            unlocked: self
                .accounts
                .iter()
                .filter_map(|a| {
                    Some(crate::report::Unlocked {
                        account: display_rel(&a.root),
                        why: a.unlocked.clone()?,
                    })
                })
                .collect(),
            longest_lock_hold_ms: longest.map_or(0, |a| a.lock_hold.as_millis() as u64),
            longest_lock_hold_account: longest.map(|a| display_rel(&a.root)).unwrap_or_default(),
            pinned: t.pinned as u64,
            unpinned: t.unpinned as u64,
            fd_limit: self.fd_limit,
            expunged_during_capture: self.report.vanished as u64,
            unreadable: self.report.unreadable.len() as u64,
            special_files: self.report.special_files as u64,
            control_files_too_large: self.report.control_too_large.len() as u64,
            stalled_accounts: self.report.stalled.len() as u64,
            too_deep: self.report.too_deep.len() as u64,
            mount_points_skipped: self.report.skipped_mounts.len() as u64,
            mailboxes_without_lock: self.report.late_mailboxes.len() as u64,
            reads: String::new(),
            summary: String::new(),
            live: Live::default(),
            account_holds: self
                .accounts
                .iter()
                .map(AccountSummary::hold)
                .chain(self.report.stalled.iter().map(|root| AccountHold {
                    account: display_rel(root),
                    stalled: true,
                    captures: 1,
                    ..AccountHold::default()
                }))
                .collect(),
            ..MountReport::default()
        }
    }
}

/// Per account, for the summary.
pub struct AccountSummary {
    pub root: PathBuf,
    pub unlocked: Option<String>,
    pub lock_hold: Duration,
    /// The part of `lock_hold` spent pinning.
    pub pin_time: Duration,
    /// Messages listed in its `new/` and `cur/`.
    pub messages: usize,
}

impl AccountSummary {
    fn of(c: &AccountCapture) -> AccountSummary {
        AccountSummary {
            root: c.root.clone(),
            unlocked: c.unlocked.clone(),
            lock_hold: c.lock_hold,
            pin_time: c.pin_time,
            messages: c.messages(),
        }
    }

    /// Its lock hold, for `--summary-json`.
    fn hold(&self) -> AccountHold {
        AccountHold {
            account: display_rel(&self.root),
            lock_hold_us: self.lock_hold.as_micros() as u64,
            // Only a locked listing's pinning is part of a hold.
            pinning_us: if self.unlocked.is_none() {
                self.pin_time.as_micros() as u64
            } else {
                0
            },
            messages: self.messages as u64,
            locked: self.unlocked.is_none(),
            stalled: false,
            captures: 1,
        }
    }
}

/// Discover, lock, capture and freeze SOURCE, without FUSE.
pub fn capture_tree(root: &OwnedFd, source: &Path, opts: &MountOptions) -> Result<Captured> {
    capture_tree_with(root, source, opts, &Arc::new(capture::Progress::default()))
}

/// [`capture_tree`], counting its progress in `progress`.
pub fn capture_tree_with(
    root: &OwnedFd,
    source: &Path,
    opts: &MountOptions,
    progress: &Arc<capture::Progress>,
) -> Result<Captured> {
    let started = Instant::now();
    let (places, control_dir) = control_places(opts, source)?;
    let policy = LockPolicy {
        no_lock: opts.no_lock,
        strict: opts.strict_lock,
        timeout: opts.lock_timeout,
        test_hold: test_hold(),
        one_mailbox_at_a_time: false,
        lock_host: opts.lock_host.clone(),
        places: Arc::new(places),
    };
    if opts.lock_host.is_none() && !opts.no_lock && crate::lock::in_other_pid_namespace() {
        log::warn!(
            "this process is in another PID namespace than the host's init: a Dovecot outside \
             it cannot check our pid and may override our locks; use --lock-host NAME"
        );
    }
    let budget = Arc::new(PinBudget::for_working_set(opts.working_set));
    let at = Start {
        control_dir,
        root,
        source,
        opts,
        progress,
        policy,
        working_set: budget.left(),
        budget,
        started,
        started_at: crate::logging::utc_now(),
    };
    match opts.capture {
        CaptureMode::OnDemand => at.on_demand(),
        CaptureMode::AtMount => at.all_at_mount(),
    }
}

/// What a capture at mount starts from.
struct Start<'a> {
    /// The control tree in use, for the summary.
    control_dir: Option<String>,
    root: &'a OwnedFd,
    source: &'a Path,
    opts: &'a MountOptions,
    progress: &'a Arc<capture::Progress>,
    policy: LockPolicy,
    budget: Arc<PinBudget>,
    /// The budget's pins before anything was captured: the working set's size.
    working_set: usize,
    started: Instant,
    started_at: String,
}

impl Start<'_> {
    fn nothing_to_capture(&self) -> Error {
        let why = if self.opts.selection.is_all() {
            "holds no Maildir (no directory with cur/ and new/)"
        } else {
            "holds no Maildir that --include/--exclude select"
        };
        Error::msg("nothing to capture", self.source, why)
    }

    /// Captures `accounts` in parallel (see [`capture_accounts`]).
    fn capture(
        &self,
        accounts: Vec<maildir::Account>,
    ) -> Result<(Vec<AccountCapture>, Vec<PathBuf>)> {
        self.progress
            .accounts_total
            .store(accounts.len(), std::sync::atomic::Ordering::Relaxed);
        let work = Work {
            source: self.source.to_path_buf(),
            accounts,
            policy: self.policy.clone(),
            budget: Arc::clone(&self.budget),
            progress: Arc::clone(self.progress),
            stall_timeout: self.opts.stall_timeout,
        };
        let captured = capture_accounts(self.root, work)?;
        log::debug!(
            "captured {} accounts at {:.3} s",
            captured.0.len(),
            self.started.elapsed().as_secs_f64()
        );
        Ok(captured)
    }

    fn done(
        self,
        view: Arc<View>,
        report: FreezeReport,
        accounts: Vec<AccountSummary>,
        totals: Totals,
        on_demand: usize,
        later: Arc<LaterHolds>,
    ) -> Captured {
        sys::trim_heap();
        Captured {
            later,
            started_at: self.started_at,
            view,
            report,
            accounts,
            totals,
            on_demand,
            elapsed: self.started.elapsed(),
            fd_limit: self.budget.limit,
            working_set: self.working_set,
            selected: !self.opts.selection.is_all(),
            control_dir: self.control_dir,
        }
    }

    /// `--capture at-mount`: discover, capture and freeze every account, as one snapshot.
    fn all_at_mount(self) -> Result<Captured> {
        let (root, source, opts) = (self.root, self.source, self.opts);
        let found = maildir::discover(root.as_fd(), source, opts.exclude_indexes, &opts.selection)?;
        if found.accounts.is_empty() {
            return Err(self.nothing_to_capture());
        }
        let (captures, stalled) = self.capture(found.accounts)?;
        let accounts: Vec<AccountSummary> = captures.iter().map(AccountSummary::of).collect();
        let (snapshot, report) = freeze::freeze(
            root.as_fd(),
            source,
            freeze::Scope::Tree {
                deferred: &HashMap::new(),
            },
            captures,
            &stalled,
            opts.exclude_indexes,
            &opts.selection,
            &self.budget,
        )?;
        let totals = snapshot.totals.clone();
        let later = Arc::new(LaterHolds::default());
        Ok(self.done(View::whole(snapshot), report, accounts, totals, 0, later))
    }

    /// On demand: freeze the tree outside the accounts (finding them as it goes), capture the
    /// accounts that fit in the working set, in the order found, and leave the others to be
    /// captured when first needed.
    fn on_demand(self) -> Result<Captured> {
        let (root, source, opts) = (self.root, self.source, self.opts);
        let (skeleton, mut report) = freeze::freeze(
            root.as_fd(),
            source,
            freeze::Scope::Skeleton,
            Vec::new(),
            &[],
            opts.exclude_indexes,
            &opts.selection,
            &self.budget,
        )?;
        let roots = std::mem::take(&mut report.accounts);
        if roots.is_empty() {
            return Err(self.nothing_to_capture());
        }
        log::debug!(
            "found {} accounts and froze the tree outside them ({} entries) in {:.3} s",
            roots.len(),
            skeleton.len(),
            self.started.elapsed().as_secs_f64()
        );
        // The node id the view gives each account's directory.
        let dirs: Vec<Ino> = skeleton
            .deferred_dirs(roots.len())
            .into_iter()
            .map(|d| skeleton.ino_of(d))
            .collect();
        // The accounts that fit, each found whole now (its folders) and estimated before any
        // lock; the first that does not fit ends the list, and the first is always taken (the
        // working set always holds one, with the pins there are).
        let mut now = Vec::new();
        let mut room = self.budget.left();
        for (id, rel) in roots.iter().enumerate() {
            let found = maildir::discover_account(
                root.as_fd(),
                source,
                rel,
                opts.exclude_indexes,
                &opts.selection,
            )?;
            let Some(whole) = found else { continue };
            let need = capture::likely_messages(root.as_fd(), &whole);
            if need > room && !now.is_empty() {
                break;
            }
            room = room.saturating_sub(need);
            now.push((id as AccountId, whole));
        }
        let ids: HashMap<PathBuf, AccountId> =
            now.iter().map(|(id, a)| (a.root.clone(), *id)).collect();
        let (captures, stalled) = self.capture(now.into_iter().map(|(_, a)| a).collect())?;
        let accounts: Vec<AccountSummary> = captures.iter().map(AccountSummary::of).collect();
        let later = Arc::new(LaterHolds::default());
        let capturer = Arc::new(OnDemand {
            root: root
                .try_clone()
                .map_err(|e| Error::io("cannot open source", source, e))?,
            source: source.to_path_buf(),
            policy: self.policy.clone(),
            budget: Arc::clone(&self.budget),
            stall_timeout: opts.stall_timeout,
            exclude_indexes: opts.exclude_indexes,
            selection: opts.selection.clone(),
            dirs,
            later: Arc::clone(&later),
        });
        let mut totals = skeleton.totals.clone();
        let mut ready = Vec::new();
        for c in captures {
            let id = ids.get(&c.root).copied().unwrap_or(0);
            let (image, r) = capturer.freeze(id, 1, c)?;
            totals.add(&image.snapshot.totals);
            report.merge(r);
            ready.push((id, image));
        }
        report.stalled = stalled.clone();
        let failed: Vec<AccountId> = stalled.iter().filter_map(|r| ids.get(r).copied()).collect();
        let limits = Limits {
            entries: self
                .working_set
                .saturating_mul(ENTRIES_PER_PIN)
                .max(MIN_ENTRIES),
            min_idle: min_idle(),
            ahead: true,
        };
        let left = roots.len() - accounts.len() - failed.len();
        totals.accounts = roots.len();
        let view = View::new(
            skeleton,
            roots,
            ready,
            failed,
            capturer,
            Arc::clone(&self.budget),
            limits,
        );
        Ok(self.done(view, report, accounts, totals, left, later))
    }
}

/// The working set's memory bound, in entries per pin of its budget: an account's entries
/// are mostly its messages (one pin each), plus its directories and index files.
const ENTRIES_PER_PIN: usize = 4;

/// The working set may always hold this many entries, however small the pin budget.
const MIN_ENTRIES: usize = 65_536;

/// How long an account used is kept from eviction (test override:
/// `MAILDIRFS_TEST_MIN_IDLE_MS`).
fn min_idle() -> Duration {
    std::env::var("MAILDIRFS_TEST_MIN_IDLE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(MIN_IDLE)
}

/// See [`Limits::min_idle`]: longer than any pause of a backup tool between two reads in one
/// directory.
const MIN_IDLE: Duration = Duration::from_secs(5);

/// Captures accounts when the view first needs them: the same discovery, locks, capture
/// and freeze as at mount, one account at a time.
struct OnDemand {
    root: OwnedFd,
    source: PathBuf,
    policy: LockPolicy,
    budget: Arc<PinBudget>,
    stall_timeout: Duration,
    exclude_indexes: bool,
    selection: crate::select::Selection,
    /// The node id of each account's directory in the view (its snapshot's root).
    dirs: Vec<Ino>,
    /// Where each capture's lock hold is kept, for `--summary-json`.
    later: Arc<LaterHolds>,
}

/// The longest lock hold of each account captured after the mount, over all its captures.
#[derive(Debug, Default)]
pub struct LaterHolds(Mutex<HashMap<AccountId, AccountHold>>);

impl LaterHolds {
    fn record(&self, id: AccountId, hold: AccountHold) {
        let mut holds = self.0.lock();
        match holds.get_mut(&id) {
            Some(h) => h.combine(hold),
            None => {
                holds.insert(id, hold);
            }
        }
    }

    /// `at_mount` (the holds of the captures made at mount, by account) with the later
    /// captures' merged in: each account once, with its longest hold and its count of captures.
    pub fn merged(&self, at_mount: &[AccountHold]) -> Vec<AccountHold> {
        let mut out = at_mount.to_vec();
        let index: HashMap<String, usize> = out
            .iter()
            .enumerate()
            .map(|(i, h)| (h.account.clone(), i))
            .collect();
        let mut later: Vec<(AccountId, AccountHold)> = self
            .0
            .lock()
            .iter()
            .map(|(id, h)| (*id, h.clone()))
            .collect();
        later.sort_by_key(|(id, _)| *id);
        for (_, h) in later {
            match index.get(&h.account) {
                Some(&i) => out[i].combine(h),
                None => out.push(h),
            }
        }
        out
    }
}

impl OnDemand {
    /// Freezes one captured account as its own snapshot (capture number `epoch`).
    fn freeze(
        &self,
        id: AccountId,
        epoch: u32,
        c: AccountCapture,
    ) -> Result<(AccountImage, FreezeReport)> {
        let unlocked = c.unlocked.clone();
        let lock_hold = c.lock_hold;
        let base = c.root.clone();
        let (snapshot, report) = freeze::freeze(
            self.root.as_fd(),
            &self.source,
            freeze::Scope::Account {
                base: &base,
                account: id,
                epoch,
                dir: self.dirs.get(id as usize).copied().unwrap_or(Ino::ROOT),
            },
            vec![c],
            &[],
            self.exclude_indexes,
            &self.selection,
            &self.budget,
        )?;
        let image = AccountImage {
            snapshot,
            unlocked,
            lock_hold,
            unreadable: report.unreadable.len(),
        };
        Ok((image, report))
    }

    fn whole(&self, rel: &Path) -> Result<maildir::Account> {
        maildir::discover_account(
            self.root.as_fd(),
            &self.source,
            rel,
            self.exclude_indexes,
            &self.selection,
        )?
        .ok_or_else(|| {
            Error::msg(
                "cannot capture account",
                self.source.join(rel),
                "no longer a Maildir (no cur/ and new/)",
            )
        })
    }
}

impl Capturer for OnDemand {
    fn capture(
        &self,
        id: AccountId,
        rel: &Path,
        epoch: u32,
        make_room: &dyn Fn(usize),
    ) -> Result<AccountImage> {
        let started = Instant::now();
        let account = self.whole(rel)?;
        make_room(capture::likely_messages(self.root.as_fd(), &account));
        let work = Work {
            source: self.source.clone(),
            accounts: vec![account],
            policy: self.policy.clone(),
            budget: Arc::clone(&self.budget),
            progress: Arc::new(capture::Progress::default()),
            stall_timeout: self.stall_timeout,
        };
        let (mut captures, stalled) = capture_accounts(&self.root, work)?;
        let Some(c) = captures.pop().filter(|_| stalled.is_empty()) else {
            self.later.record(
                id,
                AccountHold {
                    account: display_rel(rel),
                    stalled: true,
                    captures: 1,
                    ..AccountHold::default()
                },
            );
            return Err(Error::msg(
                "capture stalled",
                self.source.join(rel),
                "its locks were released",
            ));
        };
        let messages = c.messages();
        let summary = AccountSummary::of(&c);
        self.later.record(id, summary.hold());
        let (image, _) = self.freeze(id, epoch, c)?;
        log::info!(
            "captured {} ({}capture {epoch}): {messages} messages, {} pinned, lock hold {} us{}, in {:.3} s",
            escape_path(&self.source.join(rel)),
            if epoch > 1 { "again, " } else { "" },
            image.snapshot.totals.pinned,
            image.lock_hold.as_micros(),
            match &image.unlocked {
                Some(why) => format!(", WITHOUT its locks ({why})"),
                None => String::new(),
            },
            started.elapsed().as_secs_f64()
        );
        Ok(image)
    }
}

/// What the capture workers share: the accounts to capture and how.
struct Work {
    source: PathBuf,
    accounts: Vec<maildir::Account>,
    policy: LockPolicy,
    budget: Arc<PinBudget>,
    progress: Arc<capture::Progress>,
    stall_timeout: Duration,
}

/// Where the capture of each account stands. Protected by `Board::state`.
enum Slot {
    /// Not handed out yet.
    Waiting,
    /// Being captured; the watchdog follows its heartbeat.
    Running(Arc<Watch>, Heartbeat),
    Done(Result<AccountCapture>),
    /// Its capture hung and was given up: its locks are released, its worker is left to end
    /// whenever its syscall returns.
    Stalled,
}

/// The workers' shared board.
struct Board {
    work: Work,
    /// SOURCE, for the workers (a dup of the caller's fd: a stalled worker may outlive the
    /// capture, so it owns what it uses).
    root: OwnedFd,
    /// The slots and the next account to hand out; `stop` once an account failed.
    state: Mutex<BoardState>,
    changed: parking_lot::Condvar,
}

struct BoardState {
    slots: Vec<Slot>,
    next: usize,
    stop: bool,
    /// Per worker, the slot it is capturing now: a worker still on a slot once all are
    /// settled is stuck on a stalled account, and is not waited for.
    on: Vec<Option<usize>>,
}

/// Captures the accounts in parallel, one worker per CPU (at most 8): each worker takes the
/// next account and captures it whole, so an account's locks are held by one thread for its
/// own listing only, as in a sequential capture. The result is in discovery order, with the
/// roots of the accounts whose capture stalled.
///
/// This thread is the watchdog: it follows every running capture's heartbeat, and one that
/// has not moved for the stall timeout is revoked (its locks released from here), counted as
/// stalled, and replaced by a new worker, so the other accounts go on whatever the stuck one
/// is blocked in.
fn capture_accounts(root: &OwnedFd, work: Work) -> Result<(Vec<AccountCapture>, Vec<PathBuf>)> {
    let workers = sys::cpus().clamp(1, 8).min(work.accounts.len().max(1));
    work.budget.reserve_table(
        capture::expected_entries_all(root.as_fd(), &work.accounts),
        root.as_fd(),
    );
    let dup = root
        .try_clone()
        .map_err(|e| Error::io("cannot open source", &work.source, e))?;
    let board = Arc::new(Board {
        state: Mutex::new(BoardState {
            slots: work.accounts.iter().map(|_| Slot::Waiting).collect(),
            next: 0,
            stop: false,
            on: Vec::new(),
        }),
        work,
        root: dup,
        changed: parking_lot::Condvar::new(),
    });
    let mut handles = Vec::with_capacity(workers);
    for _ in 0..workers {
        match start_worker(&board) {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Those started hold locks that nobody would watch any more.
                revoke_all(&board);
                return Err(e);
            }
        }
    }
    let mut state = board.state.lock();
    loop {
        let running = state.slots.iter().any(|s| matches!(s, Slot::Running(..)));
        let handed_out = state.stop || state.next >= state.slots.len();
        if !running && handed_out {
            break;
        }
        if capture::CANCEL.load(std::sync::atomic::Ordering::Relaxed) {
            // The signal thread has released every lock; nothing here is worth waiting for.
            return Err(Error::msg(
                "capture interrupted",
                &board.work.source,
                "stop signal",
            ));
        }
        // Marked here, revoked once the board is let go: a revoke unlinks files on the very
        // filesystem that may be hanging, and must not hold up the workers or the others.
        let mut revoke = Vec::new();
        for slot in state.slots.iter_mut() {
            if let Slot::Running(watch, beat) = slot {
                if beat.silent_for(watch) >= board.work.stall_timeout {
                    revoke.push(Arc::clone(watch));
                    *slot = Slot::Stalled;
                }
            }
        }
        if !revoke.is_empty() {
            if board.work.policy.strict {
                state.stop = true;
            }
            drop(state);
            for watch in &revoke {
                let locked = watch.holds_locks();
                watch.revoke();
                log::warn!(
                    "capture of {} stalled for {:.1} s (no progress for {} s){}; the account \
                     fails with EIO in the view",
                    escape_path(&board.work.source.join(watch.account())),
                    watch.elapsed().as_secs_f64(),
                    board.work.stall_timeout.as_secs_f64(),
                    if locked {
                        " under its locks; locks released"
                    } else {
                        ""
                    }
                );
                board.work.progress.finished(&display_rel(watch.account()));
                // The stuck worker will not take more work: another takes its place.
                match start_worker(&board) {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        revoke_all(&board);
                        return Err(e);
                    }
                }
            }
            state = board.state.lock();
            continue;
        }
        board.changed.wait_for(
            &mut state,
            WATCHDOG_INTERVAL.min(board.work.stall_timeout / 4),
        );
    }
    let slots = std::mem::take(&mut state.slots);
    let idle: Vec<bool> = state.on.iter().map(Option::is_none).collect();
    drop(state);
    // The workers that are not stuck are ending (nothing is left to take): wait for them, so
    // that on this, the normal way out, nothing of this capture (their share of SOURCE's fd)
    // outlives it.
    for (id, handle) in handles {
        if idle.get(id).copied().unwrap_or(false) && handle.join().is_err() {
            log::error!("a capture thread panicked");
        }
    }
    // Report a real error first; an account left out is only the consequence of one.
    let mut out = Vec::with_capacity(slots.len());
    let mut stalled = Vec::new();
    let mut first_err = None;
    for (slot, account) in slots.into_iter().zip(&board.work.accounts) {
        match slot {
            Slot::Done(Ok(c)) => out.push(c),
            Slot::Done(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Slot::Stalled => stalled.push(account.root.clone()),
            Slot::Waiting | Slot::Running(..) => {}
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    if board.work.policy.strict {
        if let Some(first) = stalled.first() {
            return Err(Error::msg(
                "cannot lock account",
                board.work.source.join(first),
                "its capture hung (--strict-lock)",
            ));
        }
    }
    Ok((out, stalled))
}

/// Stops every running capture and releases its locks (the capture is failing as a whole).
fn revoke_all(board: &Board) {
    let running: Vec<Arc<Watch>> = {
        let mut state = board.state.lock();
        state.stop = true;
        state
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Running(w, _) => Some(Arc::clone(w)),
                _ => None,
            })
            .collect()
    };
    for w in running {
        w.revoke();
    }
}

/// How often the watchdog looks at the running captures, at most.
const WATCHDOG_INTERVAL: Duration = Duration::from_millis(100);

/// Starts one capture worker: it takes accounts off the board until none is left, and ends
/// early if the watchdog gives up on its account (a new worker then takes its place).
/// Returns its id on the board and its handle.
fn start_worker(board: &Arc<Board>) -> Result<(usize, std::thread::JoinHandle<()>)> {
    let board = Arc::clone(board);
    let id = {
        let mut state = board.state.lock();
        state.on.push(None);
        state.on.len() - 1
    };
    std::thread::Builder::new()
        .name("capture".to_owned())
        .spawn(move || {
            loop {
                let (i, watch) = {
                    let mut state = board.state.lock();
                    if state.stop || state.next >= state.slots.len() {
                        return;
                    }
                    let i = state.next;
                    state.next += 1;
                    state.on[id] = Some(i);
                    let account = &board.work.accounts[i];
                    let watch = Arc::new(Watch::new(&account.root));
                    state.slots[i] = Slot::Running(Arc::clone(&watch), Heartbeat::new(&watch));
                    (i, watch)
                };
                let w = &board.work;
                let account = &w.accounts[i];
                let shown = display_rel(&account.root);
                w.progress.started(&shown);
                let r = capture::capture_account(
                    board.root.as_fd(),
                    &w.source,
                    account,
                    &w.policy,
                    &w.budget,
                    &watch,
                );
                let mut state = board.state.lock();
                if let Slot::Stalled = state.slots[i] {
                    // Given up on while this thread was stuck; the pins of what it made close,
                    // and give their budget back, as `r` drops. A new worker has taken this
                    // one's place.
                    drop(state);
                    drop(r);
                    return;
                }
                state.on[id] = None;
                w.progress.finished(&shown);
                if let Ok(c) = &r {
                    w.progress.account_done(c);
                }
                if r.is_err() {
                    // Stop handing out work; the first error is reported.
                    state.stop = true;
                }
                state.slots[i] = Slot::Done(r);
                board.changed.notify_all();
            }
        })
        .map(|h| (id, h))
        .map_err(|e| Error::io("cannot start a capture thread", "maildirfs", e))
}

/// Test-only: keep each account's locks this long after listing (`MAILDIRFS_TEST_HOLD_MS`).
fn test_hold() -> Duration {
    std::env::var("MAILDIRFS_TEST_HOLD_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_default()
}

/// Captures, mounts, reports readiness through `notifier`, and serves until unmounted or
/// stopped by SIGTERM/SIGINT/SIGHUP.
fn serve(opts: &MountOptions, checked: Checked, notifier: &mut Notifier) -> Result<()> {
    // Before any thread exists: every thread inherits the mask, and only the signal thread
    // below receives the stop signals.
    sys::block_stop_signals().map_err(|e| Error::io("cannot set up signals", "maildirfs", e))?;
    sys::fix_mmap_threshold();
    let unmounter: Arc<Mutex<Option<fuser::SessionUnmounter>>> = Arc::new(Mutex::new(None));
    let u = Arc::clone(&unmounter);
    let mut stop_report = notifier.clone_pipe();
    let source = checked.source.clone();
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            loop {
                let sig = sys::wait_stop_signal();
                log::info!("signal {sig}: stopping");
                capture::CANCEL.store(true, std::sync::atomic::Ordering::Relaxed);
                // First, whatever the other threads are doing or stuck in: no lock of ours
                // outlives the signal.
                let released = crate::lock::release_all();
                if released > 0 {
                    log::info!("released {released} locks");
                }
                if unmount_if_serving(&u) {
                    continue;
                }
                // Discovering, capturing or freezing: the main flow stops by itself at its
                // next check; if it is stuck in a syscall, end the process.
                std::thread::sleep(STOP_GRACE);
                if unmount_if_serving(&u) {
                    continue;
                }
                let err = Error::msg("mount interrupted", &source, format!("signal {sig}"));
                log::error!("{err}; ending the capture");
                match stop_report.as_mut() {
                    Some(p) => {
                        let _ = std::io::Write::write_all(p, format!("ERR {err}\n").as_bytes());
                    }
                    None => eprintln!("maildirfs: {err}"),
                }
                log::logger().flush();
                // A thread stuck in an uninterruptible read keeps this process's fds open
                // after it ends; the caller's stdio must not be among them, or a caller
                // reading our output to its end would wait as long.
                crate::logging::detach_stderr();
                let _ = sys::detach_stdio();
                sys::exit_now(1);
            }
        })
        .map_err(|e| Error::io("cannot start signal thread", "maildirfs", e))?;

    let progress = Arc::new(capture::Progress::default());
    let mut sink = notifier.progress_sink(opts.progress);
    let started = Instant::now();
    let captured = std::thread::scope(|s| {
        // Dropping `done` wakes the progress thread at once: the capture never waits for it.
        let (done, finished) = std::sync::mpsc::channel::<()>();
        if let Some(sink) = sink.as_mut() {
            let progress = &progress;
            s.spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    finished.recv_timeout(PROGRESS_INTERVAL)
                {
                    sink.send(&progress.line(started.elapsed()));
                }
                sink.finish();
            });
        }
        let c = capture_tree_with(&checked.source_fd, &checked.source, opts, &progress);
        drop(done);
        c
    })?;
    drop(sink);
    let summary = summary_line(&checked, &captured);
    let mut report = captured.report_for(&checked);
    let view = Arc::clone(&captured.view);
    let later = Arc::clone(&captured.later);
    drop(captured);
    let source = Arc::new(Source::new(checked.source_fd, checked.source.clone()));
    let fs = MaildirFs::new(Arc::clone(&view), Arc::clone(&source), opts.passthrough);
    let read_path = fs.read_path();
    let ahead = fs.ahead_slot();

    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::FSName(fsname(&checked.source)),
        fuser::MountOption::CUSTOM("subtype=maildirfs".to_owned()),
    ];
    if opts.allow_other {
        // Never one without the other: the kernel then checks the captured owner and mode.
        config
            .mount_options
            .push(fuser::MountOption::DefaultPermissions);
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(sys::cpus().clamp(1, 8));
    config.clone_fd = true;
    // Held while mounting: a stop signal now waits for the mount and then unmounts it, rather
    // than end the process under a half-made mount.
    let mut stopper = unmounter.lock();
    if capture::CANCEL.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::msg(
            "mount interrupted",
            &checked.mountpoint,
            "stop signal",
        ));
    }
    let mut session = fuser::Session::new(fs, &checked.mountpoint, &config)
        .map_err(|e| Error::io("cannot mount", &checked.mountpoint, e))?;
    *stopper = Some(session.unmount_callable());
    drop(stopper);
    crate::fs::notify_evictions(&view, session.notifier());
    crate::fs::start_read_ahead(
        &ahead,
        &source,
        session.notifier(),
        ReadPath::from_u8(read_path.load(std::sync::atomic::Ordering::Relaxed)),
        opts.no_read_ahead,
    );
    // The kernel has connected (init ran): say how reads are served.
    let summary = match ReadPath::from_u8(read_path.load(std::sync::atomic::Ordering::Relaxed)) {
        ReadPath::Passthrough => {
            format!("{summary}; reads: kernel passthrough to the source files")
        }
        ReadPath::NoOpen if opts.passthrough => {
            format!("{summary}; reads: through maildirfs (passthrough not available)")
        }
        ReadPath::NoOpen => format!("{summary}; reads: through maildirfs, cached by the kernel"),
    };

    let reads = match ReadPath::from_u8(read_path.load(std::sync::atomic::Ordering::Relaxed)) {
        ReadPath::Passthrough => "passthrough",
        ReadPath::NoOpen if opts.passthrough => "no-passthrough",
        ReadPath::NoOpen => "kernel-cache",
    };
    report.reads = reads.to_owned();
    report.summary = summary.clone();
    let mounted = runtime::find_mount(&checked.mountpoint);
    if let Some(m) = &mounted {
        raise_readahead(&m.devno);
    }
    let state = match mounted {
        Some(m) => Some(StateFile::create(&m.devno)?),
        None => None,
    };
    let state = Arc::new(Mutex::new(state));
    if let Some(s) = state.lock().as_mut() {
        s.write(&report.to_state())?;
    }
    if let Some(path) = &opts.summary_json {
        write_atomically(path, report.to_json() + "\n")
            .map_err(|e| Error::io("cannot write summary", path, e))?;
    }
    crate::logging::notice(&summary);
    if notifier.is_foreground() {
        eprintln!("maildirfs: {summary}");
    } else {
        notifier.ready(&summary);
    }
    if capture::CANCEL.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = session.unmount();
    }
    // The state file follows the live counters for `maildirfs status`; dropping `stop` ends
    // the thread at once.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let updater = {
        let (state, source, mut report) = (Arc::clone(&state), Arc::clone(&source), report.clone());
        let view = Arc::clone(&view);
        std::thread::Builder::new()
            .name("status".to_owned())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(STATUS_INTERVAL)
                {
                    let live = Live {
                        view: view.counts(),
                        ..source.live()
                    };
                    if live != report.live {
                        report.live = live;
                        if let Some(s) = state.lock().as_mut() {
                            let _ = s.write(&report.to_state());
                        }
                    }
                }
            })
            .map_err(|e| Error::io("cannot start status thread", "maildirfs", e))?
    };
    let result = session.run();
    // The mount is gone and its device number free for the next mount: out of the lookup.
    if let Some(s) = state.lock().as_mut() {
        s.retire();
    }
    drop(stop);
    let _ = updater.join();
    report.live = Live {
        view: view.counts(),
        ..source.live()
    };
    let final_line = unmount_line(&checked.mountpoint, &report.live);
    if let Some(path) = &opts.summary_json {
        // Again, now with the captures made while serving.
        report.account_holds = later.merged(&report.account_holds);
        if let Some(h) = report.account_holds.iter().max_by_key(|h| h.lock_hold_us) {
            report.longest_lock_hold_ms = h.lock_hold_us / 1000;
            report.longest_lock_hold_account = h.account.clone();
        }
        if let Err(e) = write_atomically(path, report.to_json() + "\n") {
            log::warn!("cannot write summary {}: {e}", escape_path(path));
        }
    }
    crate::logging::notice(&final_line);
    if let Some(mut s) = state.lock().take() {
        let closing = MountReport {
            final_line: Some(final_line),
            ..report.clone()
        };
        let _ = s.write(&closing.to_state());
        s.remove();
    }
    result.map_err(|e| Error::io("serving failed", &checked.mountpoint, e))
}

/// Gives the mount (device `devno`, "major:minor") the readahead asked for at init: the
/// kernel keeps a FUSE mount's at its default, 128 KiB, whatever the filesystem asks, and a
/// large file read from a cold cache then waits for a READ every 128 KiB. Root may raise it
/// in sysfs; elsewhere the default stays, which only makes large files slower.
fn raise_readahead(devno: &str) {
    let path = format!("/sys/class/bdi/{devno}/read_ahead_kb");
    let kib = crate::fs::MAX_READAHEAD >> 10;
    if let Err(e) = std::fs::write(&path, format!("{kib}\n")) {
        log::debug!("cannot raise the readahead of the mount ({path}: {e})");
    }
}

/// The line the server ends with: what was captured and served, and what was not.
fn unmount_line(mountpoint: &Path, live: &Live) -> String {
    let v = &live.view;
    let mut line = format!("unmounted {}: ", escape_path(mountpoint));
    if v.accounts > 0 {
        line.push_str(&format!(
            "{} of {} accounts captured ({} more than once, at different instants; {} left the \
             working set), {} never captured",
            v.captured, v.accounts, v.recaptured, v.evictions, v.never
        ));
        if v.unlocked > 0 {
            line.push_str(&format!(", {} captures WITHOUT locks", v.unlocked));
        }
        if v.failed > 0 {
            line.push_str(&format!(
                ", {} accounts UNREADABLE (capture failed)",
                v.failed
            ));
        }
        line.push_str("; ");
    }
    line.push_str(&format!(
        "{} files ({}) read ahead, {} reads late for them; ",
        live.ahead_files,
        human_bytes(live.ahead_bytes),
        live.ahead_late,
    ));
    line.push_str(&format!(
        "{} files renamed in the source were served from their new names, {} vanished, {} failed to read",
        live.refound, live.vanished, live.read_errors,
    ));
    line
}

/// How long a stop signal waits for the capture to stop by itself before it ends the process
/// (the locks are released before this wait).
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Unmounts the view if it is mounted; false while there is none yet.
fn unmount_if_serving(u: &Mutex<Option<fuser::SessionUnmounter>>) -> bool {
    let mut guard = u.lock();
    let Some(um) = guard.as_mut() else {
        return false;
    };
    if let Err(e) = um.unmount() {
        log::warn!("cannot unmount: {e}");
    }
    true
}

/// How often the capture progress line is brought up to date.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// How often the server brings its state file's counters up to date.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees half.
fn write_atomically(path: &Path, text: String) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", sys::getpid()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The mount source shown in `/proc/mounts` and `df`; mount options are comma-separated, so a
/// path with a comma or blank is not used there.
fn fsname(source: &Path) -> String {
    let s = source.display().to_string();
    if s.contains([',', ' ', '\t', '\n', '\\']) {
        "maildirfs".to_owned()
    } else {
        s
    }
}

/// The one-line mount summary.
pub fn summary_line(checked: &Checked, c: &Captured) -> String {
    let t = &c.totals;
    let longest = c.accounts.iter().max_by_key(|a| a.lock_hold);
    let hold = match longest {
        Some(a) if !a.lock_hold.is_zero() => format!(
            "longest lock hold {} ms ({}; {} ms of it pinning)",
            a.lock_hold.as_millis(),
            display_rel(&a.root),
            a.pin_time.as_millis()
        ),
        _ => "no lock held".to_owned(),
    };
    let unlocked: Vec<&AccountSummary> =
        c.accounts.iter().filter(|a| a.unlocked.is_some()).collect();
    let locks = match unlocked.first() {
        None => "all accounts locked".to_owned(),
        Some(first) => format!(
            "{} of {} accounts captured WITHOUT lock ({}: {})",
            unlocked.len(),
            c.accounts.len(),
            display_rel(&first.root),
            first.unlocked.as_deref().unwrap_or("")
        ),
    };
    let chosen = if c.selected {
        " (chosen by --include/--exclude)"
    } else {
        ""
    };
    // With accounts left for later, the counts are of those captured at mount.
    let counted = if c.on_demand > 0 {
        format!(
            "{} accounts{chosen}, {} captured at mount ({} mailboxes, {} messages, {}), {} left to \
             capture when first read (working set {} files)",
            t.accounts,
            c.accounts.len(),
            t.mailboxes,
            t.messages,
            human_bytes(t.bytes),
            c.on_demand,
            c.working_set
        )
    } else {
        format!(
            "{} accounts{chosen}, {} mailboxes, {} messages, {}",
            t.accounts,
            t.mailboxes,
            t.messages,
            human_bytes(t.bytes)
        )
    };
    let mut line = format!(
        "mounted {} on {}: {counted} in {:.2} s; {hold}; {locks}",
        escape_path(&checked.source),
        escape_path(&checked.mountpoint),
        c.elapsed.as_secs_f64(),
    );
    if t.unpinned == 0 {
        line.push_str(&format!("; all {} files pinned", t.pinned));
    } else {
        line.push_str(&format!(
            "; {} files pinned, {} unpinned (fd limit {}; unpinned files are found again by name)",
            t.pinned, t.unpinned, c.fd_limit
        ));
    }
    if c.report.vanished > 0 {
        line.push_str(&format!(
            "; {} messages expunged before they could be frozen",
            c.report.vanished
        ));
    }
    if !c.report.skipped_mounts.is_empty() {
        line.push_str(&format!(
            "; {} mount points inside the source not entered",
            c.report.skipped_mounts.len()
        ));
    }
    if !c.report.late_mailboxes.is_empty() {
        line.push_str(&format!(
            "; {} mailboxes created during the capture were captured WITHOUT lock",
            c.report.late_mailboxes.len()
        ));
    }
    if !c.report.unreadable.is_empty() {
        line.push_str(&format!(
            "; {} directories or files UNREADABLE, shown empty or left out (first: {})",
            c.report.unreadable.len(),
            display_rel(&c.report.unreadable[0])
        ));
    }
    if c.report.special_files > 0 {
        line.push_str(&format!(
            "; {} special files (FIFO, socket, device) left out",
            c.report.special_files
        ));
    }
    if let Some(t) = &c.control_dir {
        line.push_str(&format!("; control files from {t}"));
    }
    if let Some(first) = c.report.control_too_large.first() {
        line.push_str(&format!(
            "; {} control files left out as too large (first: {})",
            c.report.control_too_large.len(),
            display_rel(first)
        ));
    }
    if let Some(first) = c.report.stalled.first() {
        line.push_str(&format!(
            "; {} accounts STALLED during capture, their locks released, EIO in the view (first: {})",
            c.report.stalled.len(),
            display_rel(first)
        ));
    }
    if let Some(first) = c.report.too_deep.first() {
        line.push_str(&format!(
            "; {} directories more than {} levels deep shown empty (first: {})",
            c.report.too_deep.len(),
            crate::maildir::discover::MAX_DEPTH,
            display_rel(first)
        ));
    }
    line
}

fn display_rel(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        escape_path(p)
    }
}

/// Bytes in the units `df -h` uses.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
