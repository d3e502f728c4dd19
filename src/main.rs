//! The `maildirfs` command: parse the arguments (`admin/cli.rs`), call the library, turn the result
//! into an exit status (0 success, 1 failure with one line on stderr, 2 usage error).

use std::process::ExitCode;

use clap::Parser;
use maildirfs::admin::cli::{Cli, Cmd};

fn main() -> ExitCode {
    let cli = Cli::parse_from(maildirfs::admin::cli::normalize_args(
        std::env::args_os().collect(),
    ));
    let result = match cli.cmd {
        Cmd::Mount(args) => {
            let opts = match args.into_options() {
                Ok(o) => o,
                Err(usage) => {
                    eprintln!("maildirfs: {usage}");
                    return ExitCode::from(2);
                }
            };
            maildirfs::admin::mount::run(&opts).map(|summary| {
                if let Some(s) = summary {
                    eprintln!("maildirfs: {s}");
                }
                ExitCode::SUCCESS
            })
        }
        Cmd::Umount { mountpoint } => maildirfs::admin::umount::umount(&mountpoint).map(|fin| {
            if let Some(f) = &fin.line {
                eprintln!("maildirfs: {f}");
            }
            // Unmounted either way; an account the view could not serve is a failure of the
            // backup that read it.
            if fin.failed_accounts > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }),
        Cmd::Status { mountpoint, json } => {
            maildirfs::admin::status::status(mountpoint.as_deref()).map(|views| {
                if json {
                    println!("{}", maildirfs::admin::status::to_json(&views));
                } else if views.is_empty() {
                    println!("no maildirfs view is mounted");
                } else {
                    for v in &views {
                        print!("{}", v.to_text());
                    }
                }
                // A dead view is something to act on: monitoring sees a failure.
                if views.iter().any(|v| v.is_dead()) {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            })
        }
        Cmd::Verify { path, json } => maildirfs::admin::verify::verify(&path).map(|v| {
            if json {
                println!("{}", v.to_json());
            } else {
                print!("{}", v.to_text());
            }
            if v.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("maildirfs: {e}");
            ExitCode::FAILURE
        }
    }
}
