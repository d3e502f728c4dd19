//! The benchmark must keep working: run it on a tiny tree. Times are not checked (a benchmark
//! is not a test); that it runs to the end and prints every row is.

use maildirfs_testkit as common;

use std::process::Command;

#[test]
fn bench_runs_on_a_tiny_tree() {
    if !common::fuse_available() {
        return;
    }
    // `cargo test` builds the examples next to the test binaries' target directory.
    let bench = common::bin()
        .parent()
        .map(|d| d.join("examples/bench"))
        .expect("target dir");
    assert!(bench.exists(), "{} not built", bench.display());
    let out = Command::new(&bench)
        .args([
            "--messages",
            "300",
            "--accounts",
            "3",
            "--runs",
            "1",
            "--big-mib",
            "4",
        ])
        .output()
        .expect("run bench");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "capture:",
        "longest lock hold",
        "warm cache, 1 thread",
        "warm cache, 4 thread",
        "cold cache",
        "rsync -a` to an empty directory",
        "incremental:",
        "sequential read",
        "peak RSS per captured entry",
    ] {
        assert!(table.contains(row), "row {row:?} missing from:\n{table}");
    }
}
