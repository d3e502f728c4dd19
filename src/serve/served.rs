//! What the FUSE adapter serves, without FUSE: each request as a method over the view and
//! the source that returns its answer (or, for a directory of an account not captured yet,
//! hands it to a callback once the account is captured). `serve/fs.rs` only turns these
//! answers into replies; the tests here serve a real view built on a temporary tree.

use std::num::NonZeroUsize;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use fuser::{Errno, FileAttr, FileType};
use lru::LruCache;
use parking_lot::Mutex;

use crate::image::snapshot::{Ino, Kind, NodeIdx, Snapshot};
use crate::image::view::{At, View};
use crate::serve::readahead::ReadAhead;
use crate::serve::source::{self, Opened, Source};
use crate::sys;

/// Open fds kept for reads without a handle (no-open mode). Readers go through a tree file
/// by file, so a few dozen are plenty; the fd budget keeps room for them (`pin::RESERVE`).
const FD_CACHE: usize = 64;

/// A file as the kernel knows it: its node id and generation (another capture may serve
/// another file under the same node id, with another generation).
pub type FileKey = (Ino, u64);

/// A node's attributes with its generation: a lookup's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its attributes as captured, as fuser replies with them.
    pub attr: FileAttr,
    /// Its generation (see `Snapshot::generation`): another file under a reused node id gets
    /// another.
    pub generation: u64,
}

/// A directory ready to list: the directory, its parent's node id (for `..`), and the
/// position a READDIR continues at.
#[derive(Debug)]
pub struct Listing {
    dir: At,
    parent: Ino,
    pos: u64,
}

/// One entry of a listing: its node id, the offset to continue after it, its type and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListEntry<'a> {
    /// Its node id (for `.` and `..`, the directory's own and its parent's).
    pub ino: Ino,
    /// The READDIR offset that continues after it: the snapshot's epoch and the next position.
    pub next: u64,
    /// Its file type (a directory for `..`).
    pub kind: FileType,
    /// Its name: `.`, `..` or the child's.
    pub name: &'a [u8],
    /// The node in the listing's snapshot (`None` for `..`, which lies elsewhere).
    idx: Option<NodeIdx>,
}

/// The view being served, with the source its bytes come from.
#[derive(Debug)]
pub struct Served {
    view: Arc<View>,
    source: Arc<Source>,
    /// Fds for reads without a handle, by file, least recently used dropped first.
    /// Protected by this mutex.
    fds: Mutex<LruCache<FileKey, Opened>>,
    /// The read-ahead across files, once the kernel's notifier exists (no-open mode only).
    ahead: Arc<OnceLock<ReadAhead>>,
}

impl Served {
    /// Serves `view`, its files' bytes read through `source`.
    pub fn new(view: Arc<View>, source: Arc<Source>) -> Served {
        Served {
            view,
            source,
            fds: Mutex::new(LruCache::new(
                NonZeroUsize::new(FD_CACHE).unwrap_or(NonZeroUsize::MIN),
            )),
            ahead: Arc::new(OnceLock::new()),
        }
    }

    /// The view served.
    pub fn view(&self) -> &Arc<View> {
        &self.view
    }

    /// Where the read-ahead goes once the session's notifier exists.
    pub fn ahead_slot(&self) -> Arc<OnceLock<ReadAhead>> {
        Arc::clone(&self.ahead)
    }

    /// The node with node id `ino`.
    pub fn node(&self, ino: Ino) -> Result<At, Errno> {
        self.view.node(ino).map_err(errno)
    }

    /// The attributes of `ino`, as captured (of its account's root, once captured).
    pub fn attr(&self, ino: Ino) -> Result<FileAttr, Errno> {
        let at = self.view.shown(self.node(ino)?);
        Ok(at.snap.file_attr(at.idx))
    }

    /// The target of symlink `ino`, as read at capture.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, Errno> {
        let at = self.node(ino)?;
        match at.snap.node(at.idx).kind {
            Kind::Symlink(i) => Ok(at.snap.inline(i).to_vec()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Whether `ino` may be accessed: it must exist, and nothing may be written.
    pub fn access(&self, ino: Ino, write: bool) -> Result<(), Errno> {
        self.node(ino)?;
        if write {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// The filesystem's size for `statfs`: 4 KiB blocks and entries, of all the view holds.
    pub fn usage(&self) -> (u64, u64) {
        (self.view.bytes().div_ceil(4096), self.view.entries() as u64)
    }

    /// Runs `then` with the directory at `ino` ready to read from position 0: at once, or,
    /// for an account not captured yet, on the capture thread once it is.
    fn with_dir(&self, ino: Ino, then: impl FnOnce(Result<(At, Ino), Errno>) + Send + 'static) {
        let dir = match self.node(ino) {
            Ok(d) => d,
            Err(e) => return then(Err(e)),
        };
        if !matches!(dir.snap.node(dir.idx).kind, Kind::Dir { .. }) {
            return then(Err(Errno::ENOTDIR));
        }
        if dir.snap.is_unlistable(dir.idx) {
            return then(Err(Errno::EIO));
        }
        let parent = self.view.parent_ino(&dir);
        match self.view.deferred(&dir) {
            None => then(Ok((dir, parent))),
            Some(account) => self.view.with_account(
                account,
                Box::new(move |r| {
                    then(
                        r.map(|snap| {
                            let idx = NodeIdx::ROOT;
                            (At { snap, idx }, parent)
                        })
                        .map_err(errno),
                    )
                }),
            ),
        }
    }

    /// Looks `name` up in directory `parent`, answering `then`.
    pub fn lookup(
        &self,
        parent: Ino,
        name: Vec<u8>,
        then: impl FnOnce(Result<Entry, Errno>) + Send + 'static,
    ) {
        let view = Arc::clone(&self.view);
        self.with_dir(parent, move |r| {
            then(r.and_then(|(dir, _)| {
                let idx = dir.snap.lookup(dir.idx, &name).ok_or(Errno::ENOENT)?;
                let snap = Arc::clone(&dir.snap);
                Ok(entry(&view.shown(At { snap, idx })))
            }))
        });
    }

    /// Directory `ino` ready to list from the kernel's `offset`, answering `then`.
    pub fn list(
        &self,
        ino: Ino,
        offset: u64,
        then: impl FnOnce(Result<Listing, Errno>) + Send + 'static,
    ) {
        self.with_dir(ino, move |r| {
            then(r.and_then(|(dir, parent)| {
                let pos = position(&dir.snap, offset)?;
                Ok(Listing { dir, parent, pos })
            }))
        });
    }

    /// Opens file `ino` for a handle: checked to be the captured file, and counted as read
    /// for the working set (a reader of a handle's file may read it without asking us).
    pub fn open(&self, ino: Ino) -> Result<(FileKey, Opened), Errno> {
        let at = self.node(ino)?;
        let opened = self.source.open(&at.snap, at.idx).map_err(|e| e.errno())?;
        at.snap.mark_read(at.idx);
        Ok(((ino, at.snap.generation(at.idx)), opened))
    }

    /// Reads up to `size` bytes of file `ino` at `offset`, through `handle` (an open handle's
    /// file) or a cached fd; never past the captured length.
    pub fn read(
        &self,
        ino: Ino,
        handle: Option<Opened>,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, Errno> {
        let at = self.node(ino)?;
        if let Some(ahead) = self.ahead.get() {
            // Before this read, so that the files after it are read while it is.
            ahead.on_read(&at.snap, at.idx, offset);
        }
        let opened = match handle {
            Some(o) => o,
            None => self.cached(&at)?,
        };
        let len = at.snap.node(at.idx).attr.size;
        let data = source::read_at(&opened, len, offset, size).map_err(|e| {
            let path = self.source.path().join(at.snap.rel_path(at.idx));
            self.source.failed(at.snap.ino_of(at.idx), &path, &e);
            Errno::from(e)
        })?;
        if offset + data.len() as u64 >= len {
            at.snap.mark_read(at.idx);
        }
        self.source.reads.fetch_add(1, Ordering::Relaxed);
        self.source
            .bytes_served
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(data)
    }

    /// The file's bytes from the fd cache, opened (outside the cache's lock: a slow open must
    /// not stall other readers) if it is not there.
    fn cached(&self, at: &At) -> Result<Opened, Errno> {
        let key = (at.snap.ino_of(at.idx), at.snap.generation(at.idx));
        if let Some(o) = self.fds.lock().get(&key) {
            return Ok(o.clone());
        }
        let opened = self.source.open(&at.snap, at.idx).map_err(|e| e.errno())?;
        self.fds.lock().put(key, opened.clone());
        Ok(opened)
    }
}

impl Listing {
    /// The entries from the listing's position on: `.`, `..`, then the children in name
    /// order.
    pub fn entries(&self) -> impl Iterator<Item = ListEntry<'_>> {
        (self.pos..).map_while(move |pos| {
            let (ino, idx, name) = entry_at(&self.dir, self.parent, pos)?;
            // No node: `..`, always a directory.
            let kind = idx.map_or(FileType::Directory, |i| {
                self.dir.snap.node(i).kind.file_type()
            });
            let next = offset_of(&self.dir.snap, pos + 1);
            Some(ListEntry {
                ino,
                next,
                kind,
                name,
                idx,
            })
        })
    }

    /// An entry's attributes and generation, as a lookup of it would answer (`None`: `..`
    /// of an account's root, gone from the skeleton).
    pub fn entry(&self, view: &View, e: &ListEntry<'_>) -> Option<Entry> {
        // `..` of an account's root lies in the skeleton.
        let at = match e.idx {
            Some(idx) => At {
                snap: Arc::clone(&self.dir.snap),
                idx,
            },
            None => view.node(e.ino).ok()?,
        };
        Some(entry(&view.shown(at)))
    }
}

/// The view's error as FUSE's.
fn errno(e: sys::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn entry(at: &At) -> Entry {
    Entry {
        attr: at.snap.file_attr(at.idx),
        generation: at.snap.generation(at.idx),
    }
}

/// A directory offset as given to the kernel: the capture the listing was made in (its
/// snapshot's epoch), and the position after the entry.
fn offset_of(snap: &Snapshot, next: u64) -> u64 {
    (u64::from(snap.epoch) << 32) | next
}

/// The position an offset from the kernel continues at; `ESTALE` if the listing was begun in
/// another capture of the account (continuing it would skip or repeat entries).
fn position(snap: &Snapshot, offset: u64) -> Result<u64, Errno> {
    if offset == 0 {
        return Ok(0);
    }
    if offset >> 32 != u64::from(snap.epoch) {
        return Err(Errno::ESTALE);
    }
    Ok(offset & 0xffff_ffff)
}

/// The entry at listing position `pos`: `.`, `..`, then the children in name order; with the
/// node (`None` for `..`, whose node id is given).
fn entry_at(dir: &At, parent: Ino, pos: u64) -> Option<(Ino, Option<NodeIdx>, &[u8])> {
    let snap = &dir.snap;
    match pos {
        0 => Some((snap.ino_of(dir.idx), Some(dir.idx), b".")),
        1 => Some((parent, None, b"..")),
        _ => {
            let children = snap.children(dir.idx);
            let c = children.start.checked_add(u32::try_from(pos - 2).ok()?)?;
            (c < children.end).then(|| {
                let c = NodeIdx(c);
                (snap.ino_of(c), Some(c), snap.name(c))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::path::Path;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;
    use crate::image::build::{Plan, build};
    use crate::image::snapshot::{Attr, Builder, Stamp, Totals};
    use crate::testutil::TempDir;

    /// A tree under `dir`/src: accounts `a` (INBOX with `n` messages in `cur/`, a `.Sent`
    /// folder with one) and `b` (one message), a lock file, a file in `tmp/`, a symlink.
    fn tree(dir: &TempDir, n: usize) -> std::path::PathBuf {
        let src = dir.path().join("src");
        for mbox in ["a/Maildir", "a/Maildir/.Sent", "b/Maildir"] {
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(src.join(mbox).join(sub)).unwrap();
            }
        }
        for i in 0..n {
            let name = format!("{}.M{i}P1.h:2,S", 1_700_000_000 + i);
            std::fs::write(src.join("a/Maildir/cur").join(name), body(i)).unwrap();
        }
        std::fs::write(src.join("a/Maildir/.Sent/cur/1.M1P1.h:2,S"), body(99)).unwrap();
        std::fs::write(src.join("b/Maildir/cur/2.M2P2.h:2,"), body(7)).unwrap();
        std::fs::write(src.join("a/Maildir/tmp/3.M3P3.h"), "half-written").unwrap();
        std::fs::write(src.join("a/Maildir/dovecot.index.cache.lock"), "1:h").unwrap();
        std::os::unix::fs::symlink("../elsewhere", src.join("a/Maildir/link")).unwrap();
        src
    }

    fn body(i: usize) -> String {
        format!("Message-ID: <{i}@t>\n\n{}\n", "x".repeat(100 + i))
    }

    /// The tree captured as `plan` says, served.
    fn serve(src: &Path, plan: &Plan) -> (Served, Arc<Source>) {
        let root = OwnedFd::from(std::fs::File::open(src).unwrap());
        let captured = build(&root, src, plan, &Default::default()).unwrap();
        let source = Arc::new(Source::new(root, src.to_path_buf()));
        (Served::new(captured.view, Arc::clone(&source)), source)
    }

    /// Waits for the answer a method gives its callback (at once, or from a capture thread).
    fn answer<T: Send + 'static>(ask: impl FnOnce(Box<dyn FnOnce(T) + Send>)) -> T {
        let (tx, rx) = mpsc::channel();
        ask(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.recv_timeout(Duration::from_secs(30)).expect("an answer")
    }

    fn lookup(s: &Served, parent: Ino, name: &str) -> Result<Entry, Errno> {
        let name = name.as_bytes().to_vec();
        answer(|then| s.lookup(parent, name, then))
    }

    /// The node id at `path` below the root, looked up name by name.
    fn walk(s: &Served, path: &str) -> Result<Ino, Errno> {
        let mut ino = Ino::ROOT;
        for name in path.split('/') {
            ino = Ino(lookup(s, ino, name)?.attr.ino.0);
        }
        Ok(ino)
    }

    fn names(s: &Served, dir: Ino, offset: u64) -> Result<Vec<(String, u64)>, Errno> {
        let listing = answer(|then| s.list(dir, offset, then))?;
        Ok(listing
            .entries()
            .map(|e| (String::from_utf8_lossy(e.name).into_owned(), e.next))
            .collect())
    }

    fn read_all(s: &Served, ino: Ino) -> Result<Vec<u8>, Errno> {
        s.read(ino, None, 0, 1 << 20)
    }

    fn cur_names(src: &Path, mbox: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(src.join(mbox).join("cur"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A tree of `n` messages in account `a`'s `cur/` served with one pin, so that the
    /// others are unpinned (found again by name); with their names and node ids.
    #[allow(clippy::type_complexity)]
    fn one_pin(
        tag: &str,
        n: usize,
    ) -> (
        TempDir,
        std::path::PathBuf,
        Served,
        Arc<Source>,
        Vec<String>,
        Vec<Ino>,
    ) {
        let dir = TempDir::new(tag);
        let src = tree(&dir, n);
        let plan = Plan {
            working_set: Some(1),
            ..Plan::new()
        };
        let (s, source) = serve(&src, &plan);
        let names = cur_names(&src, "a/Maildir");
        let inos = names
            .iter()
            .map(|n| walk(&s, &format!("a/Maildir/cur/{n}")).unwrap())
            .collect();
        (dir, src, s, source, names, inos)
    }

    #[test]
    fn lookups_attributes_and_reads_answer_what_was_captured() {
        let dir = TempDir::new("served-read");
        let src = tree(&dir, 3);
        let (s, _) = serve(&src, &Plan::new());
        let name = &cur_names(&src, "a/Maildir")[1];
        let ino = walk(&s, &format!("a/Maildir/cur/{name}")).unwrap();
        assert_eq!(s.attr(ino).unwrap().size, body(1).len() as u64);
        assert_eq!(read_all(&s, ino).unwrap(), body(1).as_bytes());
        // Reads at an offset, and at or past the end.
        assert_eq!(s.read(ino, None, 4, 6).unwrap(), &body(1).as_bytes()[4..10]);
        assert!(s.read(ino, None, 10_000, 10).unwrap().is_empty());
        assert_eq!(lookup(&s, Ino::ROOT, "nope"), Err(Errno::ENOENT));
    }

    #[test]
    fn the_live_file_growing_changes_neither_its_size_nor_its_bytes() {
        let dir = TempDir::new("served-grow");
        let src = tree(&dir, 2);
        let (s, _) = serve(&src, &Plan::new());
        let name = &cur_names(&src, "a/Maildir")[0];
        let ino = walk(&s, &format!("a/Maildir/cur/{name}")).unwrap();
        let path = src.join("a/Maildir/cur").join(name);
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        std::io::Write::write_all(&mut f, b"appended after capture").unwrap();
        assert_eq!(s.attr(ino).unwrap().size, body(0).len() as u64);
        assert_eq!(read_all(&s, ino).unwrap(), body(0).as_bytes());
    }

    #[test]
    fn tmp_is_empty_lock_files_are_hidden_and_symlinks_are_text() {
        let dir = TempDir::new("served-hide");
        let src = tree(&dir, 1);
        let (s, _) = serve(&src, &Plan::new());
        let tmp = walk(&s, "a/Maildir/tmp").unwrap();
        let listed: Vec<String> = names(&s, tmp, 0)
            .unwrap()
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(listed, [".", ".."]);
        let mbox = walk(&s, "a/Maildir").unwrap();
        assert_eq!(
            lookup(&s, mbox, "dovecot.index.cache.lock"),
            Err(Errno::ENOENT)
        );
        let link = walk(&s, "a/Maildir/link").unwrap();
        assert_eq!(s.readlink(link).unwrap(), b"../elsewhere");
        let cur = walk(&s, "a/Maildir/cur").unwrap();
        assert_eq!(s.readlink(cur), Err(Errno::EINVAL));
    }

    #[test]
    fn a_listing_is_in_name_order_and_resumes_at_any_offset_it_gave() {
        let dir = TempDir::new("served-list");
        let src = tree(&dir, 5);
        let (s, _) = serve(&src, &Plan::new());
        let cur = walk(&s, "a/Maildir/cur").unwrap();
        let all = names(&s, cur, 0).unwrap();
        let mut want = vec![".".to_owned(), "..".to_owned()];
        want.extend(cur_names(&src, "a/Maildir"));
        assert_eq!(all.iter().map(|e| e.0.clone()).collect::<Vec<_>>(), want);
        for (i, (_, next)) in all.iter().enumerate() {
            let rest = names(&s, cur, *next).unwrap();
            assert_eq!(rest, all[i + 1..], "resumed after entry {i}");
        }
        // `..` of cur is the mailbox.
        let mbox = walk(&s, "a/Maildir").unwrap();
        let listing = answer(|then| s.list(cur, 0, then)).unwrap();
        let dotdot = listing.entries().nth(1).unwrap();
        assert_eq!(dotdot.ino, mbox);
        assert_eq!(dotdot.kind, FileType::Directory);
        let plus = listing.entry(s.view(), &dotdot).unwrap();
        assert_eq!(Ino(plus.attr.ino.0), mbox);
    }

    #[test]
    fn files_are_not_directories_and_nothing_may_be_written() {
        let dir = TempDir::new("served-notdir");
        let src = tree(&dir, 1);
        let (s, _) = serve(&src, &Plan::new());
        let name = &cur_names(&src, "a/Maildir")[0];
        let file = walk(&s, &format!("a/Maildir/cur/{name}")).unwrap();
        assert_eq!(lookup(&s, file, "x"), Err(Errno::ENOTDIR));
        assert_eq!(
            answer(|then| s.list(file, 0, then)).map(|_| ()),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(s.access(file, true), Err(Errno::EROFS));
        assert_eq!(s.access(file, false), Ok(()));
        let (blocks, files) = s.usage();
        assert!(blocks >= 1 && files >= 10, "{blocks} blocks, {files} files");
    }

    #[test]
    fn unpinned_messages_renamed_after_capture_are_served_from_their_new_names() {
        let (_dir, src, s, source, before, inos) = one_pin("served-refind", 4);
        // A flag change on every message, and one moved to another folder of the account.
        let cur = src.join("a/Maildir/cur");
        for n in &before[..3] {
            std::fs::rename(cur.join(n), cur.join(format!("{n}R"))).unwrap();
        }
        let moved = src.join("a/Maildir/.Sent/cur").join(&before[3]);
        std::fs::rename(cur.join(&before[3]), moved).unwrap();
        for (i, ino) in inos.iter().enumerate() {
            let name = &before[i];
            let n: usize = name
                .split(".M")
                .nth(1)
                .unwrap()
                .split('P')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(read_all(&s, *ino).unwrap(), body(n).as_bytes(), "{name}");
        }
        let refound = source.refound.load(Ordering::Relaxed);
        assert!((3..=4).contains(&refound), "{refound} refound");
        assert_eq!(source.vanished(), 0);
    }

    #[test]
    fn an_unpinned_message_gone_from_the_source_fails_with_enoent_and_is_counted_once() {
        let (_dir, src, s, source, names, inos) = one_pin("served-gone", 3);
        for n in &names {
            std::fs::remove_file(src.join("a/Maildir/cur").join(n)).unwrap();
        }
        let results: Vec<_> = inos.iter().map(|i| read_all(&s, *i)).collect();
        let gone = results.iter().filter(|r| **r == Err(Errno::ENOENT)).count();
        // The pinned one (at most one) is still served; the others are gone.
        assert!(gone >= 2, "{results:?}");
        for r in results.iter().filter(|r| r.is_ok()) {
            assert!(!r.as_ref().unwrap().is_empty());
        }
        // Asked again: still counted once each.
        for i in &inos {
            let _ = read_all(&s, *i);
        }
        assert_eq!(source.vanished(), gone);
    }

    #[test]
    fn an_account_not_captured_yet_is_captured_when_first_looked_into() {
        let dir = TempDir::new("served-demand");
        let src = tree(&dir, 3);
        // Room for the first account's pins only: `b` waits for its first reader.
        let plan = Plan {
            working_set: Some(5),
            ..Plan::new()
        };
        let (s, _) = serve(&src, &plan);
        let before = s.view().counts();
        let b = walk(&s, "b").unwrap();
        assert_eq!(Ino(s.attr(b).unwrap().ino.0), b);
        let ino = walk(&s, "b/Maildir/cur/2.M2P2.h:2,").unwrap();
        assert_eq!(read_all(&s, ino).unwrap(), body(7).as_bytes());
        let after = s.view().counts();
        assert_eq!(
            after.captured,
            before.captured + 1,
            "{before:?} -> {after:?}"
        );
    }

    fn snap(epoch: u32) -> Snapshot {
        let t = Stamp::default();
        let root = Attr::new(Ino(50), 0, t, t, 0o755, 0, 0);
        Builder::for_account(std::path::PathBuf::from("a"), Ino(50), root, 0, 1, 0, epoch)
            .finish(Totals::default())
    }

    #[test]
    fn a_listing_continues_only_in_the_capture_it_began_in() {
        let (first, again) = (snap(1), snap(2));
        let off = offset_of(&first, 7);
        assert_eq!(position(&first, off), Ok(7));
        assert_eq!(position(&again, off), Err(Errno::ESTALE));
        // Offset 0 starts a listing in any capture.
        assert_eq!(position(&again, 0), Ok(0));
        // The account's root is served under its own node id.
        assert_eq!(first.ino_of(NodeIdx::ROOT), Ino(50));
    }
}
