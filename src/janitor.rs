//! The ledger of what a run created, and its cleanup: on any exit of a run, and later by `bake gc`.
//!
//! Everything a run creates carries the tag `bake:run-id`, so cleanup also finds what was created
//! while a request was in flight and never reached the ledger. What a run holds rather than owns
//! (a share of a temporary NAT gateway, `src/ami/egress.rs`) is a [`Hold`]: the module that took
//! it knows how to give it back, and the janitor gives it back after the builders are gone. A
//! rollout's stack is recorded here too while it is built ([`stack`]: its kinds' deletion, search
//! by tag and unmarking).

pub mod stack;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{ImageState, InstanceStateName};
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::time::Instant;

use crate::aws::{self, CallError, Clients};
use crate::poll::{self, Check, PollError, Schedule};
use crate::resolve::{self, filter};
use crate::tags;

/// Terminating a builder takes AWS 30–90 s; 10 minutes covers a stuck shutdown.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(600);
/// A terminated instance's network interface lingers for a minute or two; until it is gone the
/// security group answers DependencyViolation.
const SG_DELETE_TIMEOUT: Duration = Duration::from_secs(300);
/// Termination takes 30–90 s on EC2 and well under a second in the lab: look after 1 s, every
/// second for 10 s, then growing to 10 s.
const TERMINATE_SCHEDULE: Schedule = Schedule::every(Duration::from_secs(1))
    .first_after(Duration::from_secs(1))
    .dense_for(Duration::from_secs(10))
    .growing(1.5, Duration::from_secs(10));
/// DependencyViolation clears within tens of seconds; retry every 3 s growing to 15 s.
const SG_SCHEDULE: Schedule =
    Schedule::every(Duration::from_secs(3)).growing(1.5, Duration::from_secs(15));
/// Right after this cleanup terminated the group's instances, their network interfaces still hold
/// the group (a minute or two on EC2), so an immediate DeleteSecurityGroup is answered
/// DependencyViolation: the first try waits one retry interval instead.
const SG_AFTER_TERMINATION: Schedule = SG_SCHEDULE.first_after(Duration::from_secs(3));

/// A resource a run created.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Resource {
    Instance(String),
    Image(String),
    Snapshot(String),
    SecurityGroup(String),
    /// A temporary NAT gateway (`src/ami/egress.rs`).
    NatGateway(String),
    /// An Elastic IP address, by allocation id.
    Address(String),
    /// The default route (0.0.0.0/0) bake added to a route table, by the table's id.
    Route(String),
    /// An SSM interface endpoint bake created (`src/ami/endpoints.rs`).
    VpcEndpoint(String),
    /// A rollout stack's Auto Scaling group, by name (`src/rollout/stack.rs`).
    AutoScalingGroup(String),
    /// A rollout stack's CloudWatch alarm, by name.
    Alarm(String),
    /// A rollout stack's load balancer, by ARN.
    LoadBalancer(String),
    /// A rollout stack's target group, by ARN.
    TargetGroup(String),
    /// A rollout stack's launch template, by id.
    LaunchTemplate(String),
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Instance(id) => write!(f, "instance {id}"),
            Resource::Image(id) => write!(f, "image {id}"),
            Resource::Snapshot(id) => write!(f, "snapshot {id}"),
            Resource::SecurityGroup(id) => write!(f, "security group {id}"),
            Resource::NatGateway(id) => write!(f, "NAT gateway {id}"),
            Resource::Address(id) => write!(f, "Elastic IP {id}"),
            Resource::Route(table) => write!(f, "route 0.0.0.0/0 in {table}"),
            Resource::VpcEndpoint(id) => write!(f, "VPC endpoint {id}"),
            Resource::AutoScalingGroup(name) => write!(f, "Auto Scaling group {name}"),
            Resource::Alarm(name) => write!(f, "CloudWatch alarm {name}"),
            Resource::LoadBalancer(arn) => write!(f, "load balancer {arn}"),
            Resource::TargetGroup(arn) => write!(f, "target group {arn}"),
            Resource::LaunchTemplate(id) => write!(f, "launch template {id}"),
        }
    }
}

/// Why cleanup could not finish; what is left is listed so a person (or `bake gc`) can act.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] CallError),
    #[error(
        "cleanup in {region} left {}: {}; run `bake gc` (or the same command again) later to \
         remove them",
        left.len(),
        left.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Left { region: String, left: Vec<Left> },
}

/// A resource cleanup could not remove, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Left {
    pub resource: Resource,
    pub reason: String,
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.resource, self.reason)
    }
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

/// Something a run holds whose release the module that took it owns: a share of a temporary NAT
/// gateway that other bakes may still use (`src/ami/egress.rs`). Released after the run's
/// resources are deleted (its builder is gone by then), the latest hold first.
pub trait Hold: Send + Sync {
    /// Gives it back: what was removed, or what is left and why. Safe to call more than once.
    fn release(&self) -> BoxFuture<'_, Result<Vec<Resource>, Vec<Left>>>;
}

/// What one run created, cleaned up in reverse order of dependency on any exit.
pub struct Janitor {
    clients: Clients,
    run_id: String,
    ledger: Mutex<Vec<(Resource, Instant)>>,
    kept: Mutex<BTreeSet<String>>,
    /// A RunInstances sent but not answered yet: if the run is cancelled meanwhile, cleanup sends
    /// it again (its ClientToken makes that answer the instance the first one launched, if it did)
    /// because the new instance is not yet listed by tag (eventual consistency).
    launching: Mutex<Option<RunInstancesFluentBuilder>>,
    /// What the run holds ([`Hold`]), in the order taken.
    holds: Mutex<Vec<Arc<dyn Hold>>>,
    /// Whether the run builds a rollout's stack: its cleanup searches the stack's kinds by tag too.
    stack: std::sync::atomic::AtomicBool,
}

impl Janitor {
    pub fn new(clients: Clients, run_id: String) -> Janitor {
        Janitor {
            clients,
            run_id,
            ledger: Mutex::new(Vec::new()),
            kept: Mutex::new(BTreeSet::new()),
            launching: Mutex::new(None),
            holds: Mutex::new(Vec::new()),
            stack: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Notes something the run holds, before the first request that takes it is sent, so that a
    /// cancelled run gives back whatever part of it was taken.
    pub fn hold(&self, hold: Arc<dyn Hold>) {
        self.holds.lock().expect("holds lock").push(hold);
    }

    /// Releases every hold, the latest first, after the run's resources are gone; what was
    /// removed is added to `removed`, what is left to `left`.
    async fn release_holds(&self, removed: &mut Vec<Resource>, left: &mut Vec<Left>) {
        let holds: Vec<Arc<dyn Hold>> = self.holds.lock().expect("holds lock").clone();
        for hold in holds.iter().rev() {
            match hold.release().await {
                Ok(gone) => removed.extend(gone),
                Err(stuck) => left.extend(stuck),
            }
        }
    }

    /// The ledger's deletion and then the holds' release: both always run; what neither could
    /// remove is reported together.
    async fn delete_then_release(
        &self,
        mut found: Vec<Resource>,
        born: &BTreeMap<Resource, Instant>,
    ) -> Result<Vec<Resource>, Error> {
        let mut left = Vec::new();
        // Only a run that holds shared resources (the SSM endpoints' group admits its builders'
        // groups) can have a rule naming its groups elsewhere: a plain bake skips that look-up.
        let shares = !self.holds.lock().expect("holds lock").is_empty();
        match delete_born(&self.clients, &found, born, shares).await {
            Ok(()) => {}
            Err(Error::Left { left: stuck, .. }) => left.extend(stuck),
            Err(e @ Error::Api(_)) => return Err(e),
        }
        self.release_holds(&mut found, &mut left).await;
        if left.is_empty() {
            Ok(found)
        } else {
            Err(Error::Left {
                region: self.clients.region.clone(),
                left,
            })
        }
    }

    /// Notes that the run builds a rollout's stack, before its first request: a cleanup then
    /// searches the stack's kinds by tag for what a cut-short request created.
    pub fn building_stack(&self) {
        self.stack.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Notes a RunInstances about to be sent (with a ClientToken); `record` of its instance ends it.
    pub fn launching(&self, request: RunInstancesFluentBuilder) {
        *self.launching.lock().expect("launching lock") = Some(request);
    }

    /// The launch was refused for good: nothing was started, so cleanup need not ask again.
    pub fn launch_refused(&self) {
        self.launching.lock().expect("launching lock").take();
    }

    /// Records a resource the moment it exists.
    pub fn record(&self, resource: Resource) {
        tracing::debug!(%resource, run_id = %self.run_id, "recorded");
        if matches!(resource, Resource::Instance(_)) {
            self.launching.lock().expect("launching lock").take();
        }
        self.ledger
            .lock()
            .expect("ledger lock")
            .push((resource, Instant::now()));
    }

    /// What the ledger holds so far.
    pub fn recorded(&self) -> Vec<Resource> {
        self.born().into_keys().collect()
    }

    /// When each recorded resource was created (recorded), for the consistency windows.
    fn born(&self) -> BTreeMap<Resource, Instant> {
        self.ledger
            .lock()
            .expect("ledger lock")
            .iter()
            .map(|(r, at)| (r.clone(), *at))
            .collect()
    }

    /// Marks a resource (the finished AMI and its snapshots) as the result, never to be cleaned.
    pub fn keep(&self, id: &str) {
        self.kept.lock().expect("kept lock").insert(id.to_owned());
    }

    /// Deletes what the ledger holds, except what was kept: enough after a run whose every
    /// request completed, and cheaper than `clean` (no search by tag).
    pub async fn clean_recorded(&self) -> Result<Vec<Resource>, Error> {
        let kept = self.kept.lock().expect("kept lock").clone();
        let born = self.born();
        let mut found: Vec<Resource> = born.keys().cloned().collect();
        found.retain(|r| !kept.contains(id_of(r)));
        self.delete_then_release(found, &born).await
    }

    /// Deletes everything this run created except what was kept, searching by tag too for what a
    /// cancelled request created; returns what it deleted.
    pub async fn clean(&self) -> Result<Vec<Resource>, Error> {
        let kept = self.kept.lock().expect("kept lock").clone();
        let relaunched = self.launched_meanwhile().await;
        // A failed search by tag must not stop the cleanup of what the ledger holds.
        let (mut found, in_use, searched) = match find_with_uses(
            &self.clients,
            &Scope::Run(self.run_id.clone()),
            &kept,
            self.stack.load(std::sync::atomic::Ordering::SeqCst),
        )
        .await
        {
            Ok((found, in_use)) => (found, in_use, Ok(())),
            Err(e) => (Vec::new(), BTreeSet::new(), Err(e)),
        };
        let born = self.born();
        found.extend(born.keys().cloned());
        found.retain(|r| !kept.contains(id_of(r)) && !in_use.contains(id_of(r)));
        found.sort();
        found.dedup();
        let found = self.delete_then_release(found, &born).await?;
        searched?;
        relaunched?;
        Ok(found)
    }

    /// When a launch was cut short, the instance it may have started: RunInstances again with
    /// the same ClientToken answers it (or launches it now, to be terminated with the rest).
    async fn launched_meanwhile(&self) -> Result<(), Error> {
        let Some(request) = self.launching.lock().expect("launching lock").take() else {
            return Ok(());
        };
        let sent = self
            .clients
            .call(|| request.clone().send())
            .settle(&TRANSIENT_ONLY)
            .or_fail(|| "ask EC2 for the builder a cancelled launch may have started".into())
            .await?;
        for id in sent.instances().iter().filter_map(|i| i.instance_id()) {
            self.record(Resource::Instance(id.to_owned()));
        }
        Ok(())
    }
}

/// A resource's id, name or ARN (a route's table id), whatever its kind.
fn id_of(r: &Resource) -> &str {
    match r {
        Resource::Instance(id)
        | Resource::Image(id)
        | Resource::Snapshot(id)
        | Resource::SecurityGroup(id)
        | Resource::NatGateway(id)
        | Resource::Address(id)
        | Resource::Route(id)
        | Resource::VpcEndpoint(id)
        | Resource::AutoScalingGroup(id)
        | Resource::Alarm(id)
        | Resource::LoadBalancer(id)
        | Resource::TargetGroup(id)
        | Resource::LaunchTemplate(id) => id,
    }
}

/// The ids (names, ARNs) of the resources of the kinds `kind` picks, in their order.
fn ids_of<'a>(
    resources: impl IntoIterator<Item = &'a Resource>,
    kind: impl Fn(&Resource) -> bool,
) -> Vec<String> {
    resources
        .into_iter()
        .filter(|r| kind(r))
        .map(|r| id_of(r).to_owned())
        .collect()
}

/// How long an image a run left pending (its run ended while EC2 was creating it) may be
/// adopted by a later run of the same image under its lease (`src/ami/adopt.rs`), and so how long
/// `bake gc` leaves such an image alone whatever its `--ttl`: two hours, gc's default TTL, which
/// covers CreateImage's slowest hour and a few missed cron periods, after which the image is
/// stale and gc removes it as any other unfinished one.
pub const ADOPTION_WINDOW: Duration = Duration::from_secs(2 * 3600);

/// Whether an image created at `created` (EC2's `CreationDate`) is still within
/// [`ADOPTION_WINDOW`] at `now`; an unreadable time is not.
pub fn within_adoption_window(created: Option<&str>, now: SystemTime) -> bool {
    created
        .and_then(|d| humantime::parse_rfc3339_weak(d.trim_end_matches('Z')).ok())
        .and_then(|c| now.duration_since(c).ok().or(Some(Duration::ZERO)))
        .is_some_and(|age| age <= ADOPTION_WINDOW)
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
    Ok(find_with_uses(clients, scope, keep, true).await?.0)
}

/// What `find` finds, and the snapshots that images being kept still use; with `stacks`, the
/// rollout stacks' kinds too ([`stack::find`]).
async fn find_with_uses(
    clients: &Clients,
    scope: &Scope,
    keep: &BTreeSet<String>,
    stacks: bool,
) -> Result<(Vec<Resource>, BTreeSet<String>), Error> {
    let filter = match scope {
        Scope::Run(id) => tags::filter(tags::RUN_ID, id),
        Scope::LeftBefore(_) => filter("tag-key", tags::RUN_ID),
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

    for instance in resolve::live_instances(clients, vec![filter.clone()]).await? {
        let launched = instance
            .launch_time()
            .and_then(|t| SystemTime::try_from(*t).ok());
        if let Some(id) = instance.instance_id().filter(|_| old_enough(launched)) {
            found.push(Resource::Instance(id.to_owned()));
        }
    }

    let groups = clients
        .call(|| {
            clients
                .ec2
                .describe_security_groups()
                .filters(filter.clone())
                .send()
        })
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| "list security groups".into())
        .await?;
    for group in groups.security_groups() {
        let created =
            tags::value(group.tags(), tags::CREATED).and_then(|v| humantime::parse_rfc3339(v).ok());
        if let Some(id) = group.group_id().filter(|_| old_enough(created)) {
            found.push(Resource::SecurityGroup(id.to_owned()));
        }
    }

    let images = clients
        .call(|| {
            clients
                .ec2
                .describe_images()
                .owners("self")
                .filters(filter.clone())
                .send()
        })
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| "list images".into())
        .await?;
    let mut in_use = BTreeSet::new();
    for image in images.images() {
        let created = image
            .creation_date()
            .and_then(|d| humantime::parse_rfc3339_weak(d).ok());
        let unfinished = image.state() != Some(&ImageState::Available);
        let kept = image.image_id().is_some_and(|id| keep.contains(id));
        // A pending image of a dead run may still be adopted (src/ami/adopt.rs): gc leaves it
        // alone through the adoption window; its own run's cleanup (Scope::Run) does not.
        let adoptable = cutoff.is_some()
            && image.state() == Some(&ImageState::Pending)
            && within_adoption_window(image.creation_date(), SystemTime::now());
        let doomed = !kept && !adoptable && old_enough(created) && (cutoff.is_none() || unfinished);
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
        .call(|| {
            clients
                .ec2
                .describe_snapshots()
                .owner_ids("self")
                .filters(filter.clone())
                .send()
        })
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| "list snapshots".into())
        .await?;
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
    if stacks {
        let run = match scope {
            Scope::Run(id) => Some(id.as_str()),
            Scope::LeftBefore(_) => None,
        };
        found.extend(stack::find(clients, run, &old_enough).await?);
    }
    found.sort();
    found.dedup();
    Ok((found, in_use))
}

/// Deletes resources in dependency order: instances (and waits for them), images, snapshots,
/// then security groups. Never stops at the first error: every resource is tried, what is
/// retryable is retried within its deadline, and what is left is reported with ids.
pub async fn delete(clients: &Clients, resources: &[Resource]) -> Result<(), Error> {
    delete_born(clients, resources, &BTreeMap::new(), true).await
}

/// [`delete`], knowing when this process created some of the resources: an id created moments
/// ago may be unknown to EC2 (eventual consistency), so its NotFound is asked again until the
/// creation's window has passed instead of being taken as "already gone". With `referenced`,
/// a security group's references from bake's endpoint groups are revoked before it is deleted.
async fn delete_born(
    clients: &Clients,
    resources: &[Resource],
    born: &BTreeMap<Resource, Instant>,
    referenced: bool,
) -> Result<(), Error> {
    let mut left: Vec<Left> = Vec::new();
    let window = |r: &Resource, settle: &aws::Settle| born.get(r).map(|at| *at + settle.within);
    let instances = ids_of(resources, |r| matches!(r, Resource::Instance(_)));
    let mut group_schedule = SG_SCHEDULE;
    if !instances.is_empty() {
        group_schedule = SG_AFTER_TERMINATION;
        let terminated = futures_util::future::join_all(instances.iter().map(|id| {
            let resource = Resource::Instance(id.clone());
            let until = window(&resource, &aws::NEW_INSTANCE);
            async move { (id.clone(), terminate(clients, id, until).await) }
        }))
        .await;
        let mut asked = Vec::new();
        for (id, result) in terminated {
            match result {
                Ok(()) => asked.push(id),
                Err(reason) => left.push(Left {
                    resource: Resource::Instance(id),
                    reason,
                }),
            }
        }
        if !asked.is_empty()
            && let Err((alive, reason)) = wait_terminated(clients, &asked).await
        {
            left.extend(alive.into_iter().map(|id| Left {
                resource: Resource::Instance(id),
                reason: reason.clone(),
            }));
        }
    }
    if stack::delete(clients, resources, &mut left).await {
        // The deleted groups' instances and load balancers' interfaces held their groups.
        group_schedule = SG_AFTER_TERMINATION;
    }
    for resource in resources {
        if let Resource::Image(id) = resource {
            let until = window(resource, &aws::NEW_IMAGE);
            if let Err(reason) = deregister(clients, id, until).await {
                left.push(Left {
                    resource: resource.clone(),
                    reason,
                });
            }
        }
    }
    let snapshots = futures_util::future::join_all(resources.iter().filter_map(|r| match r {
        Resource::Snapshot(id) => Some(async move { (r, delete_snapshot(clients, id).await) }),
        _ => None,
    }))
    .await;
    for (resource, result) in snapshots {
        if let Err(reason) = result {
            left.push(Left {
                resource: resource.clone(),
                reason,
            });
        }
    }
    let holders = ids_of(left.iter().map(|l| &l.resource), |r| {
        matches!(
            r,
            Resource::Instance(_) | Resource::AutoScalingGroup(_) | Resource::LoadBalancer(_)
        )
    });
    // Groups of one run may admit each other (a stack's instance group admits its load
    // balancer's): their rules naming each other go first, and the newest group goes first.
    let mut groups: Vec<&Resource> = resources
        .iter()
        .filter(|r| matches!(r, Resource::SecurityGroup(_)))
        .collect();
    groups.sort_by_key(|r| std::cmp::Reverse(born.get(*r).copied()));
    if groups.len() > 1 && holders.is_empty() {
        let ids: Vec<&str> = groups.iter().map(|r| id_of(r)).collect();
        // Best effort: a rule left in place makes the delete below name the group.
        if let Err(e) = revoke_rules_among(clients, &ids).await {
            tracing::debug!(groups = ?ids, error = %e, "revoke the rules among them");
        }
    }
    for resource in groups {
        if let Resource::SecurityGroup(id) = resource {
            if !holders.is_empty() {
                // A live instance holds its groups: deleting them cannot succeed now.
                left.push(Left {
                    resource: resource.clone(),
                    reason: format!("still used by {}", holders.join(", ")),
                });
                continue;
            }
            let until = window(resource, &aws::NEW_SECURITY_GROUP);
            if referenced && let Err(e) = revoke_references(clients, id).await {
                left.push(Left {
                    resource: resource.clone(),
                    reason: format!("a rule in bake's endpoint group still names it: {e}"),
                });
                continue;
            }
            if let Err(e) = delete_group(clients, id, until, group_schedule).await {
                left.push(Left {
                    resource: resource.clone(),
                    reason: e,
                });
            }
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::Left {
            region: clients.region.clone(),
            left,
        })
    }
}

/// TerminateInstances for one instance. InvalidInstanceID.NotFound right after RunInstances means
/// EC2 does not know the id yet, not that the instance is gone: it is asked again until the
/// window after its creation (`until`) has passed, and then reported, never taken as done. For
/// an instance found by listing (no `until`) NotFound means it is gone already.
async fn terminate(clients: &Clients, id: &str, until: Option<Instant>) -> Result<(), String> {
    // Once the window after its creation is over, EC2 has known the id: NotFound means gone.
    let until = until.filter(|u| Instant::now() < *u);
    let call = clients.call(|| clients.ec2.terminate_instances().instance_ids(id).send());
    let result = match until {
        Some(until) => call.settle_until(&aws::NEW_INSTANCE, until),
        None => call.settle(&TRANSIENT_ONLY),
    };
    match result.answer().await {
        Ok(_) => Ok(()),
        Err(e) if until.is_none() && e.is(&["InvalidInstanceID.NotFound"]) => Ok(()),
        Err(e) if e.is(&["InvalidInstanceID.NotFound"]) => Err(format!(
            "EC2 still did not know it {:?} after it was launched ({}); it may be running",
            aws::NEW_INSTANCE.within,
            e.describe()
        )),
        Err(e) => Err(e.describe()),
    }
}

/// DeregisterImage; NotFound for an image created moments ago is asked again within its window.
async fn deregister(clients: &Clients, id: &str, until: Option<Instant>) -> Result<(), String> {
    let call = clients.call(|| clients.ec2.deregister_image().image_id(id).send());
    let result = match until {
        Some(until) => call.settle_until(&aws::NEW_IMAGE, until),
        None => call.settle(&TRANSIENT_ONLY),
    };
    match result.answer().await {
        Ok(_) => Ok(()),
        // Unavailable: deregistered already; NotFound once the window has passed: gone.
        Err(e) if e.is(&["InvalidAMIID*"]) => Ok(()),
        Err(e) => Err(e.describe()),
    }
}

/// DeleteSnapshot, riding out InvalidSnapshot.InUse while a just-deregistered image releases it.
async fn delete_snapshot(clients: &Clients, id: &str) -> Result<(), String> {
    let call = clients.call(|| clients.ec2.delete_snapshot().snapshot_id(id).send());
    match call.settle(&aws::SNAPSHOT_RELEASE).answer().await {
        Ok(_) => Ok(()),
        Err(e) if e.is(&["InvalidSnapshot.NotFound"]) => Ok(()),
        Err(e) => Err(e.describe()),
    }
}

/// For calls on resources that were listed, so known to EC2: only transient answers are asked
/// again.
const TRANSIENT_ONLY: aws::Settle = aws::THROTTLE_BURST;

/// Waits until the instances are terminated; on failure, the ones still alive and why.
async fn wait_terminated(clients: &Clients, ids: &[String]) -> Result<(), (Vec<String>, String)> {
    let deadline = poll::deadline(TERMINATE_TIMEOUT);
    let alive = std::sync::Mutex::new(ids.to_vec());
    let result = poll::until(
        &format!("waiting for {} to terminate", ids.join(", ")),
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
                // Asked after a successful TerminateInstances: EC2 knew them, so NotFound
                // means they are gone.
                Err(e) if aws::code(&e) == Some("InvalidInstanceID.NotFound") => {
                    return Check::Ready(());
                }
                Err(e) => return aws::unless_transient(&e, aws::describe),
            };
            let still: Vec<&aws_sdk_ec2::types::Instance> = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated)
                })
                .collect();
            *alive.lock().expect("alive lock") = still
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_owned))
                .collect();
            if still.is_empty() {
                Check::Ready(())
            } else {
                Check::Pending(
                    still
                        .iter()
                        .map(|i| {
                            let state =
                                i.state().and_then(|s| s.name()).map_or("?", |s| s.as_str());
                            format!("{} {state}", i.instance_id().unwrap_or("?"))
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            }
        },
    )
    .await;
    let alive = alive.into_inner().expect("alive lock");
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(message)) => {
            Err((alive, format!("watching it terminate: {message}")))
        }
        Err(PollError::TimedOut { last }) => Err((
            alive,
            format!("not terminated after {TERMINATE_TIMEOUT:?} ({last})"),
        )),
    }
}

/// Deletes a security group, retrying while AWS answers DependencyViolation (an interface of a
/// terminated instance or a deleted load balancer still holds it) or a transient error.
pub async fn delete_security_group(clients: &Clients, id: &str) -> Result<(), Error> {
    delete_group(clients, id, None, SG_SCHEDULE)
        .await
        .map_err(|reason| Error::Left {
            region: clients.region.clone(),
            left: vec![Left {
                resource: Resource::SecurityGroup(id.to_owned()),
                reason,
            }],
        })
}

/// Revokes the rules of bake's own SSM endpoint groups (tagged `bake:endpoint`) that name
/// `group` as their source: EC2 refuses to delete a group another group's rule refers to
/// (DependencyViolation). Groups bake did not make are never changed.
async fn revoke_references(clients: &Clients, group: &str) -> Result<(), CallError> {
    let request = clients
        .ec2
        .describe_security_groups()
        .filters(filter("ip-permission.group-id", group))
        .filters(filter("tag-key", tags::ENDPOINT));
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("find the endpoint groups that admit {group}"))
        .await?;
    for referring in out.security_groups() {
        if let Some(id) = referring.group_id() {
            revoke_rules_from(clients, id, group).await?;
        }
    }
    Ok(())
}

/// Revokes the inbound rules of `group` whose source is the group `source`, by their rule ids
/// (DescribeSecurityGroupRules): nothing to do when there are none or `group` is gone.
pub async fn revoke_rules_from(
    clients: &Clients,
    group: &str,
    source: &str,
) -> Result<(), CallError> {
    let request = clients
        .ec2
        .describe_security_group_rules()
        .filters(filter("group-id", group));
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("list the rules of {group}"))
        .await?;
    let ids: Vec<String> = out
        .security_group_rules()
        .iter()
        .filter(|r| r.is_egress() != Some(true))
        .filter(|r| {
            r.referenced_group_info()
                .and_then(|g| g.group_id())
                .is_some_and(|g| g == source)
        })
        .filter_map(|r| r.security_group_rule_id().map(str::to_owned))
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    let revoke = clients
        .ec2
        .revoke_security_group_ingress()
        .group_id(group)
        .set_security_group_rule_ids(Some(ids));
    clients
        .call(|| revoke.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_none(
            &["InvalidPermission.NotFound", "InvalidGroup.NotFound"],
            || format!("revoke the rules naming {source} on {group}"),
        )
        .await?;
    Ok(())
}

/// Revokes the inbound rules of the groups `ids` whose source is another of them (one
/// DescribeSecurityGroupRules for all, then one revoke per group that has such rules).
async fn revoke_rules_among(clients: &Clients, ids: &[&str]) -> Result<(), CallError> {
    let request = clients.ec2.describe_security_group_rules().filters(
        aws_sdk_ec2::types::Filter::builder()
            .name("group-id")
            .set_values(Some(ids.iter().map(|id| (*id).to_owned()).collect()))
            .build(),
    );
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("list the rules of {}", ids.join(", ")))
        .await?;
    let mut among: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rule in out.security_group_rules() {
        let source = rule.referenced_group_info().and_then(|g| g.group_id());
        if rule.is_egress() != Some(true)
            && source.is_some_and(|s| ids.contains(&s))
            && let (Some(group), Some(id)) = (rule.group_id(), rule.security_group_rule_id())
        {
            among
                .entry(group.to_owned())
                .or_default()
                .push(id.to_owned());
        }
    }
    for (group, rules) in among {
        let revoke = clients
            .ec2
            .revoke_security_group_ingress()
            .group_id(&group)
            .set_security_group_rule_ids(Some(rules));
        clients
            .call(|| revoke.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_none(
                &["InvalidPermission.NotFound", "InvalidGroup.NotFound"],
                || format!("revoke the rules of {group} naming the groups removed with it"),
            )
            .await?;
    }
    Ok(())
}

/// [`delete_security_group`]; a NotFound before `until` (the group was created moments ago) is
/// asked again rather than taken as gone.
async fn delete_group(
    clients: &Clients,
    id: &str,
    until: Option<Instant>,
    schedule: Schedule,
) -> Result<(), String> {
    let deadline = poll::deadline(SG_DELETE_TIMEOUT);
    let result = poll::until(
        &format!("delete security group {id}"),
        deadline,
        schedule,
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
                    Some(c) if aws::NEW_SECURITY_GROUP.codes.contains(&c) => {
                        if until.is_some_and(|u| Instant::now() < u) {
                            Check::Pending(aws::describe(&e))
                        } else {
                            Check::Ready(())
                        }
                    }
                    Some(c) if aws::INSTANCE_RELEASE.codes.contains(&c) => {
                        Check::Pending(aws::describe(&e))
                    }
                    _ => aws::unless_transient(&e, aws::describe),
                },
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(message)) => Err(message),
        Err(PollError::TimedOut { last }) => Err(format!(
            "still refused after {SG_DELETE_TIMEOUT:?} ({last})"
        )),
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
