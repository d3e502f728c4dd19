//! Load: many readers at once over a large view, and many mount cycles leaving nothing behind.

use maildirfs_testkit as common;
use maildirfs_testkit::gen_maildir;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn eight_concurrent_readers_over_100_000_messages_finish_without_error() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("load-readers");
    gen_maildir::generate(&gen_maildir::Args {
        messages: 100_000,
        accounts: 40,
        avg_size: 6400,
        folders: 0,
        out: fx.src(),
    })
    .unwrap();
    let m = Mounted::new(&fx, &[]);
    let mnt = m.mnt.display().to_string();
    let shm = format!("/dev/shm/maildirfs-load-{}", std::process::id());
    let files: Vec<String> = tree(&fx.src(), false)
        .into_iter()
        .filter(|(_, s)| s.kind == "file")
        .map(|(k, _)| format!("{mnt}/{}", String::from_utf8_lossy(&k)))
        .collect();
    let pick = |seed: usize| -> String {
        (0..300)
            .map(|i| format!("'{}'", files[(seed * 7919 + i * 104_729) % files.len()]))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let jobs: Vec<(&str, String)> = vec![
        ("tar", format!("tar cf - -C '{mnt}' . | wc -c")),
        ("tar2", format!("tar cf /dev/null -C '{mnt}' .")),
        ("rsync", format!("rsync -a '{mnt}/' '{shm}/'")),
        ("find", format!("find '{mnt}' -type f | wc -l")),
        ("grep", format!("grep -r -c Message-ID '{mnt}' | wc -l")),
        ("cat1", format!("cat {} | wc -c", pick(1))),
        ("cat2", format!("cat {} | wc -c", pick(2))),
        ("cat3", format!("cat {} | wc -c", pick(3))),
    ];
    let children: Vec<_> = jobs
        .iter()
        .map(|(name, cmd)| {
            let c = Command::new("bash")
                .args(["-c", &format!("set -eo pipefail; {cmd}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (*name, c)
        })
        .collect();
    let mut failures = Vec::new();
    for (name, c) in children {
        let out = c.wait_with_output().unwrap();
        if !out.status.success() || !out.stderr.is_empty() {
            failures.push(format!(
                "{name}: {:?} {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        if name == "find" && stdout.trim() != files.len().to_string() {
            failures.push(format!("find counted {stdout:?}, not {}", files.len()));
        }
    }
    let _ = std::fs::remove_dir_all(&shm);
    assert!(failures.is_empty(), "{failures:#?}");
    let fin = m.umount();
    assert!(fin.contains("0 vanished"), "{fin}");
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_hundred_mount_cycles_leave_no_mount_lock_state_or_fd_behind() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("load-cycles");
    store(&fx, 200);
    for _ in 0..100 {
        let m = Mounted::new(&fx, &[]);
        m.umount();
    }
    assert!(!is_mounted(&fx.mnt()));
    assert!(lock_files(&fx.src()).is_empty());
    let prefix = fx.dir.to_string_lossy().into_owned();
    let leftovers = Command::new("pgrep")
        .args(["-f", &prefix])
        .output()
        .unwrap();
    assert!(
        leftovers.stdout.is_empty(),
        "processes left: {}",
        String::from_utf8_lossy(&leftovers.stdout)
    );

    // The same flow in this long-lived process (the library, without FUSE): no fd and no
    // memory growth over a hundred captures.
    let root = std::fs::File::open(fx.src()).unwrap();
    let opts = maildirfs::MountOptions::new(fx.src(), fx.mnt());
    let fd = std::os::fd::OwnedFd::from(root);
    let capture = || {
        let c = maildirfs::admin::mount::capture_tree(&fd, &fx.src(), &opts).unwrap();
        assert_eq!(c.totals.messages, 200);
    };
    for _ in 0..10 {
        capture();
    }
    let (fds, rss) = (fd_count(), rss_kib());
    for _ in 0..100 {
        capture();
    }
    // The lock registry's touch thread may hold a just-released lock's fd for a moment.
    assert!(
        wait_for(std::time::Duration::from_secs(2), || fd_count() == fds),
        "fds grew from {fds} to {}",
        fd_count()
    );
    assert!(
        rss_kib() < rss + 4096,
        "memory grew from {rss} KiB to {} KiB",
        rss_kib()
    );
}
