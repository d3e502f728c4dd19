//! The view that is served: the tree outside the accounts (the *skeleton*, frozen at mount),
//! and each account's own snapshot, captured under its locks when it is first needed and kept
//! in a *working set* bounded by the pin budget and by memory. When the working set is full,
//! the account least recently used (and not used for [`Limits::min_idle`]) leaves it: its
//! snapshot and pins are dropped and the kernel is told to forget its names; an account
//! needed again is captured again, at its new instant.
//!
//! Invariants:
//! - An account is frozen from its capture until it leaves the working set: while it is in
//!   it, every request in it is answered from one snapshot.
//! - A node id the view no longer holds fails with `ESTALE`, never with another file's bytes;
//!   a directory offset names the capture it was made in (see `Snapshot::epoch`).
//! - Captures run on their own threads ([`View::with_account`] queues the request's answer),
//!   so a request waits only for its own account, however long another's locks take.
//!
//! No FUSE here: the adapter (`serve/fs.rs`) asks, and this module is tested without a mount.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::{Mutex, RwLock};

use crate::capture::pin::PinBudget;
use crate::error::escape_path;
use crate::image::snapshot::{Ino, NodeIdx, Snapshot};
use crate::sys::Errno;

/// An account's number: its position in discovery order.
pub type AccountId = u32;

/// A node of the view: the snapshot that holds it (kept alive by this value) and its place.
#[derive(Debug, Clone)]
pub struct At {
    /// The snapshot holding the node, kept alive (through an eviction) as long as this value.
    pub snap: Arc<Snapshot>,
    /// The node's position in `snap`.
    pub idx: NodeIdx,
}

/// One account captured on its own, as [`Capturer::capture`] makes it.
#[derive(Debug)]
pub struct AccountImage {
    /// The account's own snapshot, rooted at its root directory.
    pub snapshot: Snapshot,
    /// Why it was captured without its locks, if it was.
    pub unlocked: Option<String>,
    /// From the first lock taken to the last released; zero when captured without locks.
    pub lock_hold: Duration,
    /// How many of its files could not be opened or listed at capture.
    pub unreadable: usize,
}

/// Captures accounts for the view: `image/build.rs` gives the real one (discover, lock, capture,
/// freeze), tests their own.
pub trait Capturer: Send + Sync {
    /// Captures account `id` at `root` as its capture number `epoch`. Before it takes any
    /// lock or pin it calls `make_room` with about how many pins it will take, so that room
    /// is made for them first. An error makes the account fail with `EIO` in the view, and is
    /// logged.
    fn capture(
        &self,
        id: AccountId,
        root: &Path,
        epoch: u32,
        make_room: &dyn Fn(usize),
    ) -> crate::Result<AccountImage>;
}

/// The bounds of the working set.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Nodes (entries) of all captured accounts together; the pins are bounded by the budget.
    pub entries: usize,
    /// An account used more recently than this is never evicted: a directory being listed,
    /// or a file being read, is not cut in two.
    pub min_idle: Duration,
    /// Whether the next account (in the order found) is captured ahead of a reader: when an
    /// account is first needed, and when a reader first comes to one captured ahead, so that
    /// a backup walking account by account finds the next one ready (the capture runs on
    /// another thread while the reader reads this one).
    pub ahead: bool,
}

/// What the kernel must forget of an account that left the working set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evicted {
    /// The account directory's node id, and its parent's, and its name there.
    pub dir: Ino,
    /// The node id of the directory holding it.
    pub parent: Ino,
    /// Its name in that directory.
    pub name: Vec<u8>,
}

/// What is told of every eviction.
pub type EvictHook = Box<dyn Fn(Evicted) + Send + Sync>;

/// What a request waiting for an account is given: its snapshot, or the errno to fail with.
pub type Waiter = Box<dyn FnOnce(Result<Arc<Snapshot>, Errno>) + Send>;

enum State {
    /// Not in the working set (never captured, or evicted).
    Idle,
    /// Being captured; these requests wait for it.
    Capturing(Vec<Waiter>),
    Ready(Arc<Snapshot>),
    /// Its capture failed: requests in it fail with this errno.
    Failed(Errno),
}

struct Slot {
    /// The account's root mailbox, relative to SOURCE.
    root: PathBuf,
    /// Its directory in the skeleton.
    node: NodeIdx,
    state: Mutex<State>,
    /// When it was last used, in ms since the view was made.
    last_used: AtomicU64,
    /// How many times it has been captured (the epoch of its current capture).
    captures: AtomicU32,
    /// How many pins its last capture held.
    pins: AtomicUsize,
    /// Captured ahead of a reader and not used since.
    ahead: std::sync::atomic::AtomicBool,
    /// How many of its captures succeeded (the counts say captured, and captured again, by
    /// this; `captures` also counts those running and failed).
    done: AtomicU32,
}

/// Counters for the summary, `status` and the umount line (their JSON keys are the report's:
/// see `admin/report.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Accounts the working set manages: every one found, captured or not (0 with `--capture
    /// at-mount`; JSON `view_accounts`).
    #[serde(rename = "view_accounts")]
    pub accounts: u64,
    /// Accounts captured at least once, and more than once (at different instants).
    #[serde(rename = "accounts_captured")]
    pub captured: u64,
    /// Accounts captured more than once (JSON `accounts_captured_again`).
    #[serde(rename = "accounts_captured_again")]
    pub recaptured: u64,
    /// Accounts never captured.
    #[serde(rename = "accounts_never_captured")]
    pub never: u64,
    /// Times an account left the working set.
    pub evictions: u64,
    /// Accounts in the working set now.
    #[serde(rename = "accounts_in_working_set")]
    pub held: u64,
    /// Accounts whose capture failed (unreadable in the view).
    #[serde(rename = "accounts_failed")]
    pub failed: u64,
    /// Captures made without the account's locks.
    #[serde(rename = "captures_without_lock")]
    pub unlocked: u64,
    /// Files that could not be captured (listed, opened), over all captures.
    #[serde(rename = "files_unreadable")]
    pub unreadable: u64,
}

/// The served view.
pub struct View {
    skeleton: Arc<Snapshot>,
    slots: Vec<Slot>,
    /// The account of each node id of a captured account; [`SHARED`] for a node id in more
    /// than one (a message hard-linked into several accounts, as an LMTP delivery to several
    /// recipients makes). Protected by this lock.
    index: RwLock<HashMap<Ino, AccountId>>,
    /// The captured accounts, most recently used first. Protected by this mutex.
    lru: Mutex<LruCache<AccountId, ()>>,
    /// Entries of all captured accounts, and the bytes of their files.
    entries: AtomicUsize,
    bytes: AtomicU64,
    capturer: Arc<dyn Capturer>,
    budget: Arc<PinBudget>,
    limits: Limits,
    started: Instant,
    /// Captures waiting for a free capture thread, and how many threads run. Protected by
    /// this mutex.
    queue: Mutex<(VecDeque<AccountId>, usize)>,
    /// Told of every eviction (the FUSE adapter's notifier), set once mounted.
    on_evict: RwLock<Option<EvictHook>>,
    evictions: AtomicU64,
    unlocked: AtomicU64,
    unreadable: AtomicU64,
}

/// See `View::index`.
const SHARED: AccountId = AccountId::MAX;

/// Captures that may run at once: enough that a few accounts waiting for their locks do not
/// hold up the others, few enough not to crowd the disk.
const CAPTURE_THREADS: usize = 4;

impl View {
    /// A view of `skeleton`, whose deferred directories are the accounts at `roots` (by
    /// account number); `ready` are those captured already (at mount), `failed` those whose
    /// capture failed there (they fail with `EIO`).
    pub fn new(
        skeleton: Snapshot,
        roots: Vec<PathBuf>,
        ready: Vec<(AccountId, AccountImage)>,
        failed: Vec<AccountId>,
        capturer: Arc<dyn Capturer>,
        budget: Arc<PinBudget>,
        limits: Limits,
    ) -> Arc<View> {
        let nodes = skeleton.deferred_dirs(roots.len());
        let slots = roots
            .into_iter()
            .zip(nodes)
            .map(|(root, node)| Slot {
                root,
                node,
                state: Mutex::new(State::Idle),
                last_used: AtomicU64::new(0),
                captures: AtomicU32::new(0),
                pins: AtomicUsize::new(0),
                ahead: std::sync::atomic::AtomicBool::new(false),
                done: AtomicU32::new(0),
            })
            .collect();
        let view = Arc::new(View {
            skeleton: Arc::new(skeleton),
            slots,
            index: RwLock::new(HashMap::new()),
            lru: Mutex::new(LruCache::unbounded()),
            entries: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            capturer,
            budget,
            limits,
            started: Instant::now(),
            queue: Mutex::new((VecDeque::new(), 0)),
            on_evict: RwLock::new(None),
            evictions: AtomicU64::new(0),
            unlocked: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
        });
        for (id, image) in ready {
            view.slots[id as usize].captures.store(1, Ordering::Relaxed);
            view.install(id, Ok(image));
        }
        for id in failed {
            if let Some(slot) = view.slots.get(id as usize) {
                slot.captures.store(1, Ordering::Relaxed);
                *slot.state.lock() = State::Failed(Errno::EIO);
            }
        }
        view
    }

    /// A view of one snapshot holding the whole tree (`--capture at-mount`, and tests).
    pub fn whole(snapshot: Snapshot) -> Arc<View> {
        struct Nothing;
        impl Capturer for Nothing {
            fn capture(
                &self,
                _: AccountId,
                root: &Path,
                _: u32,
                _: &dyn Fn(usize),
            ) -> crate::Result<AccountImage> {
                Err(crate::Error::msg("cannot capture", root, "not an account"))
            }
        }
        let limits = Limits {
            entries: usize::MAX,
            min_idle: Duration::MAX,
            ahead: false,
        };
        View::new(
            snapshot,
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Arc::new(Nothing),
            PinBudget::fixed(0),
            limits,
        )
    }

    /// Sets what is told of evictions (the kernel notifier, once mounted).
    pub fn on_evict(&self, f: EvictHook) {
        *self.on_evict.write() = Some(f);
    }

    /// The tree outside the accounts, frozen at mount (with `--capture at-mount`, the whole
    /// tree).
    pub fn skeleton(&self) -> &Arc<Snapshot> {
        &self.skeleton
    }

    /// The node a node id names now: in the skeleton (which holds the account directories
    /// themselves), or in a captured account. `ESTALE` for any other.
    pub fn node(&self, ino: Ino) -> Result<At, Errno> {
        if let Some(idx) = self.skeleton.resolve(ino) {
            return Ok(At {
                snap: Arc::clone(&self.skeleton),
                idx,
            });
        }
        let owner = self.index.read().get(&ino).copied();
        let mut candidates: Vec<AccountId> = match owner {
            Some(SHARED) => self.lru.lock().iter().map(|(a, _)| *a).collect(),
            Some(a) => vec![a],
            None => Vec::new(),
        };
        for a in candidates.drain(..) {
            if let Some(snap) = self.ready(a) {
                if let Some(idx) = snap.resolve(ino) {
                    self.touch(a);
                    return Ok(At { snap, idx });
                }
            }
        }
        Err(Errno::ESTALE)
    }

    /// The node id of a node's parent in the view: an account's root's parent is in the
    /// skeleton.
    pub fn parent_ino(&self, at: &At) -> Ino {
        if at.idx == NodeIdx::ROOT && !Arc::ptr_eq(&at.snap, &self.skeleton) {
            let dir = self.skeleton.resolve(at.snap.ino_of(NodeIdx::ROOT));
            if let Some(dir) = dir {
                let parent = self.skeleton.node(dir).parent;
                return self.skeleton.ino_of(parent);
            }
        }
        at.snap.ino_of(at.snap.node(at.idx).parent)
    }

    /// The node whose attributes `at` is shown with: an account's directory, once the account
    /// is captured, is shown as its capture saw it (after its locks were released: taking and
    /// releasing a lock changes a mailbox directory's mtime), else as the skeleton saw it.
    pub fn shown(&self, at: At) -> At {
        match self.deferred(&at).and_then(|id| self.ready(id)) {
            Some(snap) => At {
                snap,
                idx: NodeIdx::ROOT,
            },
            None => at,
        }
    }

    /// The account whose capture holds the contents of this directory, if that is deferred.
    pub fn deferred(&self, at: &At) -> Option<AccountId> {
        if Arc::ptr_eq(&at.snap, &self.skeleton) {
            self.skeleton.deferred(at.idx)
        } else {
            None
        }
    }

    /// Runs `then` with account `id`'s snapshot: at once if it is captured, else once a
    /// capture thread has captured it (requests for one account share one capture).
    pub fn with_account(self: &Arc<Self>, id: AccountId, then: Waiter) {
        let Some(slot) = self.slots.get(id as usize) else {
            return then(Err(Errno::EIO));
        };
        let mut state = slot.state.lock();
        match &mut *state {
            State::Ready(snap) => {
                let snap = Arc::clone(snap);
                drop(state);
                self.touch(id);
                if slot.ahead.swap(false, Ordering::Relaxed) {
                    // A reader has come to an account captured ahead of it: keep one ahead.
                    self.capture_ahead(id);
                }
                then(Ok(snap));
            }
            State::Failed(e) => {
                let e = *e;
                drop(state);
                then(Err(e));
            }
            State::Capturing(waiters) => {
                waiters.push(then);
                drop(state);
                if slot.ahead.swap(false, Ordering::Relaxed) {
                    self.capture_ahead(id);
                }
            }
            State::Idle => {
                *state = State::Capturing(vec![then]);
                drop(state);
                self.start(id);
                self.capture_ahead(id);
            }
        }
    }

    /// Starts capturing the account after `id` (in the order found), if it is not in the
    /// working set and the budget has pins left (see [`Limits::ahead`]).
    fn capture_ahead(self: &Arc<Self>, id: AccountId) {
        if !self.limits.ahead || self.budget.left() == 0 {
            return;
        }
        let next = id + 1;
        let Some(slot) = self.slots.get(next as usize) else {
            return;
        };
        let mut state = slot.state.lock();
        if matches!(*state, State::Idle) {
            *state = State::Capturing(Vec::new());
            slot.ahead.store(true, Ordering::Relaxed);
            drop(state);
            self.start(next);
        }
    }

    /// [`View::with_account`], waiting here for the answer (tests, and callers off the FUSE
    /// threads).
    pub fn account(self: &Arc<Self>, id: AccountId) -> Result<Arc<Snapshot>, Errno> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.with_account(
            id,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(Err(Errno::EIO))
    }

    /// The counters now.
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            accounts: self.slots.len() as u64,
            evictions: self.evictions.load(Ordering::Relaxed),
            unlocked: self.unlocked.load(Ordering::Relaxed),
            unreadable: self.unreadable.load(Ordering::Relaxed),
            ..Counts::default()
        };
        for s in &self.slots {
            let failed = matches!(&*s.state.lock(), State::Failed(_));
            match s.done.load(Ordering::Relaxed) {
                0 if failed => c.failed += 1,
                0 => c.never += 1,
                1 => c.captured += 1,
                _ => {
                    c.captured += 1;
                    c.recaptured += 1;
                }
            }
            if matches!(&*s.state.lock(), State::Ready(_)) {
                c.held += 1;
            }
        }
        c
    }

    /// Entries of the skeleton and of every captured account now.
    pub fn entries(&self) -> usize {
        self.skeleton.len() + self.entries.load(Ordering::Relaxed)
    }

    /// Bytes of the files of the skeleton and of every captured account now.
    pub fn bytes(&self) -> u64 {
        self.skeleton.totals.bytes + self.bytes.load(Ordering::Relaxed)
    }

    /// Whether account `id` is captured and every file of it has been read to its end (looked
    /// at in place: a reference taken here could be the last, and close its pins under the
    /// caller's lock).
    fn read_through(&self, id: AccountId) -> bool {
        self.slots
            .get(id as usize)
            .is_some_and(|s| matches!(&*s.state.lock(), State::Ready(snap) if snap.all_read()))
    }

    fn ready(&self, id: AccountId) -> Option<Arc<Snapshot>> {
        match &*self.slots.get(id as usize)?.state.lock() {
            State::Ready(s) => Some(Arc::clone(s)),
            _ => None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn touch(&self, id: AccountId) {
        let slot = &self.slots[id as usize];
        let now = self.now_ms();
        // The LRU order moves at most ten times a second per account: a file read page by
        // page must not take the working set's mutex for each page.
        if now.saturating_sub(slot.last_used.swap(now, Ordering::Relaxed)) >= 100 {
            self.lru.lock().promote(&id);
        }
    }

    /// Queues account `id` for a capture thread, starting one if fewer than
    /// [`CAPTURE_THREADS`] run.
    fn start(self: &Arc<Self>, id: AccountId) {
        let mut q = self.queue.lock();
        q.0.push_back(id);
        if q.1 >= CAPTURE_THREADS {
            return;
        }
        q.1 += 1;
        drop(q);
        let view = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("capture".to_owned())
            .spawn(move || view.capture_queued());
        if let Err(e) = spawned {
            log::error!("cannot start a capture thread: {e}");
            {
                let mut q = self.queue.lock();
                q.1 -= 1;
                q.0.retain(|&queued| queued != id);
            }
            self.install(id, Err(Errno::EAGAIN));
        }
    }

    /// A capture thread: captures queued accounts until none is left.
    fn capture_queued(self: Arc<Self>) {
        loop {
            let id = {
                let mut q = self.queue.lock();
                match q.0.pop_front() {
                    Some(id) => id,
                    None => {
                        q.1 -= 1;
                        return;
                    }
                }
            };
            let slot = &self.slots[id as usize];
            let epoch = slot.captures.fetch_add(1, Ordering::Relaxed) + 1;
            let room = |need: usize| self.make_room(id, need);
            // A panic in a capture must still answer the requests waiting for it.
            let image = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.capturer.capture(id, &slot.root, epoch, &room)
            }));
            let image = match image {
                Ok(Ok(image)) => Ok(image),
                Ok(Err(e)) => {
                    log::warn!("{e}; the account fails with EIO in the view");
                    Err(Errno::EIO)
                }
                Err(_) => {
                    log::error!(
                        "the capture of {} failed (panic); the account fails with EIO in the view",
                        escape_path(&slot.root)
                    );
                    Err(Errno::EIO)
                }
            };
            self.install(id, image);
        }
    }

    /// Puts a finished capture in the working set (or the failure in the slot) and answers
    /// the requests that waited for it.
    fn install(&self, id: AccountId, image: Result<AccountImage, Errno>) {
        let slot = &self.slots[id as usize];
        let result = image.map(|image| {
            if image.unlocked.is_some() {
                self.unlocked.fetch_add(1, Ordering::Relaxed);
            }
            self.unreadable
                .fetch_add(image.unreadable as u64, Ordering::Relaxed);
            let snap = Arc::new(image.snapshot);
            {
                let mut index = self.index.write();
                for ino in snap.inos() {
                    index
                        .entry(ino)
                        .and_modify(|a| {
                            if *a != id {
                                *a = SHARED
                            }
                        })
                        .or_insert(id);
                }
            }
            self.entries.fetch_add(snap.len(), Ordering::Relaxed);
            self.bytes.fetch_add(snap.totals.bytes, Ordering::Relaxed);
            slot.pins.store(snap.totals.pinned, Ordering::Relaxed);
            slot.last_used.store(self.now_ms(), Ordering::Relaxed);
            slot.done.fetch_add(1, Ordering::Relaxed);
            self.lru.lock().put(id, ());
            snap
        });
        let waiters = {
            let mut state = slot.state.lock();
            let next = match &result {
                Ok(snap) => State::Ready(Arc::clone(snap)),
                // Captured ahead and failed, with nobody waiting: not this account's verdict
                // yet; a reader's own request captures it again and gets the error itself.
                Err(_)
                    if slot.ahead.swap(false, Ordering::Relaxed)
                        && matches!(&*state, State::Capturing(w) if w.is_empty()) =>
                {
                    let _ = slot
                        .captures
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                    State::Idle
                }
                Err(e) => State::Failed(*e),
            };
            match std::mem::replace(&mut *state, next) {
                State::Capturing(w) => w,
                _ => Vec::new(),
            }
        };
        // The last waiter gets this thread's own reference: none is left here once they are
        // answered, so an eviction right after gives the pins back at once.
        let mut waiters = waiters.into_iter().peekable();
        while let Some(w) = waiters.next() {
            if waiters.peek().is_none() {
                w(result);
                return;
            }
            w(result.clone());
        }
    }

    /// Evicts accounts, least recently used first, until `need` more pins fit in the budget
    /// and the entries are within their limit, sparing `for_id` and every account used in the
    /// last `min_idle`. What cannot be made room for is captured with the pins left (the
    /// rest is served by re-resolution).
    fn make_room(&self, for_id: AccountId, need: usize) {
        loop {
            let short_of_pins = self.budget.left() < need;
            let entries = self.entries.load(Ordering::Relaxed) + need;
            if !short_of_pins && entries <= self.limits.entries {
                return;
            }
            let idle_ms = self.limits.min_idle.as_millis() as u64;
            let now = self.now_ms();
            // Least recently used first; an account whose files have all been read to their
            // end may go at once (a backup reading account by account is done with it, and
            // is already in the next one), any other only once idle.
            let victim = {
                let lru = self.lru.lock();
                let candidates = || lru.iter().rev().map(|(a, _)| *a).filter(|&a| a != for_id);
                let read = candidates().find(|&a| self.read_through(a));
                read.or_else(|| {
                    candidates().find(|&a| {
                        let last = self.slots[a as usize].last_used.load(Ordering::Relaxed);
                        now.saturating_sub(last) >= idle_ms
                    })
                })
            };
            match victim {
                Some(a) => self.evict(a),
                None => return,
            }
        }
    }

    /// Takes account `id` out of the working set: its snapshot goes (and with it its pins,
    /// once requests still using it are done), its node ids leave the index, and the kernel
    /// is told to forget its names.
    fn evict(&self, id: AccountId) {
        let slot = &self.slots[id as usize];
        let snap = {
            let mut state = slot.state.lock();
            match std::mem::replace(&mut *state, State::Idle) {
                State::Ready(s) => s,
                other => {
                    *state = other;
                    return;
                }
            }
        };
        self.lru.lock().pop(&id);
        {
            let mut index = self.index.write();
            for ino in snap.inos() {
                if index.get(&ino) == Some(&id) {
                    index.remove(&ino);
                }
            }
        }
        self.entries.fetch_sub(snap.len(), Ordering::Relaxed);
        self.bytes.fetch_sub(snap.totals.bytes, Ordering::Relaxed);
        self.evictions.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "account {} left the working set ({} entries, {} pins); captured again if needed",
            escape_path(&slot.root),
            snap.len(),
            slot.pins.load(Ordering::Relaxed)
        );
        drop(snap);
        let parent = self.skeleton.node(slot.node).parent;
        let evicted = Evicted {
            dir: self.skeleton.ino_of(slot.node),
            parent: self.skeleton.ino_of(parent),
            name: self.skeleton.name(slot.node).to_vec(),
        };
        if let Some(f) = &*self.on_evict.read() {
            f(evicted);
        }
    }
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("accounts", &self.slots.len())
            .field("entries", &self.entries())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::Plan;
    use crate::image::build::tests::{build_with, find, in_view, mailbox};
    use crate::image::snapshot::{Attr, Builder, NewContent, NewKind, NewNode, Stamp, Totals};
    use crate::testutil::TempDir;
    use std::io::Write;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn attr(ino: u64, size: u64, mtime: i64) -> Attr {
        let t = Stamp {
            sec: mtime,
            nsec: 0,
        };
        Attr::new(Ino(ino), size, t, t, 0o644, 0, 0)
    }

    /// A store of accounts `a0`, `a1`, ...: account `i` is a directory (node id 100 + i) of
    /// `files` files, each pinned (as far as the budget goes) from a real file on disk.
    struct Fake {
        dir: crate::testutil::TempDir,
        files: usize,
        budget: Arc<PinBudget>,
        /// Node id of file `f` of account `i` in capture `epoch`: `ino(i, f, epoch)`.
        ino: fn(AccountId, usize, u32) -> u64,
        fail: Vec<AccountId>,
        captures: Mutex<Vec<(AccountId, u32)>>,
    }

    impl Capturer for Fake {
        fn capture(
            &self,
            id: AccountId,
            root: &Path,
            epoch: u32,
            make_room: &dyn Fn(usize),
        ) -> crate::Result<AccountImage> {
            make_room(self.files);
            self.captures.lock().push((id, epoch));
            if self.fail.contains(&id) {
                return Err(crate::Error::msg("cannot capture", root, "test"));
            }
            let dir = std::fs::File::open(self.dir.path()).unwrap();
            let mut b = Builder::for_account(
                root.to_path_buf(),
                Ino(100 + u64::from(id)),
                attr(100 + u64::from(id), 0, 0),
                0,
                self.files,
                id,
                epoch,
            );
            let children = (0..self.files)
                .map(|f| NewNode {
                    name: format!("m{f}").into_bytes(),
                    kind: NewKind::File(NewContent::Message),
                    attr: attr((self.ino)(id, f, epoch), 10, 1000),
                    pin: self
                        .budget
                        .pin(dir.as_fd(), "file".as_ref(), crate::sys::DT_REG),
                })
                .collect();
            b.add_children(NodeIdx::ROOT, children);
            Ok(AccountImage {
                snapshot: b.finish(Totals::default()),
                unlocked: None,
                lock_hold: Duration::ZERO,
                unreadable: 0,
            })
        }
    }

    /// A view of `accounts` accounts of `files` files each, in a budget of `pins` pins.
    fn view(
        accounts: u32,
        files: usize,
        pins: usize,
        min_idle: Duration,
        ino: fn(AccountId, usize, u32) -> u64,
    ) -> (Arc<View>, Arc<Fake>) {
        view_ahead(accounts, files, pins, min_idle, ino, false)
    }

    fn view_ahead(
        accounts: u32,
        files: usize,
        pins: usize,
        min_idle: Duration,
        ino: fn(AccountId, usize, u32) -> u64,
        ahead: bool,
    ) -> (Arc<View>, Arc<Fake>) {
        let dir = crate::testutil::TempDir::new("view");
        std::fs::write(dir.path().join("file"), b"0123456789").unwrap();
        let budget = PinBudget::fixed(pins);
        let fake = Arc::new(Fake {
            dir,
            files,
            budget: Arc::clone(&budget),
            ino,
            fail: vec![accounts - 1],
            captures: Mutex::new(Vec::new()),
        });
        let mut b = Builder::new(attr(2, 0, 0), 0, 8);
        let dirs = (0..accounts)
            .map(|i| NewNode {
                name: format!("a{i}").into_bytes(),
                kind: NewKind::Dir,
                attr: attr(100 + u64::from(i), 0, 0),
                pin: None,
            })
            .collect();
        let placed = b.add_children(NodeIdx::ROOT, dirs);
        for (i, idx) in placed.into_iter().enumerate() {
            b.add_children(idx, Vec::new());
            b.defer(idx, i as u32);
        }
        let roots = (0..accounts)
            .map(|i| PathBuf::from(format!("a{i}")))
            .collect();
        let limits = Limits {
            entries: usize::MAX,
            min_idle,
            ahead,
        };
        let capturer: Arc<dyn Capturer> = Arc::clone(&fake) as Arc<dyn Capturer>;
        let v = View::new(
            b.finish(Totals::default()),
            roots,
            Vec::new(),
            Vec::new(),
            capturer,
            budget,
            limits,
        );
        (v, fake)
    }

    /// Distinct node ids per account, the same in every capture.
    fn stable(id: AccountId, f: usize, _epoch: u32) -> u64 {
        1000 * (u64::from(id) + 1) + f as u64
    }

    /// Reads every file of an account to its end, as a backup does.
    fn read_all(snap: &Snapshot) {
        for c in snap.children(NodeIdx::ROOT) {
            snap.mark_read(NodeIdx(c));
        }
    }

    /// Two accounts, `a/Maildir` and `b/Maildir`, of `n` messages each in `cur/`.
    fn two_accounts(t: &TempDir, n: usize) -> [Vec<String>; 2] {
        ["a", "b"].map(|u| mailbox(&t.path().join(u).join("Maildir"), n, 0)[0].clone())
    }

    /// The view of `src` with a working set of 5 pins: an account of 40 messages fills it,
    /// so the first is captured at mount and the second is left for when it is first needed.
    fn small_working_set(src: &Path) -> crate::image::build::Captured {
        let plan = Plan {
            working_set: Some(5),
            ..Plan::new()
        };
        build_with(src, &plan).unwrap()
    }

    /// The account whose directory is at `path` in the skeleton.
    fn account_at(v: &View, path: &str) -> (NodeIdx, AccountId) {
        let dir = find(v.skeleton(), path).unwrap();
        (dir, v.skeleton().deferred(dir).unwrap())
    }

    #[test]
    fn a_name_looked_up_and_its_node_id_name_the_same_node() {
        let t = TempDir::new("view-lookup");
        let [a, b] = two_accounts(&t, 3);
        let c = build_with(t.path(), &Plan::new()).unwrap();
        let v = &c.view;
        for path in a
            .iter()
            .map(|m| format!("a/Maildir/cur/{m}"))
            .chain(b.iter().map(|m| format!("b/Maildir/cur/{m}")))
        {
            let (snap, idx) = in_view(v, &path).unwrap();
            let ino = snap.ino_of(idx);
            assert_eq!(
                ino.0,
                std::fs::metadata(t.path().join(&path)).unwrap().ino()
            );
            let at = v.node(ino).unwrap();
            assert!(Arc::ptr_eq(&at.snap, &snap), "{path}");
            assert_eq!(at.idx, idx, "{path}");
        }
        // An account's directory is the skeleton's; its root's parent is the skeleton's too.
        let maildir = std::fs::metadata(t.path().join("a/Maildir")).unwrap().ino();
        let dir = v.node(Ino(maildir)).unwrap();
        assert!(Arc::ptr_eq(&dir.snap, v.skeleton()));
        let (account, root) = in_view(v, "a/Maildir").unwrap();
        assert_eq!(account.ino_of(root), Ino(maildir));
        let root = At {
            snap: account,
            idx: root,
        };
        let a_dir = std::fs::metadata(t.path().join("a")).unwrap().ino();
        assert_eq!(v.parent_ino(&root), Ino(a_dir));
        assert_eq!(v.node(Ino(u64::MAX / 4)).unwrap_err(), Errno::ESTALE);
    }

    #[test]
    fn a_node_keeps_its_captured_attributes_after_the_source_file_changes() {
        let t = TempDir::new("view-attrs");
        let [a, _] = two_accounts(&t, 2);
        let path = t.path().join("a/Maildir/cur").join(&a[1]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let before = std::fs::metadata(&path).unwrap();
        let c = build_with(t.path(), &Plan::new()).unwrap();
        // Changed in SOURCE after the capture: longer, another mode, another mtime.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"more")
            .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let past = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let (snap, idx) = in_view(&c.view, &format!("a/Maildir/cur/{}", a[1])).unwrap();
        let at = c.view.shown(At { snap, idx });
        let attr = at.snap.node(at.idx).attr;
        assert_eq!(attr.size, before.len());
        assert_eq!(u32::from(attr.perm), before.mode() & 0o7777);
        assert_eq!(
            (attr.mtime().sec, i64::from(attr.mtime().nsec)),
            (before.mtime(), before.mtime_nsec())
        );
        assert_ne!(attr.size, std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn an_account_directory_is_shown_as_its_capture_saw_it_once_captured() {
        let t = TempDir::new("view-shown");
        two_accounts(&t, 40);
        let c = small_working_set(t.path());
        let v = &c.view;
        let (dir, id) = account_at(v, "b/Maildir");
        let skeleton = At {
            snap: Arc::clone(v.skeleton()),
            idx: dir,
        };
        // Not captured yet: the skeleton's own node.
        let shown = v.shown(skeleton.clone());
        assert!(Arc::ptr_eq(&shown.snap, v.skeleton()) && shown.idx == dir);
        let account = v.account(id).unwrap();
        let shown = v.shown(skeleton);
        assert!(Arc::ptr_eq(&shown.snap, &account));
        assert_eq!(shown.idx, NodeIdx::ROOT);
        assert_eq!(account.ino_of(NodeIdx::ROOT), v.skeleton().ino_of(dir));
    }

    #[test]
    fn an_account_beyond_the_working_set_is_captured_when_first_needed() {
        let t = TempDir::new("view-on-demand");
        let [_, b] = two_accounts(&t, 40);
        let c = small_working_set(t.path());
        assert_eq!((c.accounts.len(), c.on_demand), (1, 1));
        let v = &c.view;
        let n = v.counts();
        assert_eq!((n.accounts, n.captured, n.never, n.held), (2, 1, 1, 1));
        let (_, id) = account_at(v, "b/Maildir");
        let first = b[0].as_bytes();
        assert!(
            v.node(Ino(std::fs::metadata(
                t.path().join("b/Maildir/cur").join(&b[0])
            )
            .unwrap()
            .ino()))
                .is_err()
        );
        let snap = v.account(id).unwrap();
        assert_eq!(snap.epoch, 1);
        // Every message is listed, though the working set could pin few of them.
        let cur = snap.lookup(NodeIdx::ROOT, b"cur").unwrap();
        assert_eq!(snap.children(cur).len(), 40);
        assert!(snap.lookup(cur, first).is_some());
        let n = v.counts();
        assert_eq!((n.captured, n.never, n.failed), (2, 0, 0));
        let holds = c.later.merged(&[]);
        assert_eq!(holds.len(), 1);
        let h = &holds[0];
        assert_eq!(
            (h.account.as_str(), h.messages, h.captures),
            ("b/Maildir", 40, 1)
        );
        assert!(h.locked);
    }

    #[test]
    fn an_evicted_account_is_told_and_captured_again_at_a_new_epoch() {
        let t = TempDir::new("view-evicted");
        let [a, _] = two_accounts(&t, 40);
        let c = small_working_set(t.path());
        let v = &c.view;
        let evicted = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&evicted);
        v.on_evict(Box::new(move |e| seen.lock().push(e)));
        let (a_dir, a_id) = account_at(v, "a/Maildir");
        let (_, b_id) = account_at(v, "b/Maildir");
        // Account a, captured at mount, is read through: the first to go when b needs room.
        let snap = v.account(a_id).unwrap();
        for i in 0..snap.len() as u32 {
            snap.mark_read(NodeIdx(i));
        }
        let message = snap.ino_of(
            snap.lookup(snap.lookup(NodeIdx::ROOT, b"cur").unwrap(), a[0].as_bytes())
                .unwrap(),
        );
        drop(snap);
        v.account(b_id).unwrap();
        let ino = |p: &str| Ino(std::fs::metadata(t.path().join(p)).unwrap().ino());
        assert_eq!(
            evicted.lock().first(),
            Some(&Evicted {
                dir: v.skeleton().ino_of(a_dir),
                parent: ino("a"),
                name: b"Maildir".to_vec(),
            })
        );
        assert_eq!(v.skeleton().ino_of(a_dir), ino("a/Maildir"));
        assert_eq!(v.node(message).unwrap_err(), Errno::ESTALE);
        // Needed again: captured again, at a new instant, and its files served again.
        let again = v.account(a_id).unwrap();
        assert_eq!(again.epoch, 2);
        assert!(Arc::ptr_eq(&v.node(message).unwrap().snap, &again));
        let n = v.counts();
        assert_eq!((n.captured, n.recaptured), (2, 1));
        assert!(n.evictions >= 1);
    }

    #[test]
    fn the_least_recently_used_account_leaves_first() {
        let (v, _) = view(5, 2, 4, Duration::ZERO, stable);
        let evicted = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&evicted);
        v.on_evict(Box::new(move |e| seen.lock().push(e.dir)));
        // Two accounts fill the budget; each one more sends the oldest out.
        for id in 0..4 {
            v.account(id).unwrap();
        }
        assert_eq!(*evicted.lock(), [Ino(100), Ino(101)]);
        assert!(v.ready(0).is_none() && v.ready(1).is_none());
        assert!(v.ready(2).is_some() && v.ready(3).is_some());
        let n = v.counts();
        assert_eq!((n.captured, n.evictions, n.held), (4, 2, 2));
    }

    #[test]
    fn an_account_read_to_its_end_leaves_before_one_used_less_recently() {
        let (v, _) = view(4, 2, 4, Duration::ZERO, stable);
        v.account(0).unwrap();
        let a1 = v.account(1).unwrap();
        read_all(&a1);
        drop(a1);
        v.account(2).unwrap();
        assert!(
            v.ready(0).is_some(),
            "the least recently used, not read through, stays"
        );
        assert!(v.ready(1).is_none());
        assert_eq!(v.counts().evictions, 1);
    }

    #[test]
    fn a_failed_capture_is_not_tried_again() {
        let (v, fake) = view(2, 1, 10, Duration::ZERO, stable);
        // The fake fails the last account.
        assert_eq!(v.account(1).unwrap_err(), Errno::EIO);
        assert_eq!(v.account(1).unwrap_err(), Errno::EIO);
        assert_eq!(*fake.captures.lock(), [(1, 1)]);
        let n = v.counts();
        assert_eq!((n.failed, n.captured, n.never), (1, 0, 1));
    }

    #[test]
    fn accounts_are_captured_when_first_needed_and_evicted_when_read() {
        let (v, fake) = view(4, 6, 10, Duration::from_secs(3600), stable);
        let c = v.counts();
        assert_eq!((c.accounts, c.captured, c.never), (4, 0, 4));
        // The account directory is the skeleton's; its files are not known yet.
        let dir = v.node(Ino(100)).unwrap();
        assert_eq!(v.deferred(&dir), Some(0));
        assert_eq!(v.node(Ino(1000)).unwrap_err(), Errno::ESTALE);
        let a0 = v.account(0).unwrap();
        assert_eq!(a0.epoch, 1);
        assert_eq!(a0.totals.pinned, 6);
        let f = v.node(Ino(1000)).unwrap();
        assert!(Arc::ptr_eq(&f.snap, &a0));
        // Account 0 is recent and not read through: account 1 gets what pins are left, and
        // nothing is evicted.
        let a1 = v.account(1).unwrap();
        assert_eq!(a1.totals.pinned, 4);
        assert_eq!(v.counts().evictions, 0);
        drop(a1);
        // Once account 0 has been read to the end, it is the one to leave.
        read_all(&a0);
        drop((a0, f));
        let evicted = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&evicted);
        v.on_evict(Box::new(move |e| seen.lock().push(e)));
        let a2 = v.account(2).unwrap();
        assert_eq!(a2.totals.pinned, 6, "account 0's pins were given back");
        assert_eq!(
            *evicted.lock(),
            [Evicted {
                dir: Ino(100),
                parent: Ino::ROOT,
                name: b"a0".to_vec()
            }]
        );
        assert_eq!(v.node(Ino(1000)).unwrap_err(), Errno::ESTALE);
        assert_eq!(v.node(Ino(2000)).map(|a| a.idx), Ok(NodeIdx(1)));
        // A failed capture makes the account fail, and is counted.
        assert_eq!(v.account(3).unwrap_err(), Errno::EIO);
        let c = v.counts();
        // Captured, never, evicted, held, failed: the failed one is not counted as captured.
        assert_eq!(
            (c.captured, c.never, c.evictions, c.held, c.failed),
            (3, 0, 1, 2, 1)
        );
        assert_eq!(fake.captures.lock().len(), 4);
    }

    #[test]
    fn an_account_needed_again_is_captured_again_at_a_new_epoch() {
        let (v, fake) = view(3, 6, 6, Duration::ZERO, stable);
        let a0 = v.account(0).unwrap();
        let gen0 = a0.generation(NodeIdx(1));
        drop(a0);
        // Idle (min_idle 0): account 1 takes its place.
        v.account(1).unwrap();
        assert_eq!(v.counts().evictions, 1);
        let again = v.account(0).unwrap();
        assert_eq!(again.epoch, 2);
        // The same file keeps its node id and generation (its cached pages stay valid).
        assert_eq!(again.generation(NodeIdx(1)), gen0);
        let c = v.counts();
        assert_eq!((c.captured, c.recaptured, c.evictions), (2, 1, 2));
        assert_eq!(*fake.captures.lock(), [(0, 1), (1, 1), (0, 2)]);
    }

    #[test]
    fn the_next_account_is_captured_ahead_of_a_reader() {
        let (v, fake) = view_ahead(4, 2, 100, Duration::from_secs(3600), stable, true);
        let ready = |id: AccountId| {
            let v = Arc::clone(&v);
            move || v.ready(id).is_some()
        };
        let wait = |f: &dyn Fn() -> bool| {
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while !f() && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(5));
            }
            f()
        };
        v.account(0).unwrap();
        assert!(wait(&ready(1)), "account 1 was not captured ahead");
        // A reader coming to account 1 finds it ready and sends the capture one further.
        v.account(1).unwrap();
        assert!(wait(&ready(2)), "account 2 was not captured ahead");
        assert!(v.ready(3).is_none(), "more than one account ahead");
        let mut seen = fake.captures.lock().clone();
        seen.sort_unstable();
        assert_eq!(seen, [(0, 1), (1, 1), (2, 1)], "each captured once");
        // The last account (3) fails (the fake fails it): captured ahead, it is not failed
        // for the reader, who gets the error from its own capture.
        v.account(2).unwrap();
        assert!(wait(&|| fake.captures.lock().len() == 4));
        assert!(wait(&|| matches!(*v.slots[3].state.lock(), State::Idle)));
        assert_eq!(v.counts().failed, 0);
        assert_eq!(v.account(3).unwrap_err(), Errno::EIO);
        assert_eq!(v.counts().failed, 1);
    }

    #[test]
    fn requests_for_one_account_share_one_capture() {
        let (v, fake) = view(2, 3, 100, Duration::ZERO, stable);
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..8 {
            let tx = tx.clone();
            v.with_account(
                0,
                Box::new(move |r| {
                    let _ = tx.send(r.map(|s| s.epoch));
                }),
            );
        }
        for _ in 0..8 {
            assert_eq!(rx.recv().unwrap(), Ok(1));
        }
        assert_eq!(*fake.captures.lock(), [(0, 1)]);
    }

    #[test]
    fn a_node_id_in_two_accounts_is_served_while_either_holds_it() {
        // File 0 of every account is one inode (a message delivered to several recipients).
        fn shared(id: AccountId, f: usize, e: u32) -> u64 {
            if f == 0 { 7 } else { stable(id, f, e) }
        }
        let (v, _) = view(3, 2, 100, Duration::ZERO, shared);
        let a0 = v.account(0).unwrap();
        let a1 = v.account(1).unwrap();
        assert!(v.node(Ino(7)).is_ok());
        drop(a1);
        v.evict(1);
        let at = v.node(Ino(7)).unwrap();
        assert!(Arc::ptr_eq(&at.snap, &a0));
        drop((a0, at));
        v.evict(0);
        assert_eq!(v.node(Ino(7)).unwrap_err(), Errno::ESTALE);
    }
}
