//! `bake rollout NAME`: roll an AMI out to `[rollout.NAME]`; prints the URL that serves it.

use std::time::Duration;

use super::{Context, Outcome};
use crate::Error;
use crate::config;
use crate::output::Progress;
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
}

impl std::fmt::Display for RolledOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.url)?;
        if let Some(probe) = &self.probe {
            writeln!(f, "{probe}")?;
        }
        Ok(())
    }
}

impl Outcome for RolledOut {}

impl Args {
    pub async fn run(self, ctx: &Context) -> Result<RolledOut, Error> {
        let config = ctx.config()?;
        let target = config.rollout(&self.target)?;
        let clients = ctx.clients(Some(&config), worst_case(target)).await?;
        let multi = indicatif::MultiProgress::new();
        let progress = Progress::new(&multi, &self.target);
        let options = rollout::Options { ami: self.ami };
        rollout::run(&clients, &config, &self.target, target, &options, &progress)
            .await
            .map_err(|step| {
                Error::Rollout(Box::new(rollout::Error {
                    rollout: self.target.clone(),
                    step,
                }))
            })
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
