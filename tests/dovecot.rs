//! maildirfs against a real, private Dovecot: lock interop, cross-folder MOVE, churn with zero
//! lost messages, and a restore that Dovecot reads back with identical UIDs and flags.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::dovecot::*;
use common::*;
use maildirfs::capture::{LockPolicy, capture_account};
use maildirfs::pin::PinBudget;

/// One Dovecot scenario at a time: each is a handful of processes on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Dovecot's log must show no override of our locks and no lock timeout.
fn assert_clean_log(dc: &Dovecot) {
    let log = dc.log();
    for bad in [
        "overrid",
        "Timeout while waiting for lock",
        "Panic",
        "Fatal",
    ] {
        assert!(!log.contains(bad), "dovecot log has {bad:?}:\n{log}");
    }
}

#[test]
fn dovecot_waits_for_our_locks_and_deliveries_do_not() {
    if !fuse_available() || !dovecot_available() {
        return;
    }
    let _s = serial();
    let fx = Fixture::new("dc-wait");
    let dc = Dovecot::start(&fx.dir.join("dovecot"), &fx.src(), &["alice"]);
    for i in 0..3 {
        let out = dc.deliver("alice", None, &message(&format!("before{i}@t"), 10));
        assert!(out.status.success());
    }
    dc.doveadm_ok(&["mailbox", "create", "-u", "alice", "Other"]);
    let lock = dc.maildir("alice").join("dovecot-uidlist.lock");

    let (src, mnt) = (fx.src(), fx.mnt());
    let mount = std::thread::spawn(move || {
        Command::new(BIN)
            .args([OsStr::new("mount"), src.as_os_str(), mnt.as_os_str()])
            .env("MAILDIRFS_TEST_HOLD_MS", "4000")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    assert!(
        wait_for(Duration::from_secs(10), || lock.exists()),
        "no lock taken"
    );
    let mut flags = dc.doveadm_spawn(&[
        "flags",
        "add",
        "-u",
        "alice",
        "\\Flagged",
        "mailbox",
        "INBOX",
        "all",
    ]);
    let mut mv = dc.doveadm_spawn(&[
        "move", "-u", "alice", "Other", "mailbox", "INBOX", "uid", "1",
    ]);
    // A plain delivery only tries the lock: it lands at once, while we still hold it.
    let t = Instant::now();
    let out = dc.deliver("alice", None, &message("during@hold", 10));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "delivery waited {:?}",
        t.elapsed()
    );
    assert!(lock.exists(), "the hold ended before the delivery returned");
    std::thread::sleep(Duration::from_millis(300));
    assert!(lock.exists());
    assert!(
        flags.try_wait().unwrap().is_none(),
        "doveadm flags did not wait for our lock"
    );
    assert!(
        mv.try_wait().unwrap().is_none(),
        "doveadm move did not wait for our lock"
    );
    let out = mount.join().unwrap();
    let _guard = Mounted {
        mnt: fx.mnt(),
        stderr: String::new(),
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!lock.exists());
    // Released: both complete, and did what they were asked.
    for (name, child) in [("flags", &mut flags), ("move", &mut mv)] {
        let end = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < end, "doveadm {name} never finished");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "doveadm {name} failed");
    }
    let fetched = dc.doveadm_ok(&["fetch", "-u", "alice", "flags", "mailbox", "INBOX", "all"]);
    assert!(fetched.contains("\\Flagged"), "{fetched}");
    let other = dc.doveadm_ok(&[
        "-f", "flow", "mailbox", "status", "-u", "alice", "messages", "Other",
    ]);
    assert!(other.contains("messages=1"), "{other}");
    drop(_guard);

    // The next capture includes the delivery made during the hold.
    let m = Mounted::new(&fx, &[]);
    let ids: BTreeSet<String> = tree(&m.mnt, true)
        .values()
        .filter_map(|s| s.bytes.as_deref().and_then(message_id))
        .collect();
    assert!(ids.contains("during@hold"), "{ids:?}");
    m.umount();
    assert_clean_log(&dc);
}

/// The Message-IDs in an image of the tree, per mailbox. Read through the pins taken under
/// the locks: Dovecot may give a moved message a new file name, so names do not identify it.
fn captured_ids(
    root: &std::fs::File,
    src: &Path,
    policy: &LockPolicy,
) -> BTreeMap<PathBuf, BTreeSet<String>> {
    let found = maildirfs::maildir::discover(root.as_fd(), src, false).unwrap();
    let mut out = BTreeMap::new();
    for account in &found.accounts {
        let c = capture_account(
            root.as_fd(),
            src,
            account,
            policy,
            &PinBudget::fixed(10_000),
        )
        .unwrap();
        for (rel, m) in c.mailboxes {
            let ids = m
                .new
                .iter()
                .chain(&m.cur)
                .filter_map(|l| {
                    let pin = l.pin.as_ref()?;
                    let bytes = std::fs::read(format!("/proc/self/fd/{}", pin.as_raw_fd())).ok()?;
                    message_id(&bytes)
                })
                .collect();
            out.insert(rel, ids);
        }
    }
    out
}

#[test]
fn cross_folder_move_never_loses_a_message_from_the_image() {
    if !dovecot_available() {
        return;
    }
    let _s = serial();
    let fx = Fixture::new("dc-move");
    let dc = Dovecot::start(&fx.dir.join("dovecot"), &fx.src(), &["alice"]);
    for i in 0..20 {
        assert!(
            dc.deliver("alice", None, &message(&format!("m{i}@t"), 200))
                .status
                .success()
        );
    }
    dc.doveadm_ok(&["mailbox", "create", "-u", "alice", "Other"]);
    let root = std::fs::File::open(fx.src()).unwrap();
    let all: BTreeSet<String> = captured_ids(&root, &fx.src(), &policy(false, 0))
        .into_values()
        .flatten()
        .collect();
    assert_eq!(all.len(), 20);

    // Move everything back and forth as fast as Dovecot goes.
    let stop = Arc::new(AtomicBool::new(false));
    let moves = Arc::new(AtomicUsize::new(0));
    let mover = {
        let (stop, moves, conf) = (stop.clone(), moves.clone(), dc.conf.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (to, from) in [("Other", "INBOX"), ("INBOX", "Other")] {
                    let ok = Command::new("doveadm")
                        .arg("-c")
                        .arg(&conf)
                        .args(["move", "-u", "alice", to, "mailbox", from, "all"])
                        .status()
                        .is_ok_and(|s| s.success());
                    if ok {
                        moves.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let lost_in = |policy: &LockPolicy, captures: usize| -> (usize, usize) {
        let mut lossy_images = 0;
        for _ in 0..captures {
            let seen: BTreeSet<String> = captured_ids(&root, &fx.src(), policy)
                .into_values()
                .flatten()
                .collect();
            if seen != all {
                lossy_images += 1;
                eprintln!(
                    "image missing {:?}",
                    all.difference(&seen).collect::<Vec<_>>()
                );
            }
        }
        (lossy_images, captures)
    };
    let (lost, n) = lost_in(&policy(false, 0), 60);
    // The same test, capturing one mailbox at a time (with a 30 ms gap between them, as a
    // per-mailbox tool has while it copies the first): it must be able to fail.
    let mut per_mailbox = (0, 0);
    for _ in 0..10 {
        let (l, c) = lost_in(&policy(true, 30), 20);
        per_mailbox = (per_mailbox.0 + l, per_mailbox.1 + c);
        if per_mailbox.0 > 0 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    mover.join().unwrap();
    eprintln!(
        "cross-folder MOVE: {} moves; account at once: {lost} of {n} images lost a message; \
         one mailbox at a time: {} of {} images lost one",
        moves.load(Ordering::Relaxed),
        per_mailbox.0,
        per_mailbox.1
    );
    assert!(moves.load(Ordering::Relaxed) >= 20, "the mover hardly ran");
    assert_eq!(lost, 0, "an account-at-once image lost a moved message");
    assert!(
        per_mailbox.0 > 0,
        "per-mailbox capture never lost a message: the test cannot fail"
    );
    assert_clean_log(&dc);
}

fn policy(one_at_a_time: bool, gap_ms: u64) -> LockPolicy {
    LockPolicy {
        no_lock: false,
        strict: true,
        timeout: Duration::from_secs(30),
        test_hold: Duration::from_millis(gap_ms),
        one_mailbox_at_a_time: one_at_a_time,
    }
}

/// What the churn workers did, with times, for the oracle.
#[derive(Default)]
struct Journal {
    /// Message-ID -> (delivery finished, body hash).
    delivered: HashMap<String, (Instant, u64)>,
    /// Message-ID -> expunge started.
    expunged: HashMap<String, Instant>,
}

#[test]
fn churn_loses_no_message() {
    if !fuse_available() || !dovecot_available() {
        return;
    }
    let _s = serial();
    let fx = Fixture::new("dc-churn");
    let dc = Arc::new(Dovecot::start(
        &fx.dir.join("dovecot"),
        &fx.src(),
        &["alice"],
    ));
    let journal = Arc::new(Mutex::new(Journal::default()));
    dc.doveadm_ok(&["mailbox", "create", "-u", "alice", "Other"]);
    for i in 0..150 {
        let id = format!("pre{i}@churn");
        let msg = message(&id, 100 + i % 50);
        assert!(dc.deliver("alice", None, &msg).status.success());
        journal
            .lock()
            .unwrap()
            .delivered
            .insert(id, (Instant::now(), body_hash(&msg)));
    }
    let report = run_churn(&fx, &dc, &journal, Duration::from_secs(15));
    eprintln!(
        "churn through maildirfs: {} cycles, {} messages checked, {} lost, {} duplicated, \
         {} stray files; workload: {}",
        report.cycles, report.checked, report.lost, report.duplicates, report.stray, report.work
    );
    assert!(report.cycles >= 5, "too few cycles: {}", report.cycles);
    assert_eq!(report.lost, 0, "lost messages: {:?}", report.lost_ids);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.stray, 0, "tmp/ content or lock files in a copy");
    assert_clean_log(&dc);
}

struct ChurnReport {
    cycles: usize,
    checked: usize,
    lost: usize,
    lost_ids: Vec<String>,
    duplicates: usize,
    stray: usize,
    work: String,
}

fn run_churn(
    fx: &Fixture,
    dc: &Arc<Dovecot>,
    journal: &Arc<Mutex<Journal>>,
    dur: Duration,
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
                let verb = if n.is_multiple_of(2) { "add" } else { "remove" };
                for b in ["INBOX", "Other"] {
                    dc.doveadm(&[
                        "flags", verb, "-u", "alice", flag, "mailbox", b, "uid", &uid,
                    ]);
                }
                c[1].fetch_add(1, Ordering::Relaxed);
                let (to, from) = if n.is_multiple_of(2) {
                    ("Other", "INBOX")
                } else {
                    ("INBOX", "Other")
                };
                dc.doveadm(&["move", "-u", "alice", to, "mailbox", from, "uid", &uid]);
                c[2].fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(3) {
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
    let mut report = ChurnReport {
        cycles: 0,
        checked: 0,
        lost: 0,
        lost_ids: Vec::new(),
        duplicates: 0,
        stray: 0,
        work: String::new(),
    };
    let copy = fx.dir.join("copy");
    while Instant::now() < end {
        let _ = std::fs::remove_dir_all(&copy);
        let began = Instant::now();
        let log = fx.dir.join("maildirfs.log");
        let m = Mounted::new(fx, &["--log-file", log.to_str().unwrap()]);
        let returned = Instant::now();
        let out = Command::new("rsync")
            .arg("-a")
            .arg(format!("{}/", m.mnt.display()))
            .arg(&copy)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rsync: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        m.umount();
        check_copy(&copy, journal, began, returned, &mut report);
        report.cycles += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    if let Ok(log) = std::fs::read_to_string(fx.dir.join("maildirfs.log")) {
        for l in log.lines().filter(|l| l.contains("warning")) {
            eprintln!("maildirfs log: {l}");
        }
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

/// The oracle: every message delivered before the mount began and not expunged before it
/// returned is in the copy, complete, once per mailbox; no tmp/ content, no lock file.
fn check_copy(
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

#[test]
fn restore_from_an_image_keeps_uids_flags_and_guids() {
    if !fuse_available() || !dovecot_available() {
        return;
    }
    let _s = serial();
    let fx = Fixture::new("dc-restore");
    let dc = Dovecot::start(&fx.dir.join("dovecot"), &fx.src(), &["alice", "restored"]);
    for i in 0..30 {
        assert!(
            dc.deliver("alice", None, &message(&format!("r{i}@t"), 100 + i))
                .status
                .success()
        );
    }
    dc.doveadm_ok(&["mailbox", "create", "-u", "alice", "Work"]);
    dc.doveadm_ok(&[
        "move", "-u", "alice", "Work", "mailbox", "INBOX", "uid", "1:8",
    ]);
    dc.doveadm_ok(&[
        "flags", "add", "-u", "alice", "\\Seen", "mailbox", "INBOX", "uid", "9:20",
    ]);
    dc.doveadm_ok(&[
        "flags",
        "add",
        "-u",
        "alice",
        "\\Answered $Forwarded",
        "mailbox",
        "INBOX",
        "uid",
        "12:14",
    ]);
    dc.doveadm_ok(&[
        "flags",
        "add",
        "-u",
        "alice",
        "Project-X \\Flagged",
        "mailbox",
        "Work",
        "all",
    ]);
    dc.doveadm_ok(&["expunge", "-u", "alice", "mailbox", "INBOX", "uid", "25:27"]);
    let state = |user: &str| -> (String, String) {
        let status = dc.doveadm_ok(&[
            "-f",
            "flow",
            "mailbox",
            "status",
            "-u",
            user,
            "uidvalidity uidnext messages guid",
            "*",
        ]);
        let fetch = dc.doveadm_ok(&[
            "-f",
            "flow",
            "fetch",
            "-u",
            user,
            "mailbox uid guid flags size.physical body",
            "mailbox",
            "*",
            "all",
        ]);
        (
            sorted_lines(&status),
            sorted_lines(&fetch.replace(" \\Recent", "").replace("\\Recent", "")),
        )
    };
    let at_capture = state("alice");
    assert!(at_capture.1.contains("Project-X"), "{}", at_capture.1);

    let m = Mounted::new(&fx, &[]);
    let out = Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", m.mnt.join("alice/Maildir").display()))
        .arg(fx.src().join("restored/Maildir"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.umount();
    let restored = state("restored");
    assert_eq!(restored.0, at_capture.0, "mailbox status differs");
    assert_eq!(restored.1, at_capture.1, "messages differ");
    assert_clean_log(&dc);
}

fn sorted_lines(s: &str) -> String {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort_unstable();
    v.join("\n")
}
