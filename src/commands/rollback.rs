//! `bake rollback NAME [--to VERSION]`: put `[rollout.NAME]`'s group back on the launch template
//! version it served before (or VERSION), in `--region` (required when the rollout has several
//! regions; else its one region); prints the URL that serves it.

use super::{Context, Outcome};
use crate::Error;
use crate::output::Progress;
use crate::rollout::rollback::{self, RolledBack};

/// Put a rollout's Auto Scaling group back on the launch template version it served before
/// (or --to VERSION) through an instance refresh, watched through target health with the
/// traffic probe through the load balancer. Works after a rollout that succeeded.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A rollout name from the config (`[rollout.NAME]`).
    #[arg(add = super::completions::rollout_names(super::DEFAULT_CONFIG))]
    pub target: String,
    /// The launch template version to go back to; by default the one the group served before
    /// the version it runs.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub to: Option<i64>,
}

impl std::fmt::Display for RolledBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.url)?;
        if let Some(probe) = &self.probe {
            writeln!(f, "{probe}")?;
        }
        Ok(())
    }
}

impl Outcome for RolledBack {}

impl Args {
    pub async fn run(self, ctx: &Context) -> Result<RolledBack, Error> {
        let config = ctx.config()?;
        let target = config.rollout(&self.target)?;
        let clients = ctx
            .clients(Some(&config), super::rollout::worst_case(target))
            .await?;
        let regions = config.rollout_regions(&self.target, &clients.region)?;
        // The global --region names the region whose group goes back.
        let region = match (&ctx.region, regions.as_slice()) {
            (Some(region), _) if regions.contains(region) => region.clone(),
            (None, [one]) => one.clone(),
            (given, _) => {
                let message = match given {
                    Some(r) => format!(
                        "{r} is not one of rollout {}'s regions ({})",
                        self.target,
                        regions.join(", ")
                    ),
                    None => format!(
                        "rollout {} rolls out to {}: name the region to roll back",
                        self.target,
                        regions.join(", ")
                    ),
                };
                return Err(Error::Config(crate::config::Error::Flag {
                    flag: "--region",
                    message,
                }));
            }
        };
        let clients = clients.in_region(&region);
        let multi = indicatif::MultiProgress::new();
        let progress = Progress::new(&multi, &self.target);
        rollback::run(&clients, &config, &self.target, target, self.to, &progress)
            .await
            .map_err(|error| Error::Rollback {
                rollout: self.target.clone(),
                error: Box::new(error),
            })
    }
}
