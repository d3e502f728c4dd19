//! The crate builds with the oldest Rust it declares (`rust-version`): Debian 13's rustc 1.85,
//! so that `apt install cargo` on Debian 13 is enough to build it. Debian 12 ships the same
//! compiler as `rustc-web`/`cargo-web` (in `/usr/bin`), which `scripts/test` installs.

use std::path::Path;
use std::process::Command;

const CARGO: &str = "/usr/bin/cargo";
const RUSTC: &str = "/usr/bin/rustc";

fn declared() -> String {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("read Cargo.toml");
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("Cargo.toml declares rust-version")
}

#[test]
fn builds_with_the_declared_rust_version() {
    let declared = declared();
    assert_eq!(declared, "1.85", "Debian 13's rustc is 1.85");
    let version = Command::new(RUSTC).arg("--version").output();
    let version = match version {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => {
            if std::env::var("MAILDIRFS_REQUIRE_FUSE").as_deref() == Ok("1") {
                panic!("{RUSTC} is missing (scripts/test installs rustc-web and cargo-web)");
            }
            eprintln!("skipping: no {RUSTC}");
            return;
        }
    };
    assert!(
        version.starts_with(&format!("rustc {declared}.")),
        "{RUSTC} is {version}, not {declared}"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Its own target directory: the two compilers' artefacts do not mix. Lib, binary,
    // examples and tests: everything the crate holds, with the locked dependencies.
    let out = Command::new(CARGO)
        .current_dir(root)
        .args(["build", "--locked", "--all-targets", "--target-dir"])
        .arg(root.join("target/msrv"))
        .env("RUSTC", RUSTC)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC_WRAPPER")
        .env(
            "PATH",
            format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .expect("run cargo 1.85");
    assert!(
        out.status.success(),
        "cargo {declared} build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
