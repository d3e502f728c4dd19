//! The churn workload of the Dovecot tests, shared with `examples/churn_compare.rs`: LDA
//! deliveries, flag changes, moves and expunges through Dovecot, and a mail client renaming
//! for flags without any lock, all at once, while the store is copied again and again; and the
//! oracle that checks each copy.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::dovecot::*;
use super::*;

/// What the churn workers did, with times, for the oracle.
#[derive(Default)]
pub struct Journal {
    /// Message-ID -> (delivery finished, body hash).
    pub delivered: HashMap<String, (Instant, u64)>,
    /// Message-ID -> expunge started.
    pub expunged: HashMap<String, Instant>,
}

/// A private Dovecot 2.3 for user alice with folders INBOX and Other, `n` messages delivered
/// to INBOX with LDA, and the journal that records them.
pub fn churn_setup(fx: &Fixture, n: usize) -> (Arc<Dovecot>, Arc<Mutex<Journal>>) {
    let setup = Setup {
        flavor: Flavor::Host23,
        control: None,
        inbox_folder: false,
    };
    churn_setup_with(&setup, fx, n)
}

/// [`churn_setup`] with the Dovecot of `setup`.
pub fn churn_setup_with(
    setup: &Setup,
    fx: &Fixture,
    n: usize,
) -> (Arc<Dovecot>, Arc<Mutex<Journal>>) {
    let dc = Arc::new(Dovecot::start_with(
        setup,
        &fx.dir.join("dovecot"),
        &fx.src(),
        &["alice"],
    ));
    dc.doveadm_ok(&["mailbox", "create", "-u", "alice", "Other"]);
    let journal = Arc::new(Mutex::new(Journal::default()));
    for i in 0..n {
        let id = format!("pre{i}@churn");
        let msg = message(&id, 100 + i % 50);
        assert!(dc.deliver("alice", None, &msg).status.success());
        journal
            .lock()
            .unwrap()
            .delivered
            .insert(id, (Instant::now(), body_hash(&msg)));
    }
    (dc, journal)
}

/// What one churn run found.
#[derive(Debug, Default)]
pub struct ChurnReport {
    pub cycles: usize,
    pub checked: usize,
    pub lost: usize,
    pub lost_ids: Vec<String>,
    pub duplicates: usize,
    pub stray: usize,
    pub work: String,
    /// Messages whose copy has other bytes than were delivered.
    pub incomplete: usize,
    /// Copies whose rsync exited non-zero (24: files vanished during the copy).
    pub copy_errors: usize,
}

/// Runs the churn workload on `dc`'s user alice for `dur`, copying the store again and again
/// with `copy(dest)`, which returns when the copy began, when the capture it copies was
/// complete (for maildirfs: when `mount` returned), and whether the copy tool succeeded. Each
/// copy is checked against the journal.
pub fn run_churn(
    fx: &Fixture,
    dc: &Arc<Dovecot>,
    journal: &Arc<Mutex<Journal>>,
    dur: Duration,
    copy: &mut dyn FnMut(&Path) -> (Instant, Instant, bool),
) -> ChurnReport {
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Arc<[AtomicUsize; 5]> = Arc::new(Default::default());
    let mut workers = Vec::new();
    // LDA deliveries.
    {
        let (stop, dc, j, c) = (stop.clone(), dc.clone(), journal.clone(), counters.clone());
        workers.push(std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("live{n}@churn");
                let msg = message(&id, 50 + n % 300);
                let folder = (n % 3 == 0).then_some("Other");
                if dc.deliver("alice", folder, &msg).status.success() {
                    j.lock()
                        .unwrap()
                        .delivered
                        .insert(id, (Instant::now(), body_hash(&msg)));
                    c[0].fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }));
    }
    // Flag changes, moves and expunges through Dovecot.
    {
        let (stop, dc, j, c) = (stop.clone(), dc.clone(), journal.clone(), counters.clone());
        workers.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let uid = format!("{}:{}", n % 40 + 1, n % 40 + 10);
                let flag = ["\\Seen", "\\Flagged", "\\Answered", "$Forwarded"][n as usize % 4];
                let verb = if n % 2 == 0 { "add" } else { "remove" };
                for b in ["INBOX", "Other"] {
                    dc.doveadm(&[
                        "flags", verb, "-u", "alice", flag, "mailbox", b, "uid", &uid,
                    ]);
                }
                c[1].fetch_add(1, Ordering::Relaxed);
                let (to, from) = if n % 2 == 0 {
                    ("Other", "INBOX")
                } else {
                    ("INBOX", "Other")
                };
                dc.doveadm(&["move", "-u", "alice", to, "mailbox", from, "uid", &uid]);
                c[2].fetch_add(1, Ordering::Relaxed);
                if n % 3 == 0 {
                    let id = format!("pre{}@churn", n % 150);
                    j.lock()
                        .unwrap()
                        .expunged
                        .entry(id.clone())
                        .or_insert_with(Instant::now);
                    dc.doveadm(&[
                        "expunge",
                        "-u",
                        "alice",
                        "mailbox",
                        "*",
                        "header",
                        "Message-ID",
                        &id,
                    ]);
                    c[3].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // A mail client that renames for flags without any lock.
    {
        let (stop, root, c) = (stop.clone(), dc.maildir("alice"), counters.clone());
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for dir in [root.join("cur"), root.join(".Other/cur")] {
                    let Ok(rd) = std::fs::read_dir(&dir) else {
                        continue;
                    };
                    for e in rd.flatten().take(200) {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let Some((base, flags)) = name.split_once(":2,") else {
                            continue;
                        };
                        let new = if flags.contains('F') {
                            format!("{base}:2,{}", flags.replace('F', ""))
                        } else {
                            let mut f: Vec<char> = flags.chars().chain(['F']).collect();
                            f.sort_unstable();
                            format!("{base}:2,{}", f.into_iter().collect::<String>())
                        };
                        if std::fs::rename(dir.join(&name), dir.join(new)).is_ok() {
                            c[4].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    let end = Instant::now() + dur;
    let mut report = ChurnReport::default();
    let dest = fx.dir.join("copy");
    while Instant::now() < end {
        let _ = std::fs::remove_dir_all(&dest);
        let (began, complete, ok) = copy(&dest);
        if !ok {
            report.copy_errors += 1;
        }
        check_copy(&dest, journal, began, complete, &mut report);
        report.cycles += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let c = &counters;
    report.work = format!(
        "{} deliveries, {} flag rounds, {} moves, {} expunges, {} lock-free renames",
        c[0].load(Ordering::Relaxed),
        c[1].load(Ordering::Relaxed),
        c[2].load(Ordering::Relaxed),
        c[3].load(Ordering::Relaxed),
        c[4].load(Ordering::Relaxed)
    );
    report
}

/// The oracle: every message delivered before the copy began and not expunged before the
/// capture was complete is in the copy, complete, once per mailbox; no tmp/ content, no lock
/// or temp file.
pub fn check_copy(
    copy: &Path,
    journal: &Mutex<Journal>,
    began: Instant,
    returned: Instant,
    r: &mut ChurnReport,
) {
    let mut found: HashMap<String, Vec<(Vec<u8>, u64)>> = HashMap::new();
    for (rel, seen) in tree(copy, true) {
        let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
        let name = parts.last().copied().unwrap_or_default();
        if (parts.len() >= 2 && parts[parts.len() - 2] == b"tmp")
            || name.ends_with(b".lock")
            || name.starts_with(b"temp.")
            || name.starts_with(b".temp.")
        {
            r.stray += 1;
        }
        if seen.kind != "file"
            || parts.len() < 2
            || !(parts[parts.len() - 2] == b"cur" || parts[parts.len() - 2] == b"new")
        {
            continue;
        }
        let bytes = seen.bytes.unwrap_or_default();
        if let Some(id) = message_id(&bytes) {
            let mailbox = parts[..parts.len() - 2].join(&b'/');
            found
                .entry(id)
                .or_default()
                .push((mailbox, body_hash(&bytes)));
        }
    }
    let j = journal.lock().unwrap();
    for (id, (at, hash)) in &j.delivered {
        if *at >= began || j.expunged.get(id).is_some_and(|e| *e < returned) {
            continue;
        }
        r.checked += 1;
        match found.get(id) {
            None => {
                r.lost += 1;
                r.lost_ids.push(id.clone());
            }
            Some(copies) => {
                assert!(
                    copies.iter().all(|(_, h)| h == hash),
                    "{id} copied incomplete"
                );
                let boxes: BTreeSet<&Vec<u8>> = copies.iter().map(|(b, _)| b).collect();
                if boxes.len() != copies.len() {
                    r.duplicates += 1;
                }
            }
        }
    }
}
