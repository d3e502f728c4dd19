//! `maildirfs verify PATH`: checks a Maildir tree (a backup copy, a restore, or a view) the way
//! Dovecot will read it. Read-only: nothing is locked, created or changed.
//!
//! Problems (exit 1): a mailbox without `cur/`, `new/` or `tmp/`; files in `tmp/`; lock or temp
//! files; a base name twice in a mailbox; a size that is not the name's `,S=`; a
//! `dovecot-uidlist` that does not parse or whose UIDs do not increase; a message in `cur/` the
//! uidlist does not know (Dovecot would give it a new UID: clients download it again); a
//! directory that cannot be read.
//!
//! Notes (no effect on the exit status): uidlist entries without a file (Dovecot drops them
//! lazily, so a live store has some), messages in `new/` not in the uidlist yet (delivered
//! since Dovecot last looked), a mailbox without a uidlist (never opened by Dovecot).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, escape_bytes, escape_path};
use crate::maildir::filename::{self, base_name};
use crate::maildir::names::{self, Place};
use crate::maildir::select::Selection;
use crate::maildir::uidlist::parse_uidlist;
use crate::sys;

/// How many example names a note about many files shows.
const EXAMPLES: usize = 3;

/// One thing found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Relative to PATH, escaped.
    pub path: String,
    /// What is wrong, or worth knowing, in a few words.
    pub what: String,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    /// PATH as given, escaped.
    pub path: String,
    /// Accounts found under PATH.
    pub accounts: usize,
    /// Mailboxes found (each checked, or a problem when it cannot be opened).
    pub mailboxes: usize,
    /// Regular files in the mailboxes' `cur/` and `new/`.
    pub messages: usize,
    /// What Dovecot would get wrong or lose: any one makes the exit status 1.
    pub problems: Vec<Finding>,
    /// What a live store normally has (see the module doc): no effect on the exit status.
    pub notes: Vec<Finding>,
}

impl Verified {
    /// Whether no problem was found (exit status 0).
    pub fn clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// What `verify --json` prints.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "path": self.path,
            "clean": self.clean(),
            "accounts": self.accounts,
            "mailboxes": self.mailboxes,
            "messages": self.messages,
            "problems": self.problems,
            "notes": self.notes,
        }))
        .unwrap_or_default()
    }

    /// What `verify` prints: a line per problem and note, then the counts.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for f in &self.problems {
            s.push_str(&format!("problem: {}: {}\n", f.path, f.what));
        }
        for f in &self.notes {
            s.push_str(&format!("note: {}: {}\n", f.path, f.what));
        }
        s.push_str(&format!(
            "{}: {} accounts, {} mailboxes, {} messages: {} problems, {} notes\n",
            self.path,
            self.accounts,
            self.mailboxes,
            self.messages,
            self.problems.len(),
            self.notes.len()
        ));
        s
    }
}

/// Verifies the tree at `path`.
pub fn verify(path: &Path) -> Result<Verified> {
    let root = sys::open_admin_dir(path).map_err(|e| Error::io("cannot open", path, e))?;
    let found = crate::maildir::discover(root.as_fd(), path, false, &Selection::default())?;
    let mut v = Verified {
        path: escape_path(path),
        accounts: found.accounts.len(),
        ..Verified::default()
    };
    for rel in &found.unreadable {
        v.problems.push(Finding {
            path: show(rel),
            what: "cannot read this directory; not searched for mailboxes".to_owned(),
        });
    }
    if found.accounts.is_empty() {
        v.problems.push(Finding {
            path: ".".to_owned(),
            what: "no Maildir here (no directory with cur/ and new/)".to_owned(),
        });
    }
    for rel in found.accounts.iter().flat_map(|a| &a.mailboxes) {
        v.mailboxes += 1;
        let mut m = MailboxCheck { rel, out: &mut v };
        match sys::open_beneath(
            root.as_fd(),
            rel.as_os_str(),
            sys::OFlag::O_RDONLY | sys::OFlag::O_DIRECTORY,
        ) {
            Ok(fd) => m.check(fd.as_fd()),
            Err(e) => m.problem(rel.clone(), format!("cannot open: {e}")),
        }
    }
    Ok(v)
}

struct MailboxCheck<'a> {
    rel: &'a Path,
    out: &'a mut Verified,
}

impl MailboxCheck<'_> {
    fn problem(&mut self, at: PathBuf, what: String) {
        self.out.problems.push(Finding {
            path: show(&at),
            what,
        });
    }

    fn note(&mut self, at: PathBuf, what: String) {
        self.out.notes.push(Finding {
            path: show(&at),
            what,
        });
    }

    fn check(&mut self, dir: BorrowedFd<'_>) {
        let rel = self.rel.to_path_buf();
        match sys::read_dir(dir) {
            Ok(entries) => {
                for e in entries {
                    let name = e.name.as_slice();
                    let control = names::is_control_file(name) || names::is_index_file(name);
                    if !control && names::is_hidden(name, Place::MailboxDir, false) {
                        self.problem(
                            rel.join(OsStr::from_bytes(name)),
                            "lock or temp file".to_owned(),
                        );
                    }
                }
            }
            Err(e) => self.problem(rel.clone(), format!("cannot list: {e}")),
        }
        let mut files: HashMap<Vec<u8>, (bool, Vec<u8>)> = HashMap::new();
        for (sub, in_cur) in [(names::NEW, false), (names::CUR, true)] {
            let Some(d) = self.open_sub(dir, sub) else {
                continue;
            };
            self.check_messages(d.as_fd(), sub, in_cur, &mut files);
        }
        if let Some(tmp) = self.open_sub(dir, names::TMP) {
            match sys::read_dir(tmp.as_fd()) {
                Ok(e) if !e.is_empty() => self.problem(
                    rel.join("tmp"),
                    format!(
                        "{} files in tmp/ (deliveries in progress or left by a crash)",
                        e.len()
                    ),
                ),
                Ok(_) => {}
                Err(e) => self.problem(rel.join("tmp"), format!("cannot list: {e}")),
            }
        }
        self.check_uidlist(dir, &files);
    }

    fn open_sub(&mut self, dir: BorrowedFd<'_>, sub: &[u8]) -> Option<OwnedFd> {
        let at = self.rel.join(OsStr::from_bytes(sub));
        match sys::open_dir_at(dir, OsStr::from_bytes(sub)) {
            Ok(fd) => Some(fd),
            Err(e) if sys::errno(&e) == Some(sys::Errno::ENOENT) => {
                self.problem(at, "missing".to_owned());
                None
            }
            Err(e) => {
                self.problem(at, format!("cannot open: {e}"));
                None
            }
        }
    }

    /// Checks one `new/` or `cur/`; records each message's base name in `files` (with whether
    /// it is in `cur/` and its name).
    fn check_messages(
        &mut self,
        dir: BorrowedFd<'_>,
        sub: &[u8],
        in_cur: bool,
        files: &mut HashMap<Vec<u8>, (bool, Vec<u8>)>,
    ) {
        let at = self.rel.join(OsStr::from_bytes(sub));
        let entries = match sys::read_dir(dir) {
            Ok(e) => e,
            Err(e) => return self.problem(at, format!("cannot list: {e}")),
        };
        for e in entries {
            let name = e.name;
            let path = at.join(OsStr::from_bytes(&name));
            if names::is_hidden(&name, Place::MessageDir, false) {
                self.problem(path, "temp file (dotfile) among the messages".to_owned());
                continue;
            }
            let st = match sys::lstat_at(dir, OsStr::from_bytes(&name)) {
                Ok(st) => st,
                Err(e) => {
                    self.problem(path, format!("cannot stat: {e}"));
                    continue;
                }
            };
            if sys::FileKind::of_mode(st.st_mode) != sys::FileKind::Regular {
                if sys::FileKind::of_mode(st.st_mode) != sys::FileKind::Symlink {
                    self.problem(path, "not a regular file".to_owned());
                }
                continue;
            }
            self.out.messages += 1;
            let parsed = filename::parse(&name);
            if let Some(want) = parsed.size {
                if want != st.st_size as u64 {
                    self.problem(
                        path.clone(),
                        format!("{} bytes, but its name says S={want}", st.st_size),
                    );
                }
            }
            let base = parsed.base.to_vec();
            if let Some((_, other)) = files.insert(base, (in_cur, name.clone())) {
                self.problem(
                    path,
                    format!("base name also used by {}", escape_bytes(&other)),
                );
            }
        }
    }

    fn check_uidlist(&mut self, dir: BorrowedFd<'_>, files: &HashMap<Vec<u8>, (bool, Vec<u8>)>) {
        let at = self.rel.join(OsStr::from_bytes(names::UIDLIST));
        let bytes = match read_file(dir, names::UIDLIST) {
            Ok(Some(b)) => b,
            Ok(None) => {
                if !files.is_empty() {
                    self.note(at, "no dovecot-uidlist (Dovecot has not opened this mailbox; it will number the messages)".to_owned());
                }
                return;
            }
            Err(e) => return self.problem(at, format!("cannot read: {e}")),
        };
        let list = match parse_uidlist(&bytes) {
            Ok(l) => l,
            Err(e) => return self.problem(at, format!("does not parse: {e}")),
        };
        let known: HashSet<&[u8]> = list
            .records
            .iter()
            .map(|r| base_name(&r.filename))
            .collect();
        let missing: Vec<&[u8]> = list
            .records
            .iter()
            .map(|r| base_name(&r.filename))
            .filter(|b| !files.contains_key(*b))
            .collect();
        if !missing.is_empty() {
            self.note(
                at.clone(),
                format!(
                    "{} entries without a file (expunged; Dovecot drops them lazily), e.g. {}",
                    missing.len(),
                    examples(&missing)
                ),
            );
        }
        let mut unknown_cur: Vec<&[u8]> = Vec::new();
        let mut unknown_new: Vec<&[u8]> = Vec::new();
        for (base, (in_cur, name)) in files {
            if !known.contains(base.as_slice()) {
                if *in_cur {
                    unknown_cur.push(name);
                } else {
                    unknown_new.push(name);
                }
            }
        }
        unknown_cur.sort();
        unknown_new.sort();
        if !unknown_cur.is_empty() {
            self.problem(
                at.clone(),
                format!(
                    "{} messages in cur/ have no entry: Dovecot will give them new UIDs and clients download them again, e.g. {}",
                    unknown_cur.len(),
                    examples(&unknown_cur)
                ),
            );
        }
        if !unknown_new.is_empty() {
            self.note(
                at,
                format!(
                    "{} messages in new/ not numbered yet (delivered since Dovecot last looked), e.g. {}",
                    unknown_new.len(),
                    examples(&unknown_new)
                ),
            );
        }
    }
}

fn examples(names: &[&[u8]]) -> String {
    let mut s: Vec<String> = names
        .iter()
        .take(EXAMPLES)
        .map(|n| escape_bytes(n))
        .collect();
    if names.len() > EXAMPLES {
        s.push("...".to_owned());
    }
    s.join(", ")
}

fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        ".".to_owned()
    } else {
        escape_path(rel)
    }
}

/// Reads a regular file of `dir` whole; `None` if there is none. `O_NONBLOCK` and the type
/// check keep a FIFO in its place from blocking the check.
fn read_file(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
    let (fd, st) = match sys::open_untrusted(dir, OsStr::from_bytes(name)) {
        Ok(opened) => opened,
        Err(e) if sys::errno(&e) == Some(sys::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    if sys::FileKind::of_mode(st.st_mode) != sys::FileKind::Regular {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::fs::File::from(fd), &mut bytes)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn mkbox(p: &Path) {
        for d in ["cur", "new", "tmp"] {
            fs::create_dir_all(p.join(d)).unwrap();
        }
    }

    #[test]
    fn a_clean_tree_is_clean() {
        let t = crate::testutil::TempDir::new("verify-clean");
        let m = t.path().join("a/Maildir");
        mkbox(&m);
        fs::write(m.join("cur/1.x,S=3:2,S"), "abc").unwrap();
        fs::write(m.join("new/2.y"), "z").unwrap();
        fs::write(m.join("dovecot-uidlist"), "3 V1 N3\n1 :1.x,S=3\n").unwrap();
        let v = verify(t.path()).unwrap();
        assert!(v.clean(), "{}", v.to_text());
        assert_eq!((v.accounts, v.mailboxes, v.messages), (1, 1, 2));
        // The new message is not numbered yet: a note.
        assert_eq!(v.notes.len(), 1, "{}", v.to_text());
    }

    #[test]
    fn a_fifo_in_the_uidlists_place_is_a_problem_not_a_hang() {
        let t = crate::testutil::TempDir::new("verify-fifo");
        let m = t.path().join("Maildir");
        mkbox(&m);
        let made = std::process::Command::new("mkfifo")
            .arg(m.join("dovecot-uidlist"))
            .status()
            .unwrap();
        assert!(made.success());
        let text = verify(t.path()).unwrap().to_text();
        assert!(text.contains("not a regular file"), "{text}");
    }

    #[test]
    fn finds_each_kind_of_problem() {
        let t = crate::testutil::TempDir::new("verify-bad");
        let m = t.path().join("Maildir");
        mkbox(&m);
        fs::remove_dir(m.join("tmp")).unwrap();
        fs::write(m.join("cur/1.x,S=5:2,S"), "abc").unwrap(); // wrong size
        fs::write(m.join("cur/2.y:2,S"), "b").unwrap();
        fs::write(m.join("new/2.y"), "b").unwrap(); // base twice
        fs::write(m.join("cur/3.z:2,"), "c").unwrap(); // not in the uidlist
        fs::write(m.join("dovecot-uidlist.lock"), "1:host").unwrap();
        fs::write(
            m.join("dovecot-uidlist"),
            "3 V1 N9\n1 :1.x,S=5\n2 :2.y\n8 :gone\n",
        )
        .unwrap();
        let v = verify(t.path()).unwrap();
        let text = v.to_text();
        assert!(!v.clean());
        for want in [
            "Maildir/tmp: missing",
            "but its name says S=5",
            "base name also used by",
            "1 messages in cur/ have no entry",
            "dovecot-uidlist.lock: lock or temp file",
        ] {
            assert!(text.contains(want), "{want:?} not in {text}");
        }
        assert!(text.contains("note: Maildir/dovecot-uidlist: 1 entries without a file"));
        let bad = t.path().join("Bad");
        mkbox(&bad);
        fs::write(bad.join("dovecot-uidlist"), "3 V1 N9\n5 :a\n2 :b\n").unwrap();
        let v = verify(t.path()).unwrap();
        assert!(
            v.to_text().contains("does not parse: UID not above"),
            "{}",
            v.to_text()
        );
    }
}
