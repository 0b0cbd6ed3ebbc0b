//! bake: turns user-data templates into verified golden AMIs and rolls them out.
//!
//! The binary is a thin wrapper around [`run`] and [`report`]; each module owns one part of the
//! work. This one dispatches commands and says how they failed (exit code, text or JSON).
//!
//! # Layers
//!
//! Modules depend only on modules of their own layer or below, and never in a cycle
//! (`tests/layers.rs` holds the tree to this):
//!
//! 1. [`config`], [`aws`], [`iam`], [`poll`], [`output`], [`limits`], [`render`], [`signal`]: the
//!    config, AWS calls and answers, the IAM policy as data, waiting, printing, AWS's limits, user
//!    data, signals.
//! 2. [`resolve`], [`probe`], [`tags`], [`records`]: finding what the config names, the HTTP
//!    health probe, every tag key, the bake records and what changed between two AMIs.
//! 3. [`janitor`], [`lease`]: what a run created, and its cleanup; the per-image lease in S3.
//! 4. [`ami`], [`rollout`], [`prune`], [`publish`]: the work itself.
//! 5. [`commands`] (one module per subcommand), [`cli`], and this root: the command line, the
//!    dispatch and the [`Error`] every command returns.

pub mod ami;
pub mod aws;
pub mod cli;
pub mod commands;
pub mod config;
pub mod iam;
pub mod janitor;
pub mod lease;
pub mod limits;
pub mod output;
pub mod poll;
pub mod probe;
pub mod prune;
pub mod publish;
pub mod records;
pub mod render;
pub mod resolve;
pub mod rollout;
pub mod signal;
pub mod tags;

use cli::{Cli, Command};
use commands::{Context, Outcome};

/// Why a command failed; each variant maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Render(#[from] render::Error),
    /// Several problems found by `bake validate`.
    #[error("{}", join(.0))]
    Invalid(Vec<Error>),
    #[error(transparent)]
    Aws(#[from] aws::Error),
    /// Images that failed to bake (the others are reported on stdout).
    #[error("{}", join(.0))]
    Ami(Vec<ami::Error>),
    #[error(transparent)]
    Rollout(Box<rollout::Error>),
    /// `bake rollback`'s failure.
    #[error("rollback {rollout}: {error}")]
    Rollback {
        rollout: String,
        error: Box<rollout::rollback::Error>,
    },
    #[error(transparent)]
    Prune(#[from] prune::Error),
    /// `bake diff` or `bake status` could not read what they compare.
    #[error(transparent)]
    Records(#[from] records::Error),
    /// Steps of `bake pipeline` that failed (each also reported as an event).
    #[error("{}", .0.join("\n"))]
    Pipeline(Vec<String>),
    /// The regions where `gc` or `prune` failed (the others are reported on stdout).
    #[error("{}", .0.join("\n"))]
    Regions(Vec<String>),
    #[error(transparent)]
    Lock(#[from] commands::pipeline::LockError),
    #[error(transparent)]
    Cleanup(#[from] janitor::Error),
    #[error(transparent)]
    Init(#[from] commands::init::Error),
    #[error("interrupted by {}; cleaned up what this run created", signal::name(*.0))]
    Interrupted(u8),
    #[error("cannot write the result: {0}")]
    Output(#[from] std::io::Error),
}

impl From<ami::Stopped> for Error {
    fn from(stopped: ami::Stopped) -> Error {
        match stopped {
            ami::Stopped::Render(e) => Error::Render(e),
            ami::Stopped::Preflight(failed) => Error::Ami(failed),
            ami::Stopped::Interrupted(signal) => Error::Interrupted(signal),
        }
    }
}

fn join<E: ToString>(errors: &[E]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Error {
    /// The process exit code: 2 for bad usage or config, 1 for a failed run, 128 + signal when
    /// interrupted.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Render(_) | Error::Invalid(_) | Error::Aws(_) => 2,
            Error::Ami(errors) => errors.iter().map(ami::Error::exit_code).max().unwrap_or(1),
            Error::Rollout(e) => e.exit_code(),
            Error::Rollback { error, .. } => error.exit_code(),
            Error::Records(e) => e.exit_code(),
            Error::Interrupted(code) => *code,
            Error::Init(e) => e.exit_code(),
            Error::Cleanup(_)
            | Error::Prune(_)
            | Error::Pipeline(_)
            | Error::Regions(_)
            | Error::Lock(_)
            | Error::Output(_) => 1,
        }
    }

    /// What failed, as `-o json` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Render(_) => "template",
            Error::Invalid(_) => "invalid",
            Error::Aws(_) => "aws-setup",
            Error::Ami(_) => "ami",
            Error::Rollout(_) => "rollout",
            Error::Rollback { .. } => "rollback",
            Error::Prune(_) => "prune",
            Error::Records(_) => "records",
            Error::Pipeline(_) => "pipeline",
            Error::Regions(_) => "regions",
            Error::Lock(_) => "lock",
            Error::Cleanup(_) => "cleanup",
            Error::Init(_) => "init",
            Error::Interrupted(_) => "interrupted",
            Error::Output(_) => "output",
        }
    }

    /// The problems this error is made of, each with its message and place when it has one:
    /// one for most errors, one per problem for `validate`, one per image for `ami`.
    fn problems(&self) -> Vec<Problem> {
        let one = |position| {
            vec![Problem {
                kind: self.kind(),
                message: self.to_string(),
                position,
            }]
        };
        match self {
            Error::Config(e) => e
                .problems()
                .into_iter()
                .map(|p| Problem {
                    kind: self.kind(),
                    message: p.to_string(),
                    position: config_position(p),
                })
                .collect(),
            Error::Render(e) => one(render_position(e)),
            Error::Invalid(errors) => errors.iter().flat_map(Error::problems).collect(),
            Error::Ami(errors) => errors
                .iter()
                .map(|e| Problem {
                    kind: "ami",
                    message: e.to_string(),
                    position: match &e.step {
                        ami::Step::Preflight(p) => preflight_position(p),
                        _ => None,
                    },
                })
                .collect(),
            Error::Rollout(e) => one(match &e.step {
                rollout::Step::Preflight(p) => preflight_position(p),
                _ => None,
            }),
            Error::Pipeline(failures) => failures
                .iter()
                .map(|message| Problem {
                    kind: "pipeline",
                    message: message.clone(),
                    position: None,
                })
                .collect(),
            _ => one(None),
        }
    }

    /// The error as `-o json` reports it: `code` (the exit code), `kind`, `message`, and `file`,
    /// `line` and `column` when it is at one place; `errors` lists the problems when there are
    /// several, each with its `kind`, `message` and place.
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "code": self.exit_code(),
            "kind": self.kind(),
            "message": self.to_string(),
        });
        let problems = self.problems();
        match problems.as_slice() {
            [one] => {
                if let Some(position) = &one.position {
                    position.add_to(&mut json);
                }
            }
            many => {
                json["errors"] = many.iter().map(Problem::to_json).collect();
            }
        }
        json
    }
}

/// One problem of an error, for `-o json`.
struct Problem {
    kind: &'static str,
    message: String,
    position: Option<Position>,
}

impl Problem {
    fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({ "kind": self.kind, "message": self.message });
        if let Some(position) = &self.position {
            position.add_to(&mut json);
        }
        json
    }
}

/// A place in a file: a config's `file:line:col`, or a template's file and line.
struct Position {
    file: String,
    line: usize,
    column: Option<usize>,
}

impl Position {
    fn add_to(&self, json: &mut serde_json::Value) {
        json["file"] = self.file.clone().into();
        json["line"] = self.line.into();
        if let Some(column) = self.column {
            json["column"] = column.into();
        }
    }
}

impl From<&config::Location> for Position {
    fn from(at: &config::Location) -> Position {
        Position {
            file: at.path.display().to_string(),
            line: at.line,
            column: Some(at.col),
        }
    }
}

fn config_position(e: &config::Error) -> Option<Position> {
    e.location().map(Position::from)
}

/// A template's or a reference's place: file, line and (when known) column.
impl From<(String, usize, Option<usize>)> for Position {
    fn from((file, line, column): (String, usize, Option<usize>)) -> Position {
        Position { file, line, column }
    }
}

fn render_position(e: &render::Error) -> Option<Position> {
    e.location().map(Position::from)
}

fn preflight_position(e: &resolve::Error) -> Option<Position> {
    e.position().map(Position::from)
}

/// Reports a failed command on stderr: `error: ...` for people, or with `-o json` one JSON object
/// on one line ([`Error::to_json`]); stdout keeps only results.
pub fn report(format: output::Format, error: &Error) {
    match format {
        output::Format::Text => output::note(&format!("error: {error}")),
        output::Format::Json => output::note(&error.to_json().to_string()),
    }
}

/// Runs one command line: each command's `run`, then its result printed.
pub fn run(cli: Cli) -> Result<(), Error> {
    let ctx = cli.context();
    if !matches!(cli.command, Command::Gc(_) | Command::Prune(_)) {
        ctx.one_region()?;
    }
    match cli.command {
        Command::Render(args) => finish(&ctx, args.run(&ctx)),
        Command::Validate(args) => finish(&ctx, args.run(&ctx)),
        Command::Ami(args) => finish(&ctx, runtime().block_on(args.run(&ctx))),
        Command::Rollout(args) => finish(&ctx, runtime().block_on(args.run(&ctx))),
        Command::Rollback(args) => finish(&ctx, runtime().block_on(args.run(&ctx))),
        Command::Prune(args) => finish(&ctx, runtime().block_on(args.run(&ctx))),
        Command::Pipeline(args) => finish(&ctx, runtime().block_on(args.run(&ctx))),
        Command::Gc(args) => finish(&ctx, runtime().block_on(args.run(&ctx))),
        Command::Init(args) => finish(&ctx, runtime().block_on(args.run(&ctx))),
        Command::Schema(args) => args.run(),
        Command::Completions(args) => args.run(),
        Command::Man(args) => args.run(<Cli as clap::CommandFactory>::command()),
        Command::Diff(args) => finish(&ctx, runtime().block_on(args.run(&ctx))),
        Command::Status(args) => finish(&ctx, runtime().block_on(args.run(&ctx))),
        Command::IamPolicy(args) => finish(&ctx, args.run(&ctx)),
    }
}

/// Prints a command's result (unless it printed itself as it went), then ends as it says.
fn finish(ctx: &Context, outcome: Result<impl Outcome, Error>) -> Result<(), Error> {
    let outcome = outcome?;
    if !outcome.printed() {
        output::print(ctx.format, &outcome)?;
    }
    outcome.into_result()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}
