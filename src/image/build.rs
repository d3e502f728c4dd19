//! Building the view a mount serves, from a capture [`Plan`]: discover, lock, capture and
//! freeze every account at mount, or, on demand, freeze the tree outside the accounts,
//! capture those that fit in the working set now and leave the others to the view, which
//! captures each when it is first needed ([`Capturer`]). No FUSE here: tests build views
//! with it on temporary trees.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::capture::account::{self, AccountCapture, LockPolicy, Progress};
use crate::capture::pin::PinBudget;
use crate::capture::workers::{Work, capture_accounts};
use crate::error::{Error, Result, display_rel, escape_path};
use crate::image::freeze::{self, FreezeReport};
use crate::image::snapshot::{Ino, Totals};
use crate::image::view::{AccountId, AccountImage, Capturer, Limits, View};
use crate::maildir;
use crate::maildir::select::Selection;
use crate::sys;

/// How a tree is to be captured: the mount's options, as the capture needs them.
#[derive(Debug, Clone)]
pub struct Plan {
    /// How the locks are taken, and where the control files are.
    pub policy: LockPolicy,
    /// Capture the accounts that fit in the working set at mount and the others when first
    /// read (`--capture on-demand`), or all at mount as one snapshot (`at-mount`).
    pub on_demand: bool,
    /// `--working-set FILES`: how many files the working set may keep pinned (`None`: what
    /// the fd limit allows).
    pub working_set: Option<usize>,
    /// `--exclude-indexes`: leave Dovecot's index files out.
    pub exclude_indexes: bool,
    /// `--include`/`--exclude`: the accounts and mailboxes to capture.
    pub selection: Selection,
    /// How long a capture may go without progress before it is given up.
    pub stall_timeout: Duration,
    /// The control tree in use, as the summary names it (`None`: in the Maildir).
    pub control_dir: Option<String>,
}

impl Plan {
    /// Every account, locked, control files in the Maildir, on demand: the defaults of
    /// `maildirfs mount`.
    pub fn new() -> Plan {
        Plan {
            policy: LockPolicy::default(),
            on_demand: true,
            working_set: None,
            exclude_indexes: false,
            selection: Selection::default(),
            stall_timeout: crate::capture::watch::STALL_TIMEOUT,
            control_dir: None,
        }
    }
}

impl Default for Plan {
    fn default() -> Plan {
        Plan::new()
    }
}

/// What one capture produced.
pub struct Captured {
    /// When the capture started.
    pub started_at: std::time::SystemTime,
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
    /// How long the capture at mount took, from discovery to the view being ready.
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

/// Per account, for the summary.
pub struct AccountSummary {
    /// The account's root, relative to SOURCE.
    pub root: PathBuf,
    /// Why it was captured without its locks, if it was.
    pub unlocked: Option<String>,
    /// From the first lock taken to the last released; zero when captured without locks.
    pub lock_hold: Duration,
    /// The part of `lock_hold` spent pinning.
    pub pin_time: Duration,
    /// Messages listed in its `new/` and `cur/`.
    pub messages: usize,
}

impl AccountSummary {
    /// What the summary keeps of a capture.
    pub fn of(c: &AccountCapture) -> AccountSummary {
        AccountSummary {
            root: c.root.clone(),
            unlocked: c.unlocked.clone(),
            lock_hold: c.lock_hold,
            pin_time: c.pin_time,
            messages: c.messages(),
        }
    }

    /// Its lock hold, for `--summary-json`.
    pub fn hold(&self) -> AccountHold {
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

/// Discovers, locks, captures and freezes SOURCE (`root` an fd on it, `source` its path, for
/// messages) as `plan` says, counting its progress in `progress`.
pub fn build(
    root: &OwnedFd,
    source: &Path,
    plan: &Plan,
    progress: &Arc<Progress>,
) -> Result<Captured> {
    let budget = Arc::new(PinBudget::for_working_set(plan.working_set));
    let at = Start {
        root,
        source,
        plan,
        progress,
        working_set: budget.left(),
        budget,
        started: Instant::now(),
        started_at: std::time::SystemTime::now(),
    };
    if plan.on_demand {
        at.on_demand()
    } else {
        at.all_at_mount()
    }
}

/// What a capture at mount starts from.
struct Start<'a> {
    root: &'a OwnedFd,
    source: &'a Path,
    plan: &'a Plan,
    progress: &'a Arc<Progress>,
    budget: Arc<PinBudget>,
    /// The budget's pins before anything was captured: the working set's size.
    working_set: usize,
    started: Instant,
    started_at: std::time::SystemTime,
}

impl Start<'_> {
    fn nothing_to_capture(&self) -> Error {
        let why = if self.plan.selection.is_all() {
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
            policy: self.plan.policy.clone(),
            budget: Arc::clone(&self.budget),
            progress: Arc::clone(self.progress),
            stall_timeout: self.plan.stall_timeout,
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
            selected: !self.plan.selection.is_all(),
            control_dir: self.plan.control_dir.clone(),
        }
    }

    /// `--capture at-mount`: discover, capture and freeze every account, as one snapshot.
    fn all_at_mount(self) -> Result<Captured> {
        let (root, source, opts) = (self.root, self.source, self.plan);
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
        let (root, source, opts) = (self.root, self.source, self.plan);
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
            let need = account::likely_messages(root.as_fd(), &whole);
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
            policy: self.plan.policy.clone(),
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
    selection: crate::maildir::select::Selection,
    /// The node id of each account's directory in the view (its snapshot's root).
    dirs: Vec<Ino>,
    /// Where each capture's lock hold is kept, for `--summary-json`.
    later: Arc<LaterHolds>,
}

/// One account's lock hold, for `--summary-json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountHold {
    /// The account's root relative to SOURCE, escaped (`.` for SOURCE itself).
    pub account: String,
    /// From the first lock taken to the last released (the longest of its captures); 0 when
    /// captured without locks.
    pub lock_hold_us: u64,
    /// The part of it spent pinning files that were not pinned before the locks.
    pub pinning_us: u64,
    /// Messages listed in its `new/` and `cur/` by the capture with the longest hold.
    pub messages: u64,
    /// Whether every capture of it listed under its locks (false also for one that hung).
    pub locked: bool,
    /// Its capture hung and was given up (locks released, `EIO` in the view).
    pub stalled: bool,
    /// How many times it was captured (on demand, again after it left the working set).
    pub captures: u64,
}

impl AccountHold {
    /// Folds in another capture of the same account: the longest hold (with its messages and
    /// pinning), the captures counted, and the bad news kept (one capture without its locks,
    /// or one that hung, is not hidden by a later one that went well).
    pub fn combine(&mut self, o: AccountHold) {
        let captures = self.captures + o.captures;
        let locked = self.locked && o.locked;
        let stalled = self.stalled || o.stalled;
        if o.lock_hold_us > self.lock_hold_us {
            *self = o;
        }
        self.captures = captures;
        self.locked = locked;
        self.stalled = stalled;
    }
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
        make_room(account::likely_messages(self.root.as_fd(), &account));
        let work = Work {
            source: self.source.clone(),
            accounts: vec![account],
            policy: self.policy.clone(),
            budget: Arc::clone(&self.budget),
            progress: Arc::new(Progress::default()),
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

/// Helpers for the image's tests (this module's, freeze's and view's): Maildir trees written
/// under a [`crate::testutil::TempDir`], and views built from them as a mount builds them.
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::image::snapshot::{Kind, NodeIdx, Snapshot};
    use crate::testutil::TempDir;
    use std::fs;

    /// Writes a mailbox at `dir` (its `cur/`, `new/` and `tmp/`) holding `cur` messages in
    /// `cur/` and `new` in `new/`; returns their names, sorted, as the image lists them.
    pub(in crate::image) fn mailbox(dir: &Path, cur: usize, new: usize) -> [Vec<String>; 2] {
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // Base names unique across both, as Dovecot keeps them (P7 in cur/, P8 in new/).
        let write = |sub: &str, n: usize, pid: u32, flags: &str| {
            let mut names: Vec<String> = (0..n)
                .map(|i| {
                    let name = format!("{}.M{i}P{pid}.host{flags}", 1_700_000_000 + i);
                    let body = format!("Subject: {sub} {i}\n\n{}\n", "x".repeat(i * 10));
                    fs::write(dir.join(sub).join(&name), body).unwrap();
                    name
                })
                .collect();
            names.sort();
            names
        };
        [write("cur", cur, 7, ":2,S"), write("new", new, 8, "")]
    }

    pub(in crate::image) fn open(src: &Path) -> OwnedFd {
        OwnedFd::from(fs::File::open(src).unwrap())
    }

    /// Builds the view of `src` as `plan` says.
    pub(in crate::image) fn build_with(src: &Path, plan: &Plan) -> Result<Captured> {
        build(&open(src), src, plan, &Arc::default())
    }

    /// The whole tree captured at mount, as one snapshot (the view's skeleton).
    pub(in crate::image) fn at_mount(src: &Path) -> Captured {
        let plan = Plan {
            on_demand: false,
            ..Plan::new()
        };
        build_with(src, &plan).unwrap()
    }

    /// The node at `path` (components joined by `/`) in one snapshot.
    pub(in crate::image) fn find(s: &Snapshot, path: &str) -> Option<NodeIdx> {
        path.split('/')
            .filter(|c| !c.is_empty())
            .try_fold(NodeIdx::ROOT, |dir, c| s.lookup(dir, c.as_bytes()))
    }

    /// The node at `path` in the view, going into an account's own snapshot (captured now if
    /// it is not yet) where the skeleton defers a directory to it.
    pub(in crate::image) fn in_view(v: &Arc<View>, path: &str) -> Option<(Arc<Snapshot>, NodeIdx)> {
        let mut at = (Arc::clone(v.skeleton()), NodeIdx::ROOT);
        for c in path.split('/').filter(|c| !c.is_empty()) {
            at.1 = at.0.lookup(at.1, c.as_bytes())?;
            if let Some(id) =
                at.0.deferred(at.1)
                    .filter(|_| Arc::ptr_eq(&at.0, v.skeleton()))
            {
                at = (v.account(id).ok()?, NodeIdx::ROOT);
            }
        }
        Some(at)
    }

    /// The names a directory node lists, in order.
    pub(in crate::image) fn listing(s: &Snapshot, dir: NodeIdx) -> Vec<String> {
        s.children(dir)
            .map(|c| String::from_utf8(s.name(NodeIdx(c)).to_vec()).unwrap())
            .collect()
    }

    /// Every path of the view below `path`, with its kind and size, going into accounts.
    fn tree(v: &Arc<View>, path: &str, out: &mut Vec<(String, String, u64)>) {
        let (s, dir) = in_view(v, path).unwrap();
        for name in listing(&s, dir) {
            let child = format!("{path}/{name}");
            let (s, idx) = in_view(v, &child).unwrap();
            let n = s.node(idx);
            let kind = match n.kind {
                Kind::Dir { .. } => "dir".to_owned(),
                k => format!("{k:?}"),
            };
            out.push((child.clone(), kind, n.attr.size));
            if matches!(n.kind, Kind::Dir { .. }) {
                tree(v, &child, out);
            }
        }
    }

    /// A store of two domains, three accounts, Maildir++ folders and files beside them.
    fn store(t: &TempDir) -> PathBuf {
        let src = t.path().join("src");
        mailbox(&src.join("a.org/alice/Maildir"), 3, 1);
        mailbox(&src.join("a.org/alice/Maildir/.Sent"), 2, 0);
        mailbox(&src.join("a.org/bob/Maildir"), 1, 2);
        mailbox(&src.join("b.org/carol/Maildir"), 4, 0);
        fs::write(src.join("a.org/alice/Maildir/dovecot-uidlist"), "3 V1 N5\n").unwrap();
        fs::write(src.join("a.org/alice/.forward"), "alice@elsewhere\n").unwrap();
        fs::write(src.join("a.org/aliases"), "postmaster: alice\n").unwrap();
        src
    }

    #[test]
    fn a_tree_with_no_maildir_is_nothing_to_capture_naming_the_path() {
        let t = TempDir::new("build-empty");
        fs::create_dir_all(t.path().join("a.org/alice/mail")).unwrap();
        fs::write(t.path().join("a.org/alice/notes"), "no mail here").unwrap();
        for on_demand in [true, false] {
            let plan = Plan {
                on_demand,
                ..Plan::new()
            };
            let e = build_with(t.path(), &plan).err().unwrap().to_string();
            assert!(e.starts_with("nothing to capture: "), "{e}");
            assert!(e.contains(&*t.path().to_string_lossy()), "{e}");
            assert!(
                e.contains("holds no Maildir (no directory with cur/ and new/)"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_selection_that_leaves_no_maildir_is_nothing_to_capture_and_says_why() {
        let t = TempDir::new("build-unselected");
        let src = store(&t);
        let mut plan = Plan::new();
        plan.selection.include("c.org/*").unwrap();
        let e = build_with(&src, &plan).err().unwrap().to_string();
        assert!(e.starts_with("nothing to capture: "), "{e}");
        assert!(
            e.ends_with("holds no Maildir that --include/--exclude select"),
            "{e}"
        );
    }

    #[test]
    fn unselected_accounts_are_left_out_of_the_view() {
        let t = TempDir::new("build-selected");
        let src = store(&t);
        let mut plan = Plan::new();
        plan.selection.include("a.org/*").unwrap();
        plan.selection.exclude("a.org/bob").unwrap();
        let c = build_with(&src, &plan).unwrap();
        assert!(c.selected);
        assert_eq!(c.totals.accounts, 1);
        assert_eq!(c.view.counts().accounts, 1);
        let s = c.view.skeleton();
        assert_eq!(listing(s, NodeIdx::ROOT), ["a.org"]);
        // What `a.org/*` matches but for the excluded account: the files beside the accounts too.
        assert_eq!(listing(s, find(s, "a.org").unwrap()), ["aliases", "alice"]);
        let (inbox, cur) = in_view(&c.view, "a.org/alice/Maildir/cur").unwrap();
        assert_eq!(inbox.children(cur).len(), 3);
    }

    #[test]
    fn at_mount_and_on_demand_show_the_same_tree() {
        let t = TempDir::new("build-same");
        let src = store(&t);
        let mut whole = Vec::new();
        tree(&at_mount(&src).view, "", &mut whole);
        let on_demand = build_with(&src, &Plan::new()).unwrap();
        let mut parts = Vec::new();
        tree(&on_demand.view, "", &mut parts);
        assert_eq!(whole, parts);
        // What the tree is: every account, its folders and the files beside them.
        let paths: Vec<&str> = whole.iter().map(|(p, ..)| p.as_str()).collect();
        for p in [
            "/a.org/aliases",
            "/a.org/alice/.forward",
            "/a.org/alice/Maildir/.Sent/cur",
            "/a.org/alice/Maildir/dovecot-uidlist",
            "/a.org/bob/Maildir/new",
            "/b.org/carol/Maildir/tmp",
        ] {
            assert!(paths.contains(&p), "{p} missing from {paths:?}");
        }
    }

    #[test]
    fn a_later_capture_keeps_the_longest_hold_and_the_bad_news() {
        let hold = |us: u64, messages: u64, locked: bool, stalled: bool| AccountHold {
            account: "a.org/alice/Maildir".to_owned(),
            lock_hold_us: us,
            pinning_us: us / 2,
            messages,
            locked,
            stalled,
            captures: 1,
        };
        let mut h = hold(100, 5, true, false);
        // Shorter: only the count and the bad news are taken from it.
        h.combine(hold(50, 7, false, false));
        assert_eq!((h.lock_hold_us, h.messages, h.captures), (100, 5, 2));
        assert!(!h.locked, "one capture without its locks is not hidden");
        // Longer, locked: its hold and messages, but still not locked throughout.
        h.combine(hold(300, 9, true, true));
        assert_eq!((h.lock_hold_us, h.pinning_us, h.messages), (300, 150, 9));
        assert_eq!(h.captures, 3);
        assert!(!h.locked && h.stalled);
    }

    #[test]
    fn later_holds_merge_into_the_holds_at_mount_by_account() {
        let hold = |account: &str, us: u64| AccountHold {
            account: account.to_owned(),
            lock_hold_us: us,
            locked: true,
            captures: 1,
            ..AccountHold::default()
        };
        let later = LaterHolds::default();
        later.record(2, hold("c", 10));
        later.record(0, hold("a", 70));
        later.record(0, hold("a", 20));
        let merged = later.merged(&[hold("a", 40), hold("b", 5)]);
        let got: Vec<(&str, u64, u64)> = merged
            .iter()
            .map(|h| (h.account.as_str(), h.lock_hold_us, h.captures))
            .collect();
        // Each account once, in order: the ones at mount first, then later ones by number.
        assert_eq!(got, [("a", 70, 3), ("b", 5, 1), ("c", 10, 1)]);
    }
}
