//! The working set, mounted for real under a low fd limit: accounts captured when first read,
//! evicted and captured again; messages moved between folders in five ways while a backup
//! reads the view, in three orders; and the kernel contract of `docs/DESIGN.md` (node ids
//! kept for the same file, names forgotten on eviction, pages kept, `ESTALE` for a node that
//! is gone, a busy account holding up only itself).

use maildirfs_testkit as common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// 600 fds leave the server about 330 pins: fewer than the store's 4,000 files, more than one
/// account's 200.
const LIMIT: u64 = 600;
const ACCOUNTS: usize = 20;
const PER_ACCOUNT: usize = 200;
const FOLDERS: [&str; 3] = ["", ".Sent", ".Archive"];

/// One generated message: where it is, its bytes, and the mtime it was given.
#[derive(Clone)]
struct Msg {
    rel: PathBuf,
    body: Vec<u8>,
}

fn account_root(a: usize) -> String {
    format!("example.org/u{a:02}/Maildir")
}

fn mailbox_rel(a: usize, folder: &str) -> String {
    if folder.is_empty() {
        account_root(a)
    } else {
        format!("{}/{folder}", account_root(a))
    }
}

/// The Message-ID line that names a message (every body starts with it).
fn id_of(body: &[u8]) -> Vec<u8> {
    body.split(|&b| b == b'\n').next().unwrap_or(&[]).to_vec()
}

fn mtime_of(i: usize) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i as u64)
}

/// `ACCOUNTS` accounts of `PER_ACCOUNT` messages over three folders each; returns the
/// messages by their Message-ID line.
fn make_store(fx: &Fixture) -> BTreeMap<Vec<u8>, Msg> {
    let mut out = BTreeMap::new();
    for a in 0..ACCOUNTS {
        for f in FOLDERS {
            let mb = mailbox_rel(a, f);
            fx.mailbox(&mb);
            fx.write(format!("{mb}/dovecot-uidlist"), b"3 V1 N1\n");
        }
        for i in 0..PER_ACCOUNT {
            let n = a * PER_ACCOUNT + i;
            let mb = mailbox_rel(a, FOLDERS[i % FOLDERS.len()]);
            let body = format!(
                "Message-ID: <{n}@test>\n\n{}\n",
                "y".repeat(200 + (n * 37) % 3000)
            )
            .into_bytes();
            let (sub, flags) = if i % 4 == 0 {
                ("new", "")
            } else {
                ("cur", ":2,S")
            };
            let rel = PathBuf::from(format!(
                "{mb}/{sub}/{}.M{n}P7.host,S={}{flags}",
                1_700_000_000 + n,
                body.len()
            ));
            let p = fx.write(&rel, &body);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .and_then(|f| f.set_modified(mtime_of(n)))
                .unwrap();
            out.insert(id_of(&body), Msg { rel, body });
        }
    }
    out
}

/// The five ways a message moves to another folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Move {
    /// Dovecot's MOVE: a hard link under the same name, then unlink.
    LinkSameName,
    /// A hard link under a new name, then unlink.
    LinkNewName,
    /// A client's rename.
    Rename,
    /// A copy under the same name (mtime kept, as Dovecot sets it), then unlink.
    CopySameName,
    /// A copy under a new name, then unlink.
    CopyNewName,
}

const MOVES: [Move; 5] = [
    Move::LinkSameName,
    Move::LinkNewName,
    Move::Rename,
    Move::CopySameName,
    Move::CopyNewName,
];

/// Moves `m` (in SOURCE `src`) to the `cur/` of another folder of its account, `how`.
fn move_message(src: &Path, m: &Msg, how: Move, seq: usize) {
    let from = src.join(&m.rel);
    let mailbox = m.rel.parent().and_then(Path::parent).unwrap();
    let account = if mailbox.ends_with(".Sent") || mailbox.ends_with(".Archive") {
        mailbox.parent().unwrap()
    } else {
        mailbox
    };
    let target = if mailbox == account {
        account.join(".Archive")
    } else {
        account.to_path_buf()
    };
    let name = m.rel.file_name().unwrap();
    let new_name = format!("1800000000.M{seq}P9.other,S={}:2,S", m.body.len());
    let to_same = src.join(&target).join("cur").join(name);
    let to_new = src.join(&target).join("cur").join(&new_name);
    let copy = |to: &Path| {
        let tmp = src.join(&target).join("tmp").join(&new_name);
        std::fs::copy(&from, &tmp).unwrap();
        let mtime = std::fs::metadata(&from).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .and_then(|f| f.set_modified(mtime))
            .unwrap();
        std::fs::rename(&tmp, to).unwrap();
        std::fs::remove_file(&from).unwrap();
    };
    match how {
        Move::LinkSameName | Move::LinkNewName => {
            let to = if how == Move::LinkSameName {
                &to_same
            } else {
                &to_new
            };
            std::fs::hard_link(&from, to).unwrap();
            std::fs::remove_file(&from).unwrap();
        }
        Move::Rename => std::fs::rename(&from, &to_same).unwrap(),
        Move::CopySameName => copy(&to_same),
        Move::CopyNewName => copy(&to_new),
    }
}

/// Moves ten messages of account `a` (two of each kind); returns them by Message-ID with
/// the kind of their move.
fn move_some(src: &Path, store: &BTreeMap<Vec<u8>, Msg>, a: usize) -> BTreeMap<Vec<u8>, Move> {
    let prefix = format!("{}/", account_root(a));
    let mine: Vec<&Msg> = store
        .values()
        .filter(|m| m.rel.to_string_lossy().starts_with(&prefix))
        .collect();
    let mut moved = BTreeMap::new();
    for k in 0..10 {
        let m = mine[k * 17 % mine.len()];
        let how = MOVES[k % MOVES.len()];
        move_message(src, m, how, a * 100 + k);
        moved.insert(id_of(&m.body), how);
    }
    moved
}

/// Every message file (in a `cur/` or `new/`) under `dir`, recursively.
fn message_files(dir: &Path) -> Vec<PathBuf> {
    all_files(dir)
        .into_iter()
        .filter(|p| is_message(p))
        .collect()
}

fn is_message(p: &Path) -> bool {
    matches!(
        p.parent().and_then(Path::file_name).and_then(OsStr::to_str),
        Some("cur" | "new")
    )
}

/// Every regular file under `dir`, recursively, as a backup reads them.
fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("list {}: {e}", d.display()))
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let ft = e.file_type().unwrap();
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                out.push(p);
            }
        }
    }
    out
}

/// What reading a list of files gave: the Message-IDs read with the right bytes, and the
/// files that failed (with their errors) or had bytes of no generated message.
#[derive(Default)]
struct Readback {
    ok: BTreeMap<Vec<u8>, usize>,
    failed: Vec<(PathBuf, String)>,
}

fn read_back(files: &[PathBuf], store: &BTreeMap<Vec<u8>, Msg>, into: &mut Readback) {
    for f in files {
        match std::fs::read(f) {
            Ok(_) if !is_message(f) => {}
            Ok(bytes) => match store.get(&id_of(&bytes)) {
                Some(m) if m.body == bytes => *into.ok.entry(id_of(&bytes)).or_default() += 1,
                _ => into.failed.push((f.clone(), "other bytes".to_owned())),
            },
            Err(e) => into.failed.push((f.clone(), e.to_string())),
        }
    }
}

fn mount_small(fx: &Fixture, extra: &[&str], env: &[(&str, &str)]) -> Mounted {
    Mounted::with_nofile_env(fx, extra, LIMIT, env)
}

/// The account directories of the view, in order.
fn accounts_in(mnt: &Path) -> Vec<PathBuf> {
    (0..ACCOUNTS).map(|a| mnt.join(account_root(a))).collect()
}

/// Waits (3 s at most: the server writes its counters every second) until the status
/// counter `key` satisfies `ok`; its last value.
fn wait_field(mnt: &Path, key: &str, ok: impl Fn(u64) -> bool) -> u64 {
    let mut v = status_field(mnt, key);
    let end = Instant::now() + Duration::from_secs(3);
    while !ok(v) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        v = status_field(mnt, key);
    }
    v
}

fn status_field(mnt: &Path, key: &str) -> u64 {
    let out = run(
        &[OsStr::new("status"), OsStr::new("--json"), mnt.as_os_str()],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let needle = format!("\"{key}\":");
    let at = text
        .find(&needle)
        .unwrap_or_else(|| panic!("no {key} in status: {text}"));
    text[at + needle.len()..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} in status: {text}"))
}

#[test]
fn moves_right_after_mount_then_account_by_account() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ws-after-mount");
    let store = make_store(&fx);
    let log = fx.dir.join("log");
    let m = mount_small(&fx, &["-v", "--log-file", log.to_str().unwrap()], &[]);
    assert!(
        m.stderr.contains("left to capture when first read"),
        "the store does not fit: {}",
        m.stderr
    );
    for a in 0..ACCOUNTS {
        move_some(&fx.src(), &store, a);
    }
    let mut back = Readback::default();
    for dir in accounts_in(&m.mnt) {
        read_back(&all_files(&dir), &store, &mut back);
    }
    assert!(
        back.failed.is_empty(),
        "failed: {:?}",
        &back.failed[..back.failed.len().min(5)]
    );
    assert_eq!(back.ok.len(), store.len(), "every message read once");
    assert!(back.ok.values().all(|&n| n == 1), "a message read twice");
    assert!(
        wait_field(&m.mnt, "evictions", |n| n > 0) > 0,
        "nothing left the working set: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let line = m.umount();
    assert!(
        line.contains("of 20 accounts captured"),
        "umount said: {line}"
    );
    assert!(lock_files(&fx.src()).is_empty());
}

#[test]
fn moves_between_listing_an_account_and_reading_it() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ws-list-then-read");
    let store = make_store(&fx);
    let m = mount_small(&fx, &[], &[]);
    let mut back = Readback::default();
    for (a, dir) in accounts_in(&m.mnt).into_iter().enumerate() {
        let files = all_files(&dir);
        assert_eq!(files.iter().filter(|f| is_message(f)).count(), PER_ACCOUNT);
        move_some(&fx.src(), &store, a);
        read_back(&files, &store, &mut back);
    }
    assert!(
        back.failed.is_empty(),
        "failed: {:?}",
        &back.failed[..back.failed.len().min(5)]
    );
    assert_eq!(back.ok.len(), store.len());
    // Each account fit once the one read before it had left.
    let want = (ACCOUNTS - 2) as u64;
    assert!(wait_field(&m.mnt, "evictions", |n| n >= want) >= want);
    m.umount();
    assert!(lock_files(&fx.src()).is_empty());
}

#[test]
fn a_reader_that_lists_the_whole_view_first_loses_no_dovecot_move_or_rename() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ws-list-all");
    let store = make_store(&fx);
    let m = mount_small(&fx, &[], &[]);
    let files: Vec<PathBuf> = accounts_in(&m.mnt)
        .iter()
        .flat_map(|d| message_files(d))
        .collect();
    assert_eq!(files.len(), store.len());
    let mut moved = BTreeMap::new();
    for a in 0..ACCOUNTS {
        moved.extend(move_some(&fx.src(), &store, a));
    }
    let mut back = Readback::default();
    read_back(&files, &store, &mut back);
    // Beyond the budget, files are found again by inode or base name: every move but a copy
    // under a new name is served; nothing is ever served with other bytes.
    let lost: BTreeSet<Move> = store
        .keys()
        .filter(|id| !back.ok.contains_key(*id))
        .map(|id| {
            moved
                .get(id)
                .copied()
                .unwrap_or_else(|| panic!("unmoved message lost"))
        })
        .collect();
    assert!(
        lost.iter().all(|k| *k == Move::CopyNewName),
        "lost moves of kinds {lost:?}"
    );
    assert!(back.failed.iter().all(|(_, e)| e != "other bytes"));
    m.umount();
}

#[test]
fn an_evicted_account_is_captured_again_with_its_node_ids_and_pages() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ws-again");
    let store = make_store(&fx);
    let summary = fx.dir.join("summary.json");
    let m = mount_small(&fx, &["--summary-json", summary.to_str().unwrap()], &[]);
    let dirs = accounts_in(&m.mnt);
    // Account 0: read whole (it is captured at mount); note a message's node id.
    let first = message_files(&dirs[0]);
    let mut back = Readback::default();
    read_back(&all_files(&dirs[0]), &store, &mut back);
    let probe = first[0].clone();
    let ino = std::fs::metadata(&probe).unwrap().ino();
    // Held open across the eviction: the kernel keeps this inode (FUSE drops an inode with no
    // dentry and no open file at once, and its pages with it), so its pages can stay.
    let held = std::fs::File::open(&probe).unwrap();
    let served = wait_field(&m.mnt, "bytes_served", |n| n > 0);
    // Reading the other accounts makes account 0 leave the working set.
    for d in &dirs[1..4] {
        read_back(&all_files(d), &store, &mut back);
    }
    assert!(wait_field(&m.mnt, "evictions", |n| n >= 1) >= 1);
    // A message delivered since: the kernel forgot account 0's listing, so listing it again
    // captures it again, at its new instant.
    let late = fx.write(
        format!("{}/new/1900000000.M1P1.late", account_root(0)),
        b"Message-ID: <late@test>\n\nlate\n",
    );
    let again = message_files(&dirs[0]);
    assert_eq!(
        again.len(),
        first.len() + 1,
        "the late message is in the new capture"
    );
    assert!(again.iter().any(|p| p.file_name() == late.file_name()));
    assert!(wait_field(&m.mnt, "accounts_captured_again", |n| n >= 1) >= 1);
    // The same file keeps its node id and generation: looked up again, it is the inode the
    // kernel kept, and reading it again by its name reads nothing from the source.
    assert_eq!(std::fs::metadata(&probe).unwrap().ino(), ino);
    // The counters reach the status file within a second: let them settle first.
    std::thread::sleep(Duration::from_millis(1500));
    let before = status_field(&m.mnt, "bytes_served");
    assert!(before > served);
    let bytes = std::fs::read(&probe).unwrap();
    assert_eq!(store[&id_of(&bytes)].body, bytes);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status_field(&m.mnt, "bytes_served"),
        before,
        "pages read again"
    );
    drop(held);
    let line = m.umount();
    assert!(line.contains("more than once"), "umount said: {line}");
    // Written again at unmount: the accounts captured on demand are in it too, each once,
    // with its longest hold; account 0 twice captured.
    let json = std::fs::read_to_string(&summary).unwrap();
    for a in 0..4 {
        let at = json
            .find(&format!("\"account\": \"{}\"", account_root(a)))
            .unwrap_or_else(|| panic!("account {a} not in {json}"));
        let entry = &json[at..at + json[at..].find('}').unwrap()];
        assert!(entry.contains("\"locked\": true"), "{entry}");
        assert!(!entry.contains("\"messages\": 0,"), "{entry}");
        let captures: u64 = entry
            .split("\"captures\": ")
            .nth(1)
            .and_then(|r| r.trim().split([',', '\n']).next()?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no captures in {entry}"));
        assert!(captures >= if a == 0 { 2 } else { 1 }, "{entry}");
        let named = format!("\"account\": \"{}\"", account_root(a));
        assert_eq!(json.matches(&named).count(), 1, "{json}");
    }
}

#[test]
fn a_node_gone_from_the_working_set_fails_with_estale_never_other_bytes() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("ws-estale");
    make_store(&fx);
    // One large message in account 0, read only at its start.
    let big: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    fx.write(
        format!("{}/cur/1600000000.M1P1.big:2,S", account_root(0)),
        &big,
    );
    // Accounts may leave as soon as they are idle.
    let m = mount_small(&fx, &[], &[("MAILDIRFS_TEST_MIN_IDLE_MS", "0")]);
    let f = std::fs::File::open(
        m.mnt
            .join(account_root(0))
            .join("cur/1600000000.M1P1.big:2,S"),
    )
    .unwrap();
    let mut head = [0u8; 4096];
    f.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head[..], &big[..4096]);
    let dirs = accounts_in(&m.mnt);
    // Listing other accounts captures them; with no idle time any account may leave meanwhile
    // (even one being listed: that listing may then fail, which this test does not mind).
    for d in &dirs[1..4] {
        let _ = std::fs::read_dir(d.join("cur")).map(|r| r.count());
    }
    assert!(wait_field(&m.mnt, "evictions", |n| n >= 1) >= 1);
    let mut tail = vec![0u8; 4096];
    let at = (4 << 20) - 4096;
    match f.read_exact_at(&mut tail, at as u64) {
        Ok(()) => assert_eq!(&tail[..], &big[at..], "other bytes"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}"),
    }
    drop(f);
    m.umount();
}

/// A lock file in `mailbox` that a live process holds, as Dovecot's would be.
struct HeldLock(PathBuf);

impl HeldLock {
    fn new(mailbox: &Path) -> HeldLock {
        let p = mailbox.join("dovecot-uidlist.lock");
        std::fs::write(&p, format!("{}:{}", std::process::id(), hostname())).unwrap();
        HeldLock(p)
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn an_account_waiting_for_its_locks_holds_up_only_itself() {
    if !fuse_available() {
        return;
    }
    for strict in [false, true] {
        let fx = Fixture::new("ws-busy");
        let store = make_store(&fx);
        let busy = HeldLock::new(&fx.src().join(mailbox_rel(5, ".Sent")));
        let mut extra = vec!["--lock-timeout", "3"];
        if strict {
            extra.push("--strict-lock");
        }
        let m = mount_small(&fx, &extra, &[]);
        let dirs = accounts_in(&m.mnt);
        let started = Instant::now();
        let waiting = {
            let d = dirs[5].clone();
            std::thread::spawn(move || std::fs::read_dir(d.join("cur")).map(|r| r.count()))
        };
        std::thread::sleep(Duration::from_millis(200));
        let mut back = Readback::default();
        read_back(&message_files(&dirs[6]), &store, &mut back);
        assert_eq!(back.ok.len(), PER_ACCOUNT);
        assert!(
            !waiting.is_finished(),
            "account 5 did not wait for its locks"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        let r = waiting.join().unwrap();
        drop(busy);
        let out = run(&[OsStr::new("umount"), m.mnt.as_os_str()], &[]);
        let line = String::from_utf8_lossy(&out.stderr).into_owned();
        if strict {
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EIO));
            assert_eq!(out.status.code(), Some(1), "umount: {line}");
            assert!(
                line.contains("1 accounts UNREADABLE"),
                "umount said: {line}"
            );
        } else {
            assert!(r.unwrap() > 0);
            assert!(out.status.success(), "umount: {line}");
            assert!(
                line.contains("1 captures WITHOUT locks"),
                "umount said: {line}"
            );
        }
        drop(m);
        assert!(lock_files(&fx.src()).is_empty());
    }
}
