//! Writes the man pages, `maildirfs.1` and one per subcommand (`maildirfs-mount.1`, ...), from
//! the clap definition into a directory (default `docs/man`):
//!
//!     cargo run --example gen_man [DIR]
//!
//! The pages are rendered by `maildirfs_testkit::man`, which `tests/man.rs` calls too, to fail
//! when the committed ones are out of date.

use std::path::PathBuf;

use maildirfs_testkit::man::pages;

fn main() -> std::io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("docs/man"));
    std::fs::create_dir_all(&dir)?;
    for (name, text) in pages()? {
        std::fs::write(dir.join(&name), text)?;
        println!("{}", dir.join(name).display());
    }
    Ok(())
}
