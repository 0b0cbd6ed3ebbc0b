//! `bake rollout`: make sure the stack exists, add a launch template version with the AMI, roll
//! it out with an instance refresh watched through target health, roll back when it fails; or,
//! with `--plan` ([`plan`]), say what that would do.

pub mod plan;
pub mod preflight;
pub mod refresh;
pub mod regions;
pub mod rollback;
pub mod stack;
pub mod traffic;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::aws::{CallError, Clients};
use crate::config::{Config, Rollout};
use crate::janitor::{self, Janitor};
use crate::output::Progress;
use crate::signal;
use preflight::Plan;

/// How `bake rollout` behaves.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The AMI to roll out; by default the newest one baked from the image's current inputs.
    pub ami: Option<String>,
}

/// The result of one rollout.
#[derive(Debug, Clone, Serialize)]
pub struct RolledOut {
    pub rollout: String,
    pub ami_id: String,
    pub ami_name: String,
    pub asg: String,
    pub launch_template: String,
    pub version: i64,
    /// The version the group ran before (none when the group was created now).
    pub previous_version: Option<String>,
    /// False when the group already ran this AMI and nothing was replaced.
    pub changed: bool,
    /// The page, as served through the load balancer.
    pub url: String,
    /// The group's sizes, in-service count, CPU target and alarms after the rollout.
    pub scaling: stack::Scaling,
    pub region: String,
    pub seconds: f64,
    /// What the traffic probe saw during the refresh (none when nothing was replaced or the
    /// group was new).
    pub probe: Option<traffic::Report>,
}

/// A failed step of a rollout.
#[derive(Debug, thiserror::Error)]
pub enum Step {
    #[error(transparent)]
    Preflight(#[from] preflight::Error),
    #[error("{0}")]
    Stack(#[from] CallError),
    #[error("{cause}\nand removing the stack this run created failed too: {cleanup}")]
    StackLeft {
        cause: CallError,
        cleanup: janitor::Error,
    },
    #[error("{cause}\nrolled back: {asg} runs version {to} again")]
    RolledBack {
        cause: refresh::Error,
        asg: String,
        to: String,
    },
    #[error("{cause}\nand the rollback failed too: {rollback}")]
    RollbackFailed {
        cause: refresh::Error,
        rollback: refresh::Error,
    },
    #[error("{cause}\nthe group was new, so this run removed the stack it had created")]
    FirstRolloutFailed { cause: refresh::Error },
    #[error("{cause}\nand removing the stack this run created failed too: {cleanup}")]
    CleanupFailed {
        cause: refresh::Error,
        cleanup: janitor::Error,
    },
    #[error(transparent)]
    Serving(refresh::Error),
    #[error("interrupted by {}; {after}", signal::name(*.signal))]
    Interrupted { signal: u8, after: String },
    /// A step that failed while the traffic probe ran, with what the probe saw.
    #[error("{step}\n{probe}")]
    Probed {
        step: Box<Step>,
        probe: traffic::Report,
    },
}

impl Step {
    /// The step with what the probe saw, when a probe ran.
    async fn probed(self, traffic: Option<traffic::Traffic>) -> Step {
        match traffic {
            Some(t) => Step::Probed {
                step: Box::new(self),
                probe: t.stop().await,
            },
            None => self,
        }
    }
}

/// One rollout's failure.
#[derive(Debug, thiserror::Error)]
#[error("rollout {rollout}: {step}")]
pub struct Error {
    pub rollout: String,
    pub step: Step,
}

impl Error {
    /// 2 for a problem found before anything changed, 128 + signal when interrupted, else 1.
    pub fn exit_code(&self) -> u8 {
        let mut step = &self.step;
        while let Step::Probed { step: inner, .. } = step {
            step = inner;
        }
        match step {
            Step::Preflight(e) => e.exit_code(),
            Step::Interrupted { signal, .. } => *signal,
            _ => 1,
        }
    }
}

/// Rolls the AMI out to `[rollout.NAME]` in `clients`' region.
pub async fn run(
    clients: &Clients,
    config: &Config,
    name: &str,
    rollout: &Rollout,
    options: &Options,
    progress: &Progress,
) -> Result<RolledOut, Step> {
    // Signals are taken from here on; each stage ends cleanly before one is acted on, except the
    // refresh, which is rolled back at once.
    let mut signal = tokio::spawn(signal::interrupted());
    progress.step("checking the config's references");
    let plan = preflight::plan(clients, config, name, rollout, options.ami.as_deref()).await?;
    apply(clients, rollout, plan, progress, &mut signal).await
}

/// Rolls out what `plan` (its preflight, done) resolved, in `clients`' region; `signal` is the
/// run's watch for SIGINT/SIGTERM ([`signal::interrupted`], spawned before the preflight).
pub async fn apply(
    clients: &Clients,
    rollout: &Rollout,
    plan: Plan,
    progress: &Progress,
    signal: &mut JoinHandle<u8>,
) -> Result<RolledOut, Step> {
    let started = Instant::now();
    let name = plan.rollout.as_str();
    if signal.is_finished() {
        return Err(Step::Interrupted {
            signal: signal.await.unwrap_or(130),
            after: "nothing was changed".into(),
        });
    }
    progress.step(format!(
        "making sure {} behind {} exists, with {}",
        plan.names.asg, plan.names.alb, plan.ami.id
    ));
    // What the stack step creates goes into this run's ledger; a signal during it stops it at
    // once, and the ledger and the run's tags find what it had made.
    let janitor = Janitor::new(clients.clone(), janitor::new_run_id());
    let built = tokio::select! {
        built = stack::ensure(clients, &plan, rollout, &janitor) => Ok(built),
        code = &mut *signal => Err(code.unwrap_or(130)),
    };
    let stack = match built {
        Ok(built) => built?,
        Err(code) => {
            let after = match janitor.clean().await {
                Ok(_) => "removed what this run had created".to_owned(),
                Err(e) => format!("removing what this run had created failed: {e}"),
            };
            return Err(Step::Interrupted {
                signal: code,
                after,
            });
        }
    };
    let url = format!(
        "http://{}{}{}",
        stack.alb_dns,
        match rollout.alb_port {
            80 => String::new(),
            port => format!(":{port}"),
        },
        plan.health.path.get_ref()
    );
    let mut refresh_id = None;
    let mut traffic = None;
    let janitor = &janitor;
    if !stack.unchanged {
        if !stack.group_created {
            traffic = Some(traffic::for_refresh(&stack, &plan, rollout));
        }
        let work = async {
            if !stack.group_created {
                let id = refresh::start(clients, &plan, &stack, rollout).await?;
                refresh_id = Some(id);
            }
            refresh::watch(
                clients,
                &plan,
                &stack,
                rollout,
                refresh_id.as_deref(),
                progress,
            )
            .await
        };
        let guarded = async {
            match &traffic {
                Some(t) => tokio::select! {
                    result = work => result,
                    tripped = t.tripped() => Err(refresh::Error::Traffic(tripped)),
                },
                None => work.await,
            }
        };
        let mut outcome = tokio::select! {
            result = guarded => result.map_err(Failure::Rollout),
            code = &mut *signal => Err(Failure::Signal(code.unwrap_or(130))),
        };
        // The requests sent during the refresh that are still in flight count too.
        if outcome.is_ok()
            && let Some(t) = traffic.as_mut()
            && let Some(tripped) = t.settle().await
        {
            outcome = Err(Failure::Rollout(refresh::Error::Traffic(tripped)));
        }
        if let Err(failure) = outcome {
            let step = undo(
                Undo {
                    clients,
                    plan: &plan,
                    stack: &stack,
                    rollout,
                    janitor,
                },
                refresh_id.as_deref(),
                failure,
                progress,
            )
            .await;
            return Err(step.probed(traffic).await);
        }
    }
    let probe = match traffic {
        Some(t) => Some(t.stop().await),
        None => None,
    };
    if let Some(report) = &probe {
        progress.step(report.to_string());
    }
    tokio::select! {
        served = refresh::serving(&plan, &url, progress) => served.map_err(Step::Serving)?,
        code = &mut *signal => return Err(Step::Interrupted {
            signal: code.unwrap_or(130),
            after: format!("{} had been rolled out; it was not yet seen through {url}", plan.ami.id),
        }),
    }
    let done = if stack.unchanged {
        format!(
            "{} already runs {}; serving {url}",
            plan.names.asg, plan.ami.id
        )
    } else {
        format!(
            "{} runs {} (launch template {} version {}); serving {url}",
            plan.names.asg, plan.ami.id, plan.names.launch_template, stack.version
        )
    };
    if !stack.unchanged
        && let Err(e) = rollback::record_served(clients, &plan.names.asg, stack.version).await
    {
        crate::output::note(&format!(
            "{}: could not record version {} in its history ({e}); `bake rollback` will fall \
             back to the version numbered below the one it runs",
            plan.names.asg, stack.version
        ));
    }
    let scaling = stack::scaling(clients, &plan).await?;
    progress.finish(done);
    Ok(RolledOut {
        rollout: name.to_owned(),
        ami_id: plan.ami.id.clone(),
        ami_name: plan.ami.name.clone(),
        asg: plan.names.asg.clone(),
        launch_template: plan.names.launch_template.clone(),
        version: stack.version,
        previous_version: stack.previous_version.clone(),
        changed: !stack.unchanged,
        url,
        scaling,
        region: clients.region.clone(),
        seconds: started.elapsed().as_secs_f64(),
        probe,
    })
}

/// Why the new version did not take over.
enum Failure {
    Rollout(refresh::Error),
    Signal(u8),
}

/// What [`undo`] works on.
struct Undo<'a> {
    clients: &'a Clients,
    plan: &'a Plan,
    stack: &'a stack::Stack,
    rollout: &'a Rollout,
    /// The ledger of what this run's stack step created.
    janitor: &'a Janitor,
}

/// Puts things back after a failed or interrupted rollout: the refresh is rolled back; a group
/// created by this run is removed with the rest of the stack this run created.
async fn undo(
    Undo {
        clients,
        plan,
        stack,
        rollout,
        janitor,
    }: Undo<'_>,
    refresh_id: Option<&str>,
    failure: Failure,
    progress: &Progress,
) -> Step {
    let (cause, signal) = match failure {
        Failure::Rollout(e) => (e, None),
        Failure::Signal(signal) => (
            refresh::Error::Ended {
                asg: plan.names.asg.clone(),
                status: "interrupted".into(),
                reason: "by a signal".into(),
            },
            Some(signal),
        ),
    };
    let step = if stack.group_created {
        progress.step("removing the stack this run created");
        match janitor.clean_recorded().await {
            Ok(_) => Step::FirstRolloutFailed { cause },
            Err(cleanup) => Step::CleanupFailed { cause, cleanup },
        }
    } else if let Some(id) = refresh_id {
        match refresh::rollback(clients, plan, stack, rollout, id, progress).await {
            Ok(()) => Step::RolledBack {
                cause,
                asg: plan.names.asg.clone(),
                to: stack
                    .previous_version
                    .clone()
                    .unwrap_or_else(|| "the previous version".into()),
            },
            Err(rollback) => Step::RollbackFailed { cause, rollback },
        }
    } else {
        Step::Serving(cause)
    };
    let Some(signal) = signal else {
        return step;
    };
    let after = match &step {
        Step::FirstRolloutFailed { .. } => "removed the stack this run created".to_owned(),
        Step::RolledBack { asg, to, .. } => format!("rolled back: {asg} runs version {to} again"),
        other => other.to_string(),
    };
    Step::Interrupted { signal, after }
}
