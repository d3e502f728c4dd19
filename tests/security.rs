//! Hardening: a root daemon over everyone's mail. Each attack or fault is its own test.

use maildirfs_testkit as common;

use std::ffi::OsStr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Below this fd limit the server keeps no pins, so every open goes to the live tree.
const NO_PINS: u64 = 260;

/// A place outside SOURCE with a file named like a captured message.
fn outside_with_secret(fx: &Fixture) -> std::path::PathBuf {
    let out = fx.dir.join("outside");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(out.join(d)).unwrap();
    }
    std::fs::write(out.join("cur/1.M1P1.host:2,S"), b"SECRET\n").unwrap();
    out
}

fn read_as(uid: u32, path: &Path) -> std::io::Result<Vec<u8>> {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
            "cat",
        ])
        .arg(path)
        .output()?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = if err.contains("Permission denied") {
            libc::EACCES
        } else {
            libc::EIO
        };
        Err(std::io::Error::from_raw_os_error(code))
    }
}

#[test]
fn symlink_planted_in_cur_is_shown_as_a_symlink_never_followed() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("sec-symlink");
    fx.mailbox("Maildir");
    std::os::unix::fs::symlink("/etc/shadow", fx.src().join("Maildir/cur/2.evil:2,S")).unwrap();
    let m = Mounted::new(&fx, &[]);
    let link = m.mnt.join("Maildir/cur/2.evil:2,S");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/etc/shadow"));
    // Opening the entry itself without following gives the link, not any bytes of the target.
    let err = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&link)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
}

/// Mounts a one-message store with no pins, lets `swap` replace part of the live tree by a
/// symlink to a place outside holding a file of the same name, and checks the captured
/// message is not served from there.
fn swapped_after_capture_serves_nothing_outside(tag: &str, swap: impl FnOnce(&Fixture, &Path)) {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new(tag);
    fx.mailbox("Maildir");
    fx.write("Maildir/cur/1.M1P1.host:2,S", b"captured\n");
    let outside = outside_with_secret(&fx);
    let m = Mounted::with_nofile(&fx, &[], NO_PINS);
    swap(&fx, &outside);
    let got = std::fs::read(m.mnt.join("Maildir/cur/1.M1P1.host:2,S"));
    assert!(
        got.is_err(),
        "served {:?}",
        got.map(|b| String::from_utf8_lossy(&b).into_owned())
    );
}

#[test]
fn cur_swapped_for_a_symlink_after_capture_serves_nothing_outside() {
    swapped_after_capture_serves_nothing_outside("sec-cur", |fx, outside| {
        let mb = fx.src().join("Maildir");
        std::fs::rename(mb.join("cur"), mb.join("cur.moved")).unwrap();
        std::os::unix::fs::symlink(outside.join("cur"), mb.join("cur")).unwrap();
    });
}

#[test]
fn mailbox_swapped_for_a_symlink_after_capture_serves_nothing_outside() {
    swapped_after_capture_serves_nothing_outside("sec-mbox", |fx, outside| {
        std::fs::rename(fx.src().join("Maildir"), fx.src().join("Maildir.moved")).unwrap();
        std::os::unix::fs::symlink(outside, fx.src().join("Maildir")).unwrap();
    });
}

#[test]
fn cur_swapped_for_a_symlink_between_listing_and_freeze_is_shown_as_a_symlink() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("sec-midswap");
    fx.mailbox("Maildir");
    fx.write("Maildir/cur/1.M1P1.host:2,S", b"captured\n");
    let outside = outside_with_secret(&fx);
    // The locks stay held 1.5 s after the listing (and the pinning): swap cur/ meanwhile,
    // before freeze walks the tree.
    let child = spawn_mount(&fx, &[], &[("MAILDIRFS_TEST_HOLD_MS", "1500")]);
    wait_for_lock(&fx.src().join("Maildir/dovecot-uidlist.lock"));
    let mb = fx.src().join("Maildir");
    std::fs::rename(mb.join("cur"), mb.join("cur.moved")).unwrap();
    std::os::unix::fs::symlink(outside.join("cur"), mb.join("cur")).unwrap();
    let out = child.wait_with_output().unwrap();
    let m = Mounted::adopt(fx.mnt());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Freeze finds a symlink where cur/ was: shown as a symlink (its text only), like any
    // symlink a user plants; the moved directory and the message in it are there.
    let cur = m.mnt.join("Maildir/cur");
    assert!(
        std::fs::symlink_metadata(&cur)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read_link(&cur).unwrap(), outside.join("cur"));
    assert_eq!(
        std::fs::read(m.mnt.join("Maildir/cur.moved/1.M1P1.host:2,S")).unwrap(),
        b"captured\n"
    );
    // No file the view serves holds the outside's bytes.
    for (rel, seen) in tree(&m.mnt, true) {
        assert_ne!(seen.bytes.as_deref(), Some(&b"SECRET\n"[..]), "{rel:?}");
    }
}

#[test]
fn dotdot_absolute_and_symlinked_paths_cannot_leave_source() {
    let fx = Fixture::new("sec-beneath");
    fx.mailbox("Maildir");
    std::os::unix::fs::symlink("/etc", fx.src().join("Maildir/etc")).unwrap();
    let root = std::fs::File::open(fx.src()).unwrap();
    use std::os::fd::AsFd;
    for rel in [
        "../outside",
        "Maildir/../../x",
        "/etc/passwd",
        "Maildir/etc/passwd",
    ] {
        let r = maildirfs::sys::open_beneath(
            root.as_fd(),
            OsStr::new(rel),
            maildirfs::sys::OFlag::O_RDONLY,
        );
        assert!(r.is_err(), "{rel} opened");
    }
    assert!(
        maildirfs::sys::open_beneath(
            root.as_fd(),
            OsStr::new("Maildir/cur"),
            maildirfs::sys::OFlag::O_RDONLY
        )
        .is_ok()
    );
}

#[test]
fn allow_other_keeps_owners_and_modes_so_users_read_only_their_own_mail() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("sec-perm");
    fx.mailbox("Maildir");
    let own = fx.write("Maildir/cur/1.own:2,S", b"mine\n");
    std::os::unix::fs::chown(&own, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o600)).unwrap();
    let other = fx.write("Maildir/cur/2.other:2,S", b"not yours\n");
    std::os::unix::fs::chown(&other, Some(5000), Some(5000)).unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A hard link the user planted to a file that root owns: its owner and mode come with it.
    let secret = fx.dir.join("root-secret");
    std::fs::write(&secret, b"root only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::hard_link(&secret, fx.src().join("Maildir/cur/3.link:2,S")).unwrap();

    let m = Mounted::new(&fx, &["--allow-other"]);
    let cur = m.mnt.join("Maildir/cur");
    let view = |n: &str| cur.join(n);
    assert_eq!(read_as(65534, &view("1.own:2,S")).unwrap(), b"mine\n");
    assert_eq!(
        read_as(65534, &view("2.other:2,S"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EACCES)
    );
    assert_eq!(
        read_as(65534, &view("3.link:2,S"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EACCES)
    );
    let meta = std::fs::metadata(view("3.link:2,S")).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777, meta.nlink()),
        (0, 0o600, 1)
    );
    m.umount();

    // Without --allow-other nobody but the mounting user gets in at all.
    let m = Mounted::new(&fx, &[]);
    assert_eq!(
        read_as(65534, &view("1.own:2,S"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EACCES)
    );
    m.umount();
}

/// A tmpfs mounted inside the fixture, unmounted on drop.
struct TmpfsAt(std::path::PathBuf);

impl Drop for TmpfsAt {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn mount_points_inside_source_are_not_entered_and_reported() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("sec-xdev");
    fx.mailbox("Maildir");
    fx.write("Maildir/cur/1.x:2,S", b"a");
    let inner = fx.src().join("Maildir/.Elsewhere");
    std::fs::create_dir_all(&inner).unwrap();
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "none"])
            .arg(&inner)
            .status()
            .unwrap()
            .success()
    );
    let _guard = TmpfsAt(inner.clone());
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(inner.join(d)).unwrap();
    }
    std::fs::write(inner.join("cur/9.other-fs:2,S"), b"b").unwrap();
    let m = Mounted::new(&fx, &[]);
    assert!(
        m.stderr
            .contains("1 mount points inside the source not entered"),
        "{}",
        m.stderr
    );
    assert!(!m.mnt.join("Maildir/.Elsewhere").exists());
    assert_eq!(
        std::fs::read(m.mnt.join("Maildir/cur/1.x:2,S")).unwrap(),
        b"a"
    );
}

#[test]
fn sigkill_during_capture_leaves_a_dead_pid_lock_that_the_next_run_clears() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("sec-kill");
    fx.mailbox("Maildir");
    let lock = fx.src().join("Maildir/dovecot-uidlist.lock");
    let mut child = spawn_mount(&fx, &[], &[("MAILDIRFS_TEST_HOLD_MS", "10000")]);
    let pid = wait_for_lock(&lock);
    let content = std::fs::read_to_string(&lock).unwrap();
    signal(pid, "-KILL");
    assert!(wait_gone(pid, Duration::from_secs(5)));
    let _ = child.wait();
    // Left behind, naming a dead pid on this host: what Dovecot overrides at once.
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), content);
    // The next run overrides it by Dovecot's rule (dead pid, 2 s old) and captures locked.
    let m = Mounted::new(&fx, &["--lock-timeout", "10"]);
    assert!(m.stderr.contains("all accounts locked"), "{}", m.stderr);
    m.umount();
    assert!(lock_files(&fx.src()).is_empty());
}

/// Mounts with the locks held 1 s after the listing; meanwhile `take_over(lock, theirs)` makes
/// the lock someone else's. maildirfs must notice, capture the account again (without the
/// lock, since the other holder stays), and leave their lock alone.
fn lock_taken_over_during_capture(tag: &str, take_over: impl FnOnce(&Path, &str)) {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new(tag);
    fx.mailbox("Maildir");
    let lock = fx.src().join("Maildir/dovecot-uidlist.lock");
    let log = fx.dir.join("log");
    let log_arg = log.to_string_lossy().into_owned();
    let child = spawn_mount(
        &fx,
        &["--lock-timeout", "2", "--log-file", &log_arg],
        &[("MAILDIRFS_TEST_HOLD_MS", "1000")],
    );
    let ours = wait_for_lock(&lock);
    assert_ne!(ours, std::process::id() as i32);
    // A live holder (this test) on this host.
    let theirs = format!("{}:{}", std::process::id(), hostname());
    take_over(&lock, &theirs);
    let out = child.wait_with_output().unwrap();
    let _guard = Mounted::adopt(fx.mnt());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("was overridden during capture"), "{logged}");
    assert!(err.contains("WITHOUT lock"), "{err}");
    // Their lock is theirs: never removed.
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), theirs);
}

#[test]
fn a_lock_overridden_during_capture_is_detected_and_the_account_captured_again() {
    // Dovecot's way: remove the lock and create a new one.
    lock_taken_over_during_capture("sec-override", |lock, theirs| {
        std::fs::remove_file(lock).unwrap();
        std::fs::write(lock, theirs).unwrap();
    });
}

#[test]
fn a_lock_rewritten_in_place_during_capture_is_detected_and_left_to_its_writer() {
    // Their pid written into our file: the same inode.
    lock_taken_over_during_capture("sec-rewrite", |lock, theirs| {
        let ino = std::fs::metadata(lock).unwrap().ino();
        std::fs::write(lock, theirs).unwrap();
        assert_eq!(std::fs::metadata(lock).unwrap().ino(), ino);
    });
}

#[test]
fn lock_host_is_written_into_the_locks() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("sec-lockhost");
    fx.mailbox("Maildir");
    let lock = fx.src().join("Maildir/dovecot-uidlist.lock");
    let child = spawn_mount(
        &fx,
        &["--lock-host", "maildirfs.backup"],
        &[("MAILDIRFS_TEST_HOLD_MS", "1500")],
    );
    wait_for_lock(&lock);
    let content = std::fs::read_to_string(&lock).unwrap();
    let out = child.wait_with_output().unwrap();
    let _guard = Mounted::adopt(fx.mnt());
    assert!(out.status.success());
    assert!(content.ends_with(":maildirfs.backup"), "{content}");
    assert!(!lock.exists());
}
