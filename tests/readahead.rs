//! Read-ahead across files, through a real mount: a directory read in order is served from the
//! kernel's cache (the READs that reach maildirfs are the files the counters say were not
//! read ahead), a listing reads nothing ahead, and what is read ahead is the captured bytes
//! after renames and expunges in the live tree.

use maildirfs_testkit as common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// `n` messages in one mailbox's `cur/`, some under a page, some over two; their bytes by name.
fn mailbox(fx: &Fixture, n: usize) -> HashMap<String, Vec<u8>> {
    fx.mailbox("Maildir");
    fx.write("Maildir/dovecot-uidlist", b"3 V1 N1\n");
    (0..n)
        .map(|i| {
            let name = format!("{}.M{i}P1.host,S=1:2,S", 1_700_000_000 + i);
            let body = format!("Message-ID: <{i}@t>\n\n{}\n", "z".repeat((i * 397) % 9000));
            fx.write(format!("Maildir/cur/{name}"), body.as_bytes());
            (name, body.into_bytes())
        })
        .collect()
}

/// The message names of the view's `cur/`, in listing order.
fn listed(mnt: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(mnt.join("Maildir/cur"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The name of `p`, a message of the view.
fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Reads message `p` of the view and checks it has its captured bytes.
fn read_back(p: &Path, bytes: &HashMap<String, Vec<u8>>) {
    let name = name_of(p);
    assert_eq!(std::fs::read(p).unwrap(), bytes[&name], "{name}");
}

/// A number from the summary written at unmount.
fn field(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\": "))
        .unwrap_or_else(|| panic!("{key} not in {json}"));
    json[at + key.len() + 4..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

struct Served {
    reads: u64,
    ahead: u64,
    late: u64,
}

/// Mounts (with `extra` options), runs `read` on the view, unmounts, and says what the
/// counters say.
fn serve(fx: &Fixture, extra: &[&str], read: impl FnOnce(&Path)) -> Served {
    let summary = fx.dir.join("summary.json");
    let mut args = vec!["--summary-json", summary.to_str().unwrap()];
    args.extend_from_slice(extra);
    let m = Mounted::new(fx, &args);
    read(&m.mnt);
    // Whatever is still being read ahead finishes before the counters are final.
    std::thread::sleep(Duration::from_millis(300));
    m.umount();
    let json = std::fs::read_to_string(&summary).unwrap();
    Served {
        reads: field(&json, "read_requests"),
        ahead: field(&json, "files_read_ahead"),
        late: field(&json, "reads_late_for_read_ahead"),
    }
}

#[test]
fn a_directory_read_in_order_is_served_from_the_cache() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ahead-order");
    let bytes = mailbox(&fx, 300);
    let s = serve(&fx, &[], |mnt| {
        for p in listed(mnt) {
            read_back(&p, &bytes);
            // A backup writes each file out before the next.
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    eprintln!("{} READs, {} read ahead, {} late", s.reads, s.ahead, s.late);
    // Every file not read ahead whole took a READ; READs beyond those are the late ones.
    assert!(s.ahead >= 150, "{} of 300 read ahead", s.ahead);
    assert!(
        s.reads >= 300 - s.ahead,
        "{} READs, {} ahead",
        s.reads,
        s.ahead
    );
    assert!(
        s.reads <= 300 - s.ahead + s.late,
        "{} READs, {} ahead, {} late",
        s.reads,
        s.ahead,
        s.late
    );
}

#[test]
fn a_listing_or_a_few_scattered_reads_read_nothing_ahead() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ahead-list");
    let bytes = mailbox(&fx, 200);
    let s = serve(&fx, &[], |mnt| {
        let files = listed(mnt);
        for p in &files {
            std::fs::metadata(p).unwrap();
        }
        // An incremental backup's few new messages, one here and there.
        for p in files.iter().step_by(37) {
            read_back(p, &bytes);
        }
    });
    assert_eq!(s.ahead, 0);
    assert_eq!(s.reads, 6);
}

#[test]
fn what_is_read_ahead_is_the_captured_bytes_after_renames_and_expunges() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ahead-moved");
    let bytes = mailbox(&fx, 400);
    let summary = fx.dir.join("summary.json");
    // Fewer fds than messages: some are found again by name, not through a pin.
    let m = Mounted::with_nofile(&fx, &["--summary-json", summary.to_str().unwrap()], 330);
    let cur = fx.src().join("Maildir/cur");
    let mut expunged = Vec::new();
    for (i, name) in bytes.keys().enumerate() {
        let from = cur.join(name);
        if i % 5 == 0 {
            std::fs::remove_file(&from).unwrap();
            expunged.push(name.clone());
        } else if i % 3 == 0 {
            // A flag change; and a new message under the old name would be other bytes.
            std::fs::rename(&from, cur.join(name.replace(":2,S", ":2,RS"))).unwrap();
            std::fs::write(&from, b"Message-ID: <other@t>\n\nnot the captured one\n").unwrap();
        }
    }
    let mut gone = 0;
    for p in listed(&m.mnt) {
        let name = name_of(&p);
        match std::fs::read(&p) {
            Ok(b) => assert_eq!(b, bytes[&name], "{name}"),
            Err(e) => {
                // Only an expunged message that was not pinned may be gone; never other bytes.
                assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{name}: {e}");
                assert!(expunged.contains(&name), "{name} is not gone");
                gone += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(300));
    m.umount();
    let json = std::fs::read_to_string(&summary).unwrap();
    assert!(field(&json, "files_read_ahead") >= 100, "{json}");
    assert!(gone <= expunged.len());
}

#[test]
fn no_read_ahead_reads_each_file_when_asked() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ahead-off");
    let bytes = mailbox(&fx, 100);
    let s = serve(&fx, &["--no-read-ahead"], |mnt| {
        for p in listed(mnt) {
            read_back(&p, &bytes);
        }
    });
    assert_eq!((s.ahead, s.late), (0, 0));
    assert_eq!(s.reads, 100);
}

#[test]
fn a_large_file_gets_the_readahead_asked_for() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ahead-large");
    mailbox(&fx, 1);
    let m = Mounted::new(&fx, &[]);
    let out = std::process::Command::new("mountpoint")
        .arg("-d")
        .arg(&m.mnt)
        .output()
        .unwrap();
    let devno = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let kb = std::fs::read_to_string(format!("/sys/class/bdi/{devno}/read_ahead_kb")).unwrap();
    // The kernel's default for a FUSE mount is 128; maildirfs asks for 1 MiB, and as root
    // gets it.
    assert_eq!(kb.trim(), "1024", "device {devno}");
    m.umount();
}
