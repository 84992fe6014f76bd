//! `loadtest`: see the crate documentation of `switchboard_loadtest`.

use clap::Parser;
use switchboard_loadtest::connect::run_connect;
use switchboard_loadtest::fanout::run_fanout;
use switchboard_loadtest::idle::run_idle;
use switchboard_loadtest::mesh::run_mesh;
use switchboard_loadtest::report::run_report;
use switchboard_loadtest::run::{Cli, Command, Outcome, emit, run_pairs};
use switchboard_loadtest::sink::run_sink;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Pairs(args) => run_pairs(args).and_then(|r| emit(&args.common, &r)),
        Command::Mesh(args) => run_mesh(args).and_then(|r| emit(&args.common, &r)),
        Command::Fanout(args) => run_fanout(args).and_then(|r| emit(&args.common, &r)),
        Command::Idle(args) => run_idle(args).and_then(|r| emit(&args.common, &r)),
        Command::Connect(args) => run_connect(args).and_then(|r| emit(&args.common, &r)),
        Command::Sink(args) => run_sink(args).map(|r| {
            if args.json {
                println!("{}", serde_json::to_string(&r).expect("a report serializes"));
            } else {
                println!("{}", r.table());
            }
        }),
        Command::Report(args) => run_report(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
