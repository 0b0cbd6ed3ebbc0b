//! The `bake` binary: parse arguments, set up logging, run, and turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = bake::cli::Cli::parse();
    // Quiet by default: warnings only, and none from the SDK's IMDS client, whose every failed
    // attempt off EC2 is a multi-line warning (bake itself never asks IMDS for the region; the
    // credential chain asks it last), and none per credential source that had nothing (bake says
    // when none had credentials). -v shows them with bake's own progress.
    let level = match cli.verbose {
        0 => "warn,aws_config::imds=off,aws_config::meta::credentials::chain=error",
        1 => "warn,bake=info",
        2 => "warn,bake=debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .init();
    match bake::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
