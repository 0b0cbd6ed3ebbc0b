//! The command line: global options and subcommands (clap derive).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

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
    #[arg(long, global = true, value_parser = parse_region)]
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
        /// How many of each image's newest AMIs to keep (0 or more).
        #[arg(long, default_value_t = 3, value_parser = parse_keep, allow_negative_numbers = true)]
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
        /// AMIs of each image to keep when pruning (0 or more).
        #[arg(long, default_value_t = 3, value_parser = parse_keep, allow_negative_numbers = true)]
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
        /// Only what is older than this: 0s to 10y ("90m", "2h", "7d").
        #[arg(long, default_value = "2h", value_parser = parse_ttl)]
        ttl: Duration,
        /// List what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The config file when none is named.
pub const DEFAULT_CONFIG: &str = "bake.toml";

impl Cli {
    /// The config file to read: `-c`/`BAKE_CONFIG`, else bake.toml.
    pub fn config_path(&self) -> &Path {
        self.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG))
    }
}

/// `--keep`: a count of AMIs, so a whole number from 0 up.
fn parse_keep(text: &str) -> Result<usize, String> {
    text.trim().parse().map_err(|_| {
        "must be a non-negative whole number (0, 1, 2, ...): how many AMIs to keep".to_owned()
    })
}

/// The longest `--ttl`: ten years as humantime counts them (365.25 days each), so "10y" itself
/// is accepted. Nothing bake leaves behind is older than that.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 31_557_600);

/// `--ttl`: a duration from 0s to [`MAX_TTL`], so the cutoff `now - ttl` is a real time.
/// `--region` must have a region code's shape (as `region` in the config must).
fn parse_region(text: &str) -> Result<String, String> {
    crate::limits::region(text)?;
    Ok(text.to_owned())
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    let range = format!("from 0s to {}", humantime::format_duration(MAX_TTL));
    let ttl = humantime::parse_duration(text)
        .map_err(|e| format!("{e}; write a duration {range}, like \"2h\" or \"7d\""))?;
    if ttl > MAX_TTL {
        return Err(format!("must be {range} (like \"2h\" or \"7d\")"));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_bounded_and_ten_years_as_humantime_counts_them_fits() {
        assert_eq!(humantime::parse_duration("10y").unwrap(), MAX_TTL);
        assert_eq!(parse_ttl("10y").unwrap(), MAX_TTL);
        assert_eq!(parse_ttl("0s").unwrap(), Duration::ZERO);
        let refused = parse_ttl("300000000000y").unwrap_err();
        assert!(refused.contains("from 0s to 10years"), "{refused}");
        assert!(parse_ttl("10y 1s").is_err());
        assert!(
            parse_ttl("soon")
                .unwrap_err()
                .contains("from 0s to 10years")
        );
    }

    #[test]
    fn keep_is_a_non_negative_count() {
        assert_eq!(parse_keep("0"), Ok(0));
        assert_eq!(parse_keep("5"), Ok(5));
        for bad in ["-1", "two", "1.5", ""] {
            assert!(
                parse_keep(bad).unwrap_err().contains("non-negative"),
                "{bad}"
            );
        }
    }
}
