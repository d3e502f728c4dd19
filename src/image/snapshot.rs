//! The frozen image: an immutable tree built once by `freeze` and then only read, by every
//! FUSE thread at once, without locking.
//!
//! Layout: all nodes in one `Vec`, the children of a directory contiguous and sorted by name
//! bytes (lookup is a binary search), names in one byte arena, 32-bit node indices. Node 0 is
//! the root.
//!
//! Identifier spaces (see `docs/DESIGN.md`):
//! - [`NodeIdx`]: position in `nodes`; internal, never leaves the process.
//! - [`Ino`]: the FUSE node id, which fuser also reports as `st_ino`. It is the source file's
//!   inode number, so backup tools see stable inode numbers across mounts; the root is
//!   always 1 (`FUSE_ROOT_ID`), and nodes with no usable source inode (a `tmp/` the source
//!   lacks, a source inode numbered 1) get [`SYNTHETIC_INO`] + their index. Hard links share
//!   one `Ino`, as they share one inode in SOURCE.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

/// Position of a node in the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeIdx(pub u32);

impl NodeIdx {
    /// The root's position: node 0.
    pub const ROOT: NodeIdx = NodeIdx(0);
}

/// A FUSE node id / `st_ino` as served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ino(pub u64);

impl Ino {
    /// `FUSE_ROOT_ID`.
    pub const ROOT: Ino = Ino(1);
}

/// Node ids at and above this are synthetic (no source inode); source inode numbers on Linux
/// filesystems stay far below it.
pub const SYNTHETIC_INO: u64 = 1 << 63;

/// A timestamp as `stat` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// Seconds since the Unix epoch (negative before 1970).
    pub sec: i64,
    /// Nanoseconds added to `sec` (0 to 999 999 999), as `stat`'s `tv_nsec`.
    pub nsec: u32,
}

impl Stamp {
    /// The same instant as a `SystemTime`, for fuser's attributes.
    pub fn to_system_time(self) -> SystemTime {
        if self.sec >= 0 {
            SystemTime::UNIX_EPOCH + Duration::new(self.sec as u64, self.nsec)
        } else {
            SystemTime::UNIX_EPOCH - Duration::new(self.sec.unsigned_abs(), 0)
                + Duration::new(0, self.nsec)
        }
    }
}

/// The captured attributes of a node, packed: the times' seconds and nanoseconds are kept
/// apart so that no field needs padding (this struct is most of a node, and a snapshot holds
/// one node per entry of the store: 56 bytes).
///
/// The access time is not kept: it is shown as the modification time. A live store's atimes
/// move with every IMAP read; a backup tool that stores them (restic does) would store a new
/// tree on every run, and nothing a restore needs depends on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// The source inode number (also the FUSE node id; see the module doc).
    pub ino: Ino,
    /// The size in bytes as captured: a read never goes past it.
    pub size: u64,
    /// mtime, ctime: seconds.
    secs: [i64; 2],
    /// mtime, ctime: nanoseconds.
    nsecs: [u32; 2],
    /// The owning user as captured (the kernel checks it for other users with `allow_other`).
    pub uid: u32,
    /// The owning group as captured.
    pub gid: u32,
    /// As seen inside the view: paths with this inode for files, 2 + subdirectories for
    /// directories, or 1 for a directory with more than `u16::MAX - 2` subdirectories (as
    /// ext4 does: "not counted", which `find` understands).
    pub nlink: u16,
    /// Permission bits and set-id/sticky bits (no file type).
    pub perm: u16,
}

impl Attr {
    /// Attributes from a `stat`'s values; `nlink` starts at 1 and is set when the tree is
    /// finished.
    pub fn new(
        ino: Ino,
        size: u64,
        mtime: Stamp,
        ctime: Stamp,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Attr {
        Attr {
            ino,
            size,
            secs: [mtime.sec, ctime.sec],
            nsecs: [mtime.nsec, ctime.nsec],
            uid,
            gid,
            nlink: 1,
            perm,
        }
    }

    /// The access time shown: the modification time (see the type's doc).
    pub fn atime(&self) -> Stamp {
        self.mtime()
    }

    /// The modification time as captured.
    pub fn mtime(&self) -> Stamp {
        self.stamp(0)
    }

    /// The status-change time as captured.
    pub fn ctime(&self) -> Stamp {
        self.stamp(1)
    }

    fn stamp(&self, i: usize) -> Stamp {
        Stamp {
            sec: self.secs[i],
            nsec: self.nsecs[i],
        }
    }

    /// 512-byte blocks, as `stat` counts them; derived from the size (mail is never sparse),
    /// which saves storing it.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(512)
    }
}

/// Where a regular file's bytes come from when it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The source file at this node's path, checked against the captured (dev, ino).
    Source,
    /// A message in `cur/` or `new/`: like `Source`, and if it was renamed after capture (flag
    /// change, new -> cur) it is found again by its base name and inode.
    Message,
    /// Bytes held in memory (control files read under the lock): index into `inline`.
    Inline(u32),
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Children are nodes `first .. first + count`, sorted by name.
    Dir {
        /// The index of the first child.
        first: u32,
        /// How many children it has.
        count: u32,
    },
    /// A regular file, with where its bytes come from.
    File(Content),
    /// The target bytes are `inline[_]`; shown, never followed.
    Symlink(u32),
}

/// One node of the image.
#[derive(Debug, Clone)]
pub struct Node {
    /// The directory holding it (the root's parent is the root).
    pub parent: NodeIdx,
    name_off: u32,
    /// A name is at most `NAME_MAX` (255) bytes.
    name_len: u8,
    /// What it is, with where its children, bytes or target are.
    pub kind: Kind,
    /// Its attributes as captured.
    pub attr: Attr,
}

/// Counts for the mount summary.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Accounts this part of the view stands for: captured, hung or deferred to their own
    /// snapshots.
    pub accounts: usize,
    /// Mailboxes (directories with `cur/` and `new/`) frozen.
    pub mailboxes: usize,
    /// Regular files in the mailboxes' `cur/` and `new/`.
    pub messages: usize,
    /// Bytes of all regular files in the image.
    pub bytes: u64,
    /// Regular files held by an `O_PATH` pin, and those served by re-resolution instead.
    pub pinned: usize,
    /// Files read from SOURCE without a pin (over the budget): opened by name when read.
    pub unpinned: usize,
}

impl Totals {
    /// Adds the counts of another part of the view (an account, a subtree); `accounts` stays.
    pub fn add(&mut self, o: &Totals) {
        self.mailboxes += o.mailboxes;
        self.messages += o.messages;
        self.bytes += o.bytes;
        self.pinned += o.pinned;
        self.unpinned += o.unpinned;
    }
}

/// The frozen image.
#[derive(Debug, Default)]
pub struct Snapshot {
    nodes: Vec<Node>,
    /// Every node's name, back to back.
    names: Vec<u8>,
    /// Control-file bytes and symlink targets.
    inline: Vec<Arc<[u8]>>,
    /// Every node but the root, sorted by node id (a hard-linked file appears once per path):
    /// the ids themselves are the nodes' own, so they are not kept twice.
    ino_nodes: Vec<NodeIdx>,
    /// The pin of each node, by node index; `None` for directories, symlinks, inline files and
    /// files over the pin budget.
    pins: Vec<Option<OwnedFd>>,
    /// The pins' shares of the budget: declared after `pins`, so it drops (and gives the
    /// budget back) once every pin's fd is closed.
    pin_set: crate::capture::pin::PinSet,
    /// `st_dev` of SOURCE: every served file must be on it.
    pub source_dev: u64,
    /// What it holds, for the summary.
    pub totals: Totals,
    /// Directories whose listing and lookups fail with `EIO`, sorted: accounts whose capture
    /// hung. An error, not an empty directory, so that a backup tool reports it and a mirror
    /// (`rsync --delete`) deletes nothing of that account's earlier copy.
    unlistable: Vec<NodeIdx>,
    /// Account directories whose contents are another snapshot's (captured on demand), sorted
    /// by node, with the account's number: the node itself (its attributes) is this one's.
    deferred: Vec<(NodeIdx, u32)>,
    /// The first synthetic node id of this snapshot (see [`Builder::for_account`]).
    synthetic: u64,
    /// Where this snapshot's root lies, relative to SOURCE: empty for the tree, the account's
    /// root mailbox for an account captured on its own.
    base: PathBuf,
    /// The node id of the root: `Ino::ROOT` for the tree, the account directory's own for an
    /// account's snapshot.
    root_ino: Ino,
    /// Which capture of its account this is (1 for the first); part of every directory
    /// offset handed to the kernel, so that a listing continued across two captures fails
    /// rather than skip or repeat entries.
    pub epoch: u32,
    /// One bit per node: its file has been read to its end (see [`Snapshot::mark_read`]).
    read_to_end: Vec<AtomicU64>,
    /// Regular files with bytes to read, and how many of them have been read to their end:
    /// an account whose files have all been read is the first to leave the working set.
    files: usize,
    files_read: AtomicUsize,
}

impl Snapshot {
    /// The node at `idx`, which must be one of this snapshot's.
    pub fn node(&self, idx: NodeIdx) -> &Node {
        &self.nodes[idx.0 as usize]
    }

    /// The bytes this snapshot holds in memory (its tables and names; not the bytes of control
    /// files read under the locks, nor the kernel's memory for its pins).
    pub fn memory(&self) -> usize {
        use std::mem::size_of;
        self.nodes.capacity() * size_of::<Node>()
            + self.names.capacity()
            + self.inline.capacity() * size_of::<Arc<[u8]>>()
            + self.ino_nodes.capacity() * size_of::<NodeIdx>()
            + self.pins.capacity() * size_of::<Option<OwnedFd>>()
            + self.read_to_end.capacity() * size_of::<AtomicU64>()
            + (self.unlistable.capacity() + self.deferred.capacity()) * 8
    }

    /// How many nodes it holds, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether it holds no node at all (a default one: a built snapshot has its root).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The name of node `idx` in its directory (empty for the root).
    pub fn name(&self, idx: NodeIdx) -> &[u8] {
        let n = self.node(idx);
        &self.names[n.name_off as usize..n.name_off as usize + n.name_len as usize]
    }

    /// The pinned inode of a regular-file node, if it has one.
    pub fn pin(&self, idx: NodeIdx) -> Option<BorrowedFd<'_>> {
        self.pins.get(idx.0 as usize)?.as_ref().map(|fd| fd.as_fd())
    }

    /// The node id at position `i` of the sorted index.
    fn key(&self, i: usize) -> Ino {
        self.node(self.ino_nodes[i]).attr.ino
    }

    /// The first position of the sorted index whose node id is not below `ino`.
    fn first_at_least(&self, ino: Ino) -> usize {
        self.ino_nodes
            .partition_point(|&n| self.node(n).attr.ino < ino)
    }

    /// Inline bytes number `i`: a control file's content ([`Content::Inline`]) or a symlink's
    /// target ([`Kind::Symlink`]).
    pub fn inline(&self, i: u32) -> &Arc<[u8]> {
        &self.inline[i as usize]
    }

    /// The node id a node is served under.
    pub fn ino_of(&self, idx: NodeIdx) -> Ino {
        if idx == NodeIdx::ROOT {
            self.root_ino
        } else {
            self.node(idx).attr.ino
        }
    }

    /// The generation a node is served with: the same file (same inode, size and mtime) keeps
    /// its generation across captures, so the kernel keeps its cached pages; another file
    /// under a reused inode number gets another, so the kernel drops the old inode and never
    /// serves its pages as this file's. Directories keep 0: their listing is invalidated when
    /// their account leaves the working set.
    pub fn generation(&self, idx: NodeIdx) -> u64 {
        let n = self.node(idx);
        if matches!(n.kind, Kind::Dir { .. }) {
            return 0;
        }
        let m = n.attr.mtime();
        // FNV-1a over size and mtime: cheap, stable across runs (a restarted mount gives the
        // same generations), and never 0, which directories use.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in n
            .attr
            .size
            .to_le_bytes()
            .into_iter()
            .chain(m.sec.to_le_bytes())
            .chain(m.nsec.to_le_bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h | 1
    }

    /// The account whose capture holds the contents of directory `idx`, if it is deferred.
    pub fn deferred(&self, idx: NodeIdx) -> Option<u32> {
        let i = self.deferred.binary_search_by_key(&idx, |d| d.0).ok()?;
        Some(self.deferred[i].1)
    }

    /// Notes that a reader has had file `idx` (and every link to it) up to its end.
    pub fn mark_read(&self, idx: NodeIdx) {
        for l in self.links(self.ino_of(idx)) {
            let (word, bit) = (l.0 as usize / 64, 1u64 << (l.0 % 64));
            if let Some(w) = self.read_to_end.get(word) {
                if w.fetch_or(bit, Ordering::Relaxed) & bit == 0 {
                    self.files_read.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Whether every file with bytes has been read to its end.
    pub fn all_read(&self) -> bool {
        self.files_read.load(Ordering::Relaxed) >= self.files
    }

    /// The directory of each of `accounts` accounts whose contents are deferred (the root for
    /// an account not found here).
    pub fn deferred_dirs(&self, accounts: usize) -> Vec<NodeIdx> {
        let mut dirs = vec![NodeIdx::ROOT; accounts];
        for &(node, account) in &self.deferred {
            if let Some(d) = dirs.get_mut(account as usize) {
                *d = node;
            }
        }
        dirs
    }

    /// Every node id of the snapshot but the root's, in order (hard links repeat).
    pub fn inos(&self) -> impl Iterator<Item = Ino> + '_ {
        self.ino_nodes.iter().map(|&n| self.node(n).attr.ino)
    }

    /// The node a FUSE node id names (for hard links, the first path).
    pub fn resolve(&self, ino: Ino) -> Option<NodeIdx> {
        if ino == self.root_ino {
            return Some(NodeIdx::ROOT);
        }
        let i = self.first_at_least(ino);
        (i < self.ino_nodes.len() && self.key(i) == ino).then(|| self.ino_nodes[i])
    }

    /// Every node with this node id: one per path of a hard-linked file.
    pub fn links(&self, ino: Ino) -> impl Iterator<Item = NodeIdx> + '_ {
        let i = self.first_at_least(ino);
        self.ino_nodes[i..]
            .iter()
            .copied()
            .take_while(move |&n| self.node(n).attr.ino == ino)
    }

    /// The children of a directory node (empty for other nodes).
    pub fn children(&self, idx: NodeIdx) -> std::ops::Range<u32> {
        match self.node(idx).kind {
            Kind::Dir { first, count } => first..first + count,
            _ => 0..0,
        }
    }

    /// The child of `dir` called `name`.
    pub fn lookup(&self, dir: NodeIdx, name: &[u8]) -> Option<NodeIdx> {
        let range = self.children(dir);
        let (lo, hi) = (range.start as usize, range.end as usize);
        let pos = self.nodes[lo..hi]
            .binary_search_by(|n| {
                self.names[n.name_off as usize..n.name_off as usize + n.name_len as usize].cmp(name)
            })
            .ok()?;
        Some(NodeIdx((lo + pos) as u32))
    }

    /// Whether listing or looking up in directory `idx` fails (see `unlistable`).
    pub fn is_unlistable(&self, idx: NodeIdx) -> bool {
        self.unlistable.binary_search(&idx).is_ok()
    }

    /// Whether `idx` is a mailbox: a directory with `cur/` and `new/` directories.
    pub fn is_mailbox(&self, idx: NodeIdx) -> bool {
        let is_dir = |name: &[u8]| {
            self.lookup(idx, name)
                .is_some_and(|c| matches!(self.node(c).kind, Kind::Dir { .. }))
        };
        matches!(self.node(idx).kind, Kind::Dir { .. })
            && is_dir(crate::maildir::names::CUR)
            && is_dir(crate::maildir::names::NEW)
    }

    /// Every mailbox of the account that the mailbox `mailbox` belongs to: the topmost mailbox
    /// above it (or itself, or the directory above holding a `.INBOX` mailbox) and every
    /// mailbox below that, Maildir++ folders and LAYOUT=fs
    /// subfolders alike. A message moved by Dovecot goes to one of these.
    pub fn account_mailboxes(&self, mailbox: NodeIdx) -> Vec<NodeIdx> {
        let mut root = mailbox;
        let mut cur = mailbox;
        while cur != NodeIdx::ROOT {
            cur = self.node(cur).parent;
            // A mailbox, or the directory holding a `.INBOX` mailbox (INBOX kept as a folder).
            let holds_inbox = self
                .lookup(cur, crate::maildir::discover::INBOX_FOLDER)
                .is_some_and(|i| self.is_mailbox(i));
            if self.is_mailbox(cur) || holds_inbox {
                root = cur;
            }
        }
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let mailbox = self.is_mailbox(dir);
            if mailbox {
                out.push(dir);
            }
            for c in self.children(dir) {
                let c = NodeIdx(c);
                let name = self.name(c);
                let messages = mailbox
                    && [
                        crate::maildir::names::CUR,
                        crate::maildir::names::NEW,
                        crate::maildir::names::TMP,
                    ]
                    .contains(&name);
                if !messages && matches!(self.node(c).kind, Kind::Dir { .. }) {
                    stack.push(c);
                }
            }
        }
        out
    }

    /// The node's path relative to SOURCE.
    pub fn rel_path(&self, idx: NodeIdx) -> PathBuf {
        let mut parts = Vec::new();
        let mut cur = idx;
        while cur != NodeIdx::ROOT {
            parts.push(self.name(cur));
            cur = self.node(cur).parent;
        }
        let mut p = self.base.clone();
        for part in parts.iter().rev() {
            p.push(OsStr::from_bytes(part));
        }
        p
    }
}

/// Builds a snapshot breadth-first: a directory's children are added together, so they are
/// contiguous, and then sorted by name before the next directory starts.
#[derive(Debug, Default)]
pub struct Builder {
    snap: Snapshot,
}

/// Synthetic node ids of the snapshot of account `n` start here: each snapshot has its own
/// range, so that two captures never serve one synthetic id for two nodes.
fn synthetic_base(account: u32) -> u64 {
    SYNTHETIC_INO + ((u64::from(account) + 1) << 32)
}

/// A node before it is placed: what `Builder::add_children` takes.
#[derive(Debug)]
pub struct NewNode {
    /// Its name in its directory.
    pub name: Vec<u8>,
    /// What it is, with a file's bytes or a symlink's target.
    pub kind: NewKind,
    /// Its attributes as captured; an inode number of 0 or 1 (or in the synthetic range) gets a
    /// synthetic node id.
    pub attr: Attr,
    /// The file's pin, if it has one: the snapshot keeps it.
    pub pin: Option<crate::capture::pin::Pin>,
}

/// What a node is before it is placed: a [`Kind`] holding its bytes rather than an index.
#[derive(Debug, Clone)]
pub enum NewKind {
    /// A directory; its children come with a later `add_children`.
    Dir,
    /// A regular file, with where its bytes come from.
    File(NewContent),
    /// A symbolic link, with its target as read at capture.
    Symlink(Vec<u8>),
}

/// Where a new file's bytes come from: a [`Content`] holding its inline bytes.
#[derive(Debug, Clone)]
pub enum NewContent {
    /// The source file at its path (see [`Content::Source`]).
    Source,
    /// A message, found again if renamed (see [`Content::Message`]).
    Message,
    /// These bytes, held in the snapshot (a control file read under the lock).
    Inline(Arc<[u8]>),
}

impl Builder {
    /// A builder with room for about `entries` nodes (an estimate: reserving up front avoids
    /// the moment when a doubling `Vec` holds its old and new copies, which would set the
    /// process's peak memory).
    pub fn new(root: Attr, source_dev: u64, entries: usize) -> Builder {
        let mut b = Builder::default();
        b.snap.root_ino = Ino::ROOT;
        b.snap.synthetic = SYNTHETIC_INO;
        b.snap.nodes.reserve(entries);
        b.snap.pins.reserve(entries);
        b.snap.names.reserve(entries * 40);
        b.snap.source_dev = source_dev;
        b.snap.pins.push(None);
        b.snap.nodes.push(Node {
            parent: NodeIdx::ROOT,
            name_off: 0,
            name_len: 0,
            kind: Kind::Dir { first: 1, count: 0 },
            attr: root,
        });
        b
    }

    /// Adds the children of `dir` (which must have none yet) and returns their indices in
    /// name order. Synthetic node ids are assigned where the source inode cannot be used.
    pub fn add_children(&mut self, dir: NodeIdx, mut children: Vec<NewNode>) -> Vec<NodeIdx> {
        children.sort_by(|a, b| a.name.cmp(&b.name));
        children.dedup_by(|a, b| a.name == b.name);
        let first = self.snap.nodes.len() as u32;
        let mut out = Vec::with_capacity(children.len());
        for c in children {
            let idx = NodeIdx(self.snap.nodes.len() as u32);
            let name_off = self.snap.names.len() as u32;
            self.snap.names.extend_from_slice(&c.name);
            let kind = match c.kind {
                NewKind::Dir => Kind::Dir { first: 0, count: 0 },
                NewKind::File(NewContent::Source) => Kind::File(Content::Source),
                NewKind::File(NewContent::Message) => Kind::File(Content::Message),
                NewKind::File(NewContent::Inline(bytes)) => {
                    self.snap.inline.push(bytes);
                    Kind::File(Content::Inline(self.snap.inline.len() as u32 - 1))
                }
                NewKind::Symlink(target) => {
                    self.snap.inline.push(target.into());
                    Kind::Symlink(self.snap.inline.len() as u32 - 1)
                }
            };
            let mut attr = c.attr;
            if attr.ino.0 <= Ino::ROOT.0 || attr.ino.0 >= SYNTHETIC_INO {
                attr.ino = Ino(self.snap.synthetic + u64::from(idx.0));
            }
            let pin = c.pin.map(|p| p.into_set(&mut self.snap.pin_set));
            self.snap.pins.push(pin);
            self.snap.nodes.push(Node {
                parent: dir,
                name_off,
                name_len: u8::try_from(c.name.len()).unwrap_or(u8::MAX),
                kind,
                attr,
            });
            out.push(idx);
        }
        let count = self.snap.nodes.len() as u32 - first;
        self.snap.nodes[dir.0 as usize].kind = Kind::Dir { first, count };
        out
    }

    /// A builder for the snapshot of one account, captured on its own: its root is the
    /// account's root mailbox at `base`, served under the node id `dir` (the one the view
    /// already gives that directory); `account` is the account's number and `epoch` which
    /// capture of it this is.
    pub fn for_account(
        base: PathBuf,
        dir: Ino,
        root: Attr,
        source_dev: u64,
        entries: usize,
        account: u32,
        epoch: u32,
    ) -> Builder {
        let mut b = Builder::new(root, source_dev, entries);
        b.snap.root_ino = dir;
        b.snap.base = base;
        b.snap.synthetic = synthetic_base(account);
        b.snap.epoch = epoch;
        b
    }

    /// The node at `idx` of the tree built so far.
    pub fn node(&self, idx: NodeIdx) -> &Node {
        self.snap.node(idx)
    }

    /// The name of node `idx` of the tree built so far.
    pub fn name(&self, idx: NodeIdx) -> &[u8] {
        self.snap.name(idx)
    }

    /// Puts the tree built by `sub` in place at `at`, a directory of this tree with no
    /// children yet: `sub`'s root stands for `at`, and its nodes follow this tree's, in the
    /// order a walk of this tree would have added them. Accounts deferred in `sub` are
    /// numbered from `accounts` on (those this tree found before).
    pub fn graft(&mut self, at: NodeIdx, sub: Builder, accounts: u32) {
        let Snapshot {
            nodes,
            names,
            inline,
            pins,
            pin_set,
            unlistable,
            deferred,
            ..
        } = sub.snap;
        let snap = &mut self.snap;
        // Local index i > 0 becomes i + shift; local 0 is `at`.
        let shift = snap.nodes.len() as u32 - 1;
        let place = |i: NodeIdx| if i.0 == 0 { at } else { NodeIdx(i.0 + shift) };
        let (names_at, inline_at) = (snap.names.len() as u32, snap.inline.len() as u32);
        let sub_synthetic = sub.snap.synthetic;
        let mut nodes = nodes.into_iter();
        let sub_root = nodes.next();
        for (i, mut n) in nodes.enumerate() {
            n.parent = place(n.parent);
            n.name_off += names_at;
            n.kind = match n.kind {
                Kind::Dir { first, count } => Kind::Dir {
                    first: first + shift,
                    count,
                },
                Kind::File(Content::Inline(k)) => Kind::File(Content::Inline(k + inline_at)),
                Kind::Symlink(k) => Kind::Symlink(k + inline_at),
                k => k,
            };
            // A node id made from the local index is made again from the new one.
            if n.attr.ino.0 >= sub_synthetic {
                n.attr.ino = Ino(snap.synthetic + u64::from(i as u32 + 1 + shift));
            }
            snap.nodes.push(n);
        }
        if let Some(Node {
            kind: Kind::Dir { first, count },
            ..
        }) = sub_root
        {
            snap.nodes[at.0 as usize].kind = Kind::Dir {
                first: first + shift,
                count,
            };
        }
        snap.names.extend_from_slice(&names);
        snap.inline.extend(inline);
        snap.pins.extend(pins.into_iter().skip(1));
        snap.pin_set.absorb(pin_set);
        snap.unlistable.extend(unlistable.into_iter().map(place));
        snap.deferred
            .extend(deferred.into_iter().map(|(d, a)| (place(d), a + accounts)));
    }

    /// Leaves directory `dir` (which has no children) to the snapshot of account `account`.
    pub fn defer(&mut self, dir: NodeIdx, account: u32) {
        self.snap.deferred.push((dir, account));
    }

    /// Makes listing and lookups in directory `dir` fail with `EIO`.
    pub fn mark_unlistable(&mut self, dir: NodeIdx) {
        self.snap.unlistable.push(dir);
    }

    /// Finishes the tree: node-id index, link counts as seen in the view, totals.
    pub fn finish(mut self, totals: Totals) -> Snapshot {
        let snap = &mut self.snap;
        snap.unlistable.sort_unstable();
        snap.deferred.sort_unstable();
        let mut by_ino: Vec<(Ino, NodeIdx)> = (1..snap.nodes.len() as u32)
            .map(|i| (snap.nodes[i as usize].attr.ino, NodeIdx(i)))
            .collect();
        by_ino.sort_unstable();
        // Files: one link per path with the same inode. Directories: 2 + subdirectories.
        let mut i = 0;
        while i < by_ino.len() {
            let mut j = i;
            while j < by_ino.len() && by_ino[j].0 == by_ino[i].0 {
                j += 1;
            }
            for (_, node) in &by_ino[i..j] {
                let n = &mut snap.nodes[node.0 as usize];
                if !matches!(n.kind, Kind::Dir { .. }) {
                    n.attr.nlink = u16::try_from(j - i).unwrap_or(u16::MAX);
                }
            }
            i = j;
        }
        for d in 0..snap.nodes.len() {
            if let Kind::Dir { first, count } = snap.nodes[d].kind {
                let subdirs = (first..first + count)
                    .filter(|&c| matches!(snap.nodes[c as usize].kind, Kind::Dir { .. }))
                    .count() as u32;
                snap.nodes[d].attr.nlink = u16::try_from(2 + subdirs).unwrap_or(1);
            }
        }
        snap.ino_nodes = by_ino.into_iter().map(|(_, n)| n).collect();
        snap.nodes.shrink_to_fit();
        snap.names.shrink_to_fit();
        snap.pins.shrink_to_fit();
        snap.totals = totals;
        snap.files = snap
            .nodes
            .iter()
            .filter(|n| matches!(n.kind, Kind::File(_)) && n.attr.size > 0)
            .count();
        snap.read_to_end = (0..snap.nodes.len().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        snap.totals.pinned = snap.pins.iter().filter(|p| p.is_some()).count();
        snap.totals.unpinned = snap
            .nodes
            .iter()
            .zip(&snap.pins)
            .filter(|(n, p)| {
                p.is_none() && matches!(n.kind, Kind::File(Content::Source | Content::Message))
            })
            .count();
        self.snap
    }
}

impl Kind {
    /// The one conversion to fuser's file type.
    pub fn file_type(&self) -> fuser::FileType {
        match self {
            Kind::Dir { .. } => fuser::FileType::Directory,
            Kind::File(_) => fuser::FileType::RegularFile,
            Kind::Symlink(_) => fuser::FileType::Symlink,
        }
    }
}

impl Snapshot {
    /// The one conversion to fuser's attribute type. `attr.ino` is the node id (fuser uses it
    /// as both the node id of an entry and `st_ino`).
    pub fn file_attr(&self, idx: NodeIdx) -> fuser::FileAttr {
        let n = self.node(idx);
        let a = &n.attr;
        let kind = n.kind.file_type();
        fuser::FileAttr {
            ino: fuser::INodeNo(self.ino_of(idx).0),
            size: a.size,
            blocks: a.blocks(),
            atime: a.atime().to_system_time(),
            mtime: a.mtime().to_system_time(),
            ctime: a.ctime().to_system_time(),
            crtime: a.ctime().to_system_time(),
            kind,
            perm: a.perm,
            nlink: u32::from(a.nlink),
            uid: a.uid,
            gid: a.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ino: u64) -> Attr {
        let t = Stamp::default();
        Attr::new(Ino(ino), 0, t, t, 0o755, 0, 0)
    }

    fn file(name: &str, ino: u64) -> NewNode {
        NewNode {
            name: name.as_bytes().to_vec(),
            kind: NewKind::File(NewContent::Source),
            attr: attr(ino),
            pin: None,
        }
    }

    #[test]
    fn lookup_resolve_paths_and_links() {
        let mut b = Builder::new(attr(2), 7, 8);
        let top = b.add_children(
            NodeIdx::ROOT,
            vec![
                file("zeta", 20),
                NewNode {
                    name: b"dir".to_vec(),
                    kind: NewKind::Dir,
                    attr: attr(10),
                    pin: None,
                },
                file("alpha", 30),
            ],
        );
        // Children come back in name order: alpha, dir, zeta.
        let dir = top[1];
        b.add_children(dir, vec![file("inner", 30), file("one", 1)]);
        let s = b.finish(Totals::default());
        assert_eq!(s.name(NodeIdx(1)), b"alpha");
        let d = s.lookup(NodeIdx::ROOT, b"dir").unwrap();
        assert_eq!(d, dir);
        let inner = s.lookup(d, b"inner").unwrap();
        assert_eq!(s.rel_path(inner), PathBuf::from("dir/inner"));
        assert!(s.lookup(NodeIdx::ROOT, b"missing").is_none());
        // Hard link: both paths share the inode and show nlink 2.
        assert_eq!(s.node(inner).attr.nlink, 2);
        assert_eq!(s.links(Ino(30)).count(), 2);
        assert_eq!(s.resolve(Ino(20)), s.lookup(NodeIdx::ROOT, b"zeta"));
        // A source inode numbered 1 would collide with the root: it becomes synthetic.
        let one = s.lookup(d, b"one").unwrap();
        assert!(s.node(one).attr.ino.0 >= SYNTHETIC_INO);
        assert_eq!(s.resolve(s.ino_of(one)), Some(one));
        assert_eq!(s.resolve(Ino::ROOT), Some(NodeIdx::ROOT));
        // Root: 2 + one subdirectory.
        assert_eq!(s.node(NodeIdx::ROOT).attr.nlink, 3);
    }

    #[test]
    fn the_same_file_keeps_its_generation_another_file_gets_another() {
        let node = |size: u64, mtime: i64, ctime: i64| {
            let (m, c) = (
                Stamp {
                    sec: mtime,
                    nsec: 5,
                },
                Stamp {
                    sec: ctime,
                    nsec: 0,
                },
            );
            let mut b = Builder::new(attr(2), 7, 2);
            b.add_children(
                NodeIdx::ROOT,
                vec![NewNode {
                    name: b"m".to_vec(),
                    kind: NewKind::File(NewContent::Message),
                    attr: Attr::new(Ino(9), size, m, c, 0o644, 0, 0),
                    pin: None,
                }],
            );
            b.finish(Totals::default()).generation(NodeIdx(1))
        };
        // A rename (a flag change) moves the ctime only: still the same file.
        assert_eq!(node(100, 1000, 1000), node(100, 1000, 2000));
        assert_ne!(node(100, 1000, 1000), node(101, 1000, 1000));
        assert_ne!(node(100, 1000, 1000), node(100, 1001, 1000));
        assert_ne!(node(100, 1000, 1000), 0);
    }

    #[test]
    fn a_captured_mailbox_takes_at_most_150_bytes_an_entry() {
        // 10,000 messages with names as long as Dovecot gives them (58 bytes here).
        let mut b = Builder::new(attr(2), 7, 10_003);
        let dirs = b.add_children(
            NodeIdx::ROOT,
            ["cur", "new", "tmp"]
                .iter()
                .enumerate()
                .map(|(i, d)| NewNode {
                    name: d.as_bytes().to_vec(),
                    kind: NewKind::Dir,
                    attr: attr(3 + i as u64),
                    pin: None,
                })
                .collect(),
        );
        b.add_children(
            dirs[0],
            (0..10_000)
                .map(|i| NewNode {
                    name: format!("17330{i:05}.M{i:06}P4242.mail.example.org,S=6400,W=6512:2,S")
                        .into_bytes(),
                    kind: NewKind::File(NewContent::Message),
                    attr: attr(100 + i),
                    pin: None,
                })
                .collect(),
        );
        let s = b.finish(Totals::default());
        let per_entry = s.memory() / s.len();
        assert!(per_entry <= 150, "{per_entry} bytes an entry");
    }
}
