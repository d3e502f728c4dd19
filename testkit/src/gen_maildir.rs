//! Generates a synthetic Dovecot-style Maildir tree for tests and benchmarks:
//! `<out>/<domain>/<user>/Maildir` per account, an INBOX plus Maildir++ folders, messages in
//! `new/` and `cur/` (with flags), a `dovecot-uidlist` naming them, and Message-ID headers so
//! a copy can be checked message by message. Deterministic for given arguments.
//!
//! `examples/gen_maildir.rs` runs it from the command line ([`parse_args`]); the benchmarks and
//! `tests/load.rs` call [`generate`].

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

const FOLDERS: &[&str] = &[
    "",
    ".Sent",
    ".Drafts",
    ".Trash",
    ".Archive",
    ".Lists.rust",
    ".Lists.debian",
    ".Junk",
    ".Work",
];

pub struct Args {
    pub messages: usize,
    pub accounts: usize,
    pub avg_size: usize,
    /// Mailboxes per account (INBOX and `folders - 1` folders); 0: from 3 to 9, varying.
    pub folders: usize,
    pub out: PathBuf,
}

const USAGE: &str =
    "usage: gen_maildir [--messages N] [--accounts A] [--avg-size BYTES] [--folders F] OUT";

/// The arguments of the command line (`gen_maildir`'s usage), or the message to print.
pub fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        messages: 1000,
        accounts: 4,
        avg_size: 6400,
        folders: 0,
        out: PathBuf::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--messages" => a.messages = num("--messages")?,
            "--accounts" => a.accounts = num("--accounts")?.max(1),
            "--avg-size" => a.avg_size = num("--avg-size")?.max(200),
            "--folders" => a.folders = num("--folders")?.clamp(1, FOLDERS.len()),
            "-h" | "--help" => return Err(USAGE.into()),
            _ if a.out.as_os_str().is_empty() => a.out = PathBuf::from(arg),
            _ => return Err(format!("unexpected argument {arg}")),
        }
    }
    if a.out.as_os_str().is_empty() {
        return Err(USAGE.into());
    }
    Ok(a)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub fn generate(a: &Args) -> std::io::Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let per_account = a.messages.div_ceil(a.accounts);
    let mut left = a.messages;
    for acc in 0..a.accounts {
        let domain = format!("example{}.org", acc % 4);
        let user = format!("user{acc:04}");
        let root = a.out.join(&domain).join(&user).join("Maildir");
        let n = per_account.min(left);
        left -= n;
        let count = match a.folders {
            0 => (3 + acc % (FOLDERS.len() - 2)).min(FOLDERS.len()),
            n => n,
        };
        let folders = &FOLDERS[..count];
        let mut boxes: Vec<(PathBuf, Vec<String>)> = Vec::new();
        for f in folders {
            let dir = if f.is_empty() {
                root.clone()
            } else {
                root.join(f)
            };
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(dir.join(sub))?;
            }
            if !f.is_empty() {
                std::fs::write(dir.join("maildirfolder"), b"")?;
            }
            boxes.push((dir, Vec::new()));
        }
        for i in 0..n {
            // INBOX gets half the mail; the rest spreads over the folders.
            let b = if rng.below(2) == 0 {
                0
            } else {
                rng.below(boxes.len() as u64) as usize
            };
            let size = a.avg_size / 2 + rng.below(a.avg_size as u64) as usize;
            let t = 1_700_000_000 + (acc * per_account + i) as u64;
            let unique = format!("{t}.M{}P{acc}.gen", rng.below(1_000_000));
            let body = message(&mut rng, &user, &domain, &unique, size);
            let base = format!("{unique},S={}", body.len());
            let (dir, names) = &mut boxes[b];
            let name = match rng.below(3) {
                0 => format!("new/{base}"),
                1 => format!("cur/{base}:2,S"),
                _ => format!("cur/{base}:2,RS"),
            };
            write_file(&dir.join(&name), &body, t)?;
            names.push(base);
        }
        for (dir, names) in &boxes {
            let mut list = format!("3 V1700000000 N{} G{:032x}\n", names.len() + 1, rng.next());
            for (uid, base) in names.iter().enumerate() {
                let _ = writeln!(list, "{} :{base}", uid + 1);
            }
            std::fs::write(dir.join("dovecot-uidlist"), list)?;
        }
        std::fs::write(root.join("subscriptions"), b"Sent\nDrafts\nTrash\n")?;
    }
    eprintln!(
        "generated {} messages in {} accounts under {}",
        a.messages,
        a.accounts,
        a.out.display()
    );
    Ok(())
}

fn message(rng: &mut Rng, user: &str, domain: &str, base: &str, size: usize) -> Vec<u8> {
    let mut m = format!(
        "Return-Path: <sender@example.net>\nFrom: sender@example.net\nTo: {user}@{domain}\n\
         Subject: message {base}\nMessage-ID: <{base}@gen>\n\n"
    )
    .into_bytes();
    while m.len() < size {
        let w = rng.next();
        for k in 0..8 {
            m.push(b'a' + ((w >> (k * 8)) % 26) as u8);
        }
        if rng.below(10) == 0 {
            m.push(b'\n');
        }
    }
    m.truncate(size.saturating_sub(1));
    m.push(b'\n');
    m
}

fn write_file(path: &Path, bytes: &[u8], mtime: u64) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime))
}
