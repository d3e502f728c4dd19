//! Lock holds as Dovecot sees them: from the creation of an account's first
//! `dovecot-uidlist.lock` to the removal of its last, from inotify events on every mailbox
//! directory of a tree. The times are those at which the events were read (inotify gives
//! none): on a machine whose CPUs the capture keeps busy, the watcher's own wake-ups (late,
//! or preempting the very thread that holds the locks) add to what it sees.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inotify::{Inotify, WatchDescriptor, WatchMask};

const LOCK: &str = "dovecot-uidlist.lock";

/// A thread reading the lock files' events until stopped.
pub struct LockWatch {
    stop: Arc<AtomicBool>,
    /// A directory of our own, watched too, where a file is made to wake the thread.
    waker: PathBuf,
    thread: JoinHandle<Vec<(usize, Duration)>>,
}

/// Paths, each with a number: a mailbox with its account's index, an account with its
/// messages.
pub type Numbered = Vec<(PathBuf, usize)>;

/// Every mailbox directory below `tree` (a directory with `cur/` and `new/`) with the index
/// of its account in the returned list of accounts (the nearest ancestor-or-self named
/// `Maildir`, else the mailbox itself), and each account's messages.
pub fn mailboxes(tree: &Path) -> (Numbered, Numbered) {
    let mut boxes = Vec::new();
    let mut accounts: Vec<(PathBuf, usize)> = Vec::new();
    let mut index: HashMap<PathBuf, usize> = HashMap::new();
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut subdirs = Vec::new();
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                subdirs.push(e.file_name());
            }
        }
        let has = |n: &str| subdirs.iter().any(|s| s == n);
        if has("cur") && has("new") {
            let account = dir
                .ancestors()
                .find(|a| a.file_name() == Some(OsStr::new("Maildir")))
                .unwrap_or(&dir)
                .to_path_buf();
            let messages = ["cur", "new"]
                .iter()
                .map(|s| std::fs::read_dir(dir.join(s)).map_or(0, |r| r.count()))
                .sum::<usize>();
            let next = accounts.len();
            let i = *index.entry(account.clone()).or_insert(next);
            if i == next {
                accounts.push((account, 0));
            }
            accounts[i].1 += messages;
            boxes.push((dir.clone(), i));
        }
        for s in subdirs {
            if s != "cur" && s != "new" && s != "tmp" {
                stack.push(dir.join(s));
            }
        }
    }
    (boxes, accounts)
}

impl LockWatch {
    /// Starts watching `boxes` (mailbox directory, account index); `scratch` is an empty
    /// directory of the caller's.
    pub fn start(boxes: &[(PathBuf, usize)], scratch: &Path) -> std::io::Result<LockWatch> {
        let mut inotify = Inotify::init()?;
        let mask = WatchMask::CREATE | WatchMask::DELETE;
        let mut account_of: HashMap<WatchDescriptor, usize> = HashMap::new();
        for (dir, account) in boxes {
            account_of.insert(inotify.watches().add(dir, mask)?, *account);
        }
        let waker = scratch.to_path_buf();
        let waker_wd = inotify.watches().add(&waker, mask)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            // Per account: locks held now, and since when the first of them.
            let mut open: HashMap<usize, (usize, Instant)> = HashMap::new();
            let mut holds = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let Ok(events) = inotify.read_events_blocking(&mut buf) else {
                    break;
                };
                let now = Instant::now();
                for e in events {
                    if e.wd == waker_wd || e.name != Some(OsStr::new(LOCK)) {
                        continue;
                    }
                    let Some(&account) = account_of.get(&e.wd) else {
                        continue;
                    };
                    if e.mask.contains(inotify::EventMask::CREATE) {
                        open.entry(account).or_insert((0, now)).0 += 1;
                    } else if let Some(held) = open.get_mut(&account) {
                        held.0 -= 1;
                        if held.0 == 0 {
                            holds.push((account, now - held.1));
                            open.remove(&account);
                        }
                    }
                }
            }
            holds
        });
        Ok(LockWatch {
            stop,
            waker,
            thread,
        })
    }

    /// Stops the thread: every hold seen, as (account index, from the first lock's creation
    /// to the last one's removal).
    pub fn stop(self) -> Vec<(usize, Duration)> {
        self.stop.store(true, Ordering::Relaxed);
        let wake = self.waker.join("wake");
        let _ = std::fs::write(&wake, b"");
        let _ = std::fs::remove_file(&wake);
        self.thread.join().unwrap_or_default()
    }
}

/// The longest hold per 1,000 messages of its account, in ms, with that account.
pub fn worst_per_1000(
    holds: &[(usize, Duration)],
    accounts: &[(PathBuf, usize)],
) -> Option<(f64, PathBuf)> {
    holds
        .iter()
        .filter(|(a, _)| accounts[*a].1 > 0)
        .map(|(a, d)| {
            (
                d.as_secs_f64() * 1e3 * 1000.0 / accounts[*a].1 as f64,
                accounts[*a].0.clone(),
            )
        })
        .max_by(|x, y| x.0.total_cmp(&y.0))
}

/// The longest hold per 1,000 messages of its account, in ms, as the server itself timed it
/// (`account_lock_holds` of a `--summary-json` file: from before its first lock was created to
/// after its last was removed).
pub fn worst_in_summary(json: &str) -> Option<f64> {
    let field = |obj: &str, key: &str| -> Option<f64> {
        let rest = obj.split(&format!("\"{key}\": ")).nth(1)?;
        rest.split([',', '\n', '}']).next()?.trim().parse().ok()
    };
    json.split('{')
        .filter_map(|obj| {
            let us = field(obj, "lock_hold_us")?;
            let messages = field(obj, "messages")?;
            (messages > 0.0).then(|| us / 1e3 * 1000.0 / messages)
        })
        .max_by(f64::total_cmp)
}
