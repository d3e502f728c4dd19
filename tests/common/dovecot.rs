//! A private Dovecot for tests: its own config in a temporary directory, no network listener,
//! a passwd-file userdb whose homes are under the fixture's `src/`, an unprivileged mail uid.
//! Started with `dovecot -c`, driven with `doveadm -c` and `dovecot-lda -c`, stopped on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The mail uid and gid (Dovecot refuses root: `first_valid_uid`).
pub const MAIL_UID: u32 = 5000;

pub const LDA: &str = "/usr/lib/dovecot/dovecot-lda";

pub struct Dovecot {
    pub dir: PathBuf,
    pub conf: PathBuf,
    /// Where the users' homes are: `<homes>/<user>/Maildir`.
    pub homes: PathBuf,
}

/// Whether Dovecot is installed; with `MAILDIRFS_REQUIRE_FUSE=1` (CI) its absence fails.
pub fn dovecot_available() -> bool {
    let ok = Path::new(LDA).exists() && Command::new("dovecot").arg("--version").output().is_ok();
    if !ok {
        if std::env::var("MAILDIRFS_REQUIRE_FUSE").as_deref() == Ok("1") {
            panic!("dovecot-core is not installed (scripts/test installs it)");
        }
        eprintln!("skipping: dovecot not installed");
    }
    ok
}

impl Dovecot {
    /// Starts a private Dovecot in `dir` for `users`, with homes under `homes`.
    pub fn start(dir: &Path, homes: &Path, users: &[&str]) -> Dovecot {
        for d in ["run", "state"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::create_dir_all(homes).unwrap();
        let mut passwd = String::new();
        for u in users {
            let home = homes.join(u);
            std::fs::create_dir_all(&home).unwrap();
            chown_tree(&home);
            passwd.push_str(&format!(
                "{u}:{{PLAIN}}x:{MAIL_UID}:{MAIL_UID}::{}::\n",
                home.display()
            ));
        }
        std::fs::write(dir.join("passwd"), passwd).unwrap();
        let conf = dir.join("dovecot.conf");
        std::fs::write(
            &conf,
            format!(
                "protocols =\n\
                 base_dir = {d}/run\n\
                 state_dir = {d}/state\n\
                 log_path = {d}/dovecot.log\n\
                 info_log_path = {d}/dovecot.log\n\
                 ssl = no\n\
                 mail_location = maildir:~/Maildir\n\
                 first_valid_uid = {MAIL_UID}\n\
                 mail_uid = {MAIL_UID}\n\
                 mail_gid = {MAIL_UID}\n\
                 passdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
                 userdb {{\n  driver = passwd-file\n  args = {d}/passwd\n}}\n\
                 namespace inbox {{\n  inbox = yes\n  separator = /\n}}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        // Let the unprivileged mail uid reach the homes.
        let mut p = homes.to_path_buf();
        while p.pop() && p != Path::new("/") && p != Path::new("/tmp") {
            let _ = Command::new("chmod").arg("o+x").arg(&p).status();
        }
        // The master daemonizes and keeps its stdio: give it none of ours, or a reader of our
        // pipes would wait for it forever.
        let status = Command::new("dovecot")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "dovecot failed to start: {}",
            dir.join("dovecot.log").display()
        );
        Dovecot {
            dir: dir.to_path_buf(),
            conf,
            homes: homes.to_path_buf(),
        }
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.homes.join(user).join("Maildir")
    }

    /// Runs `doveadm -c CONF ARGS`.
    pub fn doveadm(&self, args: &[&str]) -> Output {
        Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `doveadm` that must succeed; returns its stdout.
    pub fn doveadm_ok(&self, args: &[&str]) -> String {
        let out = self.doveadm(args);
        assert!(
            out.status.success(),
            "doveadm {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A `doveadm` command started in the background.
    pub fn doveadm_spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Delivers `msg` to `user` (into `mailbox` if given) with `dovecot-lda`.
    pub fn deliver(&self, user: &str, mailbox: Option<&str>, msg: &[u8]) -> Output {
        let mut c = Command::new(LDA);
        c.arg("-c").arg(&self.conf).arg("-d").arg(user);
        if let Some(m) = mailbox {
            c.arg("-m").arg(m);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), msg).unwrap();
        drop(child.stdin.take());
        child.wait_with_output().unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("run/master.pid")).ok();
        let _ = Command::new("doveadm")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(pid) = pid.and_then(|p| p.trim().parse::<i32>().ok()) {
            let end = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).output();
        }
    }
}

/// Gives a tree to the mail uid.
pub fn chown_tree(p: &Path) {
    let _ = Command::new("chown")
        .arg("-R")
        .arg(format!("{MAIL_UID}:{MAIL_UID}"))
        .arg(p)
        .status();
}

/// A test message with a Message-ID and a body that identifies it.
pub fn message(id: &str, filler: usize) -> Vec<u8> {
    format!(
        "From: sender@example.net\nTo: alice@example.org\nSubject: {id}\nMessage-ID: <{id}>\n\n{id} {}\n",
        "x".repeat(filler)
    )
    .into_bytes()
}

/// The Message-ID of a message file's bytes, if it has one.
pub fn message_id(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("Message-ID: <") {
            return v.strip_suffix('>').map(str::to_owned);
        }
    }
    None
}

/// FNV-1a of the body (after the first blank line), to check a copy is complete.
pub fn body_hash(bytes: &[u8]) -> u64 {
    let body = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or(bytes, |i| &bytes[i + 2..]);
    body.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
