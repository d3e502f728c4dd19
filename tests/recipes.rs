//! Each recipe in `examples/recipes/` run on a fixture store, as an admin would run it, and
//! the systemd units in `examples/systemd/` checked by `systemd-analyze verify`.

use maildirfs_testkit as common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

fn recipe(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/recipes")
        .join(name)
}

/// Runs a recipe with `maildirfs` being this build, in `cwd`.
fn run_recipe(name: &str, args: &[&Path], env: &[(&str, &str)], cwd: &Path) -> Output {
    let out = Command::new("bash")
        .arg(recipe(name))
        .args(args)
        .env("MAILDIRFS", bin())
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "{name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Two accounts, three mailboxes, with uidlists that match the messages, plus what a backup
/// must not carry: a delivery in progress in `tmp/` and an index lock.
fn mail_store(tag: &str) -> Fixture {
    let fx = Fixture::new(tag);
    let boxes = [
        "example.org/alice/Maildir",
        "example.org/alice/Maildir/.Sent",
        "example.org/bob/Maildir",
    ];
    for (b, mailbox) in boxes.iter().enumerate() {
        fx.mailbox(mailbox);
        let mut uidlist = format!("3 V{} N4 G{b:032x}\n", 1_700_000_000 + b);
        for i in 1..=3 {
            let body = format!("Message-ID: <{b}.{i}@example.org>\n\nbody {b} {i}\n");
            let base = format!("17000000{b}{i}.M{i}P9.mx,S={}", body.len());
            fx.write(format!("{mailbox}/cur/{base}:2,S"), body.as_bytes());
            uidlist.push_str(&format!("{i} :{base}\n"));
        }
        fx.write(format!("{mailbox}/dovecot-uidlist"), uidlist.as_bytes());
    }
    fx.write(
        "example.org/alice/Maildir/tmp/1700000099.M9P9.mx",
        b"half a deliv",
    );
    fx.write("example.org/bob/Maildir/dovecot.index.log.newlock", b"");
    fx
}

/// Path -> (kind, mode, bytes) under `root`, without what the view hides: files in `tmp/` and
/// lock files.
fn content(root: &Path) -> BTreeMap<String, (&'static str, u32, Option<Vec<u8>>)> {
    tree(root, true)
        .into_iter()
        .map(|(rel, s)| (String::from_utf8_lossy(&rel).into_owned(), s))
        .filter(|(rel, _)| {
            !rel.contains("/tmp/") && !rel.ends_with(".newlock") && !rel.ends_with(".lock")
        })
        .map(|(rel, s)| (rel, (s.kind, s.mode, s.bytes)))
        .collect()
}

fn under(
    c: &BTreeMap<String, (&'static str, u32, Option<Vec<u8>>)>,
    prefix: &str,
) -> BTreeMap<String, (&'static str, u32, Option<Vec<u8>>)> {
    c.iter()
        .filter_map(|(k, v)| {
            let rest = k.strip_prefix(prefix)?;
            let rest = rest.strip_prefix('/').unwrap_or(rest);
            (!rest.is_empty()).then(|| (rest.to_owned(), v.clone()))
        })
        .collect()
}

#[test]
fn restic_recipe_backs_up_twice_reading_nothing_new_and_restores_one_mailbox() {
    if !fuse_available() {
        return;
    }
    let fx = mail_store("recipe-restic");
    let repo = fx.dir.join("restic");
    let cache = fx.dir.join("cache");
    let env = [
        ("RESTIC_REPOSITORY", repo.to_str().unwrap()),
        ("RESTIC_PASSWORD", "recipe-test"),
        ("RESTIC_CACHE_DIR", cache.to_str().unwrap()),
    ];
    let init = Command::new("restic")
        .args(["init", "-q"])
        .envs(env)
        .output()
        .expect("restic (installed by scripts/test)");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let src = fx.src();
    let json = Path::new("--json");
    run_recipe("restic-backup.sh", &[&src, json], &env, &fx.dir);
    // The second run mounts at the same place, so restic finds its parent snapshot: no file
    // is new or changed, and no data is added.
    let second = run_recipe("restic-backup.sh", &[&src, json], &env, &fx.dir);
    let out = String::from_utf8_lossy(&second.stdout);
    let summary = out
        .lines()
        .find(|l| l.contains("\"message_type\":\"summary\""))
        .unwrap_or_else(|| panic!("no summary in {out}"));
    assert!(summary.contains("\"files_new\":0,"), "{summary}");
    assert!(summary.contains("\"files_changed\":0,"), "{summary}");
    assert!(summary.contains("\"files_unmodified\":12,"), "{summary}");

    let target = fx.dir.join("restored-sent");
    let restore = run_recipe(
        "restic-restore-mailbox.sh",
        &[
            Path::new("latest"),
            Path::new("example.org/alice/Maildir/.Sent"),
            &target,
        ],
        &env,
        &fx.dir,
    );
    // The recipe ends with `maildirfs verify`: clean.
    let said = String::from_utf8_lossy(&restore.stdout);
    assert!(
        said.contains("1 mailboxes, 3 messages: 0 problems"),
        "{said}"
    );
    assert_eq!(
        content(&target),
        under(&content(&fx.src()), "example.org/alice/Maildir/.Sent")
    );
    // Nothing of ours is left: no mount, no mount point, no lock.
    assert!(lock_files(&fx.src()).is_empty());
    // (Other recipe tests run beside this one with views of their own: look for this
    // source's view only, by the source the mount names.)
    let src = fx.src();
    let ours = format!(" - fuse.maildirfs {} ", src.display());
    assert!(
        !std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.contains(&ours))
    );
}

#[test]
fn borg_recipe_archives_the_view_and_one_account_extracts() {
    if !fuse_available() {
        return;
    }
    let fx = mail_store("recipe-borg");
    let repo = fx.dir.join("borg");
    let env = [
        ("BORG_BASE_DIR", fx.dir.to_str().unwrap()),
        ("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes"),
    ];
    let init = Command::new("borg")
        .args(["init", "--encryption=none"])
        .arg(&repo)
        .envs(env)
        .output()
        .expect("borg (installed by scripts/test)");
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    run_recipe("borg-backup.sh", &[&fx.src(), &repo], &env, &fx.dir);
    let list = Command::new("borg")
        .args(["list", "--short"])
        .arg(&repo)
        .envs(env)
        .output()
        .unwrap();
    let archives = String::from_utf8_lossy(&list.stdout).into_owned();
    let archive = archives.lines().next().expect("one archive");
    assert!(archive.starts_with("mail-"), "{archives}");
    let out = fx.dir.join("extract");
    std::fs::create_dir(&out).unwrap();
    let extract = Command::new("borg")
        .arg("extract")
        .arg(format!("{}::{archive}", repo.display()))
        .arg("example.org/bob")
        .envs(env)
        .current_dir(&out)
        .output()
        .unwrap();
    assert!(
        extract.status.success(),
        "{}",
        String::from_utf8_lossy(&extract.stderr)
    );
    assert_eq!(
        content(&out.join("example.org/bob")),
        under(&content(&fx.src()), "example.org/bob")
    );
    assert!(!out.join("example.org/alice").exists());
}

#[test]
fn rsync_rotation_recipe_hard_links_unchanged_messages_and_keeps_the_newest() {
    if !fuse_available() {
        return;
    }
    let fx = mail_store("recipe-rsync");
    let dest = fx.dir.join("snapshots");
    let keep = Path::new("2");
    run_recipe("rsync-rotate.sh", &[&fx.src(), &dest, keep], &[], &fx.dir);
    let first = std::fs::canonicalize(dest.join("latest")).unwrap();
    assert_eq!(content(&first), content(&fx.src()));
    // A flag change in the live store, then the next run (a new second for a new name).
    let cur = fx.src().join("example.org/bob/Maildir/cur");
    let name = std::fs::read_dir(&cur)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .min()
        .unwrap();
    let flagged = name.replace(":2,S", ":2,FS");
    std::fs::rename(cur.join(&name), cur.join(&flagged)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run_recipe("rsync-rotate.sh", &[&fx.src(), &dest, keep], &[], &fx.dir);
    let second = std::fs::canonicalize(dest.join("latest")).unwrap();
    assert_ne!(first, second);
    assert_eq!(content(&second), content(&fx.src()));
    // Unchanged messages are the same inode in both snapshots; the renamed one is new.
    let alice = "example.org/alice/Maildir/.Sent/cur";
    let one = std::fs::read_dir(first.join(alice))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let ino = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(one.path()),
        ino(second.join(alice).join(one.file_name()))
    );
    let bob = "example.org/bob/Maildir/cur";
    assert!(second.join(bob).join(&flagged).exists());
    assert!(!second.join(bob).join(&name).exists());
    // A third run: only the newest two are kept.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run_recipe("rsync-rotate.sh", &[&fx.src(), &dest, keep], &[], &fx.dir);
    let kept: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with('Z'))
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(!first.exists());
}

#[test]
fn tar_recipe_archives_what_the_view_shows() {
    if !fuse_available() {
        return;
    }
    let fx = mail_store("recipe-tar");
    let archive = fx.dir.join("mail.tar.gz");
    run_recipe("tar-backup.sh", &[&fx.src(), &archive], &[], &fx.dir);
    let out = fx.dir.join("untar");
    std::fs::create_dir(&out).unwrap();
    let x = Command::new("tar")
        .args(["--numeric-owner", "-xpzf"])
        .arg(&archive)
        .arg("-C")
        .arg(&out)
        .output()
        .unwrap();
    assert!(x.status.success(), "{}", String::from_utf8_lossy(&x.stderr));
    assert_eq!(content(&out), content(&fx.src()));
    // Not in the archive: the delivery in progress and the index lock.
    assert!(
        !out.join("example.org/alice/Maildir/tmp/1700000099.M9P9.mx")
            .exists()
    );
    assert!(out.join("example.org/alice/Maildir/tmp").is_dir());
    assert!(
        !out.join("example.org/bob/Maildir/dovecot.index.log.newlock")
            .exists()
    );
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/systemd");
    let tmp = std::env::temp_dir().join(format!("maildirfs-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    // The units name installed paths; point them at this checkout so that verify can check
    // that every command exists and is executable.
    let recipes = recipe("");
    for unit in [
        "maildirfs-backup.service",
        "maildirfs-backup.timer",
        "mnt-frozen.mount",
    ] {
        let text = std::fs::read_to_string(dir.join(unit)).unwrap();
        let text = text
            .replace("/usr/local/share/maildirfs/", recipes.to_str().unwrap())
            .replace("/usr/local/bin/maildirfs", bin().to_str().unwrap())
            .replace(
                "/etc/maildirfs/backup.env",
                dir.join("backup.env").to_str().unwrap(),
            );
        std::fs::write(tmp.join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args([
            "maildirfs-backup.service",
            "maildirfs-backup.timer",
            "mnt-frozen.mount",
        ])
        .current_dir(&tmp)
        .output()
        .expect("systemd-analyze (installed by scripts/test)");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    // The mount unit's options are ones maildirfs accepts.
    let mount = std::fs::read_to_string(dir.join("mnt-frozen.mount")).unwrap();
    let opts = mount
        .lines()
        .find_map(|l| l.strip_prefix("Options="))
        .unwrap();
    let mut o = maildirfs::MountOptions::new("/s".into(), "/m".into());
    o.apply_o(opts).unwrap();
    assert!(o.exclude_indexes);
}
