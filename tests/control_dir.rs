//! Separate control trees (`--control-dir`, Dovecot's `CONTROL=` / `mail_control_path`),
//! without Dovecot: the view serves each mailbox's uidlist, keywords and subscriptions from
//! the control tree in the mailbox's own directory, hides the stale copies left in the
//! Maildir, and learns the template from `doveconf` when it describes SOURCE. The Dovecot
//! tests show the same against Dovecot 2.3 and 2.4.

use maildirfs_testkit as common;

use std::path::{Path, PathBuf};

use common::{Fixture, Mounted, fuse_available};

/// `src/example.org/alice/Maildir` with an Archive folder, its control files where Dovecot
/// keeps them under `control/%d/%n`, and stale copies from before the control tree.
fn store(fx: &Fixture) -> PathBuf {
    let inbox = fx.mailbox("example.org/alice/Maildir");
    fx.mailbox("example.org/alice/Maildir/.Archive");
    fx.write(
        "example.org/alice/Maildir/cur/1.a:2,S",
        b"Subject: a\n\na\n",
    );
    fx.write(
        "example.org/alice/Maildir/.Archive/cur/2.b:2,",
        b"Subject: b\n\nb\n",
    );
    fx.write("example.org/alice/Maildir/.Archive/maildirfolder", b"");
    fx.write("example.org/alice/Maildir/dovecot-uidlist", b"3 V1 N99\n");
    fx.write("example.org/alice/Maildir/dovecot-keywords", b"0 stale\n");
    let ctl = fx.dir.join("control/example.org/alice");
    for d in [".INBOX", ".Archive"] {
        std::fs::create_dir_all(ctl.join(d)).unwrap();
    }
    std::fs::write(ctl.join(".INBOX/dovecot-uidlist"), "3 V7 N2\n1 :1.a\n").unwrap();
    std::fs::write(ctl.join(".INBOX/dovecot-keywords"), "0 $Label1\n").unwrap();
    std::fs::write(ctl.join(".Archive/dovecot-uidlist"), "3 V8 N2\n1 :2.b\n").unwrap();
    std::fs::write(ctl.join("subscriptions"), "V\t2\n\nArchive\n").unwrap();
    inbox
}

fn template(fx: &Fixture) -> String {
    format!("{}/control/%d/%n", fx.dir.display())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn assert_served_from_tree(mnt: &Path) {
    let inbox = mnt.join("example.org/alice/Maildir");
    assert_eq!(read(&inbox.join("dovecot-uidlist")), "3 V7 N2\n1 :1.a\n");
    assert_eq!(read(&inbox.join("dovecot-keywords")), "0 $Label1\n");
    assert_eq!(read(&inbox.join("subscriptions")), "V\t2\n\nArchive\n");
    assert_eq!(
        read(&inbox.join(".Archive/dovecot-uidlist")),
        "3 V8 N2\n1 :2.b\n"
    );
    assert!(inbox.join(".Archive/maildirfolder").exists());
    assert!(!inbox.join(".Archive/subscriptions").exists());
    assert_eq!(read(&inbox.join("cur/1.a:2,S")), "Subject: a\n\na\n");
    // One entry per name: the stale copy is not listed beside the served one.
    let names: Vec<_> = std::fs::read_dir(&inbox)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n == "dovecot-uidlist")
        .collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn serves_the_control_trees_files_in_each_mailbox() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ctl-serve");
    store(&fx);
    let t = template(&fx);
    let m = Mounted::new(&fx, &["--control-dir", &t]);
    assert!(
        m.stderr.contains(&format!("control files from {t}")),
        "{}",
        m.stderr
    );
    assert_served_from_tree(&m.mnt);
    m.umount();
    // The same as a mount option; nothing left in either tree.
    let m = Mounted::new(&fx, &["-o", &format!("control_dir={t}")]);
    assert_served_from_tree(&m.mnt);
    m.umount();
    // Without locks, the control files still come from the tree.
    let m = Mounted::new(&fx, &["--no-lock", "--control-dir", &t]);
    assert_served_from_tree(&m.mnt);
    m.umount();
    assert!(common::lock_files(&fx.dir).is_empty());
}

#[test]
fn an_account_captured_on_demand_takes_its_control_files_from_the_tree_too() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ctl-on-demand");
    store(&fx);
    // More accounts than the working set holds, alice last: she is captured when first read.
    for u in ["aaron", "abby"] {
        fx.mailbox(&format!("example.org/{u}/Maildir"));
        fx.write(format!("example.org/{u}/Maildir/cur/1.{u}:2,S"), b"x\n");
    }
    let t = template(&fx);
    let m = Mounted::new(&fx, &["--working-set", "2", "--control-dir", &t]);
    assert!(
        m.stderr.contains("left to capture when first read"),
        "{}",
        m.stderr
    );
    assert_served_from_tree(&m.mnt);
    m.umount();
}

#[test]
fn learns_the_template_from_doveconf() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ctl-doveconf");
    store(&fx);
    // A doveconf that answers as Dovecot 2.3 does for this store (it passes over 2.4's
    // settings).
    let bin = fx.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let location = format!(
        "maildir:{}/%d/%n/Maildir:CONTROL={}:INDEX=MEMORY",
        fx.src().display(),
        template(&fx)
    );
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = mail_location ] || exit 89\necho 'mail_location = {location}'\n"
    );
    let doveconf = bin.join("doveconf");
    std::fs::write(&doveconf, script).unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&doveconf)
        .status()
        .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let m = Mounted::with_env(&fx, &[], &[("PATH", &path)]);
    assert!(
        m.stderr.contains(&format!(
            "control files from {} (from doveconf)",
            template(&fx)
        )),
        "{}",
        m.stderr
    );
    assert_served_from_tree(&m.mnt);
    m.umount();
    // `--control-dir maildir` overrides it: the Maildir's own files, as they are.
    let m = Mounted::with_env(&fx, &["--control-dir", "maildir"], &[("PATH", &path)]);
    assert!(!m.stderr.contains("control files from"), "{}", m.stderr);
    let inbox = m.mnt.join("example.org/alice/Maildir");
    assert_eq!(read(&inbox.join("dovecot-uidlist")), "3 V1 N99\n");
    m.umount();
}

#[test]
fn a_control_tree_that_is_not_there_fails_the_mount_naming_it() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ctl-missing");
    store(&fx);
    let missing = fx.dir.join("nowhere");
    let out = common::run(
        &[
            "mount".as_ref(),
            "--control-dir".as_ref(),
            format!("{}/%d/%n", missing.display()).as_ref(),
            fx.src().as_os_str(),
            fx.mnt().as_os_str(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!common::is_mounted(&fx.mnt()));
    // A template maildirfs cannot place is a usage error.
    let out = common::run(
        &[
            "mount".as_ref(),
            "--control-dir".as_ref(),
            "control/%x".as_ref(),
            fx.src().as_os_str(),
            fx.mnt().as_os_str(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
}
