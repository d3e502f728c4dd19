//! What a mount says: the one-line summary after the capture, the report the state file
//! and `--summary-json` start from, and the line the server ends with.

use std::path::Path;

use crate::admin::logging::utc;
use crate::admin::report::{Live, MountReport, Unlocked};
use crate::error::{display_rel, escape_path};
use crate::image::build::{AccountHold, AccountSummary, Captured};
use crate::sys;

/// The report of capture `c` of `source` mounted on `mountpoint`, before any serving
/// (`reads` and `summary` are filled in once the kernel has connected).
pub fn report_of(source: &Path, mountpoint: &Path, c: &Captured) -> MountReport {
    {
        let t = &c.totals;
        let longest = c.accounts.iter().max_by_key(|a| a.lock_hold);
        MountReport {
            pid: sys::getpid() as u32,
            source: escape_path(source),
            mountpoint: escape_path(mountpoint),
            captured_at: utc(c.started_at),
            capture_seconds: c.elapsed.as_secs_f64(),
            accounts: t.accounts as u64,
            mailboxes: t.mailboxes as u64,
            messages: t.messages as u64,
            bytes: t.bytes,
            unlocked: c
                .accounts
                .iter()
                .filter_map(|a| {
                    Some(Unlocked {
                        account: display_rel(&a.root),
                        why: a.unlocked.clone()?,
                    })
                })
                .collect(),
            longest_lock_hold_ms: longest.map_or(0, |a| a.lock_hold.as_millis() as u64),
            longest_lock_hold_account: longest.map(|a| display_rel(&a.root)).unwrap_or_default(),
            pinned: t.pinned as u64,
            unpinned: t.unpinned as u64,
            fd_limit: c.fd_limit,
            expunged_during_capture: c.report.vanished as u64,
            unreadable: c.report.unreadable.len() as u64,
            special_files: c.report.special_files as u64,
            control_files_too_large: c.report.control_too_large.len() as u64,
            stalled_accounts: c.report.stalled.len() as u64,
            too_deep: c.report.too_deep.len() as u64,
            mount_points_skipped: c.report.skipped_mounts.len() as u64,
            mailboxes_without_lock: c.report.late_mailboxes.len() as u64,
            reads: String::new(),
            summary: String::new(),
            live: Live::default(),
            account_holds: c
                .accounts
                .iter()
                .map(AccountSummary::hold)
                .chain(c.report.stalled.iter().map(|root| AccountHold {
                    account: display_rel(root),
                    stalled: true,
                    captures: 1,
                    ..AccountHold::default()
                }))
                .collect(),
            ..MountReport::default()
        }
    }
}

/// The line the server ends with: what was captured and served, and what was not.
pub fn unmount_line(mountpoint: &Path, live: &Live) -> String {
    let v = &live.view;
    let mut line = format!("unmounted {}: ", escape_path(mountpoint));
    if v.accounts > 0 {
        line.push_str(&format!(
            "{} of {} accounts captured ({} more than once, at different instants; {} left the \
             working set), {} never captured",
            v.captured, v.accounts, v.recaptured, v.evictions, v.never
        ));
        if v.unlocked > 0 {
            line.push_str(&format!(", {} captures WITHOUT locks", v.unlocked));
        }
        if v.failed > 0 {
            line.push_str(&format!(
                ", {} accounts UNREADABLE (capture failed)",
                v.failed
            ));
        }
        line.push_str("; ");
    }
    line.push_str(&format!(
        "{} files ({}) read ahead, {} reads late for them; ",
        live.ahead_files,
        human_bytes(live.ahead_bytes),
        live.ahead_late,
    ));
    line.push_str(&format!(
        "{} files renamed in the source were served from their new names, {} vanished, {} failed to read",
        live.refound, live.vanished, live.read_errors,
    ));
    line
}

/// The one-line mount summary.
pub fn summary_line(source: &Path, mountpoint: &Path, c: &Captured) -> String {
    let t = &c.totals;
    let longest = c.accounts.iter().max_by_key(|a| a.lock_hold);
    let hold = match longest {
        Some(a) if !a.lock_hold.is_zero() => format!(
            "longest lock hold {} ms ({}; {} ms of it pinning)",
            a.lock_hold.as_millis(),
            display_rel(&a.root),
            a.pin_time.as_millis()
        ),
        _ => "no lock held".to_owned(),
    };
    let unlocked: Vec<&AccountSummary> =
        c.accounts.iter().filter(|a| a.unlocked.is_some()).collect();
    let locks = match unlocked.first() {
        None => "all accounts locked".to_owned(),
        Some(first) => format!(
            "{} of {} accounts captured WITHOUT lock ({}: {})",
            unlocked.len(),
            c.accounts.len(),
            display_rel(&first.root),
            first.unlocked.as_deref().unwrap_or("")
        ),
    };
    let chosen = if c.selected {
        " (chosen by --include/--exclude)"
    } else {
        ""
    };
    // With accounts left for later, the counts are of those captured at mount.
    let counted = if c.on_demand > 0 {
        format!(
            "{} accounts{chosen}, {} captured at mount ({} mailboxes, {} messages, {}), {} left to \
             capture when first read (working set {} files)",
            t.accounts,
            c.accounts.len(),
            t.mailboxes,
            t.messages,
            human_bytes(t.bytes),
            c.on_demand,
            c.working_set
        )
    } else {
        format!(
            "{} accounts{chosen}, {} mailboxes, {} messages, {}",
            t.accounts,
            t.mailboxes,
            t.messages,
            human_bytes(t.bytes)
        )
    };
    let mut line = format!(
        "mounted {} on {}: {counted} in {:.2} s; {hold}; {locks}",
        escape_path(source),
        escape_path(mountpoint),
        c.elapsed.as_secs_f64(),
    );
    if t.unpinned == 0 {
        line.push_str(&format!("; all {} files pinned", t.pinned));
    } else {
        line.push_str(&format!(
            "; {} files pinned, {} unpinned (fd limit {}; unpinned files are found again by name)",
            t.pinned, t.unpinned, c.fd_limit
        ));
    }
    if c.report.vanished > 0 {
        line.push_str(&format!(
            "; {} messages expunged before they could be frozen",
            c.report.vanished
        ));
    }
    if !c.report.skipped_mounts.is_empty() {
        line.push_str(&format!(
            "; {} mount points inside the source not entered",
            c.report.skipped_mounts.len()
        ));
    }
    if !c.report.late_mailboxes.is_empty() {
        line.push_str(&format!(
            "; {} mailboxes created during the capture were captured WITHOUT lock",
            c.report.late_mailboxes.len()
        ));
    }
    if !c.report.unreadable.is_empty() {
        line.push_str(&format!(
            "; {} directories or files UNREADABLE, shown empty or left out (first: {})",
            c.report.unreadable.len(),
            display_rel(&c.report.unreadable[0])
        ));
    }
    if c.report.special_files > 0 {
        line.push_str(&format!(
            "; {} special files (FIFO, socket, device) left out",
            c.report.special_files
        ));
    }
    if let Some(t) = &c.control_dir {
        line.push_str(&format!("; control files from {t}"));
    }
    if let Some(first) = c.report.control_too_large.first() {
        line.push_str(&format!(
            "; {} control files left out as too large (first: {})",
            c.report.control_too_large.len(),
            display_rel(first)
        ));
    }
    if let Some(first) = c.report.stalled.first() {
        line.push_str(&format!(
            "; {} accounts STALLED during capture, their locks released, EIO in the view (first: {})",
            c.report.stalled.len(),
            display_rel(first)
        ));
    }
    if let Some(first) = c.report.too_deep.first() {
        line.push_str(&format!(
            "; {} directories more than {} levels deep shown empty (first: {})",
            c.report.too_deep.len(),
            crate::maildir::discover::MAX_DEPTH,
            display_rel(first)
        ));
    }
    line
}

/// Bytes in the units `df -h` uses.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
