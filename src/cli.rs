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

    /// The AWS profile: its credentials win over AWS_ACCESS_KEY_ID in the environment, as in the
    /// AWS CLI (the standard credential chain otherwise).
    #[arg(long, global = true)]
    pub profile: Option<String>,

    /// The AWS region; else AWS_REGION, the profile's region, then `region` in the config.
    #[arg(long, global = true)]
    pub region: Option<String>,

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
    /// Bake verified golden AMIs: launch a builder, wait for HTTP health, verify through SSM,
    /// create the AMI, terminate the builder. Prints the AMI id.
    Ami {
        /// Image names from the config; several are baked at once.
        #[arg(required_unless_present = "all")]
        images: Vec<String>,
        /// Bake every image in the config.
        #[arg(long, conflicts_with = "images")]
        all: bool,
        /// Bake even when an AMI with the same inputs exists.
        #[arg(long)]
        force: bool,
        /// On failure leave the builder running to look at it (remove it later with `bake gc`).
        #[arg(long)]
        keep_on_failure: bool,
        /// What's-my-IP service for `allow_cidr = "auto"`; it answers with one IPv4 address.
        #[arg(
            long,
            env = "BAKE_CHECKIP_URL",
            default_value = "https://checkip.amazonaws.com"
        )]
        checkip_url: String,
    },
    /// Roll an AMI out to `[rollout.NAME]`: make sure the ALB, target group, security groups,
    /// launch template and Auto Scaling group exist, add a launch template version with the AMI,
    /// replace the instances with an instance refresh watched through target health, and roll
    /// back when the new instances do not become healthy.
    Rollout {
        /// A rollout name from the config (`[rollout.NAME]`).
        target: String,
        /// The AMI to roll out; by default the newest one baked from the image's current inputs.
        #[arg(long)]
        ami: Option<String>,
    },
    /// Deregister old AMIs of images and delete their snapshots, keeping the newest and every
    /// AMI still used by an instance, a launch template or an Auto Scaling group.
    Prune {
        /// Image names from the config.
        #[arg(required_unless_present = "all")]
        images: Vec<String>,
        /// Prune every image in the config.
        #[arg(long, conflicts_with = "images")]
        all: bool,
        /// How many of each image's newest AMIs to keep.
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// List what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
        /// Where `bake pipeline` publishes (PREFIX/IMAGE/ami-id): the AMI in that parameter, in
        /// any region, is kept.
        #[arg(long, default_value = "/bake")]
        publish_prefix: String,
    },
    /// The cron job: bake every image whose inputs changed, publish its AMI id in SSM Parameter
    /// Store, roll it out to its rollouts, prune its old AMIs. One event per step.
    Pipeline {
        /// AMIs of each image to keep when pruning.
        #[arg(long, default_value_t = 3)]
        keep: usize,
        /// SSM parameter path for the AMI ids: PREFIX/IMAGE/ami-id.
        #[arg(long, default_value = "/bake")]
        publish_prefix: String,
        /// What's-my-IP service for `allow_cidr = "auto"`; it answers with one IPv4 address.
        #[arg(
            long,
            env = "BAKE_CHECKIP_URL",
            default_value = "https://checkip.amazonaws.com"
        )]
        checkip_url: String,
    },
    /// Delete what killed runs left behind (found by their bake:run-id tag): instances, security
    /// groups, unfinished images and unused snapshots older than the TTL.
    Gc {
        /// Only what is older than this.
        #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}
