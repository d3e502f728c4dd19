//! maildirfs against a real, private Dovecot: lock interop, cross-folder MOVE, churn with zero
//! lost messages, and a restore that Dovecot reads back with identical UIDs and flags.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::churn::*;
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
        Command::new(bin())
            .args([OsStr::new("mount"), src.as_os_str(), mnt.as_os_str()])
            .env("MAILDIRFS_TEST_HOLD_MS", "4000")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    });
    // A lock is created, then written: wait for its content.
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(&lock)
            .is_ok_and(|c| !c.is_empty())),
        "no lock taken"
    );
    let ours = std::fs::read_to_string(&lock).unwrap_or_default();
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
    let _guard = Mounted::adopt(fx.mnt());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ours is gone (the lock there now, if any, is the waiting doveadm's own).
    let now = std::fs::read_to_string(&lock).unwrap_or_default();
    assert!(now != ours, "our lock is still there");
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
    let found =
        maildirfs::maildir::discover(root.as_fd(), src, false, &Default::default()).unwrap();
    let mut out = BTreeMap::new();
    for account in &found.accounts {
        let c = capture_account(
            root.as_fd(),
            src,
            account,
            policy,
            &PinBudget::fixed(10_000),
            &maildirfs::watch::Watch::new(&account.root),
        )
        .unwrap();
        for (rel, m) in c.mailboxes {
            let ids = m
                .new
                .iter()
                .chain(&m.cur)
                .filter_map(|l| {
                    let pin = l.pin.as_ref()?;
                    let bytes =
                        std::fs::read(format!("/proc/self/fd/{}", pin.as_fd().as_raw_fd())).ok()?;
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
        lock_host: None,
    }
}

#[test]
fn churn_loses_no_message() {
    if !fuse_available() || !dovecot_available() {
        return;
    }
    let _s = serial();
    let fx = Fixture::new("dc-churn");
    let (dc, journal) = churn_setup(&fx, 150);
    let log = fx.dir.join("maildirfs.log");
    let mut through_maildirfs = |dest: &Path| {
        let began = Instant::now();
        let m = Mounted::new(&fx, &["--log-file", log.to_str().unwrap()]);
        let complete = Instant::now();
        let ok = rsync_a(&m.mnt, dest).status.success();
        m.umount();
        (began, complete, ok)
    };
    let report = run_churn(
        &fx,
        &dc,
        &journal,
        Duration::from_secs(15),
        &mut through_maildirfs,
    );
    if let Ok(text) = std::fs::read_to_string(&log) {
        for l in text.lines().filter(|l| l.contains("warning")) {
            eprintln!("maildirfs log: {l}");
        }
    }
    eprintln!(
        "churn through maildirfs: {} cycles, {} messages checked, {} lost, {} duplicated, \
         {} stray files; workload: {}",
        report.cycles, report.checked, report.lost, report.duplicates, report.stray, report.work
    );
    assert!(report.cycles >= 5, "too few cycles: {}", report.cycles);
    assert_eq!(report.lost, 0, "lost messages: {:?}", report.lost_ids);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.incomplete, 0, "a message copied with other bytes");
    assert_eq!(report.stray, 0, "tmp/ content or lock files in a copy");
    assert_eq!(report.copy_errors, 0, "rsync of the view failed");
    assert_clean_log(&dc);
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

    // `verify` passes what Dovecot made, the view of it, and the copy of the view; the three
    // expunged messages are still in Dovecot's uidlist (it drops them lazily): a note.
    let verify_clean = |p: &Path| {
        let out = run(&[OsStr::new("verify"), p.as_os_str()], &[]);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "verify {}: {said}", p.display());
        assert!(said.contains("27 messages: 0 problems"), "{said}");
        assert!(said.contains("3 entries without a file"), "{said}");
    };
    verify_clean(&dc.maildir("alice"));
    let m = Mounted::new(&fx, &[]);
    verify_clean(&m.mnt.join("alice/Maildir"));
    let out = rsync_a(
        &m.mnt.join("alice/Maildir"),
        &fx.src().join("restored/Maildir"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.umount();
    verify_clean(&fx.src().join("restored/Maildir"));
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
