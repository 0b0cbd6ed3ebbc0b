//! The command line: the global options and the subcommands, each one's arguments in its module
//! under `commands/` (clap derive).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{self, Context};
use crate::output::Format;

/// Bake verified golden AMIs from user-data templates, and roll them out behind a load balancer.
#[derive(Debug, Parser)]
#[command(name = "bake", version, about, propagate_version = true)]
pub struct Cli {
    /// The config file [default: bake.toml]. Every command reads it, and a missing one is an
    /// error; only `gc` runs without one when none is named and bake.toml does not exist.
    #[arg(long, short = 'c', global = true, env = "BAKE_CONFIG")]
    pub config: Option<PathBuf>,

    /// How results are printed on stdout. With json, an error is one JSON object on stderr
    /// (code, kind, message, and file/line/column when it has a place).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// The AWS profile: its credentials win over AWS_ACCESS_KEY_ID in the environment, as in the
    /// AWS CLI (the standard credential chain otherwise).
    #[arg(long, global = true)]
    pub profile: Option<String>,

    /// The AWS region; else AWS_REGION, the profile's region, then `region` in the config.
    /// `gc` and `prune` take it more than once, to work in each region named.
    #[arg(long, global = true, value_parser = parse_region, action = clap::ArgAction::Append)]
    pub region: Vec<String>,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands; each one's help is its `Args`' doc comment.
#[derive(Debug, Subcommand)]
pub enum Command {
    Render(commands::render::Args),
    Validate(commands::validate::Args),
    Ami(commands::ami::Args),
    Rollout(commands::rollout::Args),
    Rollback(commands::rollback::Args),
    Prune(commands::prune::Args),
    Pipeline(commands::pipeline::Args),
    Gc(commands::gc::Args),
    Init(commands::init::Args),
    Schema(commands::schema::Args),
    Completions(commands::completions::Args),
    Man(commands::completions::ManArgs),
    Diff(commands::diff::Args),
    Status(commands::status::Args),
    IamPolicy(commands::iam_policy::Args),
}

impl Cli {
    /// The global options, as every command gets them.
    pub fn context(&self) -> Context {
        Context {
            format: self.output,
            config: self.config.clone(),
            profile: self.profile.clone(),
            region: self.region.first().cloned(),
            regions: self.region.clone(),
        }
    }
}

/// Answers a shell's completion request and exits, when this process was started by a
/// completion script (`BAKE_COMPLETE` set, see `bake completions`); otherwise returns at once.
/// Runs before anything else writes to stdout.
pub fn answer_completion_request() {
    clap_complete::env::CompleteEnv::with_factory(<Cli as clap::CommandFactory>::command)
        .var(commands::completions::COMPLETE_VAR)
        .complete();
}

/// `--region` must have a region code's shape (as `region` in the config must).
fn parse_region(text: &str) -> Result<String, String> {
    crate::limits::region(text)?;
    Ok(text.to_owned())
}
