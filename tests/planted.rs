//! Files an account's owner plants in their own Maildir, where maildirfs runs as root over
//! every account: a sparse 20 GB or a real 300 MB control file, a FIFO, a socket or a
//! directory in a control file's place, a control file that grows while it is captured, a
//! tree nested 3,000 deep. None may exhaust memory, hang the capture under Dovecot's locks,
//! or cost time or fds without bound; every other account is captured and served as usual.
//!
//! Every file here is planted by uid 5000 (`setpriv --reuid`), as the account's owner would.

use maildirfs_testkit as common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;

const OWNER: &str = "5000";

/// Runs `argv` as the account's owner (uid and gid 5000, no groups), asserting success.
fn as_owner(argv: &[&str]) {
    let out = Command::new("setpriv")
        .args(["--reuid", OWNER, "--regid", OWNER, "--clear-groups"])
        .args(argv)
        .output()
        .expect("run setpriv (installed by scripts/test)");
    assert!(
        out.status.success(),
        "{argv:?} as uid {OWNER}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a perl one-liner as the owner, with `args` as @ARGV.
fn perl_as_owner(script: &str, args: &[&str]) {
    let mut argv = vec!["perl", "-e", script];
    argv.extend_from_slice(args);
    as_owner(&argv);
}

/// Gives the tree under `p` to the owner, as a mail uid's Maildir is.
fn give_to_owner(p: &Path) {
    let out = Command::new("chown")
        .args(["-R", &format!("{OWNER}:{OWNER}")])
        .arg(p)
        .output()
        .expect("chown");
    assert!(out.status.success());
}

/// An ordinary account that must come through untouched whatever its neighbours planted.
fn good_account(fx: &Fixture, rel: &str) {
    fx.mailbox(rel);
    fx.write(format!("{rel}/cur/1.good:2,S"), b"Subject: good\n\nkept\n");
    fx.write(format!("{rel}/new/2.new"), b"Subject: new\n\nkept too\n");
    fx.write(
        format!("{rel}/dovecot-uidlist"),
        b"3 V1 N3\n1 :1.good\n2 :2.new\n",
    );
    fx.write(format!("{rel}/dovecot-keywords"), b"0 $Forwarded\n");
}

/// The server's peak resident memory in bytes (`VmHWM`).
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

fn nested(levels: usize) -> String {
    vec!["d"; levels].join("/")
}

#[test]
fn planted_control_files_are_neither_buffered_nor_waited_on() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("planted");
    good_account(&fx, "good/Maildir");
    for a in [
        "sparse", "big", "fifo", "socket", "dir", "symlink", "deep", "good",
    ] {
        fx.mailbox(&format!("{a}/Maildir"));
    }
    give_to_owner(&fx.src());
    let at = |rel: &str| fx.src().join(rel).to_str().unwrap().to_owned();
    // Sparse 20 GB control files: no disk, any size.
    as_owner(&[
        "truncate",
        "-s",
        "20G",
        &at("sparse/Maildir/dovecot-keywords"),
    ]);
    as_owner(&[
        "truncate",
        "-s",
        "20G",
        &at("sparse/Maildir/dovecot-uidlist"),
    ]);
    // Real 300 MB ones, a uidlist-shaped line repeated.
    let fill = "open my $f, '>', $ARGV[0] or die $!; my $l = \"1 :1700000000.M1P1.host\\n\" x 4096; \
                for (1 .. 300 * 1024 * 1024 / length $l) { print $f $l or die $! }";
    perl_as_owner(fill, &[&at("big/Maildir/dovecot-uidlist")]);
    perl_as_owner(fill, &[&at("big/Maildir/dovecot-keywords")]);
    // Things that are not files, in control files' places.
    as_owner(&["mkfifo", &at("fifo/Maildir/dovecot-uidlist")]);
    as_owner(&["mkfifo", &at("fifo/Maildir/dovecot-keywords")]);
    perl_as_owner(
        "use IO::Socket::UNIX; IO::Socket::UNIX->new(Local => $ARGV[0], Listen => 1) or die $!",
        &[&at("socket/Maildir/dovecot-keywords")],
    );
    as_owner(&["mkdir", &at("dir/Maildir/dovecot-keywords")]);
    as_owner(&[
        "ln",
        "-s",
        "/etc/shadow",
        &at("symlink/Maildir/dovecot-uidlist"),
    ]);
    // 3,000 directories nested inside a Maildir.
    perl_as_owner(
        "chdir $ARGV[0] or die $!; for (1 .. 3000) { mkdir 'd' or die $!; chdir 'd' or die $! }",
        &[&at("deep/Maildir")],
    );
    let big = std::fs::metadata(fx.src().join("big/Maildir/dovecot-uidlist")).unwrap();
    assert_eq!(big.uid(), 5000);
    assert!(big.len() >= 300_000_000, "a real 300 MB file");

    let log = fx.dir.join("log");
    let m = Mounted::new(&fx, &["--log-file", log.to_str().unwrap()]);
    let log = std::fs::read_to_string(&log).unwrap();
    let pid = server_pid(&m.mnt).expect("the server's pid");

    // Nothing planted was buffered: the whole server stays small.
    let rss = peak_rss(pid);
    assert!(rss <= 256 << 20, "server peak RSS {rss} bytes");
    // Every lock is gone once mounted, and every account is in the view.
    assert_eq!(our_locks(&fx), Vec::<String>::new());
    assert!(m.stderr.contains("8 accounts"), "summary: {}", m.stderr);
    assert!(
        m.stderr.contains("all accounts locked"),
        "summary: {}",
        m.stderr
    );

    // The good account, byte for byte.
    for f in [
        "cur/1.good:2,S",
        "new/2.new",
        "dovecot-uidlist",
        "dovecot-keywords",
    ] {
        let rel = format!("good/Maildir/{f}");
        assert_eq!(
            std::fs::read(m.mnt.join(&rel)).unwrap(),
            std::fs::read(fx.src().join(&rel)).unwrap(),
            "{rel}"
        );
    }

    // A uidlist is never left out: too large to hold, it is served from its pin at its
    // captured length, even after it grows in the source.
    let sparse = std::fs::metadata(m.mnt.join("sparse/Maildir/dovecot-uidlist")).unwrap();
    assert_eq!(sparse.len(), 20 << 30);
    let big_view = m.mnt.join("big/Maildir/dovecot-uidlist");
    let big_src = fx.src().join("big/Maildir/dovecot-uidlist");
    perl_as_owner(
        "open my $f, '>>', $ARGV[0] or die $!; print $f \"9 :appended\\n\"",
        &[&big_src.to_string_lossy()],
    );
    assert_eq!(std::fs::metadata(&big_view).unwrap().len(), big.len());
    let served = std::fs::read(&big_view).unwrap();
    let now = std::fs::read(&big_src).unwrap();
    assert_eq!(served.len() as u64, big.len());
    assert_eq!(served[..], now[..served.len()], "the captured prefix");
    assert!(log.contains("served from its pinned file"), "log: {log}");

    // Other control files above the cap are left out, with a warning and a count.
    assert!(!m.mnt.join("sparse/Maildir/dovecot-keywords").exists());
    assert!(!m.mnt.join("big/Maildir/dovecot-keywords").exists());
    assert!(
        m.stderr.contains("2 control files left out as too large"),
        "summary: {}",
        m.stderr
    );
    // FIFOs, a socket and a directory in control files' places: left out, counted.
    for rel in [
        "fifo/Maildir/dovecot-uidlist",
        "fifo/Maildir/dovecot-keywords",
        "socket/Maildir/dovecot-keywords",
        "dir/Maildir/dovecot-keywords",
    ] {
        assert!(
            std::fs::symlink_metadata(m.mnt.join(rel)).is_err(),
            "{rel} should be left out"
        );
    }
    assert!(
        m.stderr.contains("4 special files"),
        "summary: {}",
        m.stderr
    );
    for what in ["a FIFO", "a socket", "a directory"] {
        assert!(
            log.contains(&format!("{what}, not a regular file")),
            "log: {log}"
        );
    }
    // A symlink in a uidlist's place is refused, as before.
    assert!(std::fs::symlink_metadata(m.mnt.join("symlink/Maildir/dovecot-uidlist")).is_err());
    assert!(
        log.contains("symlink/Maildir/dovecot-uidlist"),
        "log: {log}"
    );

    // The deep tree: shown to the depth limit, the rest empty, with a warning.
    let limit = maildirfs::maildir::discover::MAX_DEPTH;
    let last = m.mnt.join("deep/Maildir").join(nested(limit));
    assert!(last.is_dir(), "level {limit} is shown");
    assert_eq!(std::fs::read_dir(&last).unwrap().count(), 1);
    let beyond = last.join("d");
    assert_eq!(std::fs::read_dir(&beyond).unwrap().count(), 0);
    assert!(
        m.stderr.contains(&format!(
            "1 directories more than {limit} levels deep shown empty"
        )),
        "summary: {}",
        m.stderr
    );
    drop(m);
    assert_eq!(our_locks(&fx), Vec::<String>::new());
}

/// The lock files left in the mailboxes of the planted tree (the shared `lock_files` walks
/// the whole tree, and this one is 3,000 levels deep).
fn our_locks(fx: &Fixture) -> Vec<String> {
    std::fs::read_dir(fx.src())
        .unwrap()
        .flatten()
        .map(|e| e.path().join("Maildir/dovecot-uidlist.lock"))
        .filter(|l| l.exists())
        .map(|l| l.display().to_string())
        .collect()
}

#[test]
fn a_control_file_growing_during_the_capture_stops_at_what_was_captured() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("planted-grow");
    good_account(&fx, "grow/Maildir");
    give_to_owner(&fx.src());
    let keywords = fx.src().join("grow/Maildir/dovecot-keywords");
    let uidlist = fx.src().join("grow/Maildir/dovecot-uidlist");
    // The owner appends to both as fast as they can, for the whole of several mounts,
    // past the 1 MiB cap of a keywords file.
    let writer = Command::new("setpriv")
        .args([
            "--reuid",
            OWNER,
            "--regid",
            OWNER,
            "--clear-groups",
            "perl",
            "-e",
        ])
        .arg(
            "open my $k, '>>', $ARGV[0] or die; open my $u, '>>', $ARGV[1] or die; \
             $k->autoflush(1); $u->autoflush(1); my $end = time + 20; my $n = 0; \
             while (time < $end) { $n++; print $k \"$n kw\\n\"; print $u \"$n :m$n\\n\" }",
        )
        .arg(&keywords)
        .arg(&uidlist)
        .spawn()
        .expect("start the writer");
    let writer = ChildGuard(writer);
    let mut seen_keywords = 0;
    for _ in 0..6 {
        let m = Mounted::new(&fx, &[]);
        let view_k = m.mnt.join("grow/Maildir/dovecot-keywords");
        let view_u = m.mnt.join("grow/Maildir/dovecot-uidlist");
        for (view, src) in [(&view_k, &keywords), (&view_u, &uidlist)] {
            let Ok(meta) = std::fs::metadata(view) else {
                // Past the cap: left out (only the keywords file may be).
                assert_eq!(view, &view_k, "a uidlist is never left out");
                continue;
            };
            let served = std::fs::read(view).unwrap();
            // The size shown is the length served, and it does not move while mounted.
            assert_eq!(meta.len(), served.len() as u64);
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert_eq!(std::fs::read(view).unwrap(), served);
            // What is served is what the file held: a prefix of it now.
            let now = std::fs::read(src).unwrap();
            assert_eq!(served[..], now[..served.len()], "{}", view.display());
            if view == &view_k {
                assert!(served.len() <= 1 << 20, "keywords capped at 1 MiB");
                seen_keywords += 1;
            }
        }
        drop(m);
    }
    drop(writer);
    assert!(
        seen_keywords > 0,
        "the keywords file was served at least once"
    );
    assert_eq!(lock_files(&fx.src()), Vec::<std::path::PathBuf>::new());
}

#[test]
fn a_deep_tree_under_a_low_fd_limit_is_walked_to_the_depth_limit() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("planted-deep");
    good_account(&fx, "a/Maildir");
    fx.mailbox("deep/Maildir");
    give_to_owner(&fx.src());
    perl_as_owner(
        "chdir $ARGV[0] or die $!; for (1 .. 3000) { mkdir 'd' or die $!; chdir 'd' or die $! }",
        &[fx.src().join("deep/Maildir").to_str().unwrap()],
    );
    // 300 fds: the pin budget is a few dozen, far fewer than the 256 levels walked.
    let m = Mounted::with_nofile(&fx, &[], 300);
    let limit = maildirfs::maildir::discover::MAX_DEPTH;
    let last = m.mnt.join("deep/Maildir").join(nested(limit));
    assert!(last.join("d").is_dir());
    assert_eq!(std::fs::read_dir(last.join("d")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read(m.mnt.join("a/Maildir/cur/1.good:2,S")).unwrap(),
        b"Subject: good\n\nkept\n"
    );
    assert!(!m.stderr.contains("UNREADABLE"), "summary: {}", m.stderr);
}

/// Kills and reaps a child process on drop.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
