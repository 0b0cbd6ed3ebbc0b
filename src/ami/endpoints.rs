//! A private builder's way to SSM: the preflight check (the `ssm`, `ssmmessages` and
//! `ec2messages` interface endpoints with private DNS in the VPC, or a NAT route that is not
//! bake's own temporary one), and with `builder.endpoints = "create"` the endpoints and their
//! security group made for a bake, shared, and removed by the last user; `bake gc`'s search.
//!
//! # Sharing
//!
//! AWS allows one endpoint with private DNS per service in a VPC (a second is refused for its
//! conflicting DNS name), so every bake in a VPC uses the same three. An endpoint bake made
//! carries `bake:endpoint = <vpc>` and, for each run using it, `bake:endpoint-user:<run-id>` (the
//! time it joined). A bake that finds one joins it by adding its user tag; one that finds none
//! creates it (tagged with itself as a user); one whose create is refused because another process
//! created it meanwhile joins that one. Leaving removes the user tag; the run that then sees no
//! user left deletes the endpoint, and the group once no endpoint of bake's is left in the VPC.
//! Within one process the takes and releases in a VPC run one at a time (a lock), so images baked
//! at once share without racing. Across processes a joiner re-reads the endpoint after tagging
//! itself and starts over if it was deleted meanwhile. Endpoints bake did not make are used,
//! never changed or deleted.
//!
//! The group admits 443 only from the builders' own groups: one rule per run, revoked when the
//! run gives its share back (and before a builder's group is deleted, by the janitor, which
//! revokes rules in bake's groups that name it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::{
    IpPermission, ResourceType, Tag, UserIdGroupPair, VpcEndpoint, VpcEndpointType,
};
use futures_util::future::BoxFuture;

use super::share::{self, Locks, Users};
use crate::aws::{self, CallError, Clients};
use crate::janitor::{Hold, Janitor, Left, Resource, revoke_rules_from};
use crate::output::Progress;
use crate::poll::{self, Check, PollError};
use crate::resolve::{self, DefaultRoute, Routing, Subnet, filter};
use crate::tags;

/// The interface endpoints the SSM agent needs (Session Manager's and Run Command's channels).
pub const SERVICES: [&str; 3] = ["ssm", "ssmmessages", "ec2messages"];
/// The port the agent reaches the endpoints on.
const HTTPS: i32 = 443;

/// AWS documents a new interface endpoint as `pending` for a few minutes; 10 minutes means it is
/// stuck (Terraform's provider waits as long by default).
const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Deleting an interface endpoint takes AWS a minute or two; 10 minutes is stuck, left to gc.
const DELETED_TIMEOUT: Duration = Duration::from_secs(600);
/// The endpoints' group answers DependencyViolation while a deleted endpoint's network
/// interfaces are still going: seconds in the lab, minutes on AWS.
const GROUP_RELEASE: aws::Settle = aws::Settle::new(
    "the deleted endpoints to let go of their security group",
    &["DependencyViolation"],
    Duration::from_secs(300),
);
/// An endpoint another process created may be missing from DescribeVpcEndpoints for a few
/// seconds (the EC2 API is eventually consistent); a minute covers the slow tail.
const NEW_ENDPOINT_VISIBLE: Duration = Duration::from_secs(60);
/// An endpoint id CreateVpcEndpoint just returned may be unknown to the next calls for a few
/// seconds; past 30 s a NotFound for one this run knows means it is gone.
const NEW_ENDPOINT_ID: aws::Settle = aws::Settle::new(
    "EC2 to learn of the new VPC endpoint",
    &["InvalidVpcEndpointId.NotFound"],
    Duration::from_secs(30),
);
/// An endpoint's users: `bake:endpoint-user:<run-id>`; an endpoint gone is one untagged.
const USERS: Users = Users {
    prefix: tags::ENDPOINT_USER_PREFIX,
    kind: "VPC endpoint",
    settle: aws::THROTTLE_BURST,
    gone: &["InvalidVpcEndpointId.NotFound"],
};
/// How often a take starts over when an endpoint it joined disappeared (another process's last
/// user deleted it): each round changes who holds it, so three mean something keeps changing it.
const TAKE_ROUNDS: usize = 3;

/// The endpoints a private builder's bake must create, resolved at preflight.
#[derive(Debug, Clone)]
pub struct Plan {
    pub vpc: String,
    /// The builder subnet: the endpoints' network interfaces go there.
    pub subnet: String,
    /// The services missing at preflight (`ssm`, ...); looked at again when taken.
    pub missing: Vec<String>,
}

/// Why the endpoints could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] CallError),
    #[error("VPC endpoint {endpoint} ({service}) in {region} {what}")]
    Endpoint {
        endpoint: String,
        service: String,
        region: String,
        what: String,
    },
}

/// `com.amazonaws.REGION.SERVICE`.
pub fn service_name(region: &str, service: &str) -> String {
    format!("com.amazonaws.{region}.{service}")
}

/// Whether the builder subnet reaches SSM without bake's own temporary NAT: the services whose
/// endpoint is missing (empty when all three are there, or the subnet's default route goes to a
/// NAT gateway bake did not make). Pending endpoints count as there: a bake waits for them.
pub async fn missing(
    clients: &Clients,
    subnet: &Subnet,
    routing: &Routing,
) -> Result<Vec<String>, CallError> {
    if let Some(DefaultRoute::NatGateway(nat)) = &routing.default_route
        && !super::egress::is_bakes(clients, nat).await?
    {
        return Ok(Vec::new());
    }
    let found = endpoints(clients, &subnet.vpc_id).await?;
    Ok(SERVICES
        .iter()
        .filter(|s| {
            let name = service_name(&clients.region, s);
            !found
                .iter()
                .any(|e| e.service_name() == Some(name.as_str()) && usable(e))
        })
        .map(|s| (*s).to_owned())
        .collect())
}

/// The VPC's interface endpoints for the SSM services, in any state.
async fn endpoints(clients: &Clients, vpc: &str) -> Result<Vec<VpcEndpoint>, CallError> {
    let names: Vec<String> = SERVICES
        .iter()
        .map(|s| service_name(&clients.region, s))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let request = clients
        .ec2
        .describe_vpc_endpoints()
        .filters(filter("vpc-id", vpc))
        .filters(resolve::filter_any("service-name", &names));
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("list the SSM endpoints of VPC {vpc}"))
        .await?;
    Ok(out
        .vpc_endpoints
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.vpc_endpoint_type() == Some(&VpcEndpointType::Interface))
        .collect())
}

/// An interface endpoint that serves the SSM names inside the VPC, now or once it is available.
fn usable(e: &VpcEndpoint) -> bool {
    e.private_dns_enabled() == Some(true) && is(e, LIVE)
}

/// The states of an endpoint that serves now or will once available.
const LIVE: &[&str] = &["available", "pending", "pendingacceptance"];

/// Whether an endpoint's state is one of `states` (lower case). EC2 answers `available`,
/// `pending`, `pendingAcceptance`, ... while the SDK's `State` enum spells them capitalised, so
/// the text is compared, case-insensitively.
fn is(e: &VpcEndpoint, states: &[&str]) -> bool {
    e.state()
        .is_some_and(|s| states.contains(&s.as_str().to_ascii_lowercase().as_str()))
}

/// The in-process locks for the endpoints, one per VPC.
static VPC_LOCKS: Locks = Locks::new();

/// One bake's share of the VPC's endpoints, for the janitor to give back ([`Hold`]).
pub struct Share {
    clients: Clients,
    run_id: String,
    vpc: String,
    /// The builder's group, admitted on 443 by the endpoints' group.
    builder_group: String,
    taken: Mutex<Taken>,
}

impl Hold for Share {
    fn release(&self) -> BoxFuture<'_, Result<Vec<Resource>, Vec<Left>>> {
        Box::pin(self.give_back())
    }
}

#[derive(Debug, Default, Clone)]
struct Taken {
    /// bake's endpoints this run is (or may be) tagged a user of.
    using: Vec<String>,
    /// The endpoints' group, once this run found or made it and admitted its builder's group.
    group: Option<String>,
}

/// Takes the VPC's SSM endpoints for a bake: joins bake's, creates the missing ones and their
/// group, admits the builder's group on 443, and waits until every one is available. The share
/// is held by the janitor before the first request, so any exit gives it back.
pub async fn take(
    clients: &Clients,
    plan: &Plan,
    builder_group: &str,
    run_tags: &[Tag],
    janitor: &Janitor,
    progress: &Progress,
) -> Result<(), Error> {
    let share = Arc::new(Share {
        clients: clients.clone(),
        run_id: janitor.run_id().to_owned(),
        vpc: plan.vpc.clone(),
        builder_group: builder_group.to_owned(),
        taken: Mutex::new(Taken::default()),
    });
    janitor.hold(share.clone());
    progress.step(format!(
        "making sure VPC {} has the SSM endpoints ({})",
        plan.vpc,
        SERVICES.join(", ")
    ));
    let lock = VPC_LOCKS.of(&plan.vpc);
    let ids = {
        let _guard = lock.lock().await;
        let mut round = 0;
        loop {
            round += 1;
            let (ids, joined) = share.join_or_create(plan, run_tags).await?;
            // Another process's last user may have deleted one we joined between our read and
            // our tag (the ones we created may just not be listed yet: eventual consistency).
            let gone = !joined.is_empty() && !all_listed(clients, &joined).await?;
            if !gone || round >= TAKE_ROUNDS {
                break ids;
            }
        }
    };
    wait_available(clients, &ids, progress).await
}

impl Share {
    /// Finds or creates the group and the endpoints; returns the ids of the endpoints to wait
    /// for (bake's and foreign ones alike), and those of bake's it joined.
    async fn join_or_create(
        &self,
        plan: &Plan,
        run_tags: &[Tag],
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        let clients = &self.clients;
        let found = endpoints(clients, &plan.vpc).await?;
        let mut ids = Vec::new();
        let mut joined = Vec::new();
        let mut to_create = Vec::new();
        for service in SERVICES {
            let name = service_name(&clients.region, service);
            match found
                .iter()
                .find(|e| e.service_name() == Some(name.as_str()) && usable(e))
            {
                Some(e) => {
                    let id = e.vpc_endpoint_id().unwrap_or_default().to_owned();
                    if tags::value(e.tags(), tags::ENDPOINT).is_some() {
                        self.join(&id).await?;
                        joined.push(id.clone());
                    }
                    ids.push(id);
                }
                None => to_create.push(service),
            }
        }
        if to_create.is_empty() {
            return Ok((ids, joined));
        }
        let group = self.group(run_tags).await?;
        for service in to_create {
            ids.push(self.create(service, &plan.subnet, &group, run_tags).await?);
        }
        Ok((ids, joined))
    }

    /// Tags this run a user of one of bake's endpoints.
    async fn join(&self, id: &str) -> Result<(), CallError> {
        self.taken
            .lock()
            .expect("share lock")
            .using
            .push(id.to_owned());
        USERS.join(&self.clients, id, &self.run_id).await
    }

    /// The endpoints' group (found by its tag, else created) with 443 open to this run's builder
    /// group.
    async fn group(&self, run_tags: &[Tag]) -> Result<String, Error> {
        if let Some(group) = self.taken.lock().expect("share lock").group.clone() {
            return Ok(group);
        }
        let clients = &self.clients;
        let id = match find_group(clients, &self.vpc).await? {
            Some(id) => id,
            None => {
                let name = format!("bake-ssm-endpoints-{}", self.vpc);
                let create = clients
                    .ec2
                    .create_security_group()
                    .group_name(&name)
                    .description("bake: SSM interface endpoints, 443 from bake's builders only")
                    .vpc_id(&self.vpc)
                    .tag_specifications(tags::at_creation(
                        ResourceType::SecurityGroup,
                        &name,
                        &shared_tags(run_tags, &self.vpc, None),
                    ));
                match clients.call(|| create.clone().send()).answer().await {
                    Ok(out) => out.group_id().unwrap_or_default().to_owned(),
                    // Another process made it a moment ago (the name is per VPC).
                    Err(e) if e.is(&["InvalidGroup.Duplicate"]) => find_group(clients, &self.vpc)
                        .await?
                        .ok_or_else(|| e.or_fail(|| format!("create security group {name}")))?,
                    Err(e) => {
                        return Err(e.or_fail(|| format!("create security group {name}")).into());
                    }
                }
            }
        };
        self.taken.lock().expect("share lock").group = Some(id.clone());
        let authorize = clients
            .ec2
            .authorize_security_group_ingress()
            .group_id(&id)
            .ip_permissions(admit(&self.builder_group, &self.run_id));
        match clients
            .call(|| authorize.clone().send())
            .settle(&aws::NEW_SECURITY_GROUP)
            .answer()
            .await
        {
            Ok(_) => {}
            Err(e) if e.is(&["InvalidPermission.Duplicate"]) => {}
            Err(e) => {
                return Err(e
                    .or_fail(|| format!("open 443 on {id} to {}", self.builder_group))
                    .into());
            }
        }
        Ok(id)
    }

    /// Creates one endpoint (or, when another process just created it, joins that one).
    async fn create(
        &self,
        service: &str,
        subnet: &str,
        group: &str,
        run_tags: &[Tag],
    ) -> Result<String, Error> {
        let clients = &self.clients;
        let name = service_name(&clients.region, service);
        let label = format!("bake {service} endpoint");
        let request = clients
            .ec2
            .create_vpc_endpoint()
            .vpc_id(&self.vpc)
            .service_name(&name)
            .vpc_endpoint_type(VpcEndpointType::Interface)
            .private_dns_enabled(true)
            .subnet_ids(subnet)
            .security_group_ids(group)
            .client_token(format!("{}-{service}", self.run_id))
            .tag_specifications(tags::at_creation(
                ResourceType::VpcEndpoint,
                &label,
                &shared_tags(run_tags, &self.vpc, Some(&self.run_id)),
            ));
        match clients
            .call(|| request.clone().send())
            .settle(&aws::NEW_SECURITY_GROUP)
            .answer()
            .await
        {
            Ok(out) => {
                let id = out
                    .vpc_endpoint()
                    .and_then(|e| e.vpc_endpoint_id())
                    .unwrap_or_default()
                    .to_owned();
                self.taken
                    .lock()
                    .expect("share lock")
                    .using
                    .push(id.clone());
                Ok(id)
            }
            // AWS refuses a second private-DNS endpoint for a service in a VPC: someone made it.
            Err(e) if e.is(&["InvalidParameter"]) => {
                let Some(found) = listed_soon(clients, &self.vpc, &name).await? else {
                    return Err(e
                        .or_fail(|| format!("create the {name} endpoint in {}", self.vpc))
                        .into());
                };
                let id = found.vpc_endpoint_id().unwrap_or_default().to_owned();
                if tags::value(found.tags(), tags::ENDPOINT).is_some() {
                    self.join(&id).await?;
                }
                Ok(id)
            }
            Err(e) => Err(e
                .or_fail(|| format!("create the {name} endpoint in {}", self.vpc))
                .into()),
        }
    }

    /// Gives the share back: revokes the builder group's rule, removes this run's user tags, and
    /// deletes what no run uses any more.
    async fn give_back(&self) -> Result<Vec<Resource>, Vec<Left>> {
        let taken = self.taken.lock().expect("share lock").clone();
        let lock = VPC_LOCKS.of(&self.vpc);
        let _guard = lock.lock().await;
        let mut left = Vec::new();
        let group = match &taken.group {
            Some(g) => Some(g.clone()),
            None => find_group(&self.clients, &self.vpc).await.ok().flatten(),
        };
        if let Some(group) = &group
            && let Err(e) = revoke_rules_from(&self.clients, group, &self.builder_group).await
        {
            left.push(Left {
                resource: Resource::SecurityGroup(group.clone()),
                reason: format!("rule from {} not revoked: {e}", self.builder_group),
            });
        }
        for id in &taken.using {
            if let Err(e) = USERS.leave(&self.clients, id, &self.run_id).await {
                left.push(Left {
                    resource: Resource::VpcEndpoint(id.clone()),
                    reason: e.to_string(),
                });
            }
        }
        let mut removed = Vec::new();
        let swept = remove_unused(&self.clients, &self.vpc, &taken.using, None, &mut removed).await;
        share::gather(&mut left, swept, || {
            Resource::VpcEndpoint(format!("(VPC {})", self.vpc))
        });
        share::outcome(removed, left)
    }
}

/// Tags for bake's shared endpoints and their group: the run's tags except its run id (the run
/// that created them must not delete them by tag while others use them), `bake:endpoint`, and
/// on an endpoint its creator as the first user.
fn shared_tags(run_tags: &[Tag], vpc: &str, user: Option<&str>) -> Vec<Tag> {
    let mut out: Vec<Tag> = run_tags
        .iter()
        .filter(|t| t.key() != Some(tags::RUN_ID))
        .cloned()
        .collect();
    out.push(tags::tag(tags::ENDPOINT, vpc));
    if let Some(run) = user {
        out.push(USERS.tag(run));
    }
    out
}

/// 443 from one builder group, described with its run.
fn admit(builder_group: &str, run_id: &str) -> IpPermission {
    IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(HTTPS)
        .to_port(HTTPS)
        .user_id_group_pairs(
            UserIdGroupPair::builder()
                .group_id(builder_group)
                .description(format!("bake run {run_id}: SSM agent to the endpoints"))
                .build(),
        )
        .build()
}

/// Whether every one of `ids` is still listed and usable (a NotFound means one is gone).
async fn all_listed(clients: &Clients, ids: &[String]) -> Result<bool, CallError> {
    let request = clients
        .ec2
        .describe_vpc_endpoints()
        .set_vpc_endpoint_ids(Some(ids.to_vec()));
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_none(&["InvalidVpcEndpointId.NotFound"], || {
            format!("describe VPC endpoints {}", ids.join(", "))
        })
        .await?;
    Ok(out.is_some_and(|o| {
        ids.iter().all(|id| {
            o.vpc_endpoints()
                .iter()
                .any(|e| e.vpc_endpoint_id() == Some(id.as_str()) && usable(e))
        })
    }))
}

/// The usable endpoint for `service_name` in `vpc` that another process just created (AWS
/// refused ours for its DNS name): EC2's lists may show it only after a while, so look again
/// for up to [`NEW_ENDPOINT_VISIBLE`].
async fn listed_soon(
    clients: &Clients,
    vpc: &str,
    service_name: &str,
) -> Result<Option<VpcEndpoint>, CallError> {
    let deadline = poll::deadline(NEW_ENDPOINT_VISIBLE);
    loop {
        let found = endpoints(clients, vpc)
            .await?
            .into_iter()
            .find(|x| x.service_name() == Some(service_name) && usable(x));
        if found.is_some() || tokio::time::Instant::now() >= deadline {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// bake's endpoint group in a VPC.
async fn find_group(clients: &Clients, vpc: &str) -> Result<Option<String>, CallError> {
    let request = clients
        .ec2
        .describe_security_groups()
        .filters(filter("vpc-id", vpc))
        .filters(tags::filter(tags::ENDPOINT, vpc));
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("find bake's endpoint group in {vpc}"))
        .await?;
    Ok(out
        .security_groups()
        .first()
        .and_then(|g| g.group_id())
        .map(str::to_owned))
}

/// Waits until every endpoint is available.
async fn wait_available(
    clients: &Clients,
    ids: &[String],
    progress: &Progress,
) -> Result<(), Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let step = format!(
        "waiting for the SSM endpoints {} to be available",
        ids.join(", ")
    );
    progress.step(step.clone());
    let result = poll::until(
        &step,
        poll::deadline(AVAILABLE_TIMEOUT),
        share::SCHEDULE,
        |seen| progress.detail(&step, seen),
        || async {
            let request = clients
                .ec2
                .describe_vpc_endpoints()
                .set_vpc_endpoint_ids(Some(ids.to_vec()));
            let out = match request.send().await {
                Ok(out) => out,
                // Just created: the ids may not be visible for a moment.
                Err(e) if aws::code(&e) == Some("InvalidVpcEndpointId.NotFound") => {
                    return Check::Pending("not visible yet".to_owned());
                }
                Err(e) => return aws::unless_transient(&e, |e| Err(aws::describe(e))),
            };
            let all = out.vpc_endpoints();
            if let Some(bad) = all.iter().find(|e| !is(e, LIVE)) {
                return Check::Failed(Ok(bad.clone()));
            }
            let pending: Vec<&str> = all
                .iter()
                .filter(|e| !is(e, &["available"]))
                .filter_map(|e| e.vpc_endpoint_id())
                .collect();
            if pending.is_empty() && all.len() == ids.len() {
                Check::Ready(())
            } else {
                Check::Pending(format!("pending: {}", pending.join(", ")))
            }
        },
    )
    .await;
    let fail = |e: &VpcEndpoint, what: String| Error::Endpoint {
        endpoint: e.vpc_endpoint_id().unwrap_or_default().to_owned(),
        service: e.service_name().unwrap_or_default().to_owned(),
        region: clients.region.clone(),
        what,
    };
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(Ok(e))) => {
            let state = e.state().map_or("unknown", |s| s.as_str()).to_owned();
            Err(fail(&e, format!("is {state}, not available")))
        }
        Err(PollError::Failed(Err(message))) => Err(clients
            .failed(
                format!("describe VPC endpoints {}", ids.join(", ")),
                message,
            )
            .into()),
        Err(PollError::TimedOut { last }) => Err(Error::Endpoint {
            endpoint: ids.join(", "),
            service: "ssm".to_owned(),
            region: clients.region.clone(),
            what: format!("was not available within {AVAILABLE_TIMEOUT:?} ({last})"),
        }),
    }
}

/// Deletes bake's endpoints in `vpc` that no run uses (with `cutoff`: whose every user joined
/// before it, for gc), waits until they are gone, then deletes bake's group there once no
/// endpoint of bake's is left. Returns what is left and why; fails only when listing fails.
async fn remove_unused(
    clients: &Clients,
    vpc: &str,
    known: &[String],
    cutoff: Option<SystemTime>,
    removed: &mut Vec<Resource>,
) -> Result<Vec<Left>, CallError> {
    let mut left = Vec::new();
    let mut listed = endpoints(clients, vpc).await?;
    // Ones this run created or joined may not be listed yet (eventual consistency): by id.
    let unlisted: Vec<String> = known
        .iter()
        .filter(|id| {
            !listed
                .iter()
                .any(|e| e.vpc_endpoint_id() == Some(id.as_str()))
        })
        .cloned()
        .collect();
    if !unlisted.is_empty() {
        let request = clients
            .ec2
            .describe_vpc_endpoints()
            .set_vpc_endpoint_ids(Some(unlisted.clone()));
        let by_id = clients
            .call(|| request.clone().send())
            .settle(&NEW_ENDPOINT_ID)
            .or_none(&["InvalidVpcEndpointId.NotFound"], || {
                format!("describe VPC endpoints {}", unlisted.join(", "))
            })
            .await?;
        listed.extend(
            by_id
                .map(|o| o.vpc_endpoints().to_vec())
                .unwrap_or_default(),
        );
    }
    let ours: Vec<VpcEndpoint> = listed
        .into_iter()
        .filter(|e| tags::value(e.tags(), tags::ENDPOINT).is_some())
        .filter(|e| !is(e, &["deleted", "deleting"]))
        .collect();
    let unused: Vec<String> = ours
        .iter()
        .filter(|e| {
            let users = USERS.of(e.tags());
            match cutoff {
                None => users.is_empty(),
                Some(cutoff) => users.iter().all(|(_, at)| at.is_none_or(|at| at < cutoff)),
            }
        })
        .filter_map(|e| e.vpc_endpoint_id().map(str::to_owned))
        .collect();
    if !unused.is_empty() {
        let request = clients
            .ec2
            .delete_vpc_endpoints()
            .set_vpc_endpoint_ids(Some(unused.clone()));
        let out = clients
            .call(|| request.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_fail(|| format!("delete VPC endpoints {}", unused.join(", ")))
            .await?;
        let refused: Vec<String> = out
            .unsuccessful()
            .iter()
            .filter_map(|u| {
                let id = u.resource_id()?;
                let why = u.error().and_then(|e| e.message()).unwrap_or("refused");
                left.push(Left {
                    resource: Resource::VpcEndpoint(id.to_owned()),
                    reason: why.to_owned(),
                });
                Some(id.to_owned())
            })
            .collect();
        let asked: Vec<String> = unused
            .into_iter()
            .filter(|i| !refused.contains(i))
            .collect();
        match wait_deleted(clients, &asked).await {
            Ok(()) => removed.extend(asked.into_iter().map(Resource::VpcEndpoint)),
            Err(reason) => left.extend(asked.into_iter().map(|id| Left {
                resource: Resource::VpcEndpoint(id),
                reason: reason.clone(),
            })),
        }
    }
    let remaining = endpoints(clients, vpc)
        .await?
        .into_iter()
        .filter(|e| tags::value(e.tags(), tags::ENDPOINT).is_some())
        .any(|e| !is(&e, &["deleted"]));
    if !remaining && let Some(group) = find_group(clients, vpc).await? {
        let request = clients.ec2.delete_security_group().group_id(&group);
        let deleted = clients
            .call(|| request.clone().send())
            .settle(&GROUP_RELEASE)
            .or_none(&["InvalidGroup.NotFound"], || {
                format!("delete security group {group}")
            })
            .await;
        match deleted {
            Ok(_) => removed.push(Resource::SecurityGroup(group)),
            Err(e) => left.push(Left {
                resource: Resource::SecurityGroup(group),
                reason: e.to_string(),
            }),
        }
    }
    Ok(left)
}

/// Waits until the endpoints are deleted (or no longer listed).
async fn wait_deleted(clients: &Clients, ids: &[String]) -> Result<(), String> {
    if ids.is_empty() {
        return Ok(());
    }
    let result = poll::until(
        &format!("waiting for VPC endpoints {} to be deleted", ids.join(", ")),
        poll::deadline(DELETED_TIMEOUT),
        share::SCHEDULE,
        |_| {},
        || async {
            let request = clients
                .ec2
                .describe_vpc_endpoints()
                .set_vpc_endpoint_ids(Some(ids.to_vec()));
            match request.send().await {
                Ok(out) => {
                    let alive: Vec<&str> = out
                        .vpc_endpoints()
                        .iter()
                        .filter(|e| !is(e, &["deleted"]))
                        .filter_map(|e| e.vpc_endpoint_id())
                        .collect();
                    if alive.is_empty() {
                        Check::Ready(())
                    } else {
                        Check::Pending(format!("still there: {}", alive.join(", ")))
                    }
                }
                Err(e) if aws::code(&e) == Some("InvalidVpcEndpointId.NotFound") => {
                    Check::Ready(())
                }
                Err(e) => aws::unless_transient(&e, aws::describe),
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(message)) => Err(message),
        Err(PollError::TimedOut { last }) => Err(format!(
            "not deleted within {DELETED_TIMEOUT:?} ({last}); `bake gc` tries again"
        )),
    }
}

/// The VPCs where bake's endpoints are.
async fn vpcs_with_endpoints(clients: &Clients) -> Result<Vec<String>, CallError> {
    let request = clients
        .ec2
        .describe_vpc_endpoints()
        .filters(filter("tag-key", tags::ENDPOINT));
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| "list bake's VPC endpoints".into())
        .await?;
    let mut vpcs: Vec<String> = out
        .vpc_endpoints()
        .iter()
        .filter_map(|e| tags::value(e.tags(), tags::ENDPOINT).map(str::to_owned))
        .collect();
    let groups = clients
        .ec2
        .describe_security_groups()
        .filters(filter("tag-key", tags::ENDPOINT));
    let out = clients
        .call(|| groups.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| "list bake's endpoint groups".into())
        .await?;
    vpcs.extend(
        out.security_groups()
            .iter()
            .filter_map(|g| tags::value(g.tags(), tags::ENDPOINT).map(str::to_owned)),
    );
    vpcs.sort();
    vpcs.dedup();
    Ok(vpcs)
}

/// For `bake gc --dry-run`: bake's endpoints whose every user joined before `cutoff`, and their
/// group where it would go with them.
pub async fn find_left(clients: &Clients, cutoff: SystemTime) -> Result<Vec<Resource>, CallError> {
    let mut found = Vec::new();
    for vpc in vpcs_with_endpoints(clients).await? {
        let ours: Vec<VpcEndpoint> = endpoints(clients, &vpc)
            .await?
            .into_iter()
            .filter(|e| tags::value(e.tags(), tags::ENDPOINT).is_some())
            .filter(|e| !is(e, &["deleted"]))
            .collect();
        let (old, live): (Vec<&VpcEndpoint>, Vec<&VpcEndpoint>) = ours.iter().partition(|e| {
            USERS
                .of(e.tags())
                .iter()
                .all(|(_, at)| at.is_none_or(|at| at < cutoff))
        });
        found.extend(
            old.iter()
                .filter_map(|e| e.vpc_endpoint_id())
                .map(|id| Resource::VpcEndpoint(id.to_owned())),
        );
        if live.is_empty()
            && let Some(group) = find_group(clients, &vpc).await?
        {
            found.push(Resource::SecurityGroup(group));
        }
    }
    Ok(found)
}

/// For `bake gc`: deletes bake's endpoints whose every user joined before `cutoff` (a killed
/// run's), then their group where none is left.
pub async fn remove_left(
    clients: &Clients,
    cutoff: SystemTime,
) -> Result<Vec<Resource>, Vec<Left>> {
    let vpcs = vpcs_with_endpoints(clients).await.map_err(|e| {
        vec![Left {
            resource: Resource::VpcEndpoint("(listing)".to_owned()),
            reason: e.to_string(),
        }]
    })?;
    let mut removed = Vec::new();
    let mut left = Vec::new();
    for vpc in vpcs {
        let lock = VPC_LOCKS.of(&vpc);
        let _guard = lock.lock().await;
        let swept = remove_unused(clients, &vpc, &[], Some(cutoff), &mut removed).await;
        share::gather(&mut left, swept, || {
            Resource::VpcEndpoint(format!("(VPC {vpc})"))
        });
    }
    share::outcome(removed, left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(state: &str, dns: bool, user_tags: &[(&str, &str)]) -> VpcEndpoint {
        let mut e = VpcEndpoint::builder()
            .vpc_endpoint_id("vpce-1")
            .state(aws_sdk_ec2::types::State::from(state))
            .private_dns_enabled(dns)
            .tags(tags::tag(tags::ENDPOINT, "vpc-1"));
        for (k, v) in user_tags {
            e = e.tags(tags::tag(k, v));
        }
        e.build()
    }

    #[test]
    fn an_endpoint_counts_with_private_dns_while_pending_or_available() {
        // As EC2 answers them (lower case), and as the SDK's enum spells them.
        assert!(usable(&endpoint("available", true, &[])));
        assert!(usable(&endpoint("Available", true, &[])));
        assert!(usable(&endpoint("pending", true, &[])));
        assert!(usable(&endpoint("pendingAcceptance", true, &[])));
        assert!(!usable(&endpoint("available", false, &[])));
        assert!(!usable(&endpoint("deleting", true, &[])));
        assert!(!usable(&endpoint("failed", true, &[])));
    }

    #[test]
    fn users_are_read_from_their_tags_with_when_they_joined() {
        let e = endpoint(
            "available",
            true,
            &[
                (
                    "bake:endpoint-user:20261124t001500-abcdef",
                    "2026-11-24T00:15:00Z",
                ),
                ("Name", "bake ssm endpoint"),
            ],
        );
        let users = USERS.of(e.tags());
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].0, "20261124t001500-abcdef");
        assert_eq!(
            users[0].1,
            Some(humantime::parse_rfc3339("2026-11-24T00:15:00Z").unwrap())
        );
    }

    #[test]
    fn shared_tags_drop_the_run_id_and_name_the_vpc_and_the_first_user() {
        let run = tags::of_run("run-1", "web", "d1g3st");
        let shared = shared_tags(&run, "vpc-1", Some("run-1"));
        assert!(shared.iter().all(|t| t.key() != Some(tags::RUN_ID)));
        assert_eq!(tags::value(&shared, tags::ENDPOINT), Some("vpc-1"));
        assert!(tags::value(&shared, "bake:endpoint-user:run-1").is_some());
        assert_eq!(tags::value(&shared, tags::IMAGE), Some("web"));
    }
}
