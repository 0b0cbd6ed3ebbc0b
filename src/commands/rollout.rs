//! `bake rollout NAME`: roll an AMI out to `[rollout.NAME]`; prints the URL that serves it.

use std::time::Duration;

use super::{Context, Outcome};
use crate::Error;
use crate::config;
use crate::output::Progress;
use crate::publish::parameter_name;
use crate::rollout::plan::Planned;
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

/// A rollout, or with `--plan` what it would do.
#[derive(Debug, serde::Serialize)]
#[serde(untagged)]
pub enum RolloutResult {
    Done(RolledOut),
    Plan(Planned),
}

impl std::fmt::Display for RolloutResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RolloutResult::Done(done) => done.fmt(f),
            RolloutResult::Plan(plan) => plan.fmt(f),
        }
    }
}

impl Outcome for RolloutResult {}

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
        let fail = |step| {
            Error::Rollout(Box::new(rollout::Error {
                rollout: self.target.clone(),
                step,
            }))
        };
        if self.plan {
            let parameter = parameter_name(&self.publish_prefix, target.image.get_ref());
            return rollout::plan::plan(
                &clients,
                &config,
                &self.target,
                target,
                self.ami.as_deref(),
                &parameter,
            )
            .await
            .map(RolloutResult::Plan)
            .map_err(fail);
        }
        let multi = indicatif::MultiProgress::new();
        let progress = Progress::new(&multi, &self.target);
        let options = rollout::Options { ami: self.ami };
        rollout::run(&clients, &config, &self.target, target, &options, &progress)
            .await
            .map(RolloutResult::Done)
            .map_err(fail)
    }
}

/// How long rolling out `r` may take at worst: its refresh and a rollback refresh, and the stack.
pub fn worst_case(r: &config::Rollout) -> Duration {
    r.refresh
        .get_ref()
        .timeout
        .0
        .saturating_mul(2)
        .saturating_add(ROLLOUT_FIXED)
}
