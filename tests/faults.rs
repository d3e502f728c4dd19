//! Errors from the source: directories a user made unreadable, a mailbox made unreadable after
//! capture, a disk returning `EIO` under a pinned file, a control file rewritten while it is
//! read. Each is served or reported; the reader gets the error; the server keeps serving.
//!
//! Root reads everything (`CAP_DAC_READ_SEARCH`), so the permission tests run maildirfs as
//! root without `CAP_DAC_OVERRIDE` and `CAP_DAC_READ_SEARCH` (`setpriv --bounding-set`), which
//! is what a capture sees of a directory that a mail user chmods 000 on a root-squashed NFS
//! export, or under a hardened service unit.

use maildirfs_testkit as common;

use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::faulty;
use common::*;

/// Runs maildirfs without the capabilities that let root past mode bits.
const NO_DAC: &[&str] = &[
    "setpriv",
    "--bounding-set",
    "-dac_override,-dac_read_search",
];

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn read_err(p: &Path) -> Option<i32> {
    std::fs::read(p).err().and_then(|e| e.raw_os_error())
}

#[test]
fn unreadable_subdirectories_are_reported_and_the_rest_served() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("faults-unreadable");
    fx.mailbox("alice/Maildir");
    fx.write("alice/Maildir/cur/1.a:2,S", b"alice's\n");
    fx.mailbox("alice/Maildir/.Private");
    fx.write("alice/Maildir/.Private/new/2.p", b"private new\n");
    fx.write("alice/Maildir/.Private/cur/3.p:2,S", b"private cur\n");
    fx.mailbox("bob/Maildir");
    fx.write("bob/Maildir/cur/4.b:2,S", b"bob's\n");
    // A user owns and closes a folder's cur/ and a whole account; a plain directory too.
    let closed = [
        "alice/Maildir/.Private/cur",
        "bob/Maildir",
        "alice/Maildir/sieve",
    ];
    std::fs::create_dir(fx.src().join("alice/Maildir/sieve")).unwrap();
    for c in closed {
        let p = fx.src().join(c);
        chown(&p, Some(5000), Some(5000)).unwrap();
        chmod(&p, 0o700);
    }
    let log = fx.dir.join("log");
    let m = Mounted::wrapped(&fx, NO_DAC, &["--log-file", log.to_str().unwrap()]);
    assert!(
        m.stderr.contains("3 directories or files UNREADABLE"),
        "summary: {}",
        m.stderr
    );
    // Everything readable is served; what is closed is there, empty.
    assert_eq!(
        std::fs::read(m.mnt.join("alice/Maildir/cur/1.a:2,S")).unwrap(),
        b"alice's\n"
    );
    assert_eq!(
        std::fs::read(m.mnt.join("alice/Maildir/.Private/new/2.p")).unwrap(),
        b"private new\n"
    );
    for c in closed {
        let listed = std::fs::read_dir(m.mnt.join(c)).unwrap().count();
        assert_eq!(listed, 0, "{c} should be shown empty");
    }
    m.umount();
    let logged = std::fs::read_to_string(&log).unwrap();
    for c in closed {
        let path = fx.src().join(c);
        assert!(
            logged.contains(&format!("{}: Permission denied", path.display())),
            "log does not name {c}: {logged}"
        );
    }
    // Locks were taken (root owns alice's mailboxes) and none is left behind.
    assert!(!fx.src().join("alice/Maildir/dovecot-uidlist.lock").exists());
    for c in closed {
        chmod(&fx.src().join(c), 0o755);
    }
}

#[test]
fn mailbox_made_unreadable_after_capture_fails_reads_and_keeps_serving() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("faults-after");
    fx.mailbox("alice/Maildir");
    fx.write("alice/Maildir/cur/1.a:2,S", b"alice's\n");
    fx.mailbox("bob/Maildir");
    fx.write("bob/Maildir/cur/2.b:2,S", b"bob's\n");
    let log = fx.dir.join("log");
    // No pins (a 260-fd limit leaves none after the server's reserve), so each read opens the
    // file by its captured path, beneath SOURCE, as maildirfs does over its fd budget.
    let mut wrapper = NO_DAC.to_vec();
    wrapper.extend(["prlimit", "--nofile=260:260"]);
    let m = Mounted::wrapped(&fx, &wrapper, &["--log-file", log.to_str().unwrap()]);
    assert!(m.stderr.contains("0 files pinned"), "{}", m.stderr);
    let cur = fx.src().join("alice/Maildir/cur");
    chmod(&cur, 0o000);
    let alice = m.mnt.join("alice/Maildir/cur/1.a:2,S");
    assert_eq!(read_err(&alice), Some(libc::EACCES));
    // The server goes on: other accounts are served, and alice's message is again once the
    // directory is readable.
    assert_eq!(
        std::fs::read(m.mnt.join("bob/Maildir/cur/2.b:2,S")).unwrap(),
        b"bob's\n"
    );
    chmod(&cur, 0o755);
    assert_eq!(std::fs::read(&alice).unwrap(), b"alice's\n");
    let fin = m.umount();
    assert!(fin.contains("1 failed to read"), "umount said: {fin}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!(
            "cannot read {}: Permission denied",
            cur.join("1.a:2,S").display()
        )),
        "{logged}"
    );
}

#[test]
fn cur_made_unreadable_between_listing_and_freeze_shows_what_was_pinned() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("faults-midway");
    fx.mailbox("alice/Maildir");
    fx.write("alice/Maildir/cur/1.a:2,S", b"alice's\n");
    // The locks stay held 1.5 s after the listing and the pinning; cur/ is closed meanwhile.
    let mut cmd = std::process::Command::new(NO_DAC[0]);
    cmd.args(&NO_DAC[1..])
        .arg(bin())
        .arg("mount")
        .arg(fx.src())
        .arg(fx.mnt())
        .env("MAILDIRFS_TEST_HOLD_MS", "1500")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    wait_for_lock(&fx.src().join("alice/Maildir/dovecot-uidlist.lock"));
    let cur = fx.src().join("alice/Maildir/cur");
    chmod(&cur, 0o000);
    let out = child.wait_with_output().unwrap();
    let m = Mounted::adopt(fx.mnt());
    chmod(&cur, 0o755);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 directories or files UNREADABLE"), "{err}");
    assert_eq!(
        std::fs::read(m.mnt.join("alice/Maildir/cur/1.a:2,S")).unwrap(),
        b"alice's\n"
    );
}

#[test]
fn eio_under_a_pinned_file_reaches_the_reader_and_is_logged() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("faults-eio");
    let failing = Arc::new(AtomicBool::new(false));
    // Declared before the view, so dropped after it: the view's pins are on this source.
    let _source = faulty::mount(&fx.src(), Arc::clone(&failing));
    assert!(
        wait_for(Duration::from_secs(10), || fx
            .src()
            .join("Maildir/cur")
            .exists()),
        "the faulty source did not come up"
    );
    let log = fx.dir.join("log");
    let m = Mounted::new(&fx, &["--no-lock", "--log-file", log.to_str().unwrap()]);
    assert!(m.stderr.contains("all 4 files pinned"), "{}", m.stderr);
    failing.store(true, Ordering::SeqCst);
    let bad = m.mnt.join(faulty::BAD);
    assert_eq!(read_err(&bad), Some(libc::EIO));
    assert_eq!(read_err(&bad), Some(libc::EIO), "asked again");
    assert_eq!(
        std::fs::read(m.mnt.join(faulty::GOOD)).unwrap(),
        b"Subject: fine\n\nkept\n"
    );
    assert_eq!(
        std::fs::read(m.mnt.join(faulty::NEW)).unwrap(),
        b"Subject: new\n\nalso kept\n"
    );
    // The disk recovers: the same pin serves the bytes.
    failing.store(false, Ordering::SeqCst);
    assert_eq!(
        std::fs::read(&bad).unwrap(),
        b"Subject: bad sector\n\nlost\n"
    );
    let fin = m.umount();
    assert!(fin.contains("1 failed to read"), "umount said: {fin}");
    let logged = std::fs::read_to_string(&log).unwrap();
    let named = format!(
        "cannot read {}: Input/output error",
        fx.src().join(faulty::BAD).display()
    );
    assert_eq!(logged.matches(&named).count(), 1, "logged once: {logged}");
}

#[test]
fn control_files_rewritten_while_read_are_served_whole_or_reported() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("faults-control");
    let mbox = fx.mailbox("Maildir");
    fx.write("Maildir/cur/1.a:2,S", b"m\n");
    // Versions of a keywords file; a writer rewrites it in place (truncate, then write) and
    // another appends to the uidlist, as a tool that is not Dovecot might.
    let versions: Vec<Vec<u8>> = (1..40)
        .map(|n| {
            (0..n)
                .map(|i| format!("{i} kw{n}\n"))
                .collect::<String>()
                .into_bytes()
        })
        .collect();
    let keywords = mbox.join("dovecot-keywords");
    let uidlist = mbox.join("dovecot-uidlist");
    std::fs::write(&keywords, &versions[0]).unwrap();
    std::fs::write(&uidlist, b"3 V1 N2 Gabc\n").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, keywords, uidlist, versions) = (
            Arc::clone(&stop),
            keywords.clone(),
            uidlist.clone(),
            versions.clone(),
        );
        std::thread::spawn(move || {
            use std::io::{Seek, Write};
            let mut k = std::fs::OpenOptions::new()
                .write(true)
                .open(&keywords)
                .unwrap();
            let mut u = std::fs::OpenOptions::new()
                .append(true)
                .open(&uidlist)
                .unwrap();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                k.set_len(0).unwrap();
                k.rewind().unwrap();
                k.write_all(&versions[i % versions.len()]).unwrap();
                u.write_all(format!("{} :{i}.x\n", i + 1).as_bytes())
                    .unwrap();
                i += 1;
            }
        })
    };
    let log = fx.dir.join("log");
    let started = Instant::now();
    let mut mounts = 0;
    while mounts < 10 || started.elapsed() < Duration::from_secs(3) {
        let m = Mounted::new(&fx, &["--no-lock", "--log-file", log.to_str().unwrap()]);
        let k = std::fs::read(m.mnt.join("Maildir/dovecot-keywords")).unwrap();
        let k_size = std::fs::metadata(m.mnt.join("Maildir/dovecot-keywords"))
            .unwrap()
            .len();
        assert_eq!(k.len() as u64, k_size, "size and bytes disagree");
        assert!(
            versions.iter().any(|v| v.starts_with(&k)),
            "not a prefix of any version written: {:?}",
            String::from_utf8_lossy(&k)
        );
        let u = std::fs::read(m.mnt.join("Maildir/dovecot-uidlist")).unwrap();
        let u_size = std::fs::metadata(m.mnt.join("Maildir/dovecot-uidlist"))
            .unwrap()
            .len();
        assert_eq!(u.len() as u64, u_size);
        assert!(u.starts_with(b"3 V1 N2 Gabc\n"));
        // Served again, the same bytes: the image is frozen.
        assert_eq!(
            std::fs::read(m.mnt.join("Maildir/dovecot-keywords")).unwrap(),
            k
        );
        m.umount();
        mounts += 1;
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    for line in logged
        .lines()
        .filter(|l| l.contains("kept changing while read"))
    {
        assert!(line.contains("dovecot-"), "{line}");
    }
}

/// `rsync -a --delete FROM/ TO/`, as a nightly mirror would run it.
fn rsync_mirror(from: &Path, to: &Path) -> std::process::Output {
    std::process::Command::new("rsync")
        .arg("-a")
        .arg("--delete")
        .arg(format!("{}/", from.display()))
        .arg(format!("{}/", to.display()))
        .output()
        .expect("run rsync (installed by scripts/test)")
}

/// A source on which reading one account's `dovecot-keywords` hangs, as on a wedged disk or
/// NFS server, while maildirfs holds that account's locks. When dropped, it answers the hung
/// reads and unmounts once the servers that used it are gone (lazily after 10 s), so nothing
/// blocked in a read, and no mount, outlives the test.
struct HungSource {
    stall: Arc<faulty::Stall>,
    at: std::path::PathBuf,
    _session: fuser::BackgroundSession,
}

impl HungSource {
    /// Reads of the keywords file hang once the mailbox is locked.
    fn mount(fx: &Fixture) -> HungSource {
        Self::mount_with(fx, faulty::Stall::engage)
    }

    fn mount_with(fx: &Fixture, engage: fn(&faulty::Stall)) -> HungSource {
        let stall = faulty::Stall::new();
        engage(&stall);
        let session = faulty::mount_with(
            &fx.src(),
            faulty::Controls {
                stall: Arc::clone(&stall),
                writable: true,
                ..faulty::Controls::default()
            },
        );
        assert!(
            wait_for(Duration::from_secs(10), || fx
                .src()
                .join("other/Maildir/cur")
                .exists()),
            "the faulty source did not come up"
        );
        HungSource {
            stall,
            at: fx.src(),
            _session: session,
        }
    }
}

impl Drop for HungSource {
    fn drop(&mut self) {
        self.stall.release();
        let umount = |lazy: bool| {
            let mut c = std::process::Command::new("umount");
            if lazy {
                c.arg("-l");
            }
            c.arg(&self.at)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        // Busy while a server that held a read on it finishes exiting.
        if !wait_for(Duration::from_secs(10), || umount(false)) {
            umount(true);
        }
    }
}

#[test]
fn a_capture_hung_under_its_locks_releases_them_and_the_other_accounts_are_served() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("faults-stall");
    // Declared before the view, so dropped after it.
    let source = HungSource::mount(&fx);
    // Last night's backup of the source (no lock is taken, so nothing is held).
    let backup = fx.dir.join("backup");
    assert!(rsync_mirror(&fx.src(), &backup).status.success());
    let log = fx.dir.join("log");
    let m = Mounted::new(
        &fx,
        &["--stall-timeout", "1", "--log-file", log.to_str().unwrap()],
    );
    // The read is still hung: the locks were released while the capture was stuck in it.
    assert!(source.stall.waiting() >= 1, "the keywords read is held");
    assert_eq!(lock_files(&fx.src()), Vec::<std::path::PathBuf>::new());
    assert!(
        m.stderr
            .contains("1 accounts STALLED during capture, their locks released, EIO"),
        "summary: {}",
        m.stderr
    );
    // The hung account fails with EIO; the other is served.
    let listed =
        std::fs::read_dir(m.mnt.join("Maildir")).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert_eq!(listed.err().and_then(|e| e.raw_os_error()), Some(libc::EIO));
    let looked_up = std::fs::symlink_metadata(m.mnt.join(faulty::GOOD)).err();
    assert_eq!(looked_up.and_then(|e| e.raw_os_error()), Some(libc::EIO));
    // A mirror of the view says so and deletes nothing of the account's earlier copy.
    let out = rsync_mirror(&m.mnt, &backup);
    assert_eq!(
        out.status.code(),
        Some(23),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        backup.join(faulty::GOOD).exists(),
        "the earlier copy was deleted"
    );
    assert!(backup.join(faulty::OTHER).exists());
    assert_eq!(
        std::fs::read(m.mnt.join(faulty::OTHER)).unwrap(),
        b"Subject: other\n\nserved\n"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("stalled") && logged.contains("locks released"),
        "log: {logged}"
    );
    // Unmounting works while the worker is still stuck (`umount` waits for the server's state
    // file, which it closes on the way out whatever its threads are blocked in), and exits 1:
    // the view could not serve that account.
    m.umount_incomplete();
    assert!(source.stall.waiting() >= 1, "still held when unmounted");
    // The disk comes back: the stuck worker's read is answered.
    source.stall.release();
    assert!(wait_for(Duration::from_secs(5), || source.stall.waiting() == 0));
    assert_eq!(lock_files(&fx.src()), Vec::<std::path::PathBuf>::new());
}

#[test]
fn sigterm_during_a_hung_capture_releases_every_lock_within_a_second() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("faults-stall-term");
    let source = HungSource::mount(&fx);
    // A stall timeout far beyond the test: only the signal can free the locks.
    let child = spawn_mount(&fx, &["--stall-timeout", "600"], &[]);
    let lock = fx.src().join("Maildir/dovecot-uidlist.lock");
    let pid = wait_for_lock(&lock);
    assert!(
        wait_for(Duration::from_secs(10), || source.stall.waiting() >= 1),
        "the capture did not reach the hung read"
    );
    assert!(lock.exists(), "the lock is held while the capture hangs");
    signal(pid, "-TERM");
    let sent = Instant::now();
    assert!(
        wait_for(Duration::from_secs(1), || lock_files(&fx.src()).is_empty()),
        "locks left {:?} after {:?}",
        lock_files(&fx.src()),
        sent.elapsed()
    );
    eprintln!("locks gone {:?} after SIGTERM", sent.elapsed());
    // The server ends on its own, though its capture thread is still blocked in the read.
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "the server is still running"
    );
    let out = child.wait_with_output().unwrap();
    eprintln!("mount returned {:?} after SIGTERM", sent.elapsed());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("interrupted"), "stderr: {stderr}");
    assert!(!is_mounted(&fx.mnt()));
    assert_eq!(lock_files(&fx.src()), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_capture_hung_before_its_locks_is_given_up_and_the_other_accounts_are_served() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("faults-stall-early");
    // Every read of the keywords file hangs, so the capture hangs in the read it makes before
    // locking (to warm the cache): no lock is ever taken on that account.
    let source = HungSource::mount_with(&fx, faulty::Stall::engage_always);
    let m = Mounted::new(&fx, &["--stall-timeout", "1"]);
    assert!(source.stall.waiting() >= 1, "the warm-up read is held");
    assert!(!fx.src().join("Maildir/dovecot-uidlist.lock").exists());
    assert!(
        m.stderr.contains("1 accounts STALLED"),
        "summary: {}",
        m.stderr
    );
    let listed =
        std::fs::read_dir(m.mnt.join("Maildir")).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    assert_eq!(listed.err().and_then(|e| e.raw_os_error()), Some(libc::EIO));
    assert_eq!(
        std::fs::read(m.mnt.join(faulty::OTHER)).unwrap(),
        b"Subject: other\n\nserved\n"
    );
    m.umount_incomplete();
    source.stall.release();
    assert_eq!(lock_files(&fx.src()), Vec::<std::path::PathBuf>::new());
}
