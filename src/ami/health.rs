//! Waiting for the builder: running with a public address, healthy over HTTP, and Online in SSM.

use std::time::Duration;

use aws_sdk_ec2::types::InstanceStateName;
use aws_sdk_ssm::types::{InstanceInformationStringFilter, PingStatus};
use tokio::time::Instant;

use crate::aws::{self, CallError, Clients};
use crate::config::Health;
use crate::output::Progress;
use crate::poll::{self, Check, PollError, Schedule};
use crate::probe;

/// pending → running takes 5–20 s on EC2 (5 s in the bench's lab): first look at 4 s, every
/// 0.8 s while it usually happens (to 25 s, so it is seen within a second), then growing to 5 s.
const RUNNING_SCHEDULE: Schedule = Schedule::every(Duration::from_millis(800))
    .first_after(Duration::from_secs(4))
    .dense_for(Duration::from_secs(25))
    .growing(1.3, Duration::from_secs(5));
/// A new instance that is not running after 10 minutes never will be.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(600);
/// HTTP probes cost no API calls: every half second, so health is seen within a second.
const HTTP_SCHEDULE: Schedule = Schedule::every(Duration::from_millis(500));
/// The SSM agent registers 5–60 s after boot: first look at 2 s, every 0.8 s for a minute (the
/// usual window), then growing to 5 s; these calls overlap the HTTP health wait.
const SSM_SCHEDULE: Schedule = Schedule::every(Duration::from_millis(800))
    .first_after(Duration::from_secs(2))
    .dense_for(Duration::from_secs(60))
    .growing(1.3, Duration::from_secs(5));

/// Why the builder did not become ready.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("builder {instance_id} in {region} stopped booting: {state}")]
    Died {
        instance_id: String,
        region: String,
        state: String,
    },
    #[error("builder {instance_id} in {region} has no public address; the subnet must assign one")]
    NoPublicIp { instance_id: String, region: String },
    #[error("builder {instance_id} in {region} was not running within {waited:?}: {last}")]
    NotRunning {
        instance_id: String,
        region: String,
        waited: Duration,
        last: String,
    },
    #[error(
        "builder {instance_id} was not healthy at {url} within {waited:?}; last answer: {last}. \
         Its user data log is /var/log/bake-userdata.log"
    )]
    Unhealthy {
        instance_id: String,
        url: String,
        waited: Duration,
        last: String,
    },
    #[error(
        "builder {instance_id} in {region} did not come Online in SSM within {waited:?} ({last}); \
         does it run the SSM agent (Debian's AMIs ship none: the user data must install it), does \
         its instance profile have AmazonSSMManagedInstanceCore, and the subnet a way to reach SSM?"
    )]
    SsmOffline {
        instance_id: String,
        region: String,
        waited: Duration,
        last: String,
    },
    #[error(transparent)]
    Api(#[from] CallError),
}

/// Waits for the builder to run; returns its public IP.
pub async fn running(
    clients: &Clients,
    instance_id: &str,
    progress: &Progress,
) -> Result<String, Error> {
    let step = "waiting for the builder to run";
    progress.step(format!("{step}: {instance_id}"));
    let result = poll::until(
        step,
        poll::deadline(RUNNING_TIMEOUT),
        RUNNING_SCHEDULE,
        |seen| progress.detail(step, seen),
        || async {
            let out = match clients
                .ec2
                .describe_instances()
                .instance_ids(instance_id)
                .send()
                .await
            {
                Ok(out) => out,
                // Right after RunInstances the id may not be visible yet (eventual consistency).
                Err(e) if aws::code(&e) == Some("InvalidInstanceID.NotFound") => {
                    return Check::Pending("not visible yet".into());
                }
                Err(e) => return aws::unless_transient(&e, |e| Err(aws::describe(e))),
            };
            let Some(instance) = out.reservations().iter().flat_map(|r| r.instances()).next()
            else {
                return Check::Pending("not visible yet".into());
            };
            let state = instance.state().and_then(|s| s.name()).cloned();
            match state {
                Some(InstanceStateName::Running) => {
                    Check::Ready(instance.public_ip_address().map(str::to_owned))
                }
                Some(InstanceStateName::Pending) | None => Check::Pending("pending".into()),
                Some(other) => {
                    let reason = instance
                        .state_reason()
                        .and_then(|r| r.message())
                        .unwrap_or("no reason given");
                    Check::Failed(Ok(format!("{} ({reason})", other.as_str())))
                }
            }
        },
    )
    .await;
    match result {
        Ok(Some(ip)) => Ok(ip),
        Ok(None) => Err(Error::NoPublicIp {
            instance_id: instance_id.to_owned(),
            region: clients.region.clone(),
        }),
        Err(PollError::Failed(Ok(state))) => Err(Error::Died {
            instance_id: instance_id.to_owned(),
            region: clients.region.clone(),
            state,
        }),
        Err(PollError::Failed(Err(message))) => Err(Error::Api(
            clients.failed(format!("describe builder {instance_id}"), message),
        )),
        Err(PollError::TimedOut { last }) => Err(Error::NotRunning {
            instance_id: instance_id.to_owned(),
            region: clients.region.clone(),
            waited: RUNNING_TIMEOUT,
            last,
        }),
    }
}

/// Waits until `http://IP:PORT/PATH` answers the expected status (and body).
pub async fn http(
    instance_id: &str,
    ip: &str,
    health: &Health,
    deadline: Instant,
    progress: &Progress,
) -> Result<(), Error> {
    let url = format!("http://{ip}:{}{}", health.port, health.path.get_ref());
    let step = format!("waiting for health at {url}");
    probe::until_healthy(&url, health, deadline, HTTP_SCHEDULE, &step, progress)
        .await
        .map_err(|e| Error::Unhealthy {
            instance_id: instance_id.to_owned(),
            url: url.clone(),
            waited: e.waited,
            last: e.last,
        })
}

/// Waits until the builder's SSM agent reports Online.
pub async fn ssm_online(
    clients: &Clients,
    instance_id: &str,
    deadline: Instant,
) -> Result<(), Error> {
    let started = Instant::now();
    let result = poll::until(
        &format!("waiting for {instance_id} to come Online in SSM"),
        deadline,
        SSM_SCHEDULE,
        |_| {},
        || async {
            let out = clients
                .ssm
                .describe_instance_information()
                .filters(
                    InstanceInformationStringFilter::builder()
                        .key("InstanceIds")
                        .values(instance_id)
                        .build()
                        .expect("key and values are set"),
                )
                .send()
                .await;
            match out {
                Ok(out) => match out.instance_information_list().first() {
                    Some(info) if info.ping_status() == Some(&PingStatus::Online) => {
                        Check::Ready(())
                    }
                    Some(info) => Check::Pending(
                        info.ping_status()
                            .map_or("unknown", |s| s.as_str())
                            .to_owned(),
                    ),
                    None => Check::Pending("not registered".into()),
                },
                Err(e) => aws::unless_transient(&e, aws::describe),
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(message)) => Err(Error::Api(clients.failed(
            format!("describe SSM instance information of {instance_id}"),
            message,
        ))),
        Err(PollError::TimedOut { last }) => Err(Error::SsmOffline {
            instance_id: instance_id.to_owned(),
            region: clients.region.clone(),
            waited: started.elapsed(),
            last,
        }),
    }
}
