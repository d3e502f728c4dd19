//! Freeze: turn the captured listings into the immutable [`Snapshot`], after every lock is
//! released. This is where files are `lstat`ed, symlink targets read, and the rest of the tree
//! (directories that are not mailboxes, index files, sieve scripts, ...) walked.
//!
//! What the image shows (`docs/DESIGN.md`, "What the image hides"): the same relative paths and byte names as SOURCE; in each
//! mailbox `cur/` and `new/` exactly as listed under the lock, `tmp/` empty, control files as
//! the bytes read under the lock; lock and temp files hidden; symlinks as symlinks; FIFOs,
//! sockets and devices left out; other filesystems not entered.
//!
//! The walk goes depth first, opening each directory relative to its parent's fd (one
//! component, beneath it, no symlinks, no mount crossing), so a deep tree costs one lookup per
//! directory rather than a path resolution from SOURCE; the fds it keeps open are those of the
//! directories on the current path, each taken from the pin budget (where the budget is
//! spent, a directory is opened beneath SOURCE instead). Nothing deeper than
//! [`MAX_DEPTH`] levels below an account (or below SOURCE outside accounts) is entered.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::capture::pin::{Pin, PinBudget};
use crate::capture::watch::Watch;
use crate::capture::{
    self, AccountCapture, ControlBudget, ControlContent, LeftOut, Listed, MailboxCapture,
};
use crate::error::{Error, Result, escape_path};
use crate::image::snapshot::{
    Attr, Builder, Ino, NewContent, NewKind, NewNode, NodeIdx, Snapshot, Stamp, Totals,
};
use crate::maildir::discover::{
    MAX_DEPTH, child_depth, entry_is_dir, is_account_root, is_mailbox, lists_inbox_folder,
};
use crate::maildir::names::{self, Place};
use crate::maildir::select::{Selection, Visibility};
use crate::sys;

/// What freeze noticed, for the summary and the log.
#[derive(Debug, Default, Clone)]
pub struct FreezeReport {
    /// Mailboxes found by the walk that discovery had not seen (created meanwhile); they were
    /// captured without a lock.
    pub late_mailboxes: Vec<PathBuf>,
    /// Messages listed under the lock but gone (expunged) before they could be `lstat`ed.
    pub vanished: usize,
    /// FIFOs, sockets and device nodes left out.
    pub special_files: usize,
    /// Directories on another filesystem, not entered.
    pub skipped_mounts: Vec<PathBuf>,
    /// Directories that could not be opened or listed (shown empty) and entries that could not
    /// be `lstat`ed (left out), relative to SOURCE, sorted, each once: a user's mode bits can
    /// hide their own mail from a capture that runs without `CAP_DAC_READ_SEARCH`.
    pub unreadable: Vec<PathBuf>,
    /// Control files left out because they were too large (see `capture::CONTROL_FILE_BYTES`).
    pub control_too_large: Vec<PathBuf>,
    /// Accounts whose capture hung: their locks were released, and listing them in the view
    /// fails with `EIO`.
    pub stalled: Vec<PathBuf>,
    /// Directories more than [`MAX_DEPTH`] levels down, shown empty.
    pub too_deep: Vec<PathBuf>,
    /// The accounts a [`Scope::Skeleton`] walk found, by their root mailboxes, in walk order.
    pub accounts: Vec<PathBuf>,
}

impl FreezeReport {
    /// Adds what another freeze noticed (an account frozen on its own).
    pub fn merge(&mut self, o: FreezeReport) {
        self.accounts.extend(o.accounts);
        self.late_mailboxes.extend(o.late_mailboxes);
        self.vanished += o.vanished;
        self.special_files += o.special_files;
        self.skipped_mounts.extend(o.skipped_mounts);
        self.unreadable.extend(o.unreadable);
        self.control_too_large.extend(o.control_too_large);
        self.stalled.extend(o.stalled);
        self.too_deep.extend(o.too_deep);
    }

    /// Records what the capture of the mailbox at `rel` could not take: the `cur/` and `new/`
    /// it could not open, and the control files it left out.
    fn add_capture_of(&mut self, rel: &Path, m: &MailboxCapture) {
        self.unreadable.extend(
            m.unreadable
                .iter()
                .map(|sub| rel.join(OsStr::from_bytes(sub))),
        );
        for (name, why) in &m.left_out {
            match why {
                LeftOut::Special => self.special_files += 1,
                LeftOut::TooLarge => self
                    .control_too_large
                    .push(rel.join(OsStr::from_bytes(name))),
            }
        }
    }
}

/// What one freeze builds.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// The tree from SOURCE down. The accounts in `deferred` (root mailbox -> account number)
    /// are not entered: their directories are left to their own snapshots.
    Tree {
        /// Root mailbox (relative to SOURCE) -> account number, of the accounts not entered.
        deferred: &'a HashMap<PathBuf, u32>,
    },
    /// The tree from SOURCE down, finding the accounts as it goes (this walk is the
    /// discovery): a mailbox not inside another is an account's root, not entered, its
    /// directory left to its own snapshot. The roots are in [`FreezeReport::accounts`], the
    /// account numbers their positions there.
    Skeleton,
    /// One account alone, from its root mailbox `base` down: capture number `epoch` of
    /// account number `account`.
    Account {
        /// The account's root (its root mailbox, or the directory holding its `.INBOX`), relative
        /// to SOURCE.
        base: &'a Path,
        /// The account's number, its place in discovery order: it picks the snapshot's synthetic
        /// node ids.
        account: u32,
        /// Which capture of the account this is (1 for the first); part of its directory offsets.
        epoch: u32,
        /// The node id the view gives the account's directory.
        dir: Ino,
    },
}

/// Builds the snapshot of `scope` in the tree at `root` (SOURCE, path `source`) from the
/// accounts' captures. `stalled` are the roots of accounts whose capture hung: listing them
/// fails with `EIO`, and they are never opened again.
#[allow(clippy::too_many_arguments)]
pub fn freeze(
    root: BorrowedFd<'_>,
    source: &Path,
    scope: Scope<'_>,
    captures: Vec<AccountCapture>,
    stalled: &[PathBuf],
    exclude_indexes: bool,
    selection: &Selection,
    budget: &Arc<PinBudget>,
) -> Result<(Snapshot, FreezeReport)> {
    let root_st = sys::fstat(root).map_err(|e| Error::io("cannot stat source", source, e))?;
    let no_deferred = HashMap::new();
    let (deferred, base) = match scope {
        Scope::Tree { deferred } => (deferred, PathBuf::new()),
        Scope::Skeleton => (&no_deferred, PathBuf::new()),
        Scope::Account { base, .. } => (&no_deferred, base.to_path_buf()),
    };
    // The directory the walk starts from: SOURCE, or the account's root mailbox.
    let base_fd = if base.as_os_str().is_empty() {
        root.try_clone_to_owned()
    } else {
        sys::open_beneath(
            root,
            base.as_os_str(),
            sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY,
        )
    }
    .map_err(|e| Error::io("cannot open", source.join(&base), e))?;
    let base_st =
        sys::fstat(base_fd.as_fd()).map_err(|e| Error::io("cannot stat", source.join(&base), e))?;
    let totals = Totals {
        accounts: captures.len() + stalled.len() + deferred.len(),
        ..Totals::default()
    };
    let mut mailboxes: HashMap<PathBuf, MailboxCapture> = HashMap::new();
    let mut report = FreezeReport::default();
    for a in captures {
        for (rel, m) in &a.mailboxes {
            report.add_capture_of(rel, m);
        }
        mailboxes.extend(a.mailboxes);
    }
    // Every listed message, plus a generous allowance per mailbox for its directories,
    // control and index files.
    let expected = mailboxes
        .values()
        .map(|m| m.new.len() + m.cur.len() + 24)
        .sum::<usize>()
        + 64;
    let builder = match scope {
        Scope::Tree { .. } | Scope::Skeleton => {
            Builder::new(attr_of(&root_st), root_st.st_dev, expected)
        }
        Scope::Account {
            account,
            epoch,
            dir,
            ..
        } => Builder::for_account(
            base.clone(),
            dir,
            attr_of(&base_st),
            root_st.st_dev,
            expected,
            account,
            epoch,
        ),
    };
    let mut f = Freezer {
        root,
        base_fd: Some(base_fd),
        deferred,
        find_accounts: matches!(scope, Scope::Skeleton),
        budget,
        source,
        dev: root_st.st_dev,
        exclude_indexes,
        selection,
        mailboxes,
        stalled,
        late_control: ControlBudget::new(),
        builder,
        report,
        totals,
        consumed: 0,
        nest: 0,
    };
    // Depth first: a pending directory holds only its parent's fd, shared with its siblings,
    // so the fds open are those of the directories on the current path (at most MAX_DEPTH
    // and the levels above the accounts), however wide the tree is.
    let mut stack = vec![Pending {
        node: NodeIdx::ROOT,
        rel: base,
        role: Role::Plain,
        parent: None,
        depth: Depth::default(),
        may_be_mailbox: true,
    }];
    f.walk(&mut stack)?;
    drop(stack);
    let mut report = f.report;
    report
        .unreadable
        .sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    report.unreadable.dedup();
    let snap = f.builder.finish(f.totals);
    Ok((snap, report))
}

/// How many listed messages the walk consumes between two trims of the heap (a trim takes
/// about a millisecond).
const TRIM_EVERY: usize = 16 * 1024;

/// When this many directories are pending, a walk that finds accounts goes on with every CPU.
const SPLIT_AT: usize = 4;

/// A walk apart splits again, once: a domain of many users is not left to one thread, and
/// a deep tree beside the accounts does not start a thread per directory. At most
/// `workers^(MAX_NEST)` threads walk at once.
const MAX_NEST: u8 = 2;

/// The threads a walk that finds accounts uses: every CPU, at most [`MAX_WALKERS`] (one when a
/// test says so).
fn walk_workers() -> usize {
    #[cfg(test)]
    if let Some(n) = tests::WORKERS.get() {
        return n;
    }
    sys::cpus().min(MAX_WALKERS)
}

/// The most threads one walk apart uses. With [`MAX_NEST`] that bounds the threads walking at
/// once (4 + 4 × 4) and the fds they hold outside the pin budget (up to 2 each: a directory
/// being listed, one looked into), well within the reserve.
const MAX_WALKERS: usize = 4;

/// A pending directory handed to another thread: opened beneath SOURCE by its path there.
struct Task {
    node: NodeIdx,
    rel: PathBuf,
    role: Role,
    depth: Depth,
    may_be_mailbox: bool,
}

impl From<Pending<'_>> for Task {
    fn from(p: Pending<'_>) -> Task {
        Task {
            node: p.node,
            rel: p.rel,
            role: p.role,
            depth: p.depth,
            may_be_mailbox: p.may_be_mailbox,
        }
    }
}

/// What the walk of one subtree made, to be grafted.
struct Walked {
    builder: Builder,
    report: FreezeReport,
    totals: Totals,
}

/// A directory whose children are still to be added.
struct Pending<'a> {
    node: NodeIdx,
    rel: PathBuf,
    role: Role,
    /// The parent directory, open, when the budget could keep it so; else the directory is
    /// opened beneath SOURCE by its whole path.
    parent: Option<std::rc::Rc<HeldDir<'a>>>,
    depth: Depth,
    /// False when its link count shows fewer than two subdirectories: then it has no `cur/`
    /// and `new/`, and the walk does not look for them before listing it.
    may_be_mailbox: bool,
}

/// How deep a directory lies: levels below its account's root mailbox, or below SOURCE when
/// it is in no account.
#[derive(Debug, Clone, Copy, Default)]
struct Depth {
    levels: usize,
    in_account: bool,
}

/// A directory fd kept open for its subdirectories, counted in the pin budget while it lives.
struct HeldDir<'a> {
    fd: OwnedFd,
    budget: &'a Arc<PinBudget>,
}

impl Drop for HeldDir<'_> {
    fn drop(&mut self) {
        self.budget.unhold(1);
    }
}

#[derive(Clone)]
enum Role {
    /// Any directory that is not part of a mailbox's cur/new/tmp.
    Plain,
    /// `cur/` or `new/` of the mailbox at the given path.
    Messages { mailbox: PathBuf, cur: bool },
    /// `tmp/`: always shown empty.
    Tmp,
}

struct Freezer<'a> {
    root: BorrowedFd<'a>,
    /// Where the walk starts (SOURCE, or an account's root mailbox); `None` in the walk of a
    /// subtree to be grafted, whose root stands for a directory below the base, placed by the
    /// walk above.
    base_fd: Option<OwnedFd>,
    /// Account directories not entered (see [`Scope::Tree`]).
    deferred: &'a HashMap<PathBuf, u32>,
    /// Whether each account root met is left to its own snapshot (see [`Scope::Skeleton`]).
    find_accounts: bool,
    stalled: &'a [PathBuf],
    /// The control-file memory of all mailboxes created during the capture, together: each
    /// new mailbox must not bring a fresh allowance.
    late_control: ControlBudget,
    budget: &'a Arc<PinBudget>,
    source: &'a Path,
    dev: u64,
    exclude_indexes: bool,
    selection: &'a Selection,
    mailboxes: HashMap<PathBuf, MailboxCapture>,
    builder: Builder,
    report: FreezeReport,
    totals: Totals,
    /// Listed messages consumed since the heap was last trimmed.
    consumed: usize,
    /// How many walks apart this one is nested in (see [`MAX_NEST`]).
    nest: u8,
}

impl<'a> Freezer<'a> {
    /// Whether `p` is where the walk starts (SOURCE, or the account's root mailbox): its
    /// errors end the freeze.
    fn is_base(&self, p: &Pending<'a>) -> bool {
        p.node == NodeIdx::ROOT && self.base_fd.is_some()
    }

    /// Adds the children of one directory; returns the subdirectories to fill next.
    fn fill(&mut self, p: Pending<'a>) -> Result<Vec<Pending<'a>>> {
        if let Role::Tmp = p.role {
            self.builder.add_children(p.node, Vec::new());
            return Ok(Vec::new());
        }
        if matches!(p.role, Role::Plain) && self.stalled.contains(&p.rel) {
            // Its capture hung: never touched again, and listing it fails (EIO) rather than
            // show an empty account that a mirroring backup would copy as such.
            log::warn!(
                "account {} fails with EIO in the view: its capture hung",
                self.show(&p.rel)
            );
            self.report.stalled.push(p.rel.clone());
            self.builder.add_children(p.node, Vec::new());
            self.builder.mark_unlistable(p.node);
            return Ok(Vec::new());
        }
        if matches!(p.role, Role::Plain) {
            if let Some(&account) = self.deferred.get(&p.rel) {
                // Its contents come from the account's own capture; the node is this tree's.
                self.builder.add_children(p.node, Vec::new());
                self.builder.defer(p.node, account);
                return Ok(Vec::new());
            }
        }
        if p.depth.levels > MAX_DEPTH {
            log::warn!(
                "not entering {}: more than {MAX_DEPTH} levels below {}; shown empty",
                self.show(&p.rel),
                if p.depth.in_account {
                    "its account"
                } else {
                    "the source"
                }
            );
            self.report.too_deep.push(p.rel.clone());
            self.builder.add_children(p.node, Vec::new());
            return Ok(Vec::new());
        }
        // Where the walk finds accounts, a directory that may be an account's root is first
        // opened only as a place (`O_PATH`, cheaper to open and close) to look for its
        // `cur/` and `new/`; an account's root is not listed here (in a store of small
        // accounts, that is half the directories the walk would list).
        let probe = self.find_accounts
            && p.may_be_mailbox
            && matches!(p.role, Role::Plain)
            && !self.is_base(&p)
            && self.selection.visibility(&p.rel) != Visibility::Ancestor;
        let flags = sys::OFlag::O_DIRECTORY
            | if probe {
                sys::OFlag::O_PATH
            } else {
                sys::OFlag::O_RDONLY
            };
        let mut opened = match (&self.base_fd, &p.parent, p.rel.file_name()) {
            (Some(base), ..) if p.node == NodeIdx::ROOT => base.try_clone(),
            (_, Some(parent), Some(name)) => sys::open_beneath(parent.fd.as_fd(), name, flags),
            _ => sys::open_beneath(self.root, p.rel.as_os_str(), flags),
        };
        if probe {
            if let Ok(place) = &opened {
                if is_account_root(place.as_fd()) {
                    return Ok(self.found_account(&p));
                }
                // Not an account's root: opened again to be listed (the directory itself, not
                // its name again).
                opened = sys::openat(
                    place.as_fd(),
                    OsStr::new("."),
                    sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY,
                );
            }
        }
        let fd = match opened {
            Ok(fd) => fd,
            Err(e) if self.is_base(&p) => {
                return Err(Error::io("cannot open source", self.source, e));
            }
            // Out of fds is no property of this directory: showing it empty would drop what
            // is below it (accounts, in a skeleton) without a word.
            Err(e)
                if matches!(
                    sys::errno(&e),
                    Some(sys::Errno::EMFILE | sys::Errno::ENFILE)
                ) =>
            {
                return Err(Error::io("cannot open", self.source.join(&p.rel), e));
            }
            Err(e) => {
                self.report.unreadable.push(p.rel.clone());
                if let Role::Messages { mailbox, cur } = &p.role {
                    // Made unreadable, or swapped for a symlink, since the listing: what was
                    // pinned under the lock is still the captured files.
                    log::warn!(
                        "cannot open {}: {e}; showing only the messages pinned under the lock",
                        self.show(&p.rel)
                    );
                    let (mailbox, cur) = (mailbox.clone(), *cur);
                    self.fill_messages(&p, None, &mailbox, cur);
                } else {
                    log::warn!("cannot open {}: {e}; shown empty", self.show(&p.rel));
                    self.builder.add_children(p.node, Vec::new());
                }
                return Ok(Vec::new());
            }
        };
        match p.role.clone() {
            Role::Messages { mailbox, cur } => {
                self.fill_messages(&p, Some(fd.as_fd()), &mailbox, cur);
                Ok(Vec::new())
            }
            _ => self.fill_plain(p, fd),
        }
    }

    fn fill_plain(&mut self, p: Pending<'a>, fd: OwnedFd) -> Result<Vec<Pending<'a>>> {
        let dir = fd.as_fd();
        // Opened for this listing (`fill`), so at its start; the root's fd is a copy of one
        // that shares its offset.
        let listed = if self.is_base(&p) {
            sys::read_dir(dir)
        } else {
            sys::read_dir_once(dir)
        };
        let entries = match listed {
            Ok(e) => e,
            Err(e) if self.is_base(&p) => {
                return Err(Error::io("cannot read source", self.source, e));
            }
            Err(e) => {
                log::warn!("cannot list {}: {e}; shown empty", self.show(&p.rel));
                self.report.unreadable.push(p.rel.clone());
                self.builder.add_children(p.node, Vec::new());
                return Ok(Vec::new());
            }
        };
        // With --include/--exclude, a directory only on the way to selected paths holds just
        // that way down: its subdirectories that are shown or lead to shown ones.
        let only_the_way = self.selection.visibility(&p.rel) == Visibility::Ancestor;
        let mut mailbox = !only_the_way && is_mailbox(dir, &entries);
        if self.find_accounts && !only_the_way && (mailbox || lists_inbox_folder(dir, &entries)) {
            // Made an account's root since the look above (or not looked at): one all the
            // same.
            return Ok(self.found_account(&p));
        }
        if mailbox && !self.mailboxes.contains_key(&p.rel) {
            // Created after discovery: capture it now, without a lock.
            log::warn!(
                "mailbox {} appeared during capture; captured without its lock",
                self.show(&p.rel)
            );
            // Under a control tree (as its account's other mailboxes say), its control files
            // are there, and not looked for now: it is captured without them.
            let at = if self.mailboxes.values().any(|m| m.control_elsewhere) {
                capture::ControlAt::Absent
            } else {
                capture::ControlAt::Mailbox
            };
            let captured = capture::capture_mailbox(
                dir,
                &self.source.join(&p.rel),
                &at,
                self.budget,
                &mut self.late_control,
                &Watch::new(&p.rel),
            );
            match captured {
                Ok(m) => {
                    self.report.add_capture_of(&p.rel, &m);
                    self.mailboxes.insert(p.rel.clone(), m);
                    self.report.late_mailboxes.push(p.rel.clone());
                }
                Err(e) => {
                    // Gone or reshaped meanwhile: shown as the plain directory it now is.
                    log::warn!("{e}");
                    mailbox = false;
                }
            }
        }
        if mailbox {
            self.totals.mailboxes += 1;
        }
        let place = if mailbox {
            Place::MailboxDir
        } else {
            Place::Other
        };
        let mut children = Vec::with_capacity(entries.len());
        // Whether the mailbox's control files came from a separate control tree.
        let elsewhere = mailbox
            && self
                .mailboxes
                .get(&p.rel)
                .is_some_and(|m| m.control_elsewhere);
        let mut roles: HashMap<Vec<u8>, Role> = HashMap::new();
        let mut few_subdirs: std::collections::HashSet<Vec<u8>> = Default::default();
        let mut has_tmp = false;
        for entry in entries {
            let name = entry.name.clone();
            let special =
                mailbox && (name == names::CUR || name == names::NEW || name == names::TMP);
            if !special && names::is_hidden(&name, place, self.exclude_indexes) {
                continue;
            }
            if !self.selection.is_all() && !self.selected(dir, &p.rel, &entry) {
                continue;
            }
            if mailbox && names::is_control_file(&name) {
                let captured = self.mailboxes.get_mut(&p.rel).and_then(|m| {
                    let i = m.control.iter().position(|c| c.name == name)?;
                    Some(m.control.swap_remove(i))
                });
                // Served as captured under the lock (in a control tree, where one is in use).
                if let Some(c) = captured {
                    children.push(self.control_node(c, elsewhere));
                    continue;
                }
                if !elsewhere {
                    // One that appeared later, or that the capture left out, is not in the
                    // image.
                    continue;
                }
                // A control tree is in use: a copy in the Maildir of what Dovecot keeps there
                // is one it never reads.
                if names::TREE_FILES.contains(&name.as_slice()) {
                    let rel = p.rel.join(OsStr::from_bytes(&name));
                    log::info!(
                        "{} hidden: a stale copy, Dovecot reads the control tree's",
                        self.show(&rel)
                    );
                    continue;
                }
                // The others (maildirfolder, dovecot-shared, dovecot-acl) stay in the Maildir
                // and are served as its other files are.
            }
            let (st, pin) = match self.stat_entry(dir, &name, entry.d_type) {
                Ok(found) => found,
                Err(e) => {
                    let rel = p.rel.join(OsStr::from_bytes(&name));
                    log::warn!("cannot stat {}: {e}; left out", self.show(&rel));
                    if sys::errno(&e) != Some(sys::Errno::ENOENT) {
                        self.report.unreadable.push(rel);
                    }
                    continue;
                }
            };
            if special {
                if sys::FileKind::of_mode(st.st_mode) != sys::FileKind::Directory {
                    continue;
                }
                let role = if name == names::TMP {
                    has_tmp = true;
                    Role::Tmp
                } else {
                    Role::Messages {
                        mailbox: p.rel.clone(),
                        cur: name == names::CUR,
                    }
                };
                roles.insert(name.clone(), role);
            }
            // A directory's link count is 2 and one per subdirectory (where the filesystem
            // counts them: not btrfs, which says 1).
            if sys::FileKind::of_mode(st.st_mode) == sys::FileKind::Directory
                && matches!(st.st_nlink, 2 | 3)
            {
                few_subdirs.insert(name.clone());
            }
            if let Some(n) = self.new_node(dir, &p.rel, name, &st, pin) {
                children.push(n);
            }
        }
        if elsewhere {
            // Captured in the control tree, not listed here: served in the mailbox all the
            // same, so a copy of the view restores into the default layout with its UIDs.
            let rest = self
                .mailboxes
                .get_mut(&p.rel)
                .map(|m| std::mem::take(&mut m.control))
                .unwrap_or_default();
            for c in rest {
                children.push(self.control_node(c, true));
            }
        }
        if mailbox && !has_tmp {
            // Every mailbox shows a tmp/ so a restore is a valid Maildir; this one's source has
            // none, so it gets cur/'s attributes and a synthetic inode.
            if let Some(cur) = children.iter().find(|c| c.name == names::CUR) {
                let mut attr = cur.attr;
                attr.ino = Ino(0);
                children.push(NewNode {
                    name: names::TMP.to_vec(),
                    kind: NewKind::Dir,
                    attr,
                    pin: None,
                });
                roles.insert(names::TMP.to_vec(), Role::Tmp);
            }
        }
        let placed = self.builder.add_children(p.node, children);
        // The same rule as discovery's.
        let depth = Depth {
            levels: child_depth(p.depth.levels, mailbox && !p.depth.in_account),
            in_account: p.depth.in_account || mailbox,
        };
        // Kept open for the subdirectories while the budget can spare one fd.
        let mut parent = None;
        let mut fd = Some(fd);
        let mut next = Vec::new();
        for idx in placed {
            if !matches!(
                self.builder.node(idx).kind,
                crate::image::snapshot::Kind::Dir { .. }
            ) {
                continue;
            }
            let name = self.builder.name(idx).to_vec();
            let rel = p.rel.join(OsStr::from_bytes(&name));
            let role = roles.remove(&name).unwrap_or(Role::Plain);
            // This directory's own fd becomes its subdirectories' parent (no copy: it is not
            // needed here any more), counted in the budget while they are pending; where the
            // budget is spent, they are opened beneath SOURCE instead.
            if parent.is_none() && !matches!(role, Role::Tmp) && self.budget.hold(1) == 1 {
                match fd.take() {
                    Some(fd) => {
                        parent = Some(std::rc::Rc::new(HeldDir {
                            fd,
                            budget: self.budget,
                        }))
                    }
                    None => self.budget.unhold(1),
                }
            }
            next.push(Pending {
                node: idx,
                rel,
                role,
                parent: parent.clone(),
                depth,
                may_be_mailbox: !few_subdirs.contains(&name),
            });
        }
        drop(fd);
        Ok(next)
    }

    /// Fills the directories of `stack` and all below them, depth first. A walk that finds
    /// accounts goes on with every CPU once enough directories are pending ([`SPLIT_AT`]):
    /// one subtree at a time each, grafted in walk order; a subtree walked apart splits in
    /// turn (a domain of many users is not left to one thread), up to [`MAX_NEST`].
    fn walk(&mut self, stack: &mut Vec<Pending<'a>>) -> Result<()> {
        let workers = if self.find_accounts && self.nest < MAX_NEST {
            walk_workers()
        } else {
            1
        };
        while let Some(p) = stack.pop() {
            let next = self.fill(p)?;
            stack.extend(next.into_iter().rev());
            if workers > 1 && stack.len() >= SPLIT_AT {
                let tasks: Vec<Task> = stack.drain(..).rev().map(Task::from).collect();
                self.walk_apart(tasks, workers)?;
            }
        }
        Ok(())
    }

    /// Walks the subtrees of `tasks` (pending directories, in walk order) on `workers`
    /// threads, each into a builder of its own, and grafts them in order: the same tree, and
    /// the same account numbers, as one walk would make. Only for a walk that finds accounts
    /// (it has no captures to hand out).
    fn walk_apart(&mut self, tasks: Vec<Task>, workers: usize) -> Result<()> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots: Vec<parking_lot::Mutex<Option<Result<Walked>>>> = tasks
            .iter()
            .map(|_| parking_lot::Mutex::new(None))
            .collect();
        let this = &*self;
        let take_tasks = || {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(task) = tasks.get(i) else { break };
                *slots[i].lock() = Some(this.walk_one(task));
            }
        };
        std::thread::scope(|scope| {
            // This thread walks too: where no other can be started (a task limit), it walks
            // them all.
            for _ in 1..workers.min(tasks.len()) {
                let started = std::thread::Builder::new()
                    .name("walk".to_owned())
                    .spawn_scoped(scope, take_tasks);
                if started.is_err() {
                    break;
                }
            }
            take_tasks();
        });
        for (task, slot) in tasks.iter().zip(slots) {
            let Some(walked) = slot.into_inner() else {
                return Err(Error::msg(
                    "cannot walk",
                    self.source.join(&task.rel),
                    "its walk ended without a result",
                ));
            };
            let w = walked?;
            let accounts = self.report.accounts.len() as u32;
            self.builder.graft(task.node, w.builder, accounts);
            self.report.merge(w.report);
            self.totals.add(&w.totals);
        }
        Ok(())
    }

    /// The walk of the subtree of `task` into a builder of its own.
    fn walk_one(&self, task: &Task) -> Result<Walked> {
        let placeholder = self.builder.node(task.node).attr;
        let mut f = Freezer {
            root: self.root,
            base_fd: None,
            deferred: self.deferred,
            find_accounts: self.find_accounts,
            stalled: self.stalled,
            late_control: ControlBudget::new(),
            budget: self.budget,
            source: self.source,
            dev: self.dev,
            exclude_indexes: self.exclude_indexes,
            selection: self.selection,
            mailboxes: HashMap::new(),
            // No room reserved: thousands of these (a user's directory each) wait to be grafted.
            builder: Builder::new(placeholder, self.dev, 0),
            report: FreezeReport::default(),
            totals: Totals::default(),
            consumed: 0,
            nest: self.nest + 1,
        };
        let mut stack = vec![Pending {
            node: NodeIdx::ROOT,
            rel: task.rel.clone(),
            role: task.role.clone(),
            parent: None,
            depth: task.depth,
            may_be_mailbox: task.may_be_mailbox,
        }];
        f.walk(&mut stack)?;
        let Freezer {
            builder,
            report,
            totals,
            ..
        } = f;
        Ok(Walked {
            builder,
            report,
            totals,
        })
    }

    /// Records the directory of `p` as the root of the next account found, left to the
    /// account's own snapshot (see [`Scope::Skeleton`]); nothing below it is entered.
    fn found_account(&mut self, p: &Pending<'a>) -> Vec<Pending<'a>> {
        let account = self.report.accounts.len() as u32;
        self.report.accounts.push(p.rel.clone());
        self.builder.add_children(p.node, Vec::new());
        self.builder.defer(p.node, account);
        Vec::new()
    }

    /// Whether `entry` of directory `dir` (at `dir_rel`) is in the view under
    /// --include/--exclude: in a directory only on the way to selected paths, only the
    /// subdirectories that are shown or lead further are.
    fn selected(&self, dir: BorrowedFd<'_>, dir_rel: &Path, entry: &sys::DirEntry) -> bool {
        match self
            .selection
            .visibility(&dir_rel.join(OsStr::from_bytes(&entry.name)))
        {
            Visibility::Hidden => false,
            Visibility::Shown => true,
            Visibility::Ancestor => entry_is_dir(dir, entry),
        }
    }

    /// The attributes of an entry, and its pin: a regular file is pinned first and then
    /// `fstat`ed through the pin, so the attributes and the bytes served are of one inode.
    fn stat_entry(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        d_type: u8,
    ) -> std::io::Result<(sys::Stat, Option<Pin>)> {
        if d_type == sys::DT_REG {
            if let Some(pin) = self.budget.pin(dir, OsStr::from_bytes(name), d_type) {
                let st = sys::fstat(pin.as_fd())?;
                return Ok((st, Some(pin)));
            }
        }
        sys::lstat_at(dir, OsStr::from_bytes(name)).map(|st| (st, None))
    }

    /// A node for an entry of a plain or mailbox directory, or `None` if it is left out.
    /// The node of a control file as captured under the lock: its bytes held, or read through
    /// its pin never past the size it had then. One from a control tree gets a synthetic
    /// inode: its own may be another filesystem's, or that of the same file shown where the
    /// tree lies inside SOURCE, and must not pass for a hard link of either.
    fn control_node(&mut self, c: capture::ControlFile, from_tree: bool) -> NewNode {
        let mut attr = attr_of(&c.stat);
        if from_tree {
            attr.ino = Ino(0);
        }
        let (kind, pin) = match c.content {
            ControlContent::Inline(bytes) => {
                attr.size = bytes.len() as u64;
                (NewContent::Inline(bytes), None)
            }
            ControlContent::Pinned(fd) => (NewContent::Source, Some(self.budget.adopt(fd))),
        };
        // A regular file of the image like any other: its bytes count in the totals.
        self.totals.bytes += attr.size;
        NewNode {
            kind: NewKind::File(kind),
            attr,
            name: c.name,
            pin,
        }
    }

    fn new_node(
        &mut self,
        dir: BorrowedFd<'_>,
        rel: &Path,
        name: Vec<u8>,
        st: &sys::Stat,
        pin: Option<Pin>,
    ) -> Option<NewNode> {
        let regular = sys::FileKind::of_mode(st.st_mode) == sys::FileKind::Regular;
        // Only regular files keep a pin; another gives its budget back as it drops.
        let pin = pin.filter(|_| regular);
        let kind = match sys::FileKind::of_mode(st.st_mode) {
            sys::FileKind::Directory => {
                if st.st_dev != self.dev {
                    let path = rel.join(OsStr::from_bytes(&name));
                    log::warn!(
                        "not entering {}: another filesystem is mounted there",
                        self.show(&path)
                    );
                    self.report.skipped_mounts.push(path);
                    return None;
                }
                NewKind::Dir
            }
            sys::FileKind::Regular => {
                self.totals.bytes += st.st_size as u64;
                NewKind::File(NewContent::Source)
            }
            sys::FileKind::Symlink => match sys::readlink_at(dir, OsStr::from_bytes(&name)) {
                Ok(target) => NewKind::Symlink(target),
                Err(e) => {
                    log::warn!(
                        "cannot read link {}: {e}",
                        self.show(&rel.join(OsStr::from_bytes(&name)))
                    );
                    return None;
                }
            },
            _ => {
                log::warn!(
                    "left out special file (FIFO, socket or device) {}",
                    self.show(&rel.join(OsStr::from_bytes(&name)))
                );
                self.report.special_files += 1;
                return None;
            }
        };
        Some(NewNode {
            name,
            kind,
            attr: attr_of(st),
            pin,
        })
    }

    /// Adds the messages of a `cur/` or `new/` as listed (and pinned) under the lock; `dir` is
    /// that directory now, `None` when it can no longer be opened (then only pinned messages
    /// are shown).
    fn fill_messages(
        &mut self,
        p: &Pending,
        dir: Option<BorrowedFd<'_>>,
        mailbox: &Path,
        cur: bool,
    ) {
        let listed = match self.mailboxes.get_mut(mailbox) {
            Some(m) if cur => std::mem::take(&mut m.cur),
            Some(m) => std::mem::take(&mut m.new),
            None => Vec::new(),
        };
        let n = listed.len();
        let mut children = Vec::with_capacity(n);
        for mut l in listed {
            let Some((st, pin)) = self.message_stat(p, dir, mailbox, &mut l) else {
                continue;
            };
            let name = l.name;
            let kind = match sys::FileKind::of_mode(st.st_mode) {
                sys::FileKind::Regular => NewKind::File(NewContent::Message),
                sys::FileKind::Symlink => {
                    match dir.map(|d| sys::readlink_at(d, OsStr::from_bytes(&name))) {
                        Some(Ok(t)) => NewKind::Symlink(t),
                        _ => continue,
                    }
                }
                _ => {
                    // Not served (its pin, if any, gives its budget back as it drops).
                    self.report.special_files += 1;
                    continue;
                }
            };
            if matches!(kind, NewKind::File(_)) {
                self.totals.messages += 1;
                self.totals.bytes += st.st_size as u64;
            }
            children.push(NewNode {
                name,
                kind,
                attr: attr_of(&st),
                pin,
            });
        }
        self.builder.add_children(p.node, children);
        // The listings' memory goes back to the kernel as the walk consumes them (each was
        // made on a capture thread, in that thread's malloc arena, where the snapshot being
        // built cannot reuse it): else the peak is every listing and the whole snapshot.
        self.consumed += n;
        if self.consumed >= TRIM_EVERY {
            self.consumed = 0;
            sys::trim_heap();
        }
    }

    /// The attributes (and pin) of a listed message: through its pin when it has one (the pin
    /// must be the listed inode), else by name, else, if it was renamed since the listing, by
    /// base name and inode.
    fn message_stat(
        &mut self,
        p: &Pending,
        dir: Option<BorrowedFd<'_>>,
        mailbox: &Path,
        l: &mut Listed,
    ) -> Option<(sys::Stat, Option<Pin>)> {
        // A pin that is not of the listed inode (the name was replaced between listing and
        // pinning) is not the listed file: it drops, giving its budget back.
        if let Some(pin) = l.pin.take() {
            match sys::fstat(pin.as_fd()) {
                Ok(st) if st.st_ino == l.ino => return Some((st, Some(pin))),
                _ => {}
            }
        }
        // Without the directory, an unpinned message cannot be reached.
        let dir = dir?;
        let path = p.rel.join(OsStr::from_bytes(&l.name));
        // Not pinned under the lock (over budget then, or the name was replaced): pin now if
        // it is still the listed inode, and take the attributes through the pin.
        if let Some(pin) = self.budget.pin(dir, OsStr::from_bytes(&l.name), l.d_type) {
            match sys::fstat(pin.as_fd()) {
                Ok(st) if st.st_ino == l.ino => return Some((st, Some(pin))),
                _ => {}
            }
        }
        match sys::lstat_at(dir, OsStr::from_bytes(&l.name)) {
            Ok(st) => Some((st, None)),
            Err(e) if sys::errno(&e) == Some(sys::Errno::ENOENT) => {
                let found = self.find_renamed(mailbox, l);
                if found.is_none() {
                    log::warn!(
                        "message {} was expunged before it could be frozen",
                        self.show(&path)
                    );
                    self.report.vanished += 1;
                }
                found
            }
            Err(e) => {
                log::warn!("cannot stat {}: {e}", self.show(&path));
                None
            }
        }
    }

    /// Finds a message listed as `l` under its current name in `cur/` or `new/` (same inode,
    /// same base name), and pins it. A client renaming without a lock can move it again while
    /// we look, so the directories are read up to `RELISTS` times.
    fn find_renamed(&self, mailbox: &Path, l: &Listed) -> Option<(sys::Stat, Option<Pin>)> {
        let flags = sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY;
        let mfd = sys::open_beneath(self.root, mailbox.as_os_str(), flags).ok()?;
        let new = sys::open_dir_at(mfd.as_fd(), OsStr::from_bytes(names::NEW)).ok()?;
        let cur = sys::open_dir_at(mfd.as_fd(), OsStr::from_bytes(names::CUR)).ok()?;
        for _ in 0..capture::RELISTS {
            let now = capture::CurrentNames::list(new.as_fd(), cur.as_fd(), &mut || ()).ok()?;
            let Some((in_cur, name)) = now.of(l) else {
                if now.has_inode(l.ino) {
                    // Its inode is another message now: this one is gone.
                    return None;
                }
                continue;
            };
            let dir = if in_cur { &cur } else { &new };
            let name = OsStr::from_bytes(name);
            if let Some(pin) = self.budget.pin(dir.as_fd(), name, l.d_type) {
                match sys::fstat(pin.as_fd()) {
                    Ok(st) if st.st_ino == l.ino => return Some((st, Some(pin))),
                    _ => {}
                }
            }
            match sys::lstat_at(dir.as_fd(), name) {
                Ok(st) if st.st_ino == l.ino => return Some((st, None)),
                _ => {}
            }
        }
        None
    }

    fn show(&self, rel: &Path) -> String {
        escape_path(&self.source.join(rel))
    }
}

/// The captured attributes of a `stat`.
pub fn attr_of(st: &sys::Stat) -> Attr {
    Attr::new(
        Ino(st.st_ino),
        st.st_size.max(0) as u64,
        stamp(sys::FileTime::mtime(st)),
        stamp(sys::FileTime::ctime(st)),
        (st.st_mode & 0o7777) as u16,
        st.st_uid,
        st.st_gid,
    )
}

fn stamp(t: sys::FileTime) -> Stamp {
    Stamp {
        sec: t.sec,
        nsec: t.nsec,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build::Plan;
    use crate::image::build::tests::{at_mount, build_with, find, in_view, listing, mailbox};
    use crate::image::snapshot::{Content, Kind};
    use crate::testutil::TempDir;
    use std::fs;

    thread_local! {
        /// How many threads a skeleton walk of this test thread uses.
        pub static WORKERS: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    }

    /// Every node of `s` as (parent, name, kind, node id, size), in index order.
    fn nodes(s: &Snapshot) -> Vec<(u32, Vec<u8>, String, u64, u64)> {
        (0..s.len() as u32)
            .map(|i| {
                let n = s.node(NodeIdx(i));
                let name = s.name(NodeIdx(i)).to_vec();
                (
                    n.parent.0,
                    name,
                    format!("{:?}", n.kind),
                    n.attr.ino.0,
                    n.attr.size,
                )
            })
            .collect()
    }

    /// The inline bytes of a node (a control file read under the lock, a symlink's target).
    fn inline(s: &Snapshot, idx: NodeIdx) -> Vec<u8> {
        match s.node(idx).kind {
            Kind::File(Content::Inline(i)) | Kind::Symlink(i) => s.inline(i).to_vec(),
            k => panic!("{k:?} holds no bytes"),
        }
    }

    /// The skeleton walk of `src`: the tree outside the accounts, and the accounts' roots.
    fn skeleton(src: &Path) -> (Snapshot, Vec<PathBuf>) {
        let root = fs::File::open(src).unwrap();
        let budget = PinBudget::fixed(100);
        let (snap, report) = freeze(
            root.as_fd(),
            src,
            Scope::Skeleton,
            Vec::new(),
            &[],
            false,
            &Selection::default(),
            &budget,
        )
        .unwrap();
        (snap, report.accounts)
    }

    #[test]
    fn cur_and_new_are_shown_as_listed_and_tmp_is_shown_empty() {
        let t = TempDir::new("freeze-listed");
        let mb = t.path().join("u/Maildir");
        let [cur, new] = mailbox(&mb, 3, 2);
        fs::write(mb.join("tmp/1700000099.M9P9.host"), "half delivered").unwrap();
        let c = at_mount(t.path());
        let s = c.view.skeleton();
        assert_eq!(listing(s, find(s, "u/Maildir/cur").unwrap()), cur);
        assert_eq!(listing(s, find(s, "u/Maildir/new").unwrap()), new);
        let tmp = find(s, "u/Maildir/tmp").unwrap();
        assert!(matches!(s.node(tmp).kind, Kind::Dir { .. }));
        assert!(listing(s, tmp).is_empty());
        let m = find(s, &format!("u/Maildir/cur/{}", cur[0])).unwrap();
        assert_eq!(s.node(m).kind, Kind::File(Content::Message));
    }

    #[test]
    fn a_mailbox_without_tmp_is_shown_with_an_empty_one() {
        let t = TempDir::new("freeze-no-tmp");
        let mb = t.path().join("u/Maildir");
        mailbox(&mb, 1, 0);
        fs::remove_dir(mb.join("tmp")).unwrap();
        let c = at_mount(t.path());
        let s = c.view.skeleton();
        let tmp = find(s, "u/Maildir/tmp").expect("a tmp/ in the image");
        assert!(listing(s, tmp).is_empty());
        assert!(s.node(tmp).attr.ino.0 >= crate::image::snapshot::SYNTHETIC_INO);
        assert!(!mb.join("tmp").exists(), "SOURCE is not changed");
    }

    #[test]
    fn lock_and_temp_files_are_hidden() {
        let t = TempDir::new("freeze-hidden");
        let mb = t.path().join("u/Maildir");
        mailbox(&mb, 1, 0);
        let hidden = [
            "dovecot-uidlist.lock",
            "dovecot-keywords.lock",
            "dovecot.index.log.newlock",
            "dovecot-uidlist.tmp",
            "mailboxes.lock0123abcd",
            "temp.host.4242.5f3a",
            ".temp.host.4242.5f3a",
            ".nfs000000000001",
            "maildirsize.host.4242.ab",
        ];
        let shown = ["maildirsize", "notes.lockfile", "dovecot.index"];
        for name in hidden.iter().chain(&shown) {
            fs::write(mb.join(name), name).unwrap();
        }
        fs::write(t.path().join("u/procmail.lock"), "").unwrap();
        // A planted uidlist lock would hold a locked capture up: this one runs without locks.
        let mut plan = Plan::new();
        plan.on_demand = false;
        plan.policy.no_lock = true;
        let c = build_with(t.path(), &plan).unwrap();
        let s = c.view.skeleton();
        let mut expected: Vec<&str> = ["cur", "new", "tmp"]
            .iter()
            .chain(&shown)
            .copied()
            .collect();
        expected.sort_unstable();
        assert_eq!(listing(s, find(s, "u/Maildir").unwrap()), expected);
        assert_eq!(listing(s, find(s, "u").unwrap()), ["Maildir"]);
        assert!(
            mb.join("dovecot-uidlist.lock").exists(),
            "not ours to remove"
        );
    }

    #[test]
    fn control_files_are_served_as_the_bytes_read_under_the_lock() {
        let t = TempDir::new("freeze-control");
        let mb = t.path().join("u/Maildir");
        mailbox(&mb, 2, 0);
        let files: [(&str, &[u8]); 3] = [
            (
                "dovecot-uidlist",
                b"3 V1700000000 N3 G0123\n1 :1700000000.M0P7.host\n",
            ),
            ("dovecot-keywords", b"0 $Junk\n1 $Forwarded\n"),
            ("subscriptions", b"V\t2\n\nSent\n"),
        ];
        for (name, bytes) in files {
            fs::write(mb.join(name), bytes).unwrap();
        }
        let c = at_mount(t.path());
        // Dovecot rewrites them once the lock is gone: the image keeps what was read.
        for (name, _) in files {
            fs::write(mb.join(name), "rewritten after the capture, and longer\n").unwrap();
        }
        let s = c.view.skeleton();
        for (name, bytes) in files {
            let f = find(s, &format!("u/Maildir/{name}")).unwrap();
            assert_eq!(inline(s, f), bytes, "{name}");
            assert_eq!(s.node(f).attr.size, bytes.len() as u64, "{name}");
        }
    }

    #[test]
    fn a_symlink_is_shown_with_its_target_and_never_followed() {
        let t = TempDir::new("freeze-symlink");
        let src = t.path().join("src");
        mailbox(&src.join("u/Maildir"), 1, 0);
        fs::create_dir_all(t.path().join("outside")).unwrap();
        fs::write(t.path().join("outside/secret"), "not in SOURCE").unwrap();
        let target = t.path().join("outside");
        std::os::unix::fs::symlink(&target, src.join("u/Maildir/shared")).unwrap();
        std::os::unix::fs::symlink("Maildir", src.join("u/mail")).unwrap();
        std::os::unix::fs::symlink("nowhere", src.join("u/dangling")).unwrap();
        let c = at_mount(&src);
        let s = c.view.skeleton();
        for (path, to) in [
            ("u/Maildir/shared", target.as_os_str().as_bytes()),
            ("u/mail", b"Maildir"),
            ("u/dangling", b"nowhere"),
        ] {
            let l = find(s, path).unwrap();
            assert!(matches!(s.node(l).kind, Kind::Symlink(_)), "{path}");
            assert_eq!(inline(s, l), to, "{path}");
        }
        let names: Vec<&[u8]> = (0..s.len() as u32).map(|i| s.name(NodeIdx(i))).collect();
        assert!(!names.contains(&&b"secret"[..]), "a symlink was followed");
        assert_eq!(c.totals.mailboxes, 1, "u/mail is not a second mailbox");
    }

    #[test]
    fn a_fifo_is_left_out_and_counted() {
        let t = TempDir::new("freeze-fifo");
        let mb = t.path().join("u/Maildir");
        mailbox(&mb, 1, 0);
        let fifos = [
            mb.join("pipe"),
            mb.join("cur/1700000050.M1P1.host:2,S"),
            t.path().join("u/.mailfilter.fifo"),
        ];
        for fifo in &fifos {
            let made = std::process::Command::new("mkfifo").arg(fifo).status();
            assert!(made.unwrap().success());
        }
        let c = at_mount(t.path());
        let s = c.view.skeleton();
        assert_eq!(c.report.special_files, 3);
        assert!(find(s, "u/Maildir/pipe").is_none());
        assert_eq!(s.children(find(s, "u/Maildir/cur").unwrap()).len(), 1);
        assert_eq!(c.totals.messages, 1);
        assert_eq!(listing(s, find(s, "u").unwrap()), ["Maildir"]);
    }

    #[test]
    fn exclude_indexes_leaves_dovecot_index_files_out() {
        let t = TempDir::new("freeze-indexes");
        let mb = t.path().join("u/Maildir");
        mailbox(&mb, 1, 0);
        let indexes = [
            "dovecot.index",
            "dovecot.index.cache",
            "dovecot.index.log",
            "dovecot.list.index.log",
            "dovecot.mailbox.log",
        ];
        for name in indexes {
            fs::write(mb.join(name), "index").unwrap();
        }
        fs::write(mb.join("dovecot-uidlist"), "3 V1 N2\n").unwrap();
        let image = |exclude_indexes: bool| {
            let plan = Plan {
                on_demand: false,
                exclude_indexes,
                ..Plan::new()
            };
            let c = build_with(t.path(), &plan).unwrap();
            let s = c.view.skeleton();
            listing(s, find(s, "u/Maildir").unwrap())
        };
        let all = image(false);
        let without = image(true);
        for name in indexes {
            assert!(all.iter().any(|n| n == name), "{name} missing: {all:?}");
        }
        assert_eq!(without, ["cur", "dovecot-uidlist", "new", "tmp"]);
    }

    #[test]
    fn a_message_removed_after_capture_is_still_in_the_image() {
        let t = TempDir::new("freeze-pinned");
        let mb = t.path().join("u/Maildir");
        let [cur, _] = mailbox(&mb, 2, 0);
        let c = at_mount(t.path());
        let path = mb.join("cur").join(&cur[1]);
        let size = fs::metadata(&path).unwrap().len();
        // Expunged once the capture is over.
        fs::remove_file(&path).unwrap();
        let s = c.view.skeleton();
        let m = find(s, &format!("u/Maildir/cur/{}", cur[1])).unwrap();
        assert_eq!(s.node(m).attr.size, size);
        let pin = s.pin(m).expect("the message is pinned");
        let st = sys::fstat(pin).unwrap();
        assert_eq!((st.st_ino, st.st_size as u64), (s.node(m).attr.ino.0, size));
        assert_eq!(st.st_nlink, 0, "the pin holds the removed file");
        assert_eq!(c.report.vanished, 0);
    }

    #[test]
    fn totals_count_accounts_mailboxes_messages_and_bytes() {
        let t = TempDir::new("freeze-totals");
        let src = t.path();
        mailbox(&src.join("a/Maildir"), 2, 1);
        mailbox(&src.join("a/Maildir/.Sent"), 1, 0);
        mailbox(&src.join("b/Maildir"), 3, 0);
        fs::write(src.join("README"), "0123456789").unwrap();
        // Control files are files of the image too.
        fs::write(src.join("b/Maildir/dovecot-uidlist"), "3 V1 N1\n").unwrap();
        let messages: u64 = ["a/Maildir", "a/Maildir/.Sent", "b/Maildir"]
            .iter()
            .flat_map(|mb| ["cur", "new"].map(|sub| src.join(mb).join(sub)))
            .flat_map(|d| fs::read_dir(d).unwrap())
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        let c = at_mount(src);
        let totals = &c.view.skeleton().totals;
        assert_eq!(
            (totals.accounts, totals.mailboxes, totals.messages),
            (2, 3, 7)
        );
        assert_eq!(totals.bytes, messages + 10 + 8);
        // The uidlist is held in memory: no pin for it.
        assert_eq!((totals.pinned, totals.unpinned), (8, 0));
    }

    #[test]
    fn maildir_plus_plus_folders_belong_to_their_account() {
        let t = TempDir::new("freeze-folders");
        for mb in ["u/Maildir", "u/Maildir/.Sent", "u/Maildir/.Archive.2024"] {
            mailbox(&t.path().join(mb), 1, 0);
        }
        let (snap, accounts) = skeleton(t.path());
        assert_eq!(accounts, [PathBuf::from("u/Maildir")]);
        let dir = find(&snap, "u/Maildir").unwrap();
        assert_eq!(snap.deferred(dir), Some(0));
        assert!(
            listing(&snap, dir).is_empty(),
            "left to the account's snapshot"
        );
        // The account's own snapshot holds the folders, as mailboxes of the one account.
        let c = build_with(t.path(), &Plan::new()).unwrap();
        let (account, root) = in_view(&c.view, "u/Maildir").unwrap();
        let boxes: Vec<PathBuf> = account
            .account_mailboxes(root)
            .into_iter()
            .map(|m| account.rel_path(m))
            .collect();
        assert_eq!(boxes.len(), 3, "{boxes:?}");
        for f in ["u/Maildir/.Sent", "u/Maildir/.Archive.2024"] {
            assert!(boxes.contains(&PathBuf::from(f)), "{f} in {boxes:?}");
        }
        assert_eq!((c.totals.accounts, c.totals.mailboxes), (1, 3));
    }

    #[test]
    fn a_directory_holding_an_inbox_folder_is_one_account() {
        let t = TempDir::new("freeze-inbox");
        mailbox(&t.path().join("u/Maildir/.INBOX"), 2, 0);
        mailbox(&t.path().join("u/Maildir/.Sent"), 1, 0);
        fs::write(t.path().join("u/Maildir/subscriptions"), "V\t2\n\nSent\n").unwrap();
        let (_, accounts) = skeleton(t.path());
        assert_eq!(accounts, [PathBuf::from("u/Maildir")]);
        let c = build_with(t.path(), &Plan::new()).unwrap();
        let (account, root) = in_view(&c.view, "u/Maildir").unwrap();
        assert_eq!(
            listing(&account, root),
            [".INBOX", ".Sent", "subscriptions"]
        );
        assert_eq!((c.totals.accounts, c.totals.mailboxes), (1, 2));
        assert_eq!(c.view.counts().accounts, 1);
    }

    #[test]
    fn a_skeleton_walked_on_two_threads_is_the_walk_of_one() {
        let t = crate::testutil::TempDir::new("walk-apart");
        for d in 0..5 {
            for u in 0..20 {
                let acct = t.path().join(format!("d{d}.org/u{u}/Maildir"));
                for sub in ["cur", "new", "tmp", ".Sent/cur", ".Sent/new", ".Sent/tmp"] {
                    fs::create_dir_all(acct.join(sub)).unwrap();
                }
                fs::write(acct.join("cur/1.m:2,S"), "m").unwrap();
                // Beside the accounts: files, links, a deep plain tree.
                fs::write(t.path().join(format!("d{d}.org/u{u}/.forward")), "x").unwrap();
                if u % 3 == 0 {
                    std::os::unix::fs::symlink(
                        "Maildir",
                        t.path().join(format!("d{d}.org/u{u}/mail")),
                    )
                    .unwrap();
                    fs::create_dir_all(t.path().join(format!("d{d}.org/u{u}/sieve/a/b"))).unwrap();
                }
            }
            fs::write(t.path().join(format!("d{d}.org/aliases")), "a: b").unwrap();
        }
        let root = fs::File::open(t.path()).unwrap();
        let walk = |workers: usize| {
            WORKERS.set(Some(workers));
            let budget = PinBudget::fixed(1000);
            let (snap, report) = freeze(
                root.as_fd(),
                t.path(),
                Scope::Skeleton,
                Vec::new(),
                &[],
                false,
                &Selection::default(),
                &budget,
            )
            .unwrap();
            let accounts = report.accounts.clone();
            let deferred = snap.deferred_dirs(accounts.len());
            (nodes(&snap), accounts, deferred, snap.totals.pinned)
        };
        let one = walk(1);
        let two = walk(2);
        // The first domain alone leaves more than `SPLIT_AT` directories pending.
        assert_eq!(one.1.len(), 100, "every account found");
        assert!(one.0.len() > 100);
        assert_eq!(one, two);
    }
}
