//! The committed man pages are what the clap definition renders now.

use std::process::Command;

#[test]
fn man_pages_are_up_to_date() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::env::temp_dir().join(format!("maildirfs-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // The example is built by `cargo test --all-targets` (scripts/test); find it beside us.
    let exe = std::env::current_exe().unwrap();
    let gen_man = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("examples/gen_man"))
        .unwrap();
    let status = Command::new(&gen_man)
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", gen_man.display()));
    assert!(status.status.success());
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "maildirfs-mount.1",
            "maildirfs-status.1",
            "maildirfs-umount.1",
            "maildirfs-verify.1",
            "maildirfs.1"
        ]
    );
    for n in &names {
        let fresh = std::fs::read(out.join(n)).unwrap();
        let committed = std::fs::read(format!("{root}/docs/man/{n}")).unwrap_or_default();
        assert!(
            fresh == committed,
            "docs/man/{n} is out of date: run `cargo run --example gen_man`"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
    // The pages name the defaults `--help` names.
    let mount =
        String::from_utf8(std::fs::read(format!("{root}/docs/man/maildirfs-mount.1")).unwrap())
            .unwrap();
    assert!(mount.contains("default: 30"), "{mount}");
}
