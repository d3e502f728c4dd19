//! The committed man pages are what the clap definition renders now.

use maildirfs_testkit::man;

#[test]
fn man_pages_are_up_to_date() {
    let root = env!("CARGO_MANIFEST_DIR");
    let pages = man::pages().unwrap();
    let mut names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
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
    for (name, fresh) in &pages {
        let committed = std::fs::read(format!("{root}/docs/man/{name}")).unwrap_or_default();
        assert!(
            *fresh == committed,
            "docs/man/{name} is out of date: run `cargo run --example gen_man`"
        );
    }
    // The pages name the defaults `--help` names.
    let mount =
        String::from_utf8(std::fs::read(format!("{root}/docs/man/maildirfs-mount.1")).unwrap())
            .unwrap();
    assert!(mount.contains("default: 30"), "{mount}");
}
