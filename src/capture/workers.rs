//! The accounts of a tree captured in parallel, one worker per CPU (at most 8), under a
//! watchdog: this is how a mount captures (every account at mount, or one at a time on
//! demand).

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::capture::account::{self, AccountCapture, LockPolicy, Progress};
use crate::capture::lock;
use crate::capture::pin::PinBudget;
use crate::capture::watch::{Heartbeat, Watch};
use crate::error::{Error, Result, display_rel, escape_path};
use crate::maildir;
use crate::sys;

/// What the capture workers share: the accounts to capture and how.
pub struct Work {
    /// SOURCE, for messages.
    pub source: PathBuf,
    /// The accounts to capture; the results come back in this order.
    pub accounts: Vec<maildir::Account>,
    /// How the locks are taken, and where the control files are.
    pub policy: LockPolicy,
    /// The budget every worker's pins come from.
    pub budget: Arc<PinBudget>,
    /// Where the workers count accounts and messages captured, for the progress line.
    pub progress: Arc<Progress>,
    /// How long a capture may go without progress before it is given up.
    pub stall_timeout: Duration,
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
pub fn capture_accounts(root: &OwnedFd, work: Work) -> Result<(Vec<AccountCapture>, Vec<PathBuf>)> {
    let workers = sys::cpus().clamp(1, 8).min(work.accounts.len().max(1));
    work.budget.reserve_table(
        account::expected_entries_all(root.as_fd(), &work.accounts),
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
        if lock::stopping() {
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
                let r = account::capture_account(
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
