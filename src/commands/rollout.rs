//! `bake rollout NAME`: roll an AMI out to `[rollout.NAME]`, region by region when it names
//! several; prints the URL that serves it (per region).

use std::time::Duration;

use super::{Context, Outcome};
use crate::Error;
use crate::config;
use crate::output::Progress;
use crate::publish::parameter_name;
use crate::rollout::plan::Planned;
use crate::rollout::regions::{self, Pick, Regional};
use crate::rollout::{self, RolledOut};

/// A rollout's stack (ALB, target group, groups, launch template) and a group going away take
/// this long at worst, on top of its refresh and a rollback refresh.
const ROLLOUT_FIXED: Duration = Duration::from_secs(20 * 60);

/// Roll an AMI out to `[rollout.NAME]`: make sure the ALB, target group, security groups,
/// launch template and Auto Scaling group exist, add a launch template version with the AMI,
/// replace the instances with an instance refresh watched through target health, and roll
/// back when the new instances do not become healthy.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// A rollout name from the config (`[rollout.NAME]`).
    #[arg(add = super::completions::rollout_names(super::DEFAULT_CONFIG))]
    pub target: String,
    /// The AMI to roll out; by default the newest one baked from the image's current inputs.
    #[arg(long)]
    pub ami: Option<String>,
    /// Print what the rollout would create, change or replace, with read calls only.
    #[arg(long)]
    pub plan: bool,
    /// With --plan: the SSM parameter path the AMI ids are published under (PREFIX/IMAGE/ami-id).
    #[arg(long, default_value = "/bake", requires = "plan")]
    pub publish_prefix: String,
}

/// A rollout, or with `--plan` what it would do: in one region as ever, or per region for a
/// rollout with several.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum RolloutResult {
    Done(RolledOut),
    Plan(Planned),
    Regions(Regional),
    Plans(Vec<Planned>),
}

impl std::fmt::Display for RolloutResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RolloutResult::Done(done) => done.fmt(f),
            RolloutResult::Plan(plan) => plan.fmt(f),
            RolloutResult::Regions(regions) => regions.fmt(f),
            RolloutResult::Plans(plans) => plans.iter().try_for_each(|p| p.fmt(f)),
        }
    }
}

impl Outcome for RolloutResult {
    /// A rollout across regions is printed region by region, then fails with the region that
    /// failed.
    fn into_result(self) -> Result<(), Error> {
        match self {
            RolloutResult::Regions(Regional {
                failure: Some(failure),
                ..
            }) => Err(Error::Rollout(failure)),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for RolledOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.url)?;
        writeln!(f, "{}: {}", self.asg, self.scaling)?;
        if let Some(probe) = &self.probe {
            writeln!(f, "{probe}")?;
        }
        Ok(())
    }
}

impl Args {
    pub async fn run(self, ctx: &Context) -> Result<RolloutResult, Error> {
        let config = ctx.config()?;
        let target = config.rollout(&self.target)?;
        let clients = ctx.clients(Some(&config), worst_case(target)).await?;
        // Each region the rollout names must hold the image (built or copied there).
        let regions = config.rollout_regions(&self.target, &clients.region)?;
        let pick = match self.ami {
            Some(id) => Pick::Given(id),
            None => Pick::Newest,
        };
        let name = &self.target;
        if self.plan {
            let parameter = parameter_name(&self.publish_prefix, target.image.get_ref());
            let planned = regions::preflight_all(&clients, &config, name, target, &regions, &pick)
                .await
                .map_err(|e| Error::Rollout(Box::new(e)))?;
            let mut plans = Vec::new();
            for regions::Planned {
                clients: here,
                plan,
            } in &planned
            {
                let plan = rollout::plan::plan(here, plan, target, &parameter)
                    .await
                    .map_err(|e| {
                        Error::Rollout(Box::new(rollout::Error {
                            rollout: regions::in_region(name, &here.region, regions.len()),
                            step: e.into(),
                        }))
                    })?;
                plans.push(plan);
            }
            return Ok(match <[Planned; 1]>::try_from(plans) {
                Ok([one]) => RolloutResult::Plan(one),
                Err(plans) => RolloutResult::Plans(plans),
            });
        }
        // Signals are taken from here on (see rollout::run); preflight in every region first.
        let mut signal = tokio::spawn(crate::signal::interrupted());
        let planned = regions::preflight_all(&clients, &config, name, target, &regions, &pick)
            .await
            .map_err(|e| Error::Rollout(Box::new(e)))?;
        let multi = indicatif::MultiProgress::new();
        let several = regions.len() > 1;
        let progress = |region: &str| {
            Progress::new(
                &multi,
                &regions::in_region(name, region, usize::from(several) + 1),
            )
        };
        let mut done = regions::apply_all(name, target, planned, &mut signal, &progress).await;
        if several {
            return Ok(RolloutResult::Regions(done));
        }
        match (
            done.failure.take(),
            done.regions.pop().and_then(|r| r.result),
        ) {
            (Some(failure), _) => Err(Error::Rollout(failure)),
            (None, Some(result)) => Ok(RolloutResult::Done(result)),
            // apply_all gives each region a result or a failure; a region with neither is
            // reported rather than assumed away.
            (None, None) => Err(Error::Regions(vec![format!(
                "rollout {name}: no outcome was recorded for its region"
            )])),
        }
    }
}

/// How long rolling out `r` may take at worst: in each of its regions, its refresh and a
/// rollback refresh, and the stack.
pub fn worst_case(r: &config::Rollout) -> Duration {
    let regions = r.region.as_ref().map_or(1, |g| g.get_ref().0.len().max(1));
    r.refresh
        .get_ref()
        .timeout
        .0
        .saturating_mul(2)
        .saturating_add(ROLLOUT_FIXED)
        .saturating_mul(u32::try_from(regions).unwrap_or(u32::MAX))
}
