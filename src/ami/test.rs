//! The test stage: one instance launched from the new AMI with no user data, in the builder's
//! subnet and security group, must become healthy and pass the verify commands and
//! `test.commands`; the AMI is tagged `bake:test` with the verdict.

use std::time::Duration;

use aws_sdk_ec2::types::Tag;
use tokio::time::Instant;

use super::launch::{self, Spec};
use super::preflight::Plan;
use super::{health, share, verify};
use crate::aws::{CallError, Clients};
use crate::config::{Access, Image};
use crate::janitor::Janitor;
use crate::output::Progress;
use crate::tags;

/// Why the new AMI failed its test.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the test of {ami_id} failed: test instance {instance_id}, launched from it with no user \
         data, {stage}: {source}"
    )]
    Failed {
        ami_id: String,
        instance_id: String,
        /// "did not become healthy", "failed its commands".
        stage: &'static str,
        source: Failure,
    },
    #[error("the test of {ami_id} could not launch its instance: {source}")]
    Launch {
        ami_id: String,
        source: launch::Error,
    },
    #[error("tagging {ami_id} bake:test={value}: {source}")]
    Tag {
        ami_id: String,
        value: &'static str,
        source: CallError,
    },
}

impl Error {
    /// The AMI under test.
    pub fn ami_id(&self) -> &str {
        match self {
            Error::Failed { ami_id, .. }
            | Error::Launch { ami_id, .. }
            | Error::Tag { ami_id, .. } => ami_id,
        }
    }
}

/// What failed on the test instance.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Health(#[from] health::Error),
    #[error(transparent)]
    Verify(#[from] verify::Error),
}

/// What the test stage did.
#[derive(Debug, Clone)]
pub struct Tested {
    pub instance_id: String,
    pub seconds: f64,
}

/// Launches the test instance from `ami_id` and waits for it as for the builder (from the runner
/// for a public builder, through SSM on the instance for a private one) within `test.timeout`,
/// then runs the verify commands and `test.commands` on it. The janitor terminates it with the
/// builder.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    clients: &Clients,
    image: &Image,
    plan: &Plan,
    ami_id: &str,
    group: &str,
    tags: &[Tag],
    janitor: &Janitor,
    progress: &Progress,
) -> Result<Tested, Error> {
    let started = Instant::now();
    progress.step(format!(
        "testing {ami_id}: launching an instance without user data"
    ));
    let spec = Spec::test(plan, janitor.run_id(), ami_id);
    let instance_id = launch::instance(clients, plan, &image.builder, &spec, group, tags, janitor)
        .await
        .map_err(|source| Error::Launch {
            ami_id: ami_id.to_owned(),
            source,
        })?;
    let failed = |stage, source: Failure| Error::Failed {
        ami_id: ami_id.to_owned(),
        instance_id: instance_id.clone(),
        stage,
        source,
    };
    healthy(clients, image, plan, &instance_id, progress)
        .await
        .map_err(|e| failed("did not become healthy", e.into()))?;
    let commands: Vec<String> = image
        .verify
        .commands
        .iter()
        .chain(&image.test.commands)
        .cloned()
        .collect();
    let timeout = verify::timeout_of(&image.verify);
    verify::run(
        clients,
        &instance_id,
        &plan.rendered.digest,
        &commands,
        timeout,
        progress,
    )
    .await
    .map_err(|e| failed("failed its commands", e.into()))?;
    Ok(Tested {
        instance_id,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Running, then healthy and Online in SSM within `test.timeout`: from the runner over HTTP (with
/// SSM's registration alongside) for a public builder; Online, then the probe on the instance
/// through SSM, for a private one.
async fn healthy(
    clients: &Clients,
    image: &Image,
    plan: &Plan,
    instance_id: &str,
    progress: &Progress,
) -> Result<(), health::Error> {
    let ip = health::running(clients, instance_id, "the test instance", progress).await?;
    let deadline = crate::poll::deadline(image.test.timeout.0);
    match plan.access {
        Access::Public => {
            let ip = ip.ok_or_else(|| health::Error::NoPublicIp {
                instance_id: instance_id.to_owned(),
                region: clients.region.clone(),
            })?;
            tokio::try_join!(
                health::http(instance_id, &ip, &image.health, deadline, progress),
                health::ssm_online(clients, instance_id, deadline),
            )?;
        }
        Access::Private => {
            progress.step(format!(
                "waiting for test instance {instance_id} to come Online in SSM"
            ));
            health::ssm_online(clients, instance_id, deadline).await?;
            health::through_ssm(clients, instance_id, &image.health, deadline, progress).await?;
        }
    }
    Ok(())
}

/// Tags the AMI `bake:test=VALUE` (the image only: its snapshots keep the value they were
/// created with, and nothing reads it there).
pub async fn mark(clients: &Clients, ami_id: &str, value: &'static str) -> Result<(), Error> {
    share::add_tag(clients, ami_id, tags::tag(tags::TEST, value), || {
        format!("tag {ami_id} {}={value}", tags::TEST)
    })
    .await
    .map_err(|source| Error::Tag {
        ami_id: ami_id.to_owned(),
        value,
        source,
    })
}

/// How long a test may take at worst beyond its timeouts: the instance reaching `running` (10
/// min, as the builder's wait).
pub const TEST_FIXED: Duration = Duration::from_secs(10 * 60);
