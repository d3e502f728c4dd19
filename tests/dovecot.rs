//! maildirfs against a real, private Dovecot: lock interop both ways, cross-folder MOVE, churn
//! with zero lost messages, and a restore that Dovecot reads back with identical UIDs and flags.
//! Each test runs twice: against Dovecot 2.3 on the host (`name::dovecot23`) and against
//! Dovecot 2.4 in the Debian 13 root (`name::dovecot24`).

use maildirfs_testkit as common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::churn::*;
use common::dovecot::*;
use common::*;
use maildirfs::capture::pin::PinBudget;
use maildirfs::capture::{LockPolicy, capture_account};

/// One Dovecot scenario at a time: each is a handful of processes on a 2-core machine.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

against_both_dovecots! {
    dovecot_waits_for_our_locks_and_deliveries_do_not => true,
    maildirfs_waits_for_dovecots_lock => true,
    cross_folder_move_never_loses_a_message_from_the_image => false,
    churn_loses_no_message => true,
    restore_from_an_image_keeps_uids_flags_and_guids => true,
}

fn start(flavor: &Flavor, fx: &Fixture, users: &[&str]) -> Dovecot {
    let setup = Setup {
        flavor: flavor.clone(),
        control: None,
        inbox_folder: false,
    };
    Dovecot::start_with(&setup, &fx.dir.join("dovecot"), &fx.src(), users)
}

fn dovecot_waits_for_our_locks_and_deliveries_do_not(flavor: &Flavor) {
    let _s = serial();
    let fx = Fixture::new("dc-wait");
    let dc = start(flavor, &fx, &["alice"]);
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
    dc.assert_clean_log();
}

/// Dovecot holds INBOX's uidlist lock while it renames every message for a flag. Caught
/// holding it (and stopped there with SIGSTOP), it keeps `maildirfs mount` waiting; the image
/// taken once it lets go has the flag on every message or on none.
fn maildirfs_waits_for_dovecots_lock(flavor: &Flavor) {
    const N: usize = 3000;
    let _s = serial();
    let fx = Fixture::new("dc-theirs");
    let dc = start(flavor, &fx, &["alice"]);
    // Messages written as another MDA would, so that a flag change takes a while.
    fx.mailbox("alice/Maildir");
    for i in 0..N {
        fx.write(
            format!("alice/Maildir/cur/{}.M{i}P1.mda:2,", 1_700_000_000 + i),
            &message(&format!("t{i}@t"), 20),
        );
    }
    let maildir = dc.maildir("alice");
    chown_tree(&maildir);
    let status = dc.doveadm_ok(&[
        "-f", "flow", "mailbox", "status", "-u", "alice", "messages", "INBOX",
    ]);
    assert!(status.contains(&format!("messages={N}")), "{status}");

    let lock = maildir.join("dovecot-uidlist.lock");
    let host = hostname();
    let mut caught = None;
    for attempt in 0..20 {
        let verb = if attempt % 2 == 0 { "add" } else { "remove" };
        let mut flags = dc.doveadm_spawn(&[
            "flags",
            verb,
            "-u",
            "alice",
            "\\Flagged",
            "mailbox",
            "INBOX",
            "all",
        ]);
        let mut holder = None;
        while holder.is_none() && flags.try_wait().unwrap().is_none() {
            holder = std::fs::read_to_string(&lock)
                .ok()
                .and_then(|c| c.strip_suffix(&format!(":{host}"))?.parse::<i32>().ok());
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(pid) = holder {
            signal(pid, "-STOP");
            // Still Dovecot's lock, now that its holder cannot let go of it?
            if std::fs::read_to_string(&lock).is_ok_and(|c| c == format!("{pid}:{host}")) {
                caught = Some((flags, pid, verb));
                break;
            }
            signal(pid, "-CONT");
        }
        assert!(flags.wait().unwrap().success(), "doveadm flags {verb}");
    }
    let Some((mut flags, pid, verb)) = caught else {
        panic!("never saw doveadm holding INBOX's lock");
    };
    // Whatever fails from here, the holder goes on (and its lock goes away).
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            signal(self.0, "-CONT");
        }
    }
    let resume = Resume(pid);
    let held = std::fs::read_to_string(&lock).unwrap_or_default();
    // Nothing asserted until the mount is over and in a guard: a mount that completes after a
    // failed assertion would be left behind.
    let mut mount = spawn_mount(&fx, &["--strict-lock", "--lock-timeout", "60"], &[]);
    std::thread::sleep(Duration::from_millis(1500));
    let waited = mount.try_wait().is_ok_and(|s| s.is_none()) && !is_mounted(&fx.mnt());
    let kept = std::fs::read_to_string(&lock).is_ok_and(|c| c == held);
    drop(resume);
    let flags_ok = flags.wait().is_ok_and(|s| s.success());
    let out = mount.wait_with_output().unwrap();
    let m = Mounted::adopt(fx.mnt());
    assert!(waited, "maildirfs did not wait for Dovecot's lock");
    assert!(kept, "Dovecot's lock was taken from it");
    assert!(flags_ok, "doveadm flags {verb} failed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = std::fs::read_dir(m.mnt.join("alice/Maildir/cur"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let flagged = names
        .iter()
        .filter(|n| n.split_once(":2,").is_some_and(|(_, f)| f.contains('F')))
        .count();
    eprintln!(
        "Dovecot {}: caught doveadm flags {verb} holding the lock; the image has {flagged} of \
         {} messages flagged",
        flavor.version(),
        names.len()
    );
    assert_eq!(names.len(), N);
    assert!(
        flagged == 0 || flagged == N,
        "the image caught a flag change half done: {flagged} of {N} flagged"
    );
    m.umount();
    dc.assert_clean_log();
}

#[test]
fn dovecot24_runs_in_a_private_mount_namespace_that_ends_with_it() {
    let Some(flavor) = can_run(false, Flavor::debian13_24) else {
        return;
    };
    let Flavor::Debian13_24(root) = &flavor else {
        unreachable!("debian13_24 gives Dovecot 2.4");
    };
    let _s = serial();
    let fx = Fixture::new("dc-ns");
    let dc = start(&flavor, &fx, &["alice"]);
    assert!(
        dc.deliver("alice", None, &message("ns@t", 10))
            .status
            .success()
    );
    let pid = dc.master_pid().expect("the master's pid");
    let ns_of = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let ns = ns_of(&pid.to_string()).expect("the master's mount namespace");
    assert_ne!(
        Some(&ns),
        ns_of("self").as_ref(),
        "the master shares our mounts"
    );
    // No bind mount of the root is seen here, not even while Dovecot runs.
    let mounts_in_root = || -> Vec<String> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        text.lines()
            .filter(|l| {
                l.split(' ')
                    .nth(4)
                    .is_some_and(|p| Path::new(p).starts_with(root.root()))
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(mounts_in_root(), Vec::<String>::new());
    drop(dc);
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "the master runs on"
    );
    // Nothing is left in the namespace, so it is gone with its mounts.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|p| p.parse::<i32>().is_ok() && ns_of(p).as_ref() == Some(&ns))
        .collect();
    assert!(
        left.is_empty(),
        "processes left in Dovecot's namespace: {left:?}"
    );
    assert_eq!(mounts_in_root(), Vec::<String>::new());
    // What it delivered is where the host sees it.
    let delivered = std::fs::read_dir(fx.src().join("alice/Maildir/new"))
        .unwrap()
        .count();
    assert_eq!(delivered, 1);
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
            &maildirfs::capture::watch::Watch::new(&account.root),
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

fn cross_folder_move_never_loses_a_message_from_the_image(flavor: &Flavor) {
    let _s = serial();
    let fx = Fixture::new("dc-move");
    let dc = start(flavor, &fx, &["alice"]);
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
    let stop = AtomicBool::new(false);
    let moves = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for (to, from) in [("Other", "INBOX"), ("INBOX", "Other")] {
                    let ok = dc
                        .doveadm_command()
                        .args(["move", "-u", "alice", to, "mailbox", from, "all"])
                        .stdout(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success());
                    if ok {
                        moves.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        capture_while_moving(&fx, &root, &all, &stop, &moves);
    });
    dc.assert_clean_log();
}

/// The captures of [`cross_folder_move_never_loses_a_message_from_the_image`], while the
/// messages move; sets `stop` when done, whatever happens.
fn capture_while_moving(
    fx: &Fixture,
    root: &std::fs::File,
    all: &BTreeSet<String>,
    stop: &AtomicBool,
    moves: &AtomicUsize,
) {
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = Stop(stop);
    let lost_in = |policy: &LockPolicy, captures: usize| -> (usize, usize) {
        let mut lossy_images = 0;
        for _ in 0..captures {
            let seen: BTreeSet<String> = captured_ids(root, &fx.src(), policy)
                .into_values()
                .flatten()
                .collect();
            if seen != *all {
                lossy_images += 1;
                eprintln!(
                    "image missing {:?}",
                    all.difference(&seen).collect::<Vec<_>>()
                );
            }
        }
        (lossy_images, captures)
    };
    let (mut lost, mut n) = lost_in(&policy(false, 0), 60);
    // Dovecot 2.4's doveadm takes longer to start: go on until the mover has done enough.
    let end = Instant::now() + Duration::from_secs(60);
    while moves.load(Ordering::Relaxed) < 40 && Instant::now() < end {
        let (l, c) = lost_in(&policy(false, 0), 10);
        (lost, n) = (lost + l, n + c);
    }
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
    drop(stop);
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
}

fn policy(one_at_a_time: bool, gap_ms: u64) -> LockPolicy {
    LockPolicy {
        no_lock: false,
        strict: true,
        timeout: Duration::from_secs(30),
        test_hold: Duration::from_millis(gap_ms),
        one_mailbox_at_a_time: one_at_a_time,
        lock_host: None,
        places: Default::default(),
    }
}

fn churn_loses_no_message(flavor: &Flavor) {
    let _s = serial();
    let fx = Fixture::new("dc-churn");
    let setup = Setup {
        flavor: flavor.clone(),
        control: None,
        inbox_folder: false,
    };
    let (dc, journal) = churn_setup_with(&setup, &fx, 150);
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
        "churn through maildirfs, Dovecot {}: {} cycles, {} messages checked, {} lost, {} duplicated, \
         {} stray files; workload: {}",
        flavor.version(),
        report.cycles,
        report.checked,
        report.lost,
        report.duplicates,
        report.stray,
        report.work
    );
    assert!(report.cycles >= 5, "too few cycles: {}", report.cycles);
    assert_eq!(report.lost, 0, "lost messages: {:?}", report.lost_ids);
    assert_eq!(report.duplicates, 0);
    assert_eq!(report.incomplete, 0, "a message copied with other bytes");
    assert_eq!(report.stray, 0, "tmp/ content or lock files in a copy");
    assert_eq!(report.copy_errors, 0, "rsync of the view failed");
    dc.assert_clean_log();
}

fn restore_from_an_image_keeps_uids_flags_and_guids(flavor: &Flavor) {
    let _s = serial();
    let fx = Fixture::new("dc-restore");
    let dc = start(flavor, &fx, &["alice", "restored"]);
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
    let at_capture = dc.state("alice");
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
    let restored = dc.state("restored");
    assert_eq!(restored.0, at_capture.0, "mailbox status differs");
    assert_eq!(restored.1, at_capture.1, "messages differ");
    dc.assert_clean_log();
}
