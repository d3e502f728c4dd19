//! The man pages, `maildirfs.1` and one per subcommand (`maildirfs-mount.1`, ...), rendered from
//! the clap definition: `examples/gen_man.rs` writes them into `docs/man`, and `tests/man.rs`
//! renders them again and fails when the committed ones are out of date.

use clap::CommandFactory;

/// Every page: (file name, roff text).
pub fn pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let cmd = maildirfs::admin::cli::Cli::command();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    out.push(("maildirfs.1".to_owned(), buf));
    for sub in cmd.get_subcommands() {
        // clap wants a 'static name; the programs that call this run once and exit.
        let name: &'static str = format!("maildirfs-{}", sub.get_name()).leak();
        let sub = sub.clone().name(name);
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub).render(&mut buf)?;
        out.push((format!("{name}.1"), buf));
    }
    Ok(out)
}
