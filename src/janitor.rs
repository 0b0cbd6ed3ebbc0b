//! The ledger of what a run created, and its cleanup: on any exit of a run, and later by `bake gc`.
//!
//! Everything a run creates carries the tag `bake:run-id`, so cleanup also finds what was created
//! while a request was in flight and never reached the ledger.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::{Filter, ImageState, InstanceStateName, Tag};
use serde::Serialize;
use tokio::time::Instant;

use crate::aws::{self, CallError, Clients};
use crate::poll::{self, Check, PollError, Schedule};

/// Tag keys bake puts on what it creates.
pub mod tag {
    /// The run that created the resource.
    pub const RUN_ID: &str = "bake:run-id";
    /// When it was created (RFC 3339), for `bake gc --ttl` on resources without a creation time.
    pub const CREATED: &str = "bake:created";
    /// The `[image.NAME]` it belongs to.
    pub const IMAGE: &str = "bake:image";
    /// The digest of the image's inputs.
    pub const DIGEST: &str = "bake:digest";
}

/// Terminating a builder takes AWS 30–90 s; 10 minutes covers a stuck shutdown.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(600);
/// A terminated instance's network interface lingers for a minute or two; until it is gone the
/// security group answers DependencyViolation.
const SG_DELETE_TIMEOUT: Duration = Duration::from_secs(300);
/// Termination takes 30–90 s on EC2 and well under a second in the lab: look after 1 s, every
/// second for 10 s, then growing to 10 s.
const TERMINATE_SCHEDULE: Schedule = Schedule {
    first: Duration::from_secs(1),
    interval: Duration::from_secs(1),
    dense: Duration::from_secs(10),
    factor: 1.5,
    cap: Duration::from_secs(10),
};
/// DependencyViolation clears within tens of seconds; retry every 3 s growing to 15 s.
const SG_SCHEDULE: Schedule = Schedule {
    first: Duration::ZERO,
    interval: Duration::from_secs(3),
    dense: Duration::ZERO,
    factor: 1.5,
    cap: Duration::from_secs(15),
};

/// A resource a run created.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Resource {
    Instance(String),
    Image(String),
    Snapshot(String),
    SecurityGroup(String),
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Instance(id) => write!(f, "instance {id}"),
            Resource::Image(id) => write!(f, "image {id}"),
            Resource::Snapshot(id) => write!(f, "snapshot {id}"),
            Resource::SecurityGroup(id) => write!(f, "security group {id}"),
        }
    }
}

/// Why cleanup could not finish; what is left is listed so a person can act.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] CallError),
    #[error(
        "cleanup in {region}: {resource} still exists after {waited:?} ({last}); \
         remove it by hand or run `bake gc` later"
    )]
    Stuck {
        region: String,
        resource: Resource,
        waited: Duration,
        last: String,
    },
}

/// A new run id: UTC time and 24 random bits, e.g. `20261122t113045-9f3a1c`.
pub fn new_run_id() -> String {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let digits: String = stamp.chars().filter(char::is_ascii_digit).collect();
    let random =
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0u8);
    format!(
        "{}t{}-{:06x}",
        &digits[..8],
        &digits[8..14],
        random & 0xff_ffff
    )
}

/// The tags every resource of a run carries.
pub fn run_tags(run_id: &str, image: &str, digest: &str) -> Vec<Tag> {
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    [
        (tag::RUN_ID, run_id),
        (tag::IMAGE, image),
        (tag::DIGEST, digest),
        (tag::CREATED, &now),
    ]
    .into_iter()
    .map(|(k, v)| Tag::builder().key(k).value(v).build())
    .collect()
}

/// What one run created, cleaned up in reverse order of dependency on any exit.
pub struct Janitor {
    clients: Clients,
    run_id: String,
    ledger: Mutex<Vec<Resource>>,
    kept: Mutex<BTreeSet<String>>,
}

impl Janitor {
    pub fn new(clients: Clients, run_id: String) -> Janitor {
        Janitor {
            clients,
            run_id,
            ledger: Mutex::new(Vec::new()),
            kept: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Records a resource the moment it exists.
    pub fn record(&self, resource: Resource) {
        tracing::debug!(%resource, run_id = %self.run_id, "recorded");
        self.ledger.lock().expect("ledger lock").push(resource);
    }

    /// What the ledger holds so far.
    pub fn recorded(&self) -> Vec<Resource> {
        self.ledger.lock().expect("ledger lock").clone()
    }

    /// Marks a resource (the finished AMI and its snapshots) as the result, never to be cleaned.
    pub fn keep(&self, id: &str) {
        self.kept.lock().expect("kept lock").insert(id.to_owned());
    }

    /// Deletes what the ledger holds, except what was kept: enough after a run whose every
    /// request completed, and cheaper than `clean` (no search by tag).
    pub async fn clean_recorded(&self) -> Result<Vec<Resource>, Error> {
        let kept = self.kept.lock().expect("kept lock").clone();
        let mut found = self.recorded();
        found.retain(|r| !kept.contains(id_of(r)));
        found.sort();
        found.dedup();
        delete(&self.clients, &found).await?;
        Ok(found)
    }

    /// Deletes everything this run created except what was kept, searching by tag too for what a
    /// cancelled request created; returns what it deleted.
    pub async fn clean(&self) -> Result<Vec<Resource>, Error> {
        let kept = self.kept.lock().expect("kept lock").clone();
        let (mut found, in_use) =
            find_with_uses(&self.clients, &Scope::Run(self.run_id.clone()), &kept).await?;
        found.extend(self.ledger.lock().expect("ledger lock").iter().cloned());
        found.retain(|r| !kept.contains(id_of(r)) && !in_use.contains(id_of(r)));
        found.sort();
        found.dedup();
        delete(&self.clients, &found).await?;
        Ok(found)
    }
}

fn id_of(r: &Resource) -> &str {
    match r {
        Resource::Instance(id)
        | Resource::Image(id)
        | Resource::Snapshot(id)
        | Resource::SecurityGroup(id) => id,
    }
}

/// Which tagged resources to look for.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Everything one run created.
    Run(String),
    /// What any run left behind, created before the cutoff: live instances, security groups,
    /// images that are not available (pending, failed) and snapshots no image uses.
    LeftBefore(SystemTime),
}

/// Finds what runs created, by tag, except the images in `keep` and their snapshots.
pub async fn find(
    clients: &Clients,
    scope: &Scope,
    keep: &BTreeSet<String>,
) -> Result<Vec<Resource>, Error> {
    Ok(find_with_uses(clients, scope, keep).await?.0)
}

/// What `find` finds, and the snapshots that images being kept still use.
async fn find_with_uses(
    clients: &Clients,
    scope: &Scope,
    keep: &BTreeSet<String>,
) -> Result<(Vec<Resource>, BTreeSet<String>), Error> {
    let filter = match scope {
        Scope::Run(id) => Filter::builder()
            .name(format!("tag:{}", tag::RUN_ID))
            .values(id)
            .build(),
        Scope::LeftBefore(_) => Filter::builder()
            .name("tag-key")
            .values(tag::RUN_ID)
            .build(),
    };
    let cutoff = match scope {
        Scope::Run(_) => None,
        Scope::LeftBefore(t) => Some(*t),
    };
    let old_enough = |created: Option<SystemTime>| match (cutoff, created) {
        (None, _) => true,
        (Some(cutoff), Some(created)) => created <= cutoff,
        // Without a creation time, only a run-scoped cleanup may delete it.
        (Some(_), None) => false,
    };
    let mut found = Vec::new();

    let reservations = clients
        .ec2
        .describe_instances()
        .filters(filter.clone())
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["pending", "running", "stopping", "stopped"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        )
        .into_paginator()
        .items()
        .send()
        .collect::<Vec<_>>()
        .await;
    for reservation in reservations {
        let reservation =
            reservation.map_err(|e| clients.failed("list instances", aws::describe(&e)))?;
        for instance in reservation.instances() {
            let launched = instance
                .launch_time()
                .and_then(|t| SystemTime::try_from(*t).ok());
            if let Some(id) = instance.instance_id().filter(|_| old_enough(launched)) {
                found.push(Resource::Instance(id.to_owned()));
            }
        }
    }

    let groups = clients
        .ec2
        .describe_security_groups()
        .filters(filter.clone())
        .send()
        .await
        .map_err(|e| clients.failed("list security groups", aws::describe(&e)))?;
    for group in groups.security_groups() {
        let created = group
            .tags()
            .iter()
            .find(|t| t.key() == Some(tag::CREATED))
            .and_then(|t| t.value())
            .and_then(|v| humantime::parse_rfc3339(v).ok());
        if let Some(id) = group.group_id().filter(|_| old_enough(created)) {
            found.push(Resource::SecurityGroup(id.to_owned()));
        }
    }

    let images = clients
        .ec2
        .describe_images()
        .owners("self")
        .filters(filter.clone())
        .send()
        .await
        .map_err(|e| clients.failed("list images", aws::describe(&e)))?;
    let mut in_use = BTreeSet::new();
    for image in images.images() {
        let created = image
            .creation_date()
            .and_then(|d| humantime::parse_rfc3339_weak(d).ok());
        let unfinished = image.state() != Some(&ImageState::Available);
        let kept = image.image_id().is_some_and(|id| keep.contains(id));
        let doomed = !kept && old_enough(created) && (cutoff.is_none() || unfinished);
        let snapshots = image
            .block_device_mappings()
            .iter()
            .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()));
        if doomed {
            if let Some(id) = image.image_id() {
                found.push(Resource::Image(id.to_owned()));
            }
            found.extend(snapshots.map(|s| Resource::Snapshot(s.to_owned())));
        } else {
            in_use.extend(snapshots.map(str::to_owned));
        }
    }

    let snapshots = clients
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(filter)
        .send()
        .await
        .map_err(|e| clients.failed("list snapshots", aws::describe(&e)))?;
    for snapshot in snapshots.snapshots() {
        let started = snapshot
            .start_time()
            .and_then(|t| SystemTime::try_from(*t).ok());
        let Some(id) = snapshot.snapshot_id() else {
            continue;
        };
        if !in_use.contains(id) && old_enough(started) {
            found.push(Resource::Snapshot(id.to_owned()));
        }
    }
    found.sort();
    found.dedup();
    Ok((found, in_use))
}

/// Deletes resources in dependency order: instances (and waits for them), images, snapshots,
/// then security groups.
pub async fn delete(clients: &Clients, resources: &[Resource]) -> Result<(), Error> {
    let instances: Vec<String> = resources
        .iter()
        .filter_map(|r| match r {
            Resource::Instance(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    if !instances.is_empty() {
        match clients
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(instances.clone()))
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if aws::code(&e) == Some("InvalidInstanceID.NotFound") => {}
            Err(e) => {
                return Err(clients
                    .failed(
                        format!("terminate {}", instances.join(", ")),
                        aws::describe(&e),
                    )
                    .into());
            }
        }
        wait_terminated(clients, &instances).await?;
    }
    for resource in resources {
        if let Resource::Image(id) = resource {
            match clients.ec2.deregister_image().image_id(id).send().await {
                Ok(_) => {}
                Err(e) if aws::code(&e).is_some_and(|c| c.starts_with("InvalidAMIID")) => {}
                Err(e) => {
                    return Err(clients
                        .failed(format!("deregister image {id}"), aws::describe(&e))
                        .into());
                }
            }
        }
    }
    for resource in resources {
        if let Resource::Snapshot(id) = resource {
            match clients.ec2.delete_snapshot().snapshot_id(id).send().await {
                Ok(_) => {}
                Err(e) if aws::code(&e) == Some("InvalidSnapshot.NotFound") => {}
                Err(e) => {
                    return Err(clients
                        .failed(format!("delete snapshot {id}"), aws::describe(&e))
                        .into());
                }
            }
        }
    }
    for resource in resources {
        if let Resource::SecurityGroup(id) = resource {
            delete_security_group(clients, id).await?;
        }
    }
    Ok(())
}

async fn wait_terminated(clients: &Clients, ids: &[String]) -> Result<(), Error> {
    let deadline = Instant::now() + TERMINATE_TIMEOUT;
    let result = poll::until(
        deadline,
        TERMINATE_SCHEDULE,
        |_| {},
        || async {
            let out = clients
                .ec2
                .describe_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) if aws::code(&e) == Some("InvalidInstanceID.NotFound") => {
                    return Check::Ready(());
                }
                Err(e) => return Check::Failed(aws::describe(&e)),
            };
            let alive: Vec<String> = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated)
                })
                .map(|i| {
                    let state = i.state().and_then(|s| s.name()).map_or("?", |s| s.as_str());
                    format!("{} {state}", i.instance_id().unwrap_or("?"))
                })
                .collect();
            if alive.is_empty() {
                Check::Ready(())
            } else {
                Check::Pending(alive.join(", "))
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(message)) => Err(Error::Api(
            clients.failed(format!("watch {} terminate", ids.join(", ")), message),
        )),
        Err(PollError::TimedOut { last }) => Err(Error::Stuck {
            region: clients.region.clone(),
            resource: Resource::Instance(ids.join(", ")),
            waited: TERMINATE_TIMEOUT,
            last,
        }),
    }
}

/// Deletes a security group, retrying while AWS answers DependencyViolation.
pub async fn delete_security_group(clients: &Clients, id: &str) -> Result<(), Error> {
    let deadline = Instant::now() + SG_DELETE_TIMEOUT;
    let result = poll::until(
        deadline,
        SG_SCHEDULE,
        |_| {},
        || async {
            match clients
                .ec2
                .delete_security_group()
                .group_id(id)
                .send()
                .await
            {
                Ok(_) => Check::Ready(()),
                Err(e) => match aws::code(&e) {
                    Some("InvalidGroup.NotFound") => Check::Ready(()),
                    Some("DependencyViolation") => Check::Pending(aws::describe(&e)),
                    _ => Check::Failed(aws::describe(&e)),
                },
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(message)) => Err(Error::Api(
            clients.failed(format!("delete security group {id}"), message),
        )),
        Err(PollError::TimedOut { last }) => Err(Error::Stuck {
            region: clients.region.clone(),
            resource: Resource::SecurityGroup(id.to_owned()),
            waited: SG_DELETE_TIMEOUT,
            last,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_dated_and_differ() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), "20261122t113045-9f3a1c".len(), "{a}");
        assert_eq!(a.as_bytes()[8], b't');
    }
}
