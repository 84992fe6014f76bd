//! `loadtest`: see the crate documentation of `switchboard_loadtest`.

use clap::Parser;
use switchboard_loadtest::run::{Cli, Command, run_pairs};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Pairs(args) => run_pairs(args).map(|report| {
            if args.json {
                println!("{}", serde_json::to_string(&report).expect("a report serializes"));
            } else {
                println!("{}", report.table());
            }
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
