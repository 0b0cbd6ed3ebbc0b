//! The command line: global options and subcommands (clap derive).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::output::Format;

/// Bake verified golden AMIs from user-data templates, and roll them out behind a load balancer.
#[derive(Debug, Parser)]
#[command(name = "bake", version, about, propagate_version = true)]
pub struct Cli {
    /// The config file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "BAKE_CONFIG",
        default_value = "bake.toml"
    )]
    pub config: PathBuf,

    /// How results are printed on stdout.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Text)]
    pub output: Format,

    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the user data IMAGE would get; size, compression and digest go to stderr.
    Render {
        /// An image name from the config (`[image.NAME]`).
        image: String,
    },
    /// Check the config, its templates and the references in them, rendering every image.
    /// Makes no AWS call.
    Validate,
}
