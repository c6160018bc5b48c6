//! `till`: the one command line of Tillsync, for tills (nodes), the hub and
//! scripts. Every command that prints data takes `--json`.

mod cli;
mod demo;
mod hub_cmd;
mod node;
mod output;
mod sync_cmd;

use clap::Parser;
use std::process::ExitCode;

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
