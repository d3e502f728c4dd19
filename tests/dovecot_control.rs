//! A store whose control files Dovecot keeps in a separate control tree (2.3's `CONTROL=`,
//! 2.4's `mail_control_path`), against Dovecot 2.3 on the host and 2.4 in the Debian 13 root:
//! maildirfs takes each mailbox's lock where Dovecot takes it (INBOX's in `.INBOX/`), so
//! Dovecot waits for it; the view holds the control tree's uidlists in the mailboxes'
//! directories, so a copy of it restores into a default layout with every UID; and the
//! documented way back into a store with a control tree keeps them too.

use maildirfs_testkit as common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::dovecot::*;
use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

const ALICE: &str = "alice@example.org";
const RESTORED: &str = "restored@example.org";

against_both_dovecots! {
    control_tree_locks_and_restores => true,
    control_tree_with_inbox_as_a_folder_locks_and_restores => true,
}

fn control_tree_locks_and_restores(flavor: &Flavor) {
    scenario(flavor, false);
}

/// INBOX in `Maildir/.INBOX` (Debian 13's example config): the Maildir is one account, all
/// its folders locked at once, INBOX's control files in the tree's `.INBOX/` all the same.
fn control_tree_with_inbox_as_a_folder_locks_and_restores(flavor: &Flavor) {
    scenario(flavor, true);
}

fn scenario(flavor: &Flavor, inbox_folder: bool) {
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = Fixture::new("dc-ctl");
    let template = format!("{}/control/%d/%n", fx.dir.display());
    let setup = Setup {
        flavor: flavor.clone(),
        control: Some(&template),
        inbox_folder,
    };
    let dc = Dovecot::start_with(
        &setup,
        &fx.dir.join("dovecot"),
        &fx.src(),
        &[ALICE, RESTORED],
    );
    for i in 0..12 {
        let out = dc.deliver(ALICE, None, &message(&format!("c{i}@t"), 50 + i));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dc.doveadm_ok(&["mailbox", "create", "-u", ALICE, "Archive"]);
    dc.doveadm_ok(&["mailbox", "subscribe", "-u", ALICE, "Archive"]);
    dc.doveadm_ok(&[
        "move", "-u", ALICE, "Archive", "mailbox", "INBOX", "uid", "1:4",
    ]);
    dc.doveadm_ok(&[
        "flags",
        "add",
        "-u",
        ALICE,
        "\\Seen $Label1",
        "mailbox",
        "INBOX",
        "uid",
        "6:9",
    ]);
    dc.doveadm_ok(&["expunge", "-u", ALICE, "mailbox", "INBOX", "uid", "11"]);
    let ctl = dc.control_dir(ALICE).unwrap();
    let maildir = dc.maildir(ALICE);
    // Where Dovecot keeps them: not in the Maildir.
    assert!(ctl.join(".INBOX/dovecot-uidlist").exists());
    assert!(ctl.join(".Archive/dovecot-uidlist").exists());
    assert!(!maildir.join("dovecot-uidlist").exists());
    let at_capture = dc.state(ALICE);

    // Dovecot waits for our lock in the control tree while the capture holds it.
    let lock = ctl.join(".INBOX/dovecot-uidlist.lock");
    let mount = spawn_mount(
        &fx,
        // Index files are read after the locks, and may already hold the flag change that
        // waited for them: left out, so that Dovecot rebuilds from what the locks covered.
        &["--exclude-indexes", "--control-dir", &template],
        &[("MAILDIRFS_TEST_HOLD_MS", "3000")],
    );
    wait_for_lock(&lock);
    assert!(!maildir.join("dovecot-uidlist.lock").exists());
    let mut flags = dc.doveadm_spawn(&[
        "flags",
        "add",
        "-u",
        ALICE,
        "\\Flagged",
        "mailbox",
        "INBOX",
        "all",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(lock.exists());
    assert!(
        flags.try_wait().unwrap().is_none(),
        "doveadm flags did not wait for the lock in the control tree"
    );
    let out = mount.wait_with_output().unwrap();
    let m = Mounted::adopt(fx.mnt());
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{said}");
    assert!(said.contains("all accounts locked"), "{said}");
    assert!(said.contains(": 1 accounts, 2 mailboxes,"), "{said}");
    assert!(
        said.contains(&format!("control files from {template}")),
        "{said}"
    );
    assert!(flags.wait().unwrap().success());

    // The view: the control tree's files in the mailboxes' directories.
    let view = m.mnt.join("example.org/alice/Maildir");
    let inbox = if inbox_folder {
        view.join(".INBOX")
    } else {
        view.clone()
    };
    assert_eq!(
        std::fs::read(inbox.join("dovecot-uidlist")).unwrap()[..2],
        b"3 "[..]
    );
    assert!(view.join(".Archive/dovecot-uidlist").exists());
    assert!(inbox.join("dovecot-keywords").exists());
    // Subscriptions are served with INBOX at the Maildir's root only.
    assert_eq!(view.join("subscriptions").exists(), !inbox_folder);
    let out = run(&[OsStr::new("verify"), view.as_os_str()], &[]);
    let verified = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{verified}");
    assert!(verified.contains("0 problems"), "{verified}");

    // A copy of the view, into a Dovecot of the default layout: the same UIDs, GUIDs, flags.
    let copy = fx.dir.join("copy");
    std::fs::create_dir_all(copy.join("example.org/alice")).unwrap();
    let out = rsync_a(&view, &copy.join("example.org/alice/Maildir"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One mailbox back into the live store with its control tree, as docs/OPERATIONS.md
    // says: the messages into the Maildir, the control files into the control tree.
    restore_into_control_tree(
        &view,
        &dc.maildir(RESTORED),
        &dc.control_dir(RESTORED).unwrap(),
    );
    m.umount();
    chown_tree(&copy);
    let plain = Setup {
        flavor: flavor.clone(),
        control: None,
        inbox_folder,
    };
    let default_layout =
        Dovecot::start_with(&plain, &fx.dir.join("dovecot-plain"), &copy, &[ALICE]);
    assert_eq!(default_layout.state(ALICE), at_capture);
    drop(default_layout);
    dc.doveadm_ok(&["force-resync", "-u", RESTORED, "*"]);
    assert_eq!(dc.state(RESTORED), at_capture);
    dc.assert_clean_log();
}

/// Copies the Maildir `from` (a view or a backup of one) to `maildir` of a store whose
/// control files are under `ctl`: every mailbox's `dovecot-uidlist` and `dovecot-keywords` to
/// its directory in the control tree (INBOX's in `.INBOX/`), `subscriptions` to `ctl` itself.
fn restore_into_control_tree(from: &Path, maildir: &Path, ctl: &Path) {
    let out = rsync_a(from, maildir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut mailboxes: Vec<(PathBuf, PathBuf)> = vec![(maildir.to_path_buf(), ctl.join(".INBOX"))];
    for e in std::fs::read_dir(maildir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') && e.path().join("cur").is_dir() {
            mailboxes.push((e.path(), ctl.join(&name)));
        }
    }
    for (mailbox, control) in mailboxes {
        std::fs::create_dir_all(&control).unwrap();
        for f in ["dovecot-uidlist", "dovecot-keywords"] {
            if mailbox.join(f).exists() {
                std::fs::rename(mailbox.join(f), control.join(f)).unwrap();
            }
        }
    }
    if maildir.join("subscriptions").exists() {
        std::fs::rename(maildir.join("subscriptions"), ctl.join("subscriptions")).unwrap();
    }
    chown_tree(maildir);
    chown_tree(ctl);
}
