//! The `bake` binary: parse arguments, set up logging, run, and turn the outcome into an exit code
//! and an error report (text, or JSON with `-o json`; colour only on a terminal without NO_COLOR).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // A shell asking for completions (BAKE_COMPLETE set by the script) is answered and exits here.
    bake::cli::answer_completion_request();
    let cli = match bake::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
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
        .with_ansi(colour())
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .init();
    let format = cli.output;
    match bake::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            bake::report(format, &e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Colour codes in log lines only for a person at a terminal: never when stderr is a pipe or a
/// file, nor when NO_COLOR is set (https://no-color.org). clap decides the same for its own
/// messages; the progress spinners are drawn only on a terminal and carry no colour.
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A command line clap refused: its own message (exit 2), or with `-o json` one JSON object on
/// stderr like every other error. Help and version go to stdout as usual (exit 0).
fn usage_error(error: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if informational || !json_requested(std::env::args().skip(1)) {
        error.exit();
    }
    let text = error.render().to_string();
    // clap's first paragraph, on one line: "the following required arguments were not provided:
    // <IMAGES>...".
    let message = text
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let json = serde_json::json!({
        "code": error.exit_code(),
        "kind": "usage",
        "message": message,
        "usage": text.trim_end(),
    });
    eprintln!("{json}");
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
}

/// Whether the command line, which clap refused, asks for `-o json` / `--output json`.
fn json_requested(args: impl Iterator<Item = String>) -> bool {
    let mut args = args.take_while(|a| a != "--").peekable();
    while let Some(arg) = args.next() {
        let value = match arg.as_str() {
            "-o" | "--output" => args.peek().cloned(),
            _ => arg
                .strip_prefix("--output=")
                .or_else(|| arg.strip_prefix("-o="))
                .or_else(|| arg.strip_prefix("-o"))
                .map(str::to_owned),
        };
        if value.as_deref() == Some("json") {
            return true;
        }
    }
    false
}
