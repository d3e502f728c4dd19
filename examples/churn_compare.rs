//! Churn, side by side: the Dovecot churn workload (LDA deliveries, flag changes, moves,
//! expunges, and a mail client renaming for flags without any lock) against a private Dovecot,
//! while the store is copied again and again, once with plain `rsync -a` of the live tree and
//! once with `rsync -a` through maildirfs. Every copy is checked: each message delivered before
//! the copy began and not expunged before the capture was complete must be in it, complete,
//! once per mailbox. Prints the lost messages of each.
//!
//! Needs root, /dev/fuse, rsync and Dovecot (`scripts/test` installs them):
//!
//! ```text
//! cargo build --release && cargo run --release --example churn_compare -- --seconds 30
//! ```

use maildirfs_testkit as common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::churn::{ChurnReport, churn_setup, run_churn};
use common::{Fixture, Mounted};

fn main() {
    let mut seconds = 30u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(30),
            _ => {
                eprintln!("usage: churn_compare [--seconds N]");
                std::process::exit(2);
            }
        }
    }
    let dur = Duration::from_secs(seconds);
    println!("churn for {seconds} s per method; 300 messages to start, INBOX and Other");
    let plain = run("plain", dur, &mut |fx, dest| {
        let began = Instant::now();
        let ok = rsync(&fx.src(), dest);
        (began, Instant::now(), ok)
    });
    print_report("plain rsync -a of the live tree", &plain);
    let through = run("maildirfs", dur, &mut |fx, dest| {
        let began = Instant::now();
        let m = Mounted::new(fx, &[]);
        let complete = Instant::now();
        let ok = rsync(&m.mnt, dest);
        m.umount();
        (began, complete, ok)
    });
    print_report("rsync -a through maildirfs", &through);
}

fn rsync(from: &Path, to: &Path) -> bool {
    common::rsync_a(from, to).status.success()
}

fn run(
    tag: &str,
    dur: Duration,
    copy: &mut dyn FnMut(&Fixture, &Path) -> (Instant, Instant, bool),
) -> ChurnReport {
    let fx = Fixture::new(tag);
    let (dc, journal) = churn_setup(&fx, 300);
    let mut copy_fx = |dest: &Path| copy(&fx, dest);
    run_churn(&fx, &dc, &journal, dur, &mut copy_fx)
}

fn print_report(what: &str, r: &ChurnReport) {
    println!(
        "{what}: {} copies, {} messages checked, {} lost, {} incomplete, {} duplicated in a \
         mailbox, {} tmp/lock files copied, {} copies with rsync errors",
        r.cycles, r.checked, r.lost, r.incomplete, r.duplicates, r.stray, r.copy_errors
    );
    println!("  workload: {}", r.work);
    if !r.lost_ids.is_empty() {
        let mut ids = r.lost_ids.clone();
        ids.sort();
        ids.dedup();
        println!("  lost (distinct): {}", ids.join(" "));
    }
}
