//! Generates a synthetic Dovecot-style Maildir tree for tests and benchmarks, with the
//! generator of `maildirfs_testkit::gen_maildir` (which says what the tree holds):
//!
//! cargo run --release --example gen_maildir -- --messages 100000 --accounts 40 OUT
//!
//! An ISP-shaped store (many small accounts, INBOX and 3 folders each):
//! `--messages 100000 --accounts 20000 --folders 4`.

use maildirfs_testkit::gen_maildir::{generate, parse_args};

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = generate(&args) {
        eprintln!("gen_maildir: {e}");
        std::process::exit(1);
    }
}
