//! The working-set benchmark: a store larger than the fd limit, or one of many small accounts,
//! mounted with accounts captured on demand. It measures, in one run: how long `mount` takes
//! (medians of several runs, with min and max), a full `tar` of the view while Dovecot-style
//! moves run in the live tree (files tar could not read, the server's peak RSS and most open
//! fds), a plain walk of the view (`find`), and every capture's lock hold per 1,000 messages.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example bench_scale -- --messages 1000000 --accounts 400 \
//!     --avg-size 3400 [--folders F] [--runs R] [--moves N] [--tree DIR] [--write FILE]
//! ```
//!
//! `--tree DIR` keeps the generated tree there (made if missing) for the next run. Needs root
//! (to mount) and GNU tar. A benchmark, not a test: nothing here asserts a time.

// The tests' helpers (where a mount's server is) and the tree generator.
use maildirfs_testkit as common;
use maildirfs_testkit::gen_maildir;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Opts {
    messages: usize,
    accounts: usize,
    avg_size: usize,
    folders: usize,
    runs: usize,
    moves: usize,
    tree: Option<PathBuf>,
    write: Option<PathBuf>,
}

const USAGE: &str = "usage: bench_scale [--messages N] [--accounts A] [--avg-size BYTES] \
                     [--folders F] [--runs R] [--moves N] [--tree DIR] [--write FILE]";

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        messages: 1_000_000,
        accounts: 400,
        avg_size: 3400,
        folders: 0,
        runs: 3,
        moves: 2000,
        tree: None,
        write: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        let num = |v: String| v.parse::<usize>().map_err(|_| format!("bad {a}"));
        match a.as_str() {
            "--messages" => o.messages = num(val()?)?,
            "--accounts" => o.accounts = num(val()?)?.max(1),
            "--avg-size" => o.avg_size = num(val()?)?.max(200),
            "--folders" => o.folders = num(val()?)?,
            "--runs" => o.runs = num(val()?)?.max(1),
            "--moves" => o.moves = num(val()?)?,
            "--tree" => o.tree = Some(PathBuf::from(val()?)),
            "--write" => o.write = Some(PathBuf::from(val()?)),
            _ => return Err(USAGE.into()),
        }
    }
    Ok(o)
}

/// min, median, max.
#[derive(Clone, Copy, Default)]
struct Stat {
    min: f64,
    med: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(f64::total_cmp);
    Stat {
        min: v[0],
        med: v[v.len() / 2],
        max: v[v.len() - 1],
    }
}

impl std::fmt::Display for Stat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} [{:.3}–{:.3}]", self.med, self.min, self.max)
    }
}

fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("maildirfs"))
        .expect("target dir")
}

/// A mounted view, unmounted on drop.
struct View {
    mnt: PathBuf,
    summary: String,
    took: Duration,
}

impl View {
    fn mount(src: &Path, mnt: &Path, log: &Path) -> View {
        let t = Instant::now();
        let out = Command::new(bin())
            .arg("mount")
            .args(["-v", "--log-file"])
            .arg(log)
            .arg(src)
            .arg(mnt)
            .stdin(Stdio::null())
            .output()
            .expect("run maildirfs");
        let took = t.elapsed();
        let summary = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        assert!(out.status.success(), "mount failed: {summary}");
        View {
            mnt: mnt.to_path_buf(),
            summary,
            took,
        }
    }

    fn umount(self) -> String {
        let out = Command::new(bin())
            .arg("umount")
            .arg(&self.mnt)
            .output()
            .expect("run maildirfs umount");
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let _ = Command::new(bin()).arg("umount").arg(&self.mnt).output();
    }
}

/// What a sampler saw of the server while it ran.
#[derive(Default)]
struct Peak {
    fds: AtomicU64,
}

fn sample(pid: i32, peak: Arc<Peak>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                peak.fds.fetch_max(d.count() as u64, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn status_kib(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn fd_limit(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Every account's mailboxes in SOURCE: `<domain>/<user>/Maildir` and its `.Folder`s.
fn accounts(src: &Path) -> Vec<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut domains: Vec<_> = std::fs::read_dir(src).unwrap().flatten().collect();
    domains.sort_by_key(|e| e.file_name());
    for d in domains {
        let mut users: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        users.sort_by_key(|e| e.file_name());
        for u in users {
            let root = u.path().join("Maildir");
            let mut boxes = vec![root.clone()];
            for e in std::fs::read_dir(&root).unwrap().flatten() {
                if e.file_name().to_string_lossy().starts_with('.') && e.path().is_dir() {
                    boxes.push(e.path());
                }
            }
            out.push(boxes);
        }
    }
    out
}

/// Dovecot-style moves (a hard link into another folder's `cur/` under the same name, then
/// unlink), `n` of them spread over the accounts, one every `gap`, until `stop`.
fn mover(
    src: PathBuf,
    n: usize,
    gap: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let accts: Vec<Vec<PathBuf>> = accounts(&src).into_iter().filter(|b| b.len() > 1).collect();
        let mut done = 0;
        let mut k = 0usize;
        while done < n && !stop.load(Ordering::Relaxed) && !accts.is_empty() {
            let boxes = &accts[k % accts.len()];
            let from = &boxes[k % boxes.len()];
            let to = &boxes[(k + 1) % boxes.len()];
            k += 1;
            let Some(name) = std::fs::read_dir(from.join("cur"))
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok())
                .map(|e| e.file_name())
            else {
                continue;
            };
            let old = from.join("cur").join(&name);
            if std::fs::hard_link(&old, to.join("cur").join(&name)).is_ok()
                && std::fs::remove_file(&old).is_ok()
            {
                done += 1;
            }
            std::thread::sleep(gap);
        }
        done
    })
}

/// `tar -cf - .` of `dir` into a byte counter: how long it took, the bytes, and its stderr.
fn tar(dir: &Path) -> (Duration, u64, String) {
    let t = Instant::now();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "."])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tar");
    let mut out = tar.stdout.take().expect("tar stdout");
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        while let Ok(k) = out.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let mut err = String::new();
    tar.stderr
        .take()
        .expect("tar stderr")
        .read_to_string(&mut err)
        .ok();
    let _ = tar.wait();
    let took = t.elapsed();
    (took, counter.join().unwrap_or(0), err)
}

/// The lock hold of every capture in the log, as (µs, messages).
fn holds(log: &str) -> Vec<(u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("): ").nth(1)?;
            let messages = rest.split(" messages").next()?.parse().ok()?;
            let us = l
                .split("lock hold ")
                .nth(1)?
                .split(" us")
                .next()?
                .parse()
                .ok()?;
            Some((us, messages))
        })
        .collect()
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let work = std::env::temp_dir().join(format!("maildirfs-scale-{}", std::process::id()));
    std::fs::create_dir_all(work.join("mnt")).expect("mkdir");
    let mnt = work.join("mnt");
    let src = o.tree.clone().unwrap_or_else(|| work.join("src"));
    if !src.exists() {
        eprintln!(
            "bench_scale: generating {} messages in {} accounts",
            o.messages, o.accounts
        );
        gen_maildir::generate(&gen_maildir::Args {
            messages: o.messages,
            accounts: o.accounts,
            avg_size: o.avg_size,
            folders: o.folders,
            out: src.clone(),
        })
        .expect("generate tree");
    }
    // Dentries warm: a walk of the source first.
    let _ = Command::new("find")
        .arg(&src)
        .stdout(Stdio::null())
        .status();
    let log = work.join("log");
    let mut rows: Vec<(String, String)> = Vec::new();

    // Mount time.
    let mut took = Vec::new();
    let mut summary = String::new();
    for _ in 0..o.runs {
        let v = View::mount(&src, &mnt, &log);
        took.push(v.took.as_secs_f64());
        summary = v.summary.clone();
        v.umount();
    }
    rows.push(("`mount` returns (s)".into(), stat(took).to_string()));

    // A full tar of the view while moves run in the live tree.
    let _ = std::fs::remove_file(&log);
    let v = View::mount(&src, &mnt, &log);
    let pid = common::server_pid(&mnt).expect("server pid");
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(Peak::default());
    let sampler = sample(pid, Arc::clone(&peak), Arc::clone(&stop));
    let moves = mover(
        src.clone(),
        o.moves,
        Duration::from_millis(2),
        Arc::clone(&stop),
    );
    let (tar_time, archived, err) = tar(&mnt);
    stop.store(true, Ordering::Relaxed);
    let moved = moves.join().unwrap_or(0);
    let _ = sampler.join();
    let hwm = status_kib(pid, "VmHWM:");
    let limit = fd_limit(pid);
    let missing = err
        .lines()
        .filter(|l| l.contains("No such file") || l.contains("Cannot") || l.contains("removed"))
        .count();
    let status = Command::new(bin())
        .args(["status"])
        .arg(&mnt)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let closing = v.umount();
    rows.push((
        "full `tar` of the view (moves running)".into(),
        format!(
            "{:.1} s, {:.0} MiB archived",
            tar_time.as_secs_f64(),
            archived as f64 / 1048576.0
        ),
    ));
    let (direct, direct_bytes, _) = tar(&src);
    rows.push((
        "the same `tar` directly on the source, no moves".into(),
        format!(
            "{:.1} s, {:.0} MiB archived (view / direct: {:.2})",
            direct.as_secs_f64(),
            direct_bytes as f64 / 1048576.0,
            tar_time.as_secs_f64() / direct.as_secs_f64()
        ),
    ));
    rows.push((
        "moves in the live tree during the tar (Dovecot-style)".into(),
        moved.to_string(),
    ));
    rows.push((
        "files tar could not read (missing)".into(),
        missing.to_string(),
    ));
    rows.push((
        "server peak RSS (VmHWM, whole mount)".into(),
        format!("{:.1} MiB", hwm as f64 / 1024.0),
    ));
    rows.push((
        "server's most open fds (sampled every 20 ms) / fd limit".into(),
        format!("{} / {limit}", peak.fds.load(Ordering::Relaxed)),
    ));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let h = holds(&logged);
    let per_1000: Vec<f64> = h
        .iter()
        .filter(|(_, m)| *m >= 100)
        .map(|(us, m)| *us as f64 / 1000.0 / (*m as f64 / 1000.0))
        .collect();
    if !per_1000.is_empty() {
        rows.push((
            format!(
                "lock hold per 1,000 messages, {} captures during the tar (ms, median [min–max])",
                per_1000.len()
            ),
            stat(per_1000).to_string(),
        ));
    }

    // A plain walk of the view.
    let _ = std::fs::remove_file(&log);
    let v = View::mount(&src, &mnt, &log);
    let pid = common::server_pid(&mnt).expect("server pid");
    let t = Instant::now();
    let found = Command::new("find")
        .arg(&mnt)
        .args(["-type", "f"])
        .output()
        .map(|o| o.stdout.iter().filter(|&&b| b == b'\n').count())
        .unwrap_or(0);
    let walk = t.elapsed();
    let walk_hwm = status_kib(pid, "VmHWM:");
    drop(v);
    rows.push((
        "`find -type f` over the view".into(),
        format!("{:.1} s, {found} files", walk.as_secs_f64()),
    ));
    rows.push((
        "server peak RSS after the walk".into(),
        format!("{:.1} MiB", walk_hwm as f64 / 1024.0),
    ));

    let mut text = format!(
        "bench_scale: {} messages in {} accounts (avg {} B{}), {} runs\n\n| measure | result |\n|---|---|\n",
        o.messages,
        o.accounts,
        o.avg_size,
        if o.folders > 0 {
            format!(", {} mailboxes each", o.folders)
        } else {
            String::new()
        },
        o.runs
    );
    for (k, v) in &rows {
        text.push_str(&format!("| {k} | {v} |\n"));
    }
    text.push_str(&format!(
        "\nmount summary: {summary}\n\nstatus after the tar:\n{status}\numount: {closing}\n"
    ));
    print!("{text}");
    if let Some(w) = &o.write {
        std::fs::write(w, &text).expect("write");
    }
    if o.tree.is_none() {
        let _ = std::fs::remove_dir_all(&src);
    }
    let _ = std::fs::remove_dir_all(&work);
}
