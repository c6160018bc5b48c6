//! `till`: the one command line of Tillsync, for tills (nodes), the hub and
//! scripts. Every command that prints data takes `--json`.

mod backup_cmd;
mod cli;
mod demo;
mod hub_cmd;
mod node;
mod output;
mod sync_cmd;

use clap::Parser;
use std::process::ExitCode;

/// Structured logs on stderr for the long-running commands (`hub serve`,
/// `node run`); `TILL_LOG` sets the level (error, warn, info, debug, trace).
pub fn init_logs() {
    let level = std::env::var("TILL_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(tracing::Level::INFO);
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let json = args.json;
    match node::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let body = serde_json::json!({"error": format!("{e:#}")});
                eprintln!("{body}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
