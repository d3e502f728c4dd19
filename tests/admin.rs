//! For the mail admin: `status`, `verify`, `--include`/`--exclude`, the progress line,
//! `--summary-json`, and mounting from an fstab line.

use maildirfs_testkit as common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn status(args: &[&str]) -> (i32, String) {
    let mut a: Vec<&OsStr> = vec![OsStr::new("status")];
    a.extend(args.iter().map(OsStr::new));
    let out = run(&a, &[]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn verify(path: &Path, json: bool) -> (i32, String) {
    let mut a: Vec<&OsStr> = vec![OsStr::new("verify"), path.as_os_str()];
    if json {
        a.push(OsStr::new("--json"));
    }
    let out = run(&a, &[]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Two accounts; the second one's folder is locked by someone else (this live process).
fn two_accounts(tag: &str) -> Fixture {
    let fx = Fixture::new(tag);
    fx.mailbox("example.org/alice/Maildir");
    fx.mailbox("example.org/bob/Maildir");
    fx.mailbox("example.org/bob/Maildir/.Sent");
    fx.write("example.org/alice/Maildir/cur/1.a,S=6:2,S", b"alice\n");
    fx.write("example.org/alice/Maildir/new/2.a,S=7", b"alice2\n");
    fx.write("example.org/bob/Maildir/cur/3.b,S=4:2,S", b"bob\n");
    fx
}

#[test]
fn status_shows_each_view_its_unlocked_accounts_and_live_counters() {
    if !fuse_available() {
        return;
    }
    let fx = two_accounts("status");
    let busy = format!("{}:{}", std::process::id(), hostname());
    fx.write(
        "example.org/bob/Maildir/.Sent/dovecot-uidlist.lock",
        busy.as_bytes(),
    );
    let m = Mounted::new(&fx, &["--lock-timeout", "1"]);
    let (code, text) = status(&[]);
    assert_eq!(code, 0, "{text}");
    let mnt = m.mnt.display().to_string();
    assert!(
        text.contains(&format!("{mnt} (from {}", fx.src().display())),
        "{text}"
    );
    assert!(
        text.contains("2 accounts, 3 mailboxes, 3 messages"),
        "{text}"
    );
    assert!(text.contains("1 accounts captured WITHOUT lock"), "{text}");
    assert!(
        text.contains("example.org/bob/Maildir: lock busy"),
        "{text}"
    );

    // Read through the view; the server's counters reach the state file within a second or so.
    assert_eq!(
        std::fs::read(m.mnt.join("example.org/alice/Maildir/cur/1.a,S=6:2,S")).unwrap(),
        b"alice\n"
    );
    assert!(
        wait_for(Duration::from_secs(10), || status(&[&mnt, "--json"])
            .1
            .contains("\"bytes_served\": 6,")),
        "{}",
        status(&[&mnt, "--json"]).1
    );
    let (code, json) = status(&[&mnt, "--json"]);
    assert_eq!(code, 0);
    for want in [
        "\"state\": \"serving\"",
        "\"messages\": 3,",
        "\"account\": \"example.org/bob/Maildir\"",
        "\"pinned_files\": 3,",
        "\"read_requests\": 1,",
        "\"vanished_files\": 0,",
    ] {
        assert!(json.contains(want), "{want} not in {json}");
    }
    // Another user sees root's view as serving too: the state files are world-readable and
    // `flock` needs no write access.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(["status", &mnt])
        .output()
        .expect("run setpriv");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("2 accounts, 3 mailboxes, 3 messages"),
        "{said}"
    );
    // A path that is not a view is an error naming it.
    let (code, text) = status(&[fx.src().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(text.contains("not a maildirfs view"), "{text}");

    // The server killed: its view is dead (exit 1) until `umount` clears it.
    let pid = server_pid(&m.mnt).expect("server pid");
    signal(pid, "-KILL");
    assert!(wait_gone(pid, Duration::from_secs(10)));
    // Its lock on the state file goes when its last thread has exited, which may be a little
    // after the process shows as gone.
    let mut said = (0, String::new());
    assert!(
        wait_for(Duration::from_secs(10), || {
            said = status(&[&mnt]);
            said.0 == 1
        }),
        "{}",
        said.1
    );
    let (code, text) = said;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("DEAD"), "{text}");
    assert!(status(&[&mnt, "--json"]).1.contains("\"state\": \"dead\""));
    drop(m);
    assert!(!status(&[]).1.contains(&mnt));
}

#[test]
fn verify_passes_a_clean_tree_and_its_view_and_names_each_problem() {
    if !fuse_available() {
        return;
    }
    let fx = two_accounts("verify");
    fx.write(
        "example.org/alice/Maildir/dovecot-uidlist",
        b"3 V1700000000 N3 Gabc\n1 :1.a,S=6\n2 :2.a,S=7\n",
    );
    fx.write(
        "example.org/bob/Maildir/dovecot-uidlist",
        b"3 V1700000001 N2 Gdef\n1 :3.b,S=4\n",
    );
    let (code, text) = verify(&fx.src(), false);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("2 accounts, 3 mailboxes, 3 messages: 0 problems"),
        "{text}"
    );

    let m = Mounted::new(&fx, &[]);
    // Break the source after capture: the view keeps the clean capture.
    fx.write("example.org/alice/Maildir/tmp/9.half", b"par");
    fx.write("example.org/bob/Maildir/cur/4.b,S=99:2,", b"short\n");
    fx.write("example.org/bob/Maildir/dovecot-keywords.lock", b"1:x");
    let (code, json) = verify(&m.mnt, true);
    assert_eq!(code, 0, "{json}");
    assert!(json.contains("\"clean\": true"), "{json}");
    m.umount();

    let (code, text) = verify(&fx.src(), false);
    assert_eq!(code, 1, "{text}");
    for want in [
        "problem: example.org/alice/Maildir/tmp: 1 files in tmp/",
        "problem: example.org/bob/Maildir/cur/4.b,S=99:2,: 6 bytes, but its name says S=99",
        "problem: example.org/bob/Maildir/dovecot-keywords.lock: lock or temp file",
        "problem: example.org/bob/Maildir/dovecot-uidlist: 1 messages in cur/ have no entry",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
    // A path that is not there: exit 1, one line naming it.
    let (code, text) = verify(&fx.dir.join("nowhere"), false);
    assert_eq!(code, 1);
    assert!(
        text.starts_with("maildirfs: cannot open: ") && text.contains("nowhere"),
        "{text}"
    );
}

#[test]
fn include_and_exclude_choose_accounts_and_only_theirs_are_locked() {
    if !fuse_available() {
        return;
    }
    let fx = two_accounts("select");
    fx.mailbox("example.org/carol/Maildir");
    fx.write("example.org/carol/Maildir/cur/5.c:2,S", b"carol\n");
    fx.write("example.org/carol/sieve/main.sieve", b"keep;\n");
    fx.mailbox("example.com/dave/Maildir");
    fx.write("top-level-note.txt", b"not an account\n");
    // Hold the locks so the test can see which were taken.
    let child = spawn_mount(
        &fx,
        &[
            "--include",
            "example.org/*",
            "--exclude",
            "*/bob",
            "--summary-json",
            fx.dir.join("summary.json").to_str().unwrap(),
        ],
        &[("MAILDIRFS_TEST_HOLD_MS", "1500")],
    );
    wait_for_lock(
        &fx.src()
            .join("example.org/alice/Maildir/dovecot-uidlist.lock"),
    );
    assert!(
        !fx.src()
            .join("example.org/bob/Maildir/dovecot-uidlist.lock")
            .exists()
    );
    assert!(
        !fx.src()
            .join("example.com/dave/Maildir/dovecot-uidlist.lock")
            .exists()
    );
    let out = child.wait_with_output().unwrap();
    let _guard = Mounted::adopt(fx.mnt());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("2 accounts (chosen by --include/--exclude)"),
        "{stderr}"
    );
    let seen: Vec<String> = tree(&fx.mnt(), false)
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let want = [
        "example.org",
        "example.org/alice",
        "example.org/alice/Maildir",
        "example.org/alice/Maildir/cur",
        "example.org/alice/Maildir/cur/1.a,S=6:2,S",
        "example.org/alice/Maildir/new",
        "example.org/alice/Maildir/new/2.a,S=7",
        "example.org/alice/Maildir/tmp",
        "example.org/carol",
        "example.org/carol/Maildir",
        "example.org/carol/Maildir/cur",
        "example.org/carol/Maildir/cur/5.c:2,S",
        "example.org/carol/Maildir/new",
        "example.org/carol/Maildir/tmp",
        "example.org/carol/sieve",
        "example.org/carol/sieve/main.sieve",
    ];
    assert_eq!(seen, want);
    // The summary JSON was there when mount returned.
    let json = std::fs::read_to_string(fx.dir.join("summary.json")).unwrap();
    assert!(
        json.contains("\"accounts\": 2,") && json.contains("\"messages\": 3,"),
        "{json}"
    );
    // Every account's lock hold, in µs, with its message count.
    assert!(json.contains("\"account_lock_holds\": ["), "{json}");
    for (account, messages) in [
        ("example.org/alice/Maildir", 2),
        ("example.org/carol/Maildir", 1),
    ] {
        let at = json
            .find(&format!("\"account\": \"{account}\""))
            .unwrap_or_else(|| panic!("{account} not in {json}"));
        let entry = &json[at..at + json[at..].find('}').unwrap()];
        assert!(
            entry.contains(&format!("\"messages\": {messages},")),
            "{entry}"
        );
        assert!(entry.contains("\"locked\": true"), "{entry}");
        // The same hold the summary line gives, for the account it names.
        let us: u64 = entry
            .split("\"lock_hold_us\": ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{entry}"));
        let said = format!("longest lock hold {} ms ({account};", us / 1000);
        let longest = stderr.contains(&format!("({account};"));
        assert!(!longest || stderr.contains(&said), "{said} not in {stderr}");
    }
    drop(_guard);

    // A selection that matches nothing: exit 1 and say why.
    let out = run(
        &[
            OsStr::new("mount"),
            OsStr::new("--include"),
            OsStr::new("nosuch.org/*"),
            fx.src().as_os_str(),
            fx.mnt().as_os_str(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no Maildir that --include/--exclude select"),
        "{err}"
    );
    assert!(!is_mounted(&fx.mnt()));
}

/// Runs `maildirfs ARGS` with a terminal as its stderr (`script` gives it a pty); returns what
/// the terminal showed.
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = shell_quote(&bin().display().to_string());
    for a in args {
        cmd.push(' ');
        cmd.push_str(&shell_quote(a));
    }
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run script (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn progress_line_shows_on_a_terminal_only_and_quiet_silences_it() {
    if !fuse_available() {
        return;
    }
    let fx = two_accounts("progress");
    let (src, mnt) = (fx.src(), fx.mnt());
    let (src, mnt) = (src.to_str().unwrap(), mnt.to_str().unwrap());
    // Each account holds its locks 600 ms: the capture takes long enough to show progress.
    let slow = [("MAILDIRFS_TEST_HOLD_MS", "600")];
    let shown = on_a_terminal(&["mount", src, mnt], &slow);
    let guard = Mounted::adopt(fx.mnt());
    assert!(
        shown.contains("\r\x1b[Kmaildirfs: capturing: accounts "),
        "{shown:?}"
    );
    assert!(shown.contains("/2, "), "{shown:?}");
    // It names the account being captured, with how long it has taken so far.
    assert!(
        shown.contains("; now example.org/alice/Maildir (")
            || shown.contains("; now example.org/bob/Maildir ("),
        "{shown:?}"
    );
    assert!(shown.contains("maildirfs: mounted "), "{shown:?}");
    drop(guard);

    let quiet = on_a_terminal(&["mount", "-q", src, mnt], &slow);
    let guard = Mounted::adopt(fx.mnt());
    assert!(!quiet.contains("capturing"), "{quiet:?}");
    assert!(
        quiet.contains("maildirfs: mounted "),
        "summary still printed: {quiet:?}"
    );
    drop(guard);

    // Not a terminal: no progress line, only the summary.
    let m = Mounted::with_env(&fx, &[], &slow);
    assert!(!m.stderr.contains("capturing"), "{}", m.stderr);
    assert!(m.stderr.starts_with("maildirfs: mounted "), "{}", m.stderr);
}

#[test]
fn the_mount_helper_form_and_an_fstab_line_mount_the_view() {
    if !fuse_available() {
        return;
    }
    let fx = two_accounts("fstab");
    // As mount.fuse3 runs it: `maildirfs SOURCE MOUNTPOINT -o OPTIONS`, with its dev,suid.
    let out = run(
        &[
            fx.src().as_os_str(),
            fx.mnt().as_os_str(),
            OsStr::new("-o"),
            OsStr::new("ro,dev,suid,noauto,exclude_indexes,lock_timeout=5"),
        ],
        &[],
    );
    let guard = Mounted::adopt(fx.mnt());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(&fx.mnt()));
    drop(guard);

    // `mount -T FSTAB MOUNTPOINT` with a fuse.maildirfs line: mount(8) runs mount.fuse3 with
    // a clean environment, which finds `maildirfs` in the standard PATH; in a private mount
    // namespace /usr/local/sbin holds this build's binary, and the whole cycle runs there.
    let bindir = fx.dir.join("bin");
    std::fs::create_dir(&bindir).unwrap();
    std::os::unix::fs::symlink(bin(), bindir.join("maildirfs")).unwrap();
    let fstab = fx.dir.join("fstab");
    let (src, mnt) = (
        fx.src().display().to_string(),
        fx.mnt().display().to_string(),
    );
    std::fs::write(
        &fstab,
        format!("{src} {mnt} fuse.maildirfs ro,noauto,exclude_indexes,lock_timeout=5 0 0\n"),
    )
    .unwrap();
    let script = format!(
        "mount --bind {bin} /usr/local/sbin || exit 90\n\
         mount -T {fstab} {mnt} || exit 91\n\
         cat {mnt}/example.org/alice/Maildir/cur/1.a,S=6:2,S\n\
         json=$(maildirfs status {mnt} --json); st=$?\n\
         pid=$(printf '%s' \"$json\" | sed -n 's/.*\"pid\": \\([0-9]*\\).*/\\1/p')\n\
         umount {mnt}; um=$?\n\
         while [ -n \"$pid\" ] && kill -0 \"$pid\" 2>/dev/null; do sleep 0.05; done\n\
         umount -l {mnt} 2>/dev/null\n\
         echo \"status=$st umount=$um\"\n",
        bin = shell_quote(&bindir.display().to_string()),
        fstab = shell_quote(&fstab.display().to_string()),
        mnt = shell_quote(&mnt),
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("run unshare (util-linux)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("alice\n"), "{text}");
    assert!(text.contains("status=0 umount=0"), "{text}");
    assert!(!is_mounted(&fx.mnt()));
}
