//! Hostile and odd input: each is served or reported, never crashes, never hangs.

use maildirfs_testkit as common;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

#[test]
fn hostile_names_are_served_byte_for_byte_and_logged_escaped() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("hostile-names");
    fx.mailbox("Maildir");
    let names: Vec<Vec<u8>> = vec![
        b"1.new\nline:2,S".to_vec(),
        b"2.ctrl\x01\x1b[31m:2,S".to_vec(),
        b"3.bad\xff\xfe:2,S".to_vec(),
        [b"4.".as_slice(), &[b'x'; 253]].concat(),
        b"5.back\\slash:2,S".to_vec(),
    ];
    for (i, n) in names.iter().enumerate() {
        fx.write(
            Path::new("Maildir/cur").join(OsStr::from_bytes(n)),
            format!("m{i}\n").as_bytes(),
        );
    }
    // And one that will be gone by the time it is read, to make maildirfs log its name.
    let doomed = b"6.doomed\nname:2,S";
    fx.write(
        Path::new("Maildir/cur").join(OsStr::from_bytes(doomed)),
        b"d\n",
    );
    let log = fx.dir.join("log");
    let m = Mounted::with_nofile(&fx, &["--log-file", log.to_str().unwrap()], 260);
    for (i, n) in names.iter().enumerate() {
        let p = m.mnt.join("Maildir/cur").join(OsStr::from_bytes(n));
        assert_eq!(
            std::fs::read(&p).unwrap(),
            format!("m{i}\n").as_bytes(),
            "{n:?}"
        );
    }
    std::fs::remove_file(fx.src().join("Maildir/cur").join(OsStr::from_bytes(doomed))).unwrap();
    assert!(std::fs::read(m.mnt.join("Maildir/cur").join(OsStr::from_bytes(doomed))).is_err());
    m.umount();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("6.doomed\\x0aname:2,S"), "{logged}");
    for line in logged.lines() {
        assert!(
            !line.contains('\x1b') && !line.contains('\x01'),
            "raw control byte logged: {line:?}"
        );
    }
}

#[test]
fn paths_deeper_than_path_max_are_served() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("hostile-deep");
    fx.mailbox("Maildir");
    // 40 levels of 120-byte names: about 4,900 bytes, past PATH_MAX (4,096). Built by changing
    // into each level in turn (perl's chdir takes the relative name as it is; a shell's cd
    // rebuilds the whole path and fails), since the whole path is too long for one call.
    let level = |i: usize| format!("{i:03}{}", "d".repeat(117));
    let ok = Command::new("perl")
        .arg("-e")
        .arg(
            "chdir $ARGV[0] or die $!; for $i (0..39) { $n = sprintf('%03d', $i) . ('d' x 117); \
             mkdir $n or die $!; chdir $n or die $! } \
             open F, '>', 'leaf' or die $!; print F \"deep\\n\"; close F",
        )
        .arg(fx.src().join("Maildir"))
        .status()
        .unwrap();
    assert!(ok.success());
    let depth: usize = (0..40).map(|i| level(i).len() + 1).sum();
    assert!(depth > 4096);

    let m = Mounted::new(&fx, &[]);
    // find walks it relative to each directory.
    let out = Command::new("find")
        .arg(&m.mnt)
        .args(["-name", "leaf"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let out = Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && find . -name leaf -execdir cat {} \\;")
        .arg("sh")
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        b"deep\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.umount();
    // Clean up what remove_dir_all cannot reach by whole paths.
    let _ = Command::new("rm")
        .arg("-rf")
        .arg(fx.src().join("Maildir/deep"))
        .status();
}

#[test]
fn a_mailbox_with_a_million_entries_and_a_100_mb_uidlist() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("hostile-big");
    let mb = fx.mailbox("Maildir");
    let cur = mb.join("cur");
    for i in 0..1_000_000u32 {
        std::fs::File::create(cur.join(format!("{i}.M{i}P1.host:2,S"))).unwrap();
    }
    let mut uidlist =
        std::io::BufWriter::new(std::fs::File::create(mb.join("dovecot-uidlist")).unwrap());
    uidlist.write_all(b"3 V1 N1000001\n").unwrap();
    let mut written = 14u64;
    let mut i = 0u64;
    while written < 100 * 1024 * 1024 {
        let line = format!("{} :{}.M{}P1.host\n", i + 1, i, i);
        uidlist.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
        i += 1;
    }
    uidlist.write_all(&[0u8, 0xff, b'\n']).unwrap();
    drop(uidlist);
    let m = Mounted::new(&fx, &[]);
    assert!(m.stderr.contains("1000000 messages"), "{}", m.stderr);
    let n = std::fs::read_dir(m.mnt.join("Maildir/cur"))
        .unwrap()
        .count();
    assert_eq!(n, 1_000_000);
    let a = std::fs::read(mb.join("dovecot-uidlist")).unwrap();
    let b = std::fs::read(m.mnt.join("Maildir/dovecot-uidlist")).unwrap();
    assert!(a == b, "uidlist differs");
    m.umount();
}

#[test]
fn a_read_only_source_is_captured_without_locks_and_says_why() {
    if !fuse_available() {
        return;
    }
    let fx = Fixture::new("hostile-ro");
    fx.mailbox("Maildir");
    fx.write("Maildir/cur/1.x:2,S", b"a");
    // A read-only bind mount of the tree.
    let ro = fx.dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    assert!(
        Command::new("mount")
            .args(["--bind", "-o", "ro"])
            .arg(fx.src())
            .arg(&ro)
            .status()
            .unwrap()
            .success()
    );
    struct Unbind(PathBuf);
    impl Drop for Unbind {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unbind = Unbind(ro.clone());
    let mnt = fx.mnt();
    let out = run(&[OsStr::new("mount"), ro.as_os_str(), mnt.as_os_str()], &[]);
    let _guard = Mounted::adopt(mnt.clone());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("WITHOUT lock") && err.contains("Read-only file system"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(mnt.join("Maildir/cur/1.x:2,S")).unwrap(),
        b"a"
    );
    drop(_guard);
    let out = run(
        &[
            OsStr::new("mount"),
            OsStr::new("--strict-lock"),
            ro.as_os_str(),
            mnt.as_os_str(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(!is_mounted(&mnt));
}
