//! Writes the man pages, `maildirfs.1` and one per subcommand (`maildirfs-mount.1`, ...), from
//! the clap definition into a directory (default `docs/man`):
//!
//!     cargo run --example gen_man [DIR]
//!
//! `tests/man.rs` includes this file, renders the pages again and fails when the committed
//! ones are out of date.

use std::path::PathBuf;

use clap::CommandFactory;

/// Every page: (file name, roff text).
pub fn pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let cmd = maildirfs::admin::cli::Cli::command();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    out.push(("maildirfs.1".to_owned(), buf));
    for sub in cmd.get_subcommands() {
        // clap wants a 'static name; this program runs once and exits.
        let name: &'static str = format!("maildirfs-{}", sub.get_name()).leak();
        let sub = sub.clone().name(name);
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub).render(&mut buf)?;
        out.push((format!("{name}.1"), buf));
    }
    Ok(out)
}

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
