//! The maildirfs benchmark: builds a synthetic tree with the generator `gen_maildir`, then
//! measures, in the same run and side by side, the same work done directly on SOURCE and
//! through a maildirfs view, and prints one table (medians of several runs, with min and max).
//!
//! ```text
//! cargo build --release
//! cargo run --release --example bench -- [--messages N] [--accounts A] [--runs R] [--write FILE]
//!     [--only capture,holds,reads,cold,rsync,incremental,big]
//! ```
//!
//! Needs root (to mount, and to drop caches for the cold-cache row) and rsync. A benchmark is
//! not a test: nothing here asserts a time; `tests/bench_smoke.rs` only runs it on a tiny tree.

// The tests' helpers (where a mount's server is), the tree generator and the lock watcher.
use maildirfs_testkit as common;
use maildirfs_testkit::{gen_maildir, lock_watch};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    messages: usize,
    accounts: usize,
    runs: usize,
    big_mib: usize,
    write: Option<PathBuf>,
    passthrough: bool,
    /// The sections to run (`--only`), all when empty.
    only: Vec<String>,
}

/// The sections of the benchmark, in the order they run, for `--only`.
const SECTIONS: &[&str] = &[
    "capture",
    "holds",
    "reads",
    "cold",
    "rsync",
    "incremental",
    "big",
];

impl Opts {
    fn runs_section(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == name)
    }
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        messages: 100_000,
        accounts: 40,
        runs: 3,
        big_mib: 256,
        write: None,
        passthrough: false,
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--messages" => o.messages = val()?.parse().map_err(|_| "bad --messages")?,
            "--accounts" => o.accounts = val()?.parse().map_err(|_| "bad --accounts")?,
            "--runs" => o.runs = val()?.parse::<usize>().map_err(|_| "bad --runs")?.max(1),
            "--big-mib" => o.big_mib = val()?.parse().map_err(|_| "bad --big-mib")?,
            "--write" => o.write = Some(PathBuf::from(val()?)),
            "--passthrough" => o.passthrough = true,
            "--only" => {
                for s in val()?.split(',') {
                    if !SECTIONS.contains(&s) {
                        return Err(format!("bad --only {s}: one of {}", SECTIONS.join(",")));
                    }
                    o.only.push(s.to_owned());
                }
            }
            _ => {
                return Err("usage: bench [--messages N] [--accounts A] [--runs R] \
                            [--big-mib M] [--passthrough] [--only SECTION,...] [--write FILE]"
                    .into());
            }
        }
    }
    Ok(o)
}

/// The maildirfs binary built beside this example (`target/<profile>/maildirfs`).
fn maildirfs_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("maildirfs"))
        .expect("target dir")
}

/// The work directory; unmounts and removes everything on drop.
struct Work {
    dir: PathBuf,
    bin: PathBuf,
    /// Extra mount options (`--passthrough`).
    extra: Vec<&'static str>,
}

impl Work {
    fn mnt(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    fn mount(&self, src: &Path) -> (Duration, String) {
        self.mount_with(src, &[])
    }

    fn mount_with(&self, src: &Path, args: &[&str]) -> (Duration, String) {
        let t = Instant::now();
        let out = Command::new(&self.bin)
            .arg("mount")
            .args(&self.extra)
            .args(args)
            .arg(src)
            .arg(self.mnt())
            .stdin(Stdio::null())
            .output()
            .expect("run maildirfs");
        let took = t.elapsed();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "mount failed: {err}");
        (took, err)
    }

    fn umount(&self) {
        let out = Command::new(&self.bin)
            .arg("umount")
            .arg(self.mnt())
            .output()
            .expect("run maildirfs umount");
        assert!(
            out.status.success(),
            "umount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .arg("umount")
            .arg(self.mnt())
            .output();
        let _ = Command::new("umount").arg("-l").arg(self.mnt()).output();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(format!("/dev/shm/maildirfs-bench-{}", std::process::id()));
    }
}

/// min, median, max of a set of durations, in seconds.
#[derive(Clone, Copy)]
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

fn time<F: FnMut()>(runs: usize, mut f: F) -> Stat {
    stat(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Every path under `root`, with lstat: the "direct" capture baseline and the file lists.
fn walk(root: &Path, files: &mut Vec<PathBuf>, entries: &mut usize) {
    for e in std::fs::read_dir(root).expect("read_dir").flatten() {
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).expect("lstat");
        *entries += 1;
        if m.is_dir() {
            walk(&p, files, entries);
        } else if m.is_file() {
            files.push(p);
        }
    }
}

/// Times `a` and `b` alternately, `runs` times each.
fn time_pair(runs: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Stat, Stat) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        a();
        ta.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        b();
        tb.push(t.elapsed().as_secs_f64());
    }
    (stat(ta), stat(tb))
}

fn list(root: &Path) -> (Vec<PathBuf>, usize) {
    let (mut files, mut n) = (Vec::new(), 0);
    walk(root, &mut files, &mut n);
    (files, n)
}

fn read_all(files: &[PathBuf], threads: usize) -> u64 {
    let chunk = files.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let hs: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut buf = vec![0u8; 1 << 20];
                    let mut total = 0u64;
                    for f in part {
                        let mut file = std::fs::File::open(f).expect("open");
                        loop {
                            let n = file.read(&mut buf).expect("read");
                            if n == 0 {
                                break;
                            }
                            total += n as u64;
                        }
                    }
                    total
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("reader")).sum()
    })
}

/// A directory on tmpfs for the rsync copies, removed with the work directory's guard.
fn shm_dir() -> Option<PathBuf> {
    let d = PathBuf::from(format!("/dev/shm/maildirfs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).ok()?;
    Some(d)
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn rsync(from: &Path, to: &Path) {
    let out = common::rsync_a(from, to);
    assert!(
        out.status.success(),
        "rsync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn server_peak_rss_kib(mnt: &Path) -> Option<u64> {
    let pid = common::server_pid(mnt)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

struct Row {
    measure: String,
    direct: String,
    view: String,
    ratio: f64,
    goal: &'static str,
    met: bool,
}

impl Row {
    /// A row for work timed directly (`d`) and through the view (`v`), whose ratio of medians
    /// must be at most `max`.
    fn timed(measure: impl Into<String>, d: Stat, v: Stat, goal: &'static str, max: f64) -> Row {
        let ratio = v.med / d.med;
        Row {
            measure: measure.into(),
            direct: secs(d),
            view: secs(v),
            ratio,
            goal,
            met: ratio <= max,
        }
    }
}

fn secs(s: Stat) -> String {
    format!("{:.3} s [{:.3}–{:.3}]", s.med, s.min, s.max)
}

fn main() {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let bin = maildirfs_bin();
    if !bin.exists() {
        eprintln!(
            "bench: {} not found: run `cargo build --release` first",
            bin.display()
        );
        std::process::exit(1);
    }
    let work = Work {
        dir: std::env::temp_dir().join(format!("maildirfs-bench-{}", std::process::id())),
        bin,
        extra: if o.passthrough {
            vec!["--passthrough"]
        } else {
            Vec::new()
        },
    };
    let _ = std::fs::remove_dir_all(&work.dir);
    std::fs::create_dir_all(work.mnt()).expect("mkdir");
    let src = work.dir.join("src");
    eprintln!(
        "bench: generating {} messages in {} accounts",
        o.messages, o.accounts
    );
    gen_maildir::generate(&gen_maildir::Args {
        messages: o.messages,
        accounts: o.accounts,
        avg_size: 6400,
        folders: 0,
        out: src.clone(),
    })
    .expect("generate tree");
    let mut rows = Vec::new();
    let runs = o.runs;

    if o.runs_section("capture") {
        // Capture: mount until ready, against an in-process readdir+lstat walk.
        list(&src);
        let direct = time(runs, || {
            list(&src);
        });
        let mut mounts = Vec::new();
        for _ in 0..runs {
            let (t, _) = work.mount(&src);
            mounts.push(t.as_secs_f64());
            work.umount();
        }
        let view = stat(mounts);
        rows.push(Row::timed(
            "capture: `maildirfs mount` until ready vs readdir+lstat walk",
            direct,
            view,
            "≤ 2.0",
            2.0,
        ));
    }

    if o.runs_section("holds") {
        // Lock holds as Dovecot sees them (inotify), every account captured at mount.
        let (boxes, accounts) = lock_watch::mailboxes(&src);
        let scratch = work.dir.join("lock-watch");
        std::fs::create_dir_all(&scratch).expect("mkdir");
        let summary_json = work.dir.join("summary.json");
        let summary_arg = summary_json.to_string_lossy().into_owned();
        for cold in [false, true] {
            let (mut outside, mut inside) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                if cold && !drop_caches() {
                    break;
                }
                let watch = lock_watch::LockWatch::start(&boxes, &scratch).expect("inotify");
                work.mount_with(
                    &src,
                    &["--capture", "at-mount", "--summary-json", &summary_arg],
                );
                let holds = watch.stop();
                work.umount();
                if let Some((ms, account)) = lock_watch::worst_per_1000(&holds, &accounts) {
                    eprintln!(
                        "bench: longest hold {ms:.3} ms per 1,000 messages seen from outside ({})",
                        account.strip_prefix(&src).unwrap_or(&account).display()
                    );
                    outside.push(ms);
                }
                let json = std::fs::read_to_string(&summary_json).unwrap_or_default();
                if let Some(ms) = lock_watch::worst_in_summary(&json) {
                    eprintln!("bench: longest hold {ms:.3} ms per 1,000 messages as timed inside");
                    inside.push(ms);
                }
            }
            let when = if cold { "caches dropped" } else { "warm" };
            for (seen, worst) in [
                ("seen from outside (inotify)", outside),
                ("as the server times it", inside),
            ] {
                if worst.is_empty() {
                    continue;
                }
                let hold = stat(worst);
                rows.push(Row {
                    measure: format!(
                        "longest lock hold of any account, per 1,000 messages of that account, \
                         {seen}, whole tree at mount, {when}"
                    ),
                    direct: "–".into(),
                    view: format!("{:.2} ms [{:.2}–{:.2}]", hold.med, hold.min, hold.max),
                    ratio: hold.med,
                    goal: "≤ 1 ms",
                    met: hold.med <= 1.0,
                });
            }
        }
    }

    // The copies go to memory (/dev/shm) where there is room: on disk, writing them back
    // dominates and varies fivefold from run to run, which hides what is measured here.
    let dest = shm_dir().unwrap_or_else(|| work.dir.clone());
    let d1 = dest.join("rsync-direct");
    let d2 = dest.join("rsync-view");
    let mut summary = String::new();
    let mut rss_row = None;
    if ["reads", "cold", "rsync"].iter().any(|s| o.runs_section(s)) {
        // Reads through one mount.
        let (_, mounted) = work.mount(&src);
        summary = mounted;
        eprintln!("bench: {}", summary.trim());
        let mnt = work.mnt();
        let (src_files, _) = list(&src);
        let (view_files, view_entries) = list(&mnt);
        assert_eq!(src_files.len(), view_files.len(), "the view lacks files");

        if o.runs_section("reads") {
            for threads in [1, 4] {
                read_all(&src_files, threads);
                read_all(&view_files, threads);
                let (d, v) = time_pair(
                    runs,
                    || {
                        read_all(&src_files, threads);
                    },
                    || {
                        read_all(&view_files, threads);
                    },
                );
                rows.push(Row::timed(
                    format!("read every file once, warm cache, {threads} thread(s)"),
                    d,
                    v,
                    "≤ 1.5",
                    1.5,
                ));
            }
        }
        if o.runs_section("cold") {
            // Cold: as a backup runs, listing each directory and reading its files, after dropping
            // every cache (the view's pages, dentries and attributes too).
            if drop_caches() {
                let cold = |root: &Path| {
                    drop_caches();
                    let (files, _) = list(root);
                    read_all(&files, 1);
                };
                let (d, v) = time_pair(runs, || cold(&src), || cold(&mnt));
                rows.push(Row::timed(
                    "list and read every file once, cold cache (caches dropped), 1 thread",
                    d,
                    v,
                    "≤ 1.1",
                    1.1,
                ));
            } else {
                rows.push(Row {
                    measure: "read every file once, cold cache: NOT MEASURED (cannot drop caches)"
                        .into(),
                    direct: "–".into(),
                    view: "–".into(),
                    ratio: f64::NAN,
                    goal: "≤ 1.1",
                    met: false,
                });
            }
        }
        let rss = server_peak_rss_kib(&mnt).unwrap_or(0);
        rss_row = Some((rss, view_entries));
        if o.runs_section("rsync") {
            // Start each run with nothing dirty so runs compare.
            let fresh = |d: &Path| {
                let _ = std::fs::remove_dir_all(d);
                let _ = Command::new("sync").status();
            };
            let (d, v) = time_pair(
                runs,
                || {
                    fresh(&d1);
                    rsync(&src, &d1);
                },
                || {
                    fresh(&d2);
                    rsync(&mnt, &d2);
                },
            );
            rows.push(Row::timed(
                "`rsync -a` to an empty directory (on tmpfs)",
                d,
                v,
                "≤ 1.1",
                1.1,
            ));
        }
        work.umount();
    }

    if o.runs_section("incremental") {
        // From full copies (made by the rsync rows, or here), as a nightly run finds them.
        rsync(&src, &d1);
        rsync(&src, &d2);
        // Incremental: a nightly backup of an unchanged store.
        let d = time(runs, || rsync(&src, &d1));
        let v = time(runs, || {
            work.mount(&src);
            rsync(&work.mnt(), &d2);
            work.umount();
        });
        rows.push(Row::timed(
            "incremental: mount + no-op `rsync -a` + umount vs no-op `rsync -a`",
            d,
            v,
            "≤ 3.0",
            3.0,
        ));
        let _ = std::fs::remove_dir_all(&d1);
        let _ = std::fs::remove_dir_all(&d2);
    }

    if o.runs_section("big") {
        // Sequential read of one big file.
        let big_src = work.dir.join("big");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(big_src.join("Maildir").join(sub)).expect("mkdir");
        }
        let big = big_src.join("Maildir/cur/1.big:2,S");
        {
            let mut f = std::fs::File::create(&big).expect("create big");
            let block = vec![0x5au8; 1 << 20];
            for _ in 0..o.big_mib {
                std::io::Write::write_all(&mut f, &block).expect("write big");
            }
        }
        work.mount(&big_src);
        let big_view = work.mnt().join("Maildir/cur/1.big:2,S");
        // Each run reads the file 4 times; direct and view runs alternate so that both see the
        // same machine.
        let one = |p: &Path| {
            for _ in 0..4 {
                read_all(std::slice::from_ref(&p.to_path_buf()), 1);
            }
        };
        one(&big);
        one(&big_view);
        let (d, v) = time_pair(runs.max(5), || one(&big), || one(&big_view));
        work.umount();
        let mib = 4.0 * o.big_mib as f64;
        rows.push(Row {
            measure: format!(
                "sequential read of a {} MiB file, warm (throughput)",
                o.big_mib
            ),
            direct: format!("{:.0} MiB/s", mib / d.med),
            view: format!("{:.0} MiB/s", mib / v.med),
            ratio: d.med / v.med,
            goal: "≥ 0.9",
            met: d.med / v.med >= 0.9,
        });
    }

    if let Some((rss, view_entries)) = rss_row {
        let per_entry = rss as f64 * 1024.0 / view_entries.max(1) as f64;
        rows.push(Row {
            measure: format!(
                "serving process peak RSS per captured entry ({view_entries} entries)"
            ),
            direct: "–".into(),
            view: format!("{} KiB peak RSS", rss),
            ratio: per_entry,
            goal: "≤ 150 B",
            met: per_entry <= 150.0,
        });
    }

    let table = render(&rows, &o, &summary);
    println!("{table}");
    if let Some(path) = &o.write {
        std::fs::write(path, table).expect("write table");
        eprintln!("bench: wrote {}", path.display());
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024 / 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let fs = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(std::env::temp_dir())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), {mem} GiB RAM, Linux {}, source tree on {fs}",
        kernel.trim()
    )
}

fn render(rows: &[Row], o: &Opts, summary: &str) -> String {
    let mut s = format!(
        "Machine: {}.\nTree: {} messages in {} accounts (generator `examples/gen_maildir.rs`, \
         about 6.4 KB a message). Each figure is the median of {} runs, [min–max].\n\n\
         Mount summary: `{}`\n\n\
         | measure | directly on SOURCE | through maildirfs | ratio | goal | met |\n\
         |---|---|---|---|---|---|\n",
        machine(),
        o.messages,
        o.accounts,
        o.runs,
        summary.trim().trim_start_matches("maildirfs: ")
    );
    for r in rows {
        let ratio = if r.measure.contains("RSS") {
            format!("{:.0} B/entry", r.ratio)
        } else if r.measure.contains("lock hold") {
            format!("{:.2} ms", r.ratio)
        } else {
            format!("{:.2}", r.ratio)
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.measure,
            r.direct,
            r.view,
            ratio,
            r.goal,
            if r.met { "yes" } else { "**no**" }
        ));
    }
    s
}
