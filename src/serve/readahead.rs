//! Read-ahead across files: when a reader goes through a directory file after file, the next
//! files are read from SOURCE ahead of it, several at a time, and their bytes put into the
//! kernel's page cache (`FUSE_NOTIFY_STORE`), so that the reader's `read()` is a cache hit
//! instead of a READ round trip that waits for the disk.
//!
//! The order is the listing's (children are sorted by name: the order of `tar`, `rsync` and
//! `restic`). A stream starts only at a directory's second file read in that order, so an
//! incremental backup that reads a few new messages reads nothing ahead; a reader that jumps
//! starts again from a small window, and one that stops leaves at most a window read.
//!
//! The reader's cache hits never reach maildirfs, so the daemon would lose sight of it once
//! the read-ahead works. So each window ends with a *marker*: a file whose first page is left
//! out of the store (the rest, if any, is stored), and whose bytes are in SOURCE's page cache.
//! The reader's READ of that page is the one round trip of the window: it says where the
//! reader is, and the next window (twice as long, up to [`MAX_FILES`]) is read ahead from there.
//!
//! Pages of SOURCE that the read-ahead itself brought in are dropped once stored
//! (`POSIX_FADV_DONTNEED`): every message would otherwise sit in the page cache twice. Pages
//! that were cached before (Dovecot's hot mail) are left alone: a file is first read with
//! `RWF_NOWAIT`, which reads only what is cached; where the filesystem cannot do that (NFS),
//! nothing is dropped.
//!
//! A store the kernel could not make (it no longer had the inode: fuser's notifier reports
//! that as success) still counts as read ahead; the reader's READ then reads the file as it
//! would without read-ahead.
//!
//! Memory: at most [`MAX_BYTES`] of files are queued at once, and [`WORKERS`] files (each at
//! most [`MAX_FILE`]; larger ones keep the kernel's own readahead) are in memory. Streams hold
//! their snapshot weakly: an account that leaves the working set is not kept by its
//! read-ahead.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use parking_lot::{Condvar, Mutex};

use crate::image::snapshot::{Content, Ino, Kind, NodeIdx, Snapshot};
use crate::serve::source::{Opened, Source};
use crate::sys;

/// What puts a file's bytes into the kernel's page cache: the FUSE notifier, or a test's fake.
pub trait PageStore: Send + Sync {
    /// Stores `data` at `offset` of the file the kernel knows as node `ino`.
    fn store(&self, ino: Ino, offset: u64, data: &[u8]) -> std::io::Result<()>;
}

/// The files a window starts with, and the most it grows to.
pub const START_FILES: u32 = 4;
/// The most files a window grows to: it doubles from [`START_FILES`] as the reader keeps
/// on in order.
pub const MAX_FILES: u32 = 64;
/// The most bytes queued or being read at once, over all streams.
pub const MAX_BYTES: u64 = 16 << 20;
/// Files larger than this are left to the kernel's own readahead.
pub const MAX_FILE: u64 = 1 << 20;
/// Threads that read ahead: several reads in flight keep the disk busy (8 read a cold store
/// here 15 % faster than 4; 16 no faster than 8).
pub const WORKERS: usize = 8;
/// Directories read through at once (several readers, or a reader going in and out).
const STREAMS: usize = 16;

/// The read-ahead of one mount.
pub struct ReadAhead {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead").finish_non_exhaustive()
    }
}

struct Shared {
    source: Arc<Source>,
    store: Box<dyn PageStore>,
    /// The page size: a marker's first page is left out of its store.
    page: u64,
    /// Protected by this mutex; `wake` tells the workers of new jobs or of the end.
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// Most recently used last.
    streams: Vec<Stream>,
    queue: VecDeque<Job>,
    /// Bytes of the jobs queued or being read.
    bytes: u64,
    stopping: bool,
}

/// A reader going through one directory.
struct Stream {
    snap: Weak<Snapshot>,
    dir: NodeIdx,
    /// The last file whose READ was seen.
    reader: u32,
    /// The next file to read ahead.
    next: u32,
    /// The end of the directory's children.
    end: u32,
    /// Files to keep ahead of the reader: 0 until the reader's second file in order.
    window: u32,
    /// The file whose READ is expected next: the marker of what is read ahead.
    marker: Option<u32>,
}

struct Job {
    snap: Weak<Snapshot>,
    idx: NodeIdx,
    size: u64,
    /// The last file of a window: its first page is left for the reader to ask for.
    marker: bool,
}

impl ReadAhead {
    /// Starts the workers. `store` is how bytes reach the kernel's cache.
    /// What it does is counted in `source`'s `ahead_*` counters.
    pub fn start(source: Arc<Source>, store: Box<dyn PageStore>) -> std::io::Result<ReadAhead> {
        let shared = Arc::new(Shared {
            source,
            store,
            page: sys::page_size(),
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        for n in 0..WORKERS {
            let s = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("read-ahead-{n}"))
                .spawn(move || s.work())?;
        }
        Ok(ReadAhead { shared })
    }

    /// Tells the read-ahead that a READ at `offset` of file `idx` of `snap` reached maildirfs.
    /// Never waits for a read.
    pub fn on_read(&self, snap: &Arc<Snapshot>, idx: NodeIdx, offset: u64) {
        if offset != 0 || !candidate(snap, idx) {
            return;
        }
        let mut st = self.shared.state.lock();
        // A READ names the inode, whose node is its first path: for a file with several
        // (Dovecot copies by hard link), the path in a directory being read through is the
        // one the reader is at.
        let idx = if snap.node(idx).attr.nlink > 1 {
            let ino = snap.node(idx).attr.ino;
            snap.links(ino)
                .find(|l| st.stream_of(snap, snap.node(*l).parent).is_some())
                .unwrap_or(idx)
        } else {
            idx
        };
        let dir = snap.node(idx).parent;
        let Kind::Dir { first, count } = snap.node(dir).kind else {
            return;
        };
        let at = st.stream_of(snap, dir);
        let mut stream = match at {
            Some(i) => st.streams.remove(i),
            None => Stream {
                snap: Arc::downgrade(snap),
                dir,
                reader: idx.0,
                next: idx.0 + 1,
                end: first + count,
                window: 0,
                marker: None,
            },
        };
        let i = idx.0;
        if at.is_some() {
            if i > stream.reader && i < stream.next {
                // Inside the window: the marker, or a file not in the cache yet.
                let queued = st
                    .queue
                    .iter()
                    .any(|j| j.idx.0 == i && std::ptr::eq(j.snap.as_ptr(), stream.snap.as_ptr()));
                if stream.marker != Some(i) || queued {
                    self.shared
                        .source
                        .ahead_late
                        .fetch_add(1, Ordering::Relaxed);
                }
                // What is still queued for files the reader has passed is of no use now.
                st.cancel_before(snap, dir, i);
            }
            if i > stream.reader && i <= stream.next.max(stream.reader + 2) {
                // Forward, in order: the window grows.
                stream.window = if stream.window == 0 {
                    START_FILES
                } else {
                    (stream.window * 2).min(MAX_FILES)
                };
                stream.next = stream.next.max(i + 1);
            } else if i != stream.reader {
                // A jump: start again from here, as from a first read.
                st.cancel_before(snap, dir, u32::MAX);
                stream.window = 0;
                stream.next = i + 1;
            }
            stream.reader = i;
        }
        let queued = self.shared.schedule(&mut st, &mut stream, snap);
        st.streams.push(stream);
        if st.streams.len() > STREAMS {
            st.streams.remove(0);
        }
        drop(st);
        for _ in 0..queued.min(WORKERS) {
            self.shared.wake.notify_one();
        }
    }

    /// Whether nothing is queued or being read (tests wait for it).
    #[cfg(test)]
    pub fn idle(&self) -> bool {
        let st = self.shared.state.lock();
        st.queue.is_empty() && st.bytes == 0
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.shared.state.lock().stopping = true;
        self.shared.wake.notify_all();
    }
}

/// Whether node `idx` is a file the read-ahead reads: one of SOURCE with bytes, small
/// enough, on a page boundary or not.
fn candidate(snap: &Snapshot, idx: NodeIdx) -> bool {
    let node = snap.node(idx);
    matches!(node.kind, Kind::File(Content::Source | Content::Message))
        && node.attr.size > 0
        && node.attr.size <= MAX_FILE
}

impl State {
    /// The position of the stream through directory `dir` of `snap`, if there is one.
    fn stream_of(&self, snap: &Arc<Snapshot>, dir: NodeIdx) -> Option<usize> {
        self.streams
            .iter()
            .position(|s| s.dir == dir && std::ptr::eq(s.snap.as_ptr(), Arc::as_ptr(snap)))
    }

    /// Drops the queued jobs of directory `dir` of `snap` for files before `before`.
    fn cancel_before(&mut self, snap: &Arc<Snapshot>, dir: NodeIdx, before: u32) {
        let mut freed = 0;
        self.queue.retain(|j| {
            let same = std::ptr::eq(j.snap.as_ptr(), Arc::as_ptr(snap))
                && snap.node(j.idx).parent == dir
                && j.idx.0 < before;
            if same {
                freed += j.size;
            }
            !same
        });
        self.bytes -= freed;
    }
}

impl Shared {
    /// Queues the files of `stream` up to its window ahead of the reader, within the bytes
    /// allowed. The marker is the first file queued at least half a window ahead: when the
    /// reader gets there, half a window is still in the cache ahead of it while the next
    /// files are read. Returns how many files it queued.
    fn schedule(&self, st: &mut State, stream: &mut Stream, snap: &Arc<Snapshot>) -> usize {
        let until = stream.end.min(stream.reader + 1 + stream.window);
        let target = stream.next.max(stream.reader + 1 + stream.window / 2);
        let (mut marker, mut last) = (None, None);
        let mut count = 0;
        while stream.next < until {
            let idx = NodeIdx(stream.next);
            if !candidate(snap, idx) {
                stream.next += 1;
                continue;
            }
            let size = snap.node(idx).attr.size;
            if st.bytes + size > MAX_BYTES {
                break;
            }
            st.bytes += size;
            st.queue.push_back(Job {
                snap: Weak::clone(&stream.snap),
                idx,
                size,
                marker: false,
            });
            count += 1;
            let queued = st.queue.len() - 1;
            if marker.is_none() && idx.0 >= target {
                marker = Some(queued);
            }
            last = Some(queued);
            stream.next += 1;
        }
        if let Some(m) = marker.or(last) {
            st.queue[m].marker = true;
            stream.marker = Some(st.queue[m].idx.0);
        }
        count
    }

    fn work(&self) {
        loop {
            let job = {
                let mut st = self.state.lock();
                loop {
                    if st.stopping {
                        return;
                    }
                    if let Some(j) = st.queue.pop_front() {
                        break j;
                    }
                    self.wake.wait(&mut st);
                }
            };
            self.read_ahead(&job);
            self.state.lock().bytes -= job.size;
        }
    }

    /// Reads one file from SOURCE and stores it in the kernel's cache (a marker without its
    /// first page). Any failure only leaves the file to the reader's own READ, which reports it.
    fn read_ahead(&self, job: &Job) {
        let Some(snap) = job.snap.upgrade() else {
            return;
        };
        let Ok(Opened::File(file)) = self.source.open_quiet(&snap, job.idx) else {
            return;
        };
        let len = job.size as usize;
        let mut buf = vec![0u8; len];
        // What SOURCE had cached before stays cached; what this read brings in is dropped,
        // where the filesystem can tell the two apart.
        let cached = sys::pread_nowait(file.as_fd(), &mut buf, 0);
        let mut done = cached.unwrap_or(0);
        while done < len {
            match std::os::unix::fs::FileExt::read_at(&*file, &mut buf[done..], done as u64) {
                Ok(0) => return,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
        let from = if job.marker {
            self.page.min(job.size)
        } else {
            0
        };
        let stored = from == job.size
            || self
                .store
                .store(snap.ino_of(job.idx), from, &buf[from as usize..])
                .is_ok();
        if !stored {
            return;
        }
        if let Some(c) = cached {
            // From the first page that was not cached; a marker's first page is read by the
            // reader soon, from SOURCE's cache.
            let keep = (c as u64).div_ceil(self.page) * self.page;
            let drop_from = keep.max(from);
            if drop_from < job.size {
                sys::drop_cached(file.as_fd(), drop_from);
            }
        }
        // Counted are the files the reader gets whole from the cache: a marker's READ is
        // one of the READs the counters leave to the reader.
        if !job.marker {
            snap.mark_read(job.idx);
            let s = &self.source;
            s.ahead_files.fetch_add(1, Ordering::Relaxed);
            s.ahead_bytes.fetch_add(job.size, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};

    /// The kernel's page cache as the read-ahead fills it: what was stored where, by node.
    #[derive(Default)]
    struct FakeCache(Mutex<HashMap<u64, (u64, Vec<u8>)>>);

    impl PageStore for Arc<FakeCache> {
        fn store(&self, ino: Ino, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.0.lock().insert(ino.0, (offset, data.to_vec()));
            Ok(())
        }
    }

    /// One account of `n` messages in `cur/`, captured; the messages' node indices in listing
    /// order with their bytes.
    struct Store {
        _dir: crate::testutil::TempDir,
        snap: Arc<Snapshot>,
        source: Arc<Source>,
        files: Vec<(NodeIdx, Vec<u8>)>,
    }

    fn store(n: usize) -> Store {
        let dir = crate::testutil::TempDir::new("ahead");
        let src = dir.path().join("src");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(src.join("Maildir").join(sub)).unwrap();
        }
        for i in 0..n {
            // Some smaller than a page, some over two pages.
            let body = format!("Message-ID: <{i}@t>\n\n{}\n", "y".repeat((i * 397) % 9000));
            let name = format!("{}.M{i}P1.h:2,S", 1_700_000_000 + i);
            std::fs::write(src.join("Maildir/cur").join(name), body).unwrap();
        }
        let root = OwnedFd::from(std::fs::File::open(&src).unwrap());
        let plan = crate::image::build::Plan::new();
        let captured = crate::image::build::build(&root, &src, &plan, &Default::default()).unwrap();
        let account = captured.view.node(Ino(std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(src.join("Maildir")).unwrap(),
        )));
        let at = account.unwrap();
        let (snap, top) = match captured.view.deferred(&at) {
            Some(id) => (captured.view.account(id).unwrap(), NodeIdx::ROOT),
            None => (at.snap, at.idx),
        };
        let cur = snap.lookup(top, b"cur").unwrap();
        let files = snap
            .children(cur)
            .map(|c| {
                let idx = NodeIdx(c);
                let name = std::str::from_utf8(snap.name(idx)).unwrap().to_owned();
                (
                    idx,
                    std::fs::read(src.join("Maildir/cur").join(name)).unwrap(),
                )
            })
            .collect();
        let source = Arc::new(Source::new(root, src));
        Store {
            _dir: dir,
            snap,
            source,
            files,
        }
    }

    fn settle(ahead: &ReadAhead) {
        let end = Instant::now() + Duration::from_secs(10);
        while !ahead.idle() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(ahead.idle(), "the read-ahead never settled");
    }

    /// Reads `order` as the kernel would: a READ reaches the read-ahead only for a file whose
    /// first page is not in the cache. Returns how many READs did.
    fn read(s: &Store, ahead: &ReadAhead, cache: &FakeCache, order: &[usize]) -> usize {
        let mut reads = 0;
        for &f in order {
            let (idx, bytes) = &s.files[f];
            let ino = s.snap.ino_of(*idx).0;
            if cache.0.lock().get(&ino).is_none_or(|(off, _)| *off != 0) {
                reads += 1;
                ahead.on_read(&s.snap, *idx, 0);
                settle(ahead);
            }
            if let Some((off, data)) = cache.0.lock().get(&ino) {
                // Whatever was stored is the captured bytes, at their place.
                assert_eq!(&bytes[*off as usize..], &data[..], "file {f}");
            }
        }
        reads
    }

    #[test]
    fn a_directory_read_in_order_takes_a_read_per_half_window() {
        let s = store(300);
        let cache = Arc::new(FakeCache::default());
        let ahead = ReadAhead::start(Arc::clone(&s.source), Box::new(Arc::clone(&cache))).unwrap();
        let order: Vec<usize> = (0..300).collect();
        let reads = read(&s, &ahead, &cache, &order);
        let whole = s.source.ahead_files.load(Ordering::Relaxed) as usize;
        // Two READs to start, one a marker until the window is whole, then one every half
        // window: 300 files in about a dozen READs.
        assert!(
            reads <= 2 + 5 + 300 / (MAX_FILES as usize / 2),
            "{reads} READs"
        );
        assert_eq!(whole + reads, 300, "every file is read ahead whole or READ");
        assert_eq!(s.source.ahead_late.load(Ordering::Relaxed), 0);
        let bytes: u64 = s
            .files
            .iter()
            .filter(|(idx, _)| {
                cache
                    .0
                    .lock()
                    .get(&s.snap.ino_of(*idx).0)
                    .is_some_and(|(o, _)| *o == 0)
            })
            .map(|(_, b)| b.len() as u64)
            .sum();
        assert_eq!(s.source.ahead_bytes.load(Ordering::Relaxed), bytes);
    }

    #[test]
    fn a_reader_that_reads_once_or_jumps_or_stops_reads_little_ahead() {
        let s = store(300);
        let cache = Arc::new(FakeCache::default());
        let ahead = ReadAhead::start(Arc::clone(&s.source), Box::new(Arc::clone(&cache))).unwrap();
        // One file here and there (an incremental backup's new messages): nothing ahead.
        let scattered: Vec<usize> = (0..30).map(|i| (i * 97) % 300).collect();
        assert_eq!(read(&s, &ahead, &cache, &scattered), 30);
        assert_eq!(s.source.ahead_files.load(Ordering::Relaxed), 0);
        // Three files in order, then the reader stops: one small window at most.
        read(&s, &ahead, &cache, &[100, 101, 102]);
        settle(&ahead);
        let after_stop = s.source.ahead_files.load(Ordering::Relaxed);
        assert!(
            after_stop <= 2 * u64::from(START_FILES),
            "{after_stop} read ahead"
        );
        // Jumps backwards and far forward start again from nothing.
        read(&s, &ahead, &cache, &[10, 250, 40]);
        assert_eq!(s.source.ahead_files.load(Ordering::Relaxed), after_stop);
    }
}
