//! The product through real mounts: what the view shows, that it stays frozen, that it is
//! read-only, the lock protocol as seen from outside, the errors, and detaching.

use maildirfs_testkit as common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A fixture with every kind of file the spec names.
fn full_fixture() -> Fixture {
    let fx = Fixture::new("full");
    let inbox = "example.org/alice/Maildir";
    fx.mailbox(inbox);
    fx.mailbox(&format!("{inbox}/.Sent"));
    fx.mailbox(&format!("{inbox}/..DOVECOT-TRASHED"));
    fx.write(format!("{inbox}/new/1000.M1P1.host,S=12"), b"new message\n");
    fx.write(
        format!("{inbox}/cur/1001.M2P2.host,S=13:2,S"),
        b"seen message\n",
    );
    fx.write(
        format!("{inbox}/cur/1002.M3P3.host:2,RS"),
        &[0u8, 1, 2, 255, 254],
    );
    fx.write(
        Path::new(inbox)
            .join("cur")
            .join(OsStr::from_bytes(b"1003.bad\xffname:2,")),
        b"latin1 name\n",
    );
    fx.write(format!("{inbox}/tmp/1004.M4P4.host"), b"half-writ");
    fx.write(format!("{inbox}/..DOVECOT-TRASHED/cur/9.x:2,"), b"trashed");
    fx.write(format!("{inbox}/.Sent/cur/1005.M5P5.host:2,S"), b"sent\n");
    fx.write(format!("{inbox}/.Sent/maildirfolder"), b"");
    fx.write(
        format!("{inbox}/dovecot-uidlist"),
        b"3 V1700000000 N4 G0123\n1 :1001.M2P2.host,S=13\n",
    );
    fx.write(format!("{inbox}/dovecot-keywords"), b"0 $Forwarded\n");
    fx.write(format!("{inbox}/subscriptions"), b"Sent\n");
    fx.write(format!("{inbox}/dovecot.index"), b"index");
    fx.write(format!("{inbox}/dovecot.index.log"), b"log");
    fx.write(format!("{inbox}/dovecot.index.cache"), b"cache");
    fx.write(format!("{inbox}/maildirsize"), b"0S\n");
    // Lock and temp files of every kind: all hidden.
    for name in [
        "dovecot-uidlist.tmp",
        "dovecot-keywords.lock",
        "dovecot.index.log.newlock",
        "dovecot.index.tmp",
        ".temp.host.123.0123456789abcdef",
        "temp.host.123.0123456789abcdef",
        "maildirsizehost.123.0a1b",
        ".nfs00000001",
        "dovecot-vsize.lock",
    ] {
        fx.write(format!("{inbox}/{name}"), b"x");
    }
    fx.write("example.org/alice/mailboxes.lock0123456789abcdef", b"x");
    fx.write(format!("{inbox}/cur/.nfs0000002"), b"x");
    std::os::unix::fs::symlink("/etc/shadow", fx.src().join(inbox).join("cur/evil")).unwrap();
    let fifo = fx.src().join(inbox).join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // Owner and mode must come through as they are.
    let private = fx.src().join(inbox).join("cur/1001.M2P2.host,S=13:2,S");
    std::os::unix::fs::chown(&private, Some(5000), Some(5001)).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A second account without tmp/, and a file outside any mailbox.
    let bob = fx.src().join("example.org/bob/Maildir");
    std::fs::create_dir_all(bob.join("cur")).unwrap();
    std::fs::create_dir_all(bob.join("new")).unwrap();
    fx.write("example.org/bob/Maildir/new/2000.M9P9.host", b"for bob\n");
    fx.write("example.org/bob/sieve/main.sieve", b"keep;\n");
    fx
}

/// What the spec says the view of `full_fixture` shows: the source minus hidden names,
/// `tmp/` contents and special files, plus bob's `tmp/`.
fn expected_paths(fx: &Fixture, exclude_indexes: bool) -> BTreeSet<Vec<u8>> {
    let hidden_parts: &[&[u8]] = &[
        b"..DOVECOT-TRASHED",
        b"dovecot-uidlist.tmp",
        b"dovecot-keywords.lock",
        b"dovecot.index.log.newlock",
        b"dovecot.index.tmp",
        b".temp.host.123.0123456789abcdef",
        b"temp.host.123.0123456789abcdef",
        b"maildirsizehost.123.0a1b",
        b".nfs00000001",
        b".nfs0000002",
        b"dovecot-vsize.lock",
        b"mailboxes.lock0123456789abcdef",
        b"fifo",
    ];
    let mut want: BTreeSet<Vec<u8>> = tree(&fx.src(), false)
        .into_keys()
        .filter(|rel| {
            let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
            let last = parts.last().copied().unwrap_or_default();
            let hidden = parts.iter().any(|p| hidden_parts.contains(p));
            let in_tmp = parts.len() >= 2 && parts[parts.len() - 2] == b"tmp";
            let index = exclude_indexes && last.starts_with(b"dovecot.index");
            !(hidden || in_tmp || index)
        })
        .collect();
    want.insert(b"example.org/bob/Maildir/tmp".to_vec());
    want
}

#[test]
fn view_shows_exactly_what_the_spec_says_byte_for_byte() {
    if !fuse_available() {
        return;
    }
    let fx = full_fixture();
    let m = Mounted::new(&fx, &[]);
    // Read after the mount: creating and removing our lock files changes the mailbox
    // directories' mtime, as every Dovecot lock does; the view shows them as captured.
    let src_tree = tree(&fx.src(), true);
    let view = tree(&m.mnt, true);
    let got: BTreeSet<Vec<u8>> = view.keys().cloned().collect();
    assert_eq!(got, expected_paths(&fx, false));
    for (rel, seen) in &view {
        if rel.as_slice() == b"example.org/bob/Maildir/tmp" {
            assert_eq!(seen.kind, "dir");
            continue;
        }
        let s = &src_tree[rel];
        let what = String::from_utf8_lossy(rel);
        assert_eq!(seen.kind, s.kind, "{what}");
        assert_eq!(seen.ino, s.ino, "st_ino of {what}");
        assert_eq!(seen.mode, s.mode, "mode of {what}");
        assert_eq!((seen.uid, seen.gid), (s.uid, s.gid), "owner of {what}");
        assert_eq!(seen.mtime, s.mtime, "mtime of {what}");
        assert_eq!(seen.ctime, s.ctime, "ctime of {what}");
        if seen.kind == "file" {
            assert_eq!(seen.nlink, s.nlink, "nlink of {what}");
        }
        assert_eq!(seen.size, s.size, "size of {what}");
        assert_eq!(seen.bytes, s.bytes, "bytes of {what}");
        assert_eq!(seen.link, s.link, "link target of {what}");
    }
    // tmp/ is there and empty; the symlink is shown, not followed.
    let tmp = m.mnt.join("example.org/alice/Maildir/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    let evil = m.mnt.join("example.org/alice/Maildir/cur/evil");
    assert_eq!(std::fs::read_link(&evil).unwrap(), Path::new("/etc/shadow"));
    assert!(m.stderr.contains("2 accounts"), "summary: {}", m.stderr);
    assert!(
        m.stderr.contains("all accounts locked"),
        "summary: {}",
        m.stderr
    );
    // The FIFO is left out, and the summary says so.
    assert!(
        m.stderr.contains("1 special files"),
        "summary: {}",
        m.stderr
    );
    m.umount();
    assert!(lock_files(&fx.src()).is_empty());
}

#[test]
fn exclude_indexes_hides_index_files() {
    if !fuse_available() {
        return;
    }
    let fx = full_fixture();
    let m = Mounted::new(&fx, &["--exclude-indexes"]);
    let got: BTreeSet<Vec<u8>> = tree(&m.mnt, false).into_keys().collect();
    assert_eq!(got, expected_paths(&fx, true));
    drop(m);
    // The -o form does the same.
    let m = Mounted::new(&fx, &["-o", "ro,exclude_indexes"]);
    assert!(
        !m.mnt
            .join("example.org/alice/Maildir/dovecot.index")
            .exists()
    );
    assert!(
        m.mnt
            .join("example.org/alice/Maildir/dovecot-uidlist")
            .exists()
    );
}

/// Below this fd limit the server keeps no pins: every file is served by re-resolution.
const NO_PINS: u64 = 260;

#[test]
fn unpinned_renamed_messages_are_found_again_by_base_name() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("rename");
    let mb = fx.mailbox("Maildir");
    fx.write("Maildir/new/1.M1P1.host", b"moved to cur\n");
    fx.write("Maildir/cur/2.M2P2.host:2,", b"flag change\n");
    let m = Mounted::with_nofile(&fx, &[], NO_PINS);
    assert!(
        m.stderr.contains("0 files pinned, 2 unpinned"),
        "summary: {}",
        m.stderr
    );
    // After capture: new -> cur with flags, and a flag change, like Dovecot does.
    std::fs::rename(mb.join("new/1.M1P1.host"), mb.join("cur/1.M1P1.host:2,S")).unwrap();
    std::fs::rename(
        mb.join("cur/2.M2P2.host:2,"),
        mb.join("cur/2.M2P2.host:2,RS"),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(m.mnt.join("Maildir/new/1.M1P1.host")).unwrap(),
        b"moved to cur\n"
    );
    assert_eq!(
        std::fs::read(m.mnt.join("Maildir/cur/2.M2P2.host:2,")).unwrap(),
        b"flag change\n"
    );
    assert!(!m.mnt.join("Maildir/cur/1.M1P1.host:2,S").exists());
    let fin = m.umount();
    assert!(fin.contains("2 files renamed"), "umount said: {fin}");
}

#[test]
fn unpinned_expunged_message_fails_cleanly_never_with_other_bytes() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("expunge");
    let mb = fx.mailbox("Maildir");
    fx.write("Maildir/cur/1.M1P1.host:2,S", b"gone soon\n");
    let log = fx.dir.join("log");
    let m = Mounted::with_nofile(&fx, &["--log-file", log.to_str().unwrap()], NO_PINS);
    std::fs::remove_file(mb.join("cur/1.M1P1.host:2,S")).unwrap();
    // Another file takes the name (and often the freed inode number): it must not be served
    // in place of the captured one.
    std::fs::write(mb.join("cur/1.M1P1.host:2,S"), b"impostor\n").unwrap();
    let err = std::fs::read(m.mnt.join("Maildir/cur/1.M1P1.host:2,S")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    let fin = m.umount();
    assert!(fin.contains("1 vanished"), "umount said: {fin}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("1.M1P1.host:2,S is gone"), "log: {logged}");
    assert!(logged.contains("1 vanished"), "log: {logged}");
}

#[test]
fn every_write_fails_with_erofs_and_source_is_unchanged() {
    if !fuse_available() {
        return;
    }
    let fx = full_fixture();
    let before = tree(&fx.src(), true);
    let m = Mounted::new(&fx, &[]);
    let inbox = m.mnt.join("example.org/alice/Maildir");
    let msg = inbox.join("new/1000.M1P1.host,S=12");
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(std::fs::write(inbox.join("new/x"), b"x"), "create");
    erofs(
        std::fs::OpenOptions::new().write(true).open(&msg).map(drop),
        "open for writing",
    );
    erofs(
        std::fs::OpenOptions::new()
            .append(true)
            .open(&msg)
            .map(drop),
        "open for append",
    );
    erofs(std::fs::create_dir(inbox.join("d")), "mkdir");
    erofs(std::fs::remove_file(&msg), "unlink");
    erofs(std::fs::remove_dir(inbox.join("tmp")), "rmdir");
    erofs(std::fs::rename(&msg, inbox.join("cur/y")), "rename");
    erofs(std::fs::hard_link(&msg, inbox.join("cur/z")), "link");
    erofs(
        std::os::unix::fs::symlink("x", inbox.join("cur/s")),
        "symlink",
    );
    erofs(
        std::fs::set_permissions(&msg, std::fs::Permissions::from_mode(0o777)),
        "chmod",
    );
    erofs(std::os::unix::fs::chown(&msg, Some(1), None), "chown");
    erofs(
        std::fs::File::open(&msg).and_then(|f| f.set_modified(std::time::SystemTime::now())),
        "utimes",
    );
    let xattr = Command::new("setfattr")
        .args(["-n", "user.x", "-v", "1"])
        .arg(&msg)
        .output();
    if let Ok(o) = xattr {
        assert!(!o.status.success(), "setxattr succeeded");
    }
    m.umount();
    let after = tree(&fx.src(), true);
    assert_eq!(
        without_lock_dir_times(&before),
        without_lock_dir_times(&after),
        "the source changed"
    );
    assert!(lock_files(&fx.src()).is_empty());
}

#[test]
fn foreign_live_lock_makes_mount_wait_then_capture_without_it() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("foreign");
    fx.mailbox("Maildir");
    fx.mailbox("Maildir/.Sent");
    fx.write("Maildir/new/1.x", b"a");
    // Held by this (live) test process on this host, the way Dovecot writes it.
    let content = format!("{}:{}", std::process::id(), hostname());
    let lock = fx.write("Maildir/.Sent/dovecot-uidlist.lock", content.as_bytes());
    let started = Instant::now();
    let m = Mounted::new(&fx, &["--lock-timeout", "1"]);
    assert!(started.elapsed() >= Duration::from_secs(1), "did not wait");
    assert!(m.stderr.contains("WITHOUT lock"), "summary: {}", m.stderr);
    assert!(
        m.stderr.contains("dovecot-uidlist.lock"),
        "summary: {}",
        m.stderr
    );
    assert_eq!(std::fs::read(m.mnt.join("Maildir/new/1.x")).unwrap(), b"a");
    // The foreign lock is hidden in the view and untouched in the source.
    assert!(!m.mnt.join("Maildir/.Sent/dovecot-uidlist.lock").exists());
    m.umount();
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), content);
    // Our own INBOX lock is gone.
    assert!(!fx.src().join("Maildir/dovecot-uidlist.lock").exists());

    // --strict-lock: fail, name the lock, leave it alone, leave nothing of ours.
    let out = run(
        &[
            OsStr::new("mount"),
            OsStr::new("--strict-lock"),
            OsStr::new("--lock-timeout"),
            OsStr::new("1"),
            fx.src().as_os_str(),
            fx.mnt().as_os_str(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("dovecot-uidlist.lock"), "{err}");
    assert!(err.lines().count() == 1, "not one line: {err}");
    assert!(!is_mounted(&fx.mnt()));
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), content);
    assert!(!fx.src().join("Maildir/dovecot-uidlist.lock").exists());
}

#[test]
fn all_locks_of_an_account_are_held_at_once_and_touched() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("atonce");
    let boxes = [
        "Maildir",
        "Maildir/.Sent",
        "Maildir/.Trash",
        "Maildir/.Lists.rust",
    ];
    for b in boxes {
        fx.mailbox(b);
    }
    let locks: Vec<_> = boxes
        .iter()
        .map(|b| fx.src().join(b).join("dovecot-uidlist.lock"))
        .collect();
    let mnt = fx.mnt();
    let mut child = spawn_mount(
        &fx,
        &[],
        &[
            ("MAILDIRFS_TEST_HOLD_MS", "1500"),
            ("MAILDIRFS_TEST_TOUCH_MS", "200"),
        ],
    );
    wait_for_lock(&locks[0]);
    // All of them exist at the same instant, with Dovecot's content.
    assert!(wait_for(Duration::from_secs(1), || locks
        .iter()
        .all(|l| l.exists())));
    let contents: Vec<String> = locks
        .iter()
        .map(|l| std::fs::read_to_string(l).unwrap())
        .collect();
    let host = hostname();
    let pid = contents[0].split(':').next().unwrap().to_owned();
    for c in &contents {
        assert_eq!(c, &format!("{pid}:{host}"), "lock content");
    }
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "lock names a dead pid"
    );
    // Touched while held.
    let m0 = std::fs::metadata(&locks[0]).unwrap().mtime_nsec();
    let m0s = std::fs::metadata(&locks[0]).unwrap().mtime();
    assert!(wait_for(Duration::from_secs(2), || {
        std::fs::metadata(&locks[0])
            .map(|m| (m.mtime(), m.mtime_nsec()) != (m0s, m0))
            .unwrap_or(true)
    }));
    let status = child.wait().unwrap();
    let _guard = Mounted::adopt(mnt.clone());
    assert!(status.success());
    for l in &locks {
        assert!(!l.exists(), "{} left behind", l.display());
    }
}

#[test]
fn sigterm_or_sigint_during_capture_releases_every_lock() {
    if !fuse_available() {
        return;
    }
    for sig in ["-TERM", "-INT"] {
        let fx = Fixture::new("sigcap");
        fx.mailbox("Maildir");
        fx.mailbox("Maildir/.Sent");
        let lock = fx.src().join("Maildir/dovecot-uidlist.lock");
        let child = spawn_mount(&fx, &[], &[("MAILDIRFS_TEST_HOLD_MS", "5000")]);
        let server = wait_for_lock(&lock);
        signal(server, sig);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{sig}: {err}");
        assert!(err.contains("interrupted"), "{sig}: {err}");
        assert!(wait_gone(server, Duration::from_secs(5)));
        assert!(lock_files(&fx.src()).is_empty(), "locks left after {sig}");
        assert!(!is_mounted(&fx.mnt()));
    }
}

#[test]
fn sigterm_to_the_server_unmounts_cleanly() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("sigterm");
    fx.mailbox("Maildir");
    fx.write("Maildir/new/1.x", b"a");
    let m = Mounted::new(&fx, &[]);
    let pid = server_pid(&m.mnt).expect("server pid");
    signal(pid, "-TERM");
    assert!(
        wait_gone(pid, Duration::from_secs(10)),
        "server still running"
    );
    assert!(wait_for(Duration::from_secs(5), || !is_mounted(&m.mnt)));
    assert!(lock_files(&fx.src()).is_empty());
}

#[test]
fn mount_returns_only_when_ready_and_holds_no_caller_pipes() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ready");
    fx.mailbox("Maildir");
    for i in 0..500 {
        fx.write(format!("Maildir/cur/{i}.M{i}P1.host:2,S"), b"m");
    }
    let src = fx.src();
    let mnt = fx.mnt();
    // Output captured through pipes: output() returns only when every holder of the pipes
    // has closed them, so a server that kept them would hang here until unmounted.
    let (tx, rx) = std::sync::mpsc::channel();
    let (s2, m2) = (src.clone(), mnt.clone());
    std::thread::spawn(move || {
        let out = Command::new(bin())
            .args([OsStr::new("mount"), s2.as_os_str(), m2.as_os_str()])
            .stdin(Stdio::null())
            .output();
        let _ = tx.send(out);
    });
    let out = rx.recv_timeout(Duration::from_secs(30));
    let _guard = Mounted::adopt(mnt.clone());
    let out = out
        .expect("mount with piped output did not return")
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("500 messages"));
    // Immediately usable: find sees every message.
    let found = Command::new("find")
        .arg(&mnt)
        .arg("-type")
        .arg("f")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&found.stdout).lines().count(), 500);
}

/// Runs `maildirfs mount SRC MNT` and returns (exit code, stderr).
fn mount_err(src: &Path, mnt: &Path) -> (Option<i32>, String) {
    let out = run(
        &[OsStr::new("mount"), src.as_os_str(), mnt.as_os_str()],
        &[],
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(code: Option<i32>, err: &str, path: &Path, why: &str) {
    assert_eq!(code, Some(1), "exit status; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("maildirfs: "), "{err}");
    assert!(
        err.contains(&path.display().to_string()),
        "path not named: {err}"
    );
    assert!(err.contains(why), "reason {why:?} missing: {err}");
}

#[test]
fn bad_input_gets_one_clear_line_and_exit_1() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("errors");
    fx.mailbox("Maildir");
    let src = fx.src();
    let mnt = fx.mnt();

    let missing = fx.dir.join("nonexistent");
    let (c, e) = mount_err(&missing, &mnt);
    assert_one_line_error(c, &e, &missing, "No such file or directory");

    let file = fx.dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let (c, e) = mount_err(&file, &mnt);
    assert_one_line_error(c, &e, &file, "not a directory");

    let empty = fx.dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (c, e) = mount_err(&empty, &mnt);
    assert_one_line_error(c, &e, &empty, "holds no Maildir");

    let (c, e) = mount_err(&src, &missing);
    assert_one_line_error(c, &e, &missing, "No such file or directory");

    let (c, e) = mount_err(&src, &file);
    assert_one_line_error(c, &e, &file, "not a directory");

    let inside = src.join("Maildir/cur");
    let (c, e) = mount_err(&src, &inside);
    assert_one_line_error(c, &e, &inside, "inside the source");

    let m = Mounted::new(&fx, &[]);
    let (c, e) = mount_err(&src, &mnt);
    assert_one_line_error(c, &e, &mnt, "already mounted");
    drop(m);

    // Unreadable source and no permission to use FUSE: as an unprivileged user.
    let private = fx.dir.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&fx.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |s: &Path, m: &Path| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin())
            .arg("mount")
            .arg(s)
            .arg(m)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (c, e) = as_nobody(&private, &mnt);
    assert_one_line_error(c, &e, &private, "Permission denied");
    let nobody_mnt = fx.dir.join("nobody-mnt");
    std::fs::create_dir(&nobody_mnt).unwrap();
    std::os::unix::fs::chown(&nobody_mnt, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fuse_mode = std::fs::metadata("/dev/fuse").unwrap().mode() & 0o777;
    if fuse_mode & 0o006 == 0 {
        let (c, e) = as_nobody(&src, &nobody_mnt);
        assert_one_line_error(c, &e, Path::new("/dev/fuse"), "Permission denied");
    }
    // No /dev/fuse at all: a private mount namespace with an empty /dev.
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /dev && exec {} mount '{}' '{}'",
            bin().display(),
            src.display(),
            mnt.display()
        ))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert_one_line_error(
        out.status.code(),
        &e,
        Path::new("/dev/fuse"),
        "No such file",
    );

    // Usage errors exit 2.
    let out = run(&[OsStr::new("mount"), src.as_os_str()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(
        &[
            OsStr::new("mount"),
            OsStr::new("-o"),
            OsStr::new("bogus"),
            src.as_os_str(),
            mnt.as_os_str(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));

    // umount of something that is not a maildirfs view.
    let out = run(&[OsStr::new("umount"), mnt.as_os_str()], &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_one_line_error(out.status.code(), &e, &mnt, "not mounted");

    // Nothing of ours is left anywhere in the source.
    assert!(lock_files(&src).is_empty());
}

#[test]
fn passthrough_serves_the_same_bytes_and_says_so() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("passthrough");
    fx.mailbox("Maildir");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fx.write("Maildir/cur/1.big:2,S", &big);
    fx.write("Maildir/cur/2.small:2,S", b"small\n");
    fx.write("Maildir/dovecot-uidlist", b"3 V1 N3\n");
    let m = Mounted::new(&fx, &["--passthrough"]);
    // Kernels without FUSE passthrough fall back, and the summary says which one it is.
    assert!(
        m.stderr.contains("reads: kernel passthrough")
            || m.stderr.contains("passthrough not available"),
        "summary: {}",
        m.stderr
    );
    for _ in 0..2 {
        assert_eq!(
            std::fs::read(m.mnt.join("Maildir/cur/1.big:2,S")).unwrap(),
            big
        );
        assert_eq!(
            std::fs::read(m.mnt.join("Maildir/cur/2.small:2,S")).unwrap(),
            b"small\n"
        );
        // Control files are served from memory even in passthrough mode.
        assert_eq!(
            std::fs::read(m.mnt.join("Maildir/dovecot-uidlist")).unwrap(),
            b"3 V1 N3\n"
        );
    }
    // Many opens of one inode at once share one backing file.
    let files: Vec<std::fs::File> = (0..8)
        .map(|_| std::fs::File::open(m.mnt.join("Maildir/cur/1.big:2,S")).unwrap())
        .collect();
    let mut buf = vec![0u8; 4096];
    for f in &files {
        use std::os::unix::fs::FileExt;
        assert_eq!(f.read_at(&mut buf, 1000).unwrap(), 4096);
        assert_eq!(&buf[..], &big[1000..5096]);
    }
    drop(files);
    m.umount();
}

#[test]
fn umount_clears_the_mount_of_a_crashed_server_and_a_new_mount_works() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("crash");
    fx.mailbox("Maildir");
    fx.write("Maildir/cur/1.x:2,S", b"a");
    let m = Mounted::new(&fx, &[]);
    let pid = server_pid(&m.mnt).expect("server pid");
    signal(pid, "-KILL");
    assert!(wait_gone(pid, Duration::from_secs(10)));
    // The mount point stays inaccessible (not empty) until it is cleared.
    let err = std::fs::read_dir(&m.mnt).unwrap_err();
    assert!(
        matches!(
            err.raw_os_error(),
            Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
        ),
        "{err}"
    );
    m.umount();
    let m = Mounted::new(&fx, &[]);
    assert_eq!(
        std::fs::read(m.mnt.join("Maildir/cur/1.x:2,S")).unwrap(),
        b"a"
    );
    m.umount();
    assert!(lock_files(&fx.src()).is_empty());
}

#[test]
fn umount_waits_briefly_for_a_reader_that_is_letting_go() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("umount-busy");
    fx.mailbox("Maildir");
    fx.write("Maildir/cur/1.a:2,S", b"a\n");
    let m = Mounted::new(&fx, &[]);
    // A reader still has a file open when umount starts, and closes it 300 ms later (a
    // backup just finishing, or a process forked while it had the file open).
    let reader = std::fs::File::open(m.mnt.join("Maildir/cur/1.a:2,S")).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(reader);
    });
    let out = run(&[OsStr::new("umount"), m.mnt.as_os_str()], &[]);
    closer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&m.mnt));
    // One that keeps its file open makes umount fail, naming the mount point.
    let m = Mounted::new(&fx, &[]);
    let _held = std::fs::File::open(m.mnt.join("Maildir/cur/1.a:2,S")).unwrap();
    let out = run(&[OsStr::new("umount"), m.mnt.as_os_str()], &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("busy"), "{said}");
    drop(_held);
}
