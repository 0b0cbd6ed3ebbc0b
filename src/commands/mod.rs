//! One module per subcommand, each with its clap `Args`, its `run` and its result (text through
//! `Display`, `-o json` through `Serialize`); and what they share: the [`Context`] of global
//! options, the image selection ([`Images`]) and the what's-my-IP service ([`CheckIp`]).

pub mod ami;
pub mod completions;
pub mod diff;
pub mod gc;
pub mod iam_policy;
pub mod init;
pub mod pipeline;
pub mod prune;
pub mod render;
pub mod rollback;
pub mod rollout;
pub mod schema;
pub mod status;
pub mod validate;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::Error;
use crate::aws::{self, Clients};
use crate::config::Config;
use crate::output::Format;

/// The config file when none is named.
pub const DEFAULT_CONFIG: &str = "bake.toml";

/// prune and gc at worst: listing, deregistering and deleting with their settle windows.
const HOUSEKEEPING: Duration = Duration::from_secs(15 * 60);

/// What a command hands back: printed on stdout as text for people ([`Display`]) or as one JSON
/// object with `-o json` ([`Serialize`]).
pub trait Outcome: Display + Serialize {
    /// Whether it was printed as it happened (the pipeline's events), leaving nothing to print.
    fn printed(&self) -> bool {
        false
    }

    /// The error the command exits with once its result is printed: images that failed to bake,
    /// pipeline steps that failed.
    fn into_result(self) -> Result<(), Error>
    where
        Self: Sized,
    {
        Ok(())
    }
}

/// The global options every command runs with.
#[derive(Debug, Clone)]
pub struct Context {
    /// How results are printed.
    pub format: Format,
    /// `-c`/`BAKE_CONFIG`, when given.
    pub config: Option<PathBuf>,
    pub profile: Option<String>,
    /// The first `--region`: the run's region.
    pub region: Option<String>,
    /// Every `--region` given (only `gc` and `prune` take more than one).
    pub regions: Vec<String>,
}

impl Context {
    /// An error unless `--region` was given at most once (a command that works in one region).
    pub fn one_region(&self) -> Result<(), Error> {
        if self.regions.len() > 1 {
            return Err(Error::Config(crate::config::Error::Flag {
                flag: "--region",
                message: format!(
                    "given {} times ({}); only gc and prune work in several regions",
                    self.regions.len(),
                    self.regions.join(", ")
                ),
            }));
        }
        Ok(())
    }
}

impl Context {
    /// The config file to read: `-c`/`BAKE_CONFIG`, else bake.toml.
    pub fn config_path(&self) -> &Path {
        self.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG))
    }

    /// Reads the config; a missing one is an error.
    pub fn config(&self) -> Result<Config, Error> {
        Ok(Config::load(self.config_path())?)
    }

    /// Where to connect for a command that may run `runs_for` at worst.
    pub fn target(&self, config: Option<&Config>, runs_for: Duration) -> aws::Target {
        aws::Target {
            profile: self.profile.clone(),
            region: self.region.clone(),
            config_region: config.and_then(|c| c.region.clone()),
            runs_for,
        }
    }

    /// The AWS clients for a command that may run `runs_for` at worst.
    pub async fn clients(
        &self,
        config: Option<&Config>,
        runs_for: Duration,
    ) -> Result<Clients, Error> {
        Ok(Clients::load(&self.target(config, runs_for)).await?)
    }
}

/// Which images a command works on: those named, or `--all` of the config's. Each command gives
/// the two their own help (`mut_arg`).
#[derive(Debug, Clone, clap::Args)]
pub struct Images {
    #[arg(required_unless_present = "all", add = completions::image_names(DEFAULT_CONFIG))]
    pub images: Vec<String>,
    #[arg(long, conflicts_with = "images")]
    pub all: bool,
}

impl Images {
    /// The images to work on, each once, in their first order (`bake ami web web` bakes web
    /// once); every one must be in the config.
    pub fn names(&self, config: &Config) -> Result<Vec<String>, Error> {
        if self.all {
            return Ok(config.image.keys().cloned().collect());
        }
        let mut seen = std::collections::BTreeSet::new();
        let names: Vec<String> = self
            .images
            .iter()
            .filter(|name| seen.insert(name.as_str()))
            .cloned()
            .collect();
        for name in &names {
            config.image(name)?;
        }
        Ok(names)
    }
}

/// The what's-my-IP service for `allow_cidr = "auto"`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckIp {
    /// What's-my-IP service for `allow_cidr = "auto"`; it answers with one IPv4 address.
    #[arg(
        long,
        env = "BAKE_CHECKIP_URL",
        default_value = "https://checkip.amazonaws.com"
    )]
    pub checkip_url: String,
}

/// The exit of a command whose parts fail one by one: Ok when none failed, else `error` of every
/// failure, so each is named.
fn none_failed<T>(failed: Vec<T>, error: impl FnOnce(Vec<T>) -> Error) -> Result<(), Error> {
    if failed.is_empty() {
        Ok(())
    } else {
        Err(error(failed))
    }
}

/// What a listing says was done: `done`, or with `--dry-run` what `would` be.
fn verb(dry_run: bool, done: &'static str, would: &'static str) -> &'static str {
    if dry_run { would } else { done }
}

/// `--keep`: a count of AMIs, so a whole number from 0 up.
fn parse_keep(text: &str) -> Result<usize, String> {
    text.trim().parse().map_err(|_| {
        "must be a non-negative whole number (0, 1, 2, ...): how many AMIs to keep".to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
