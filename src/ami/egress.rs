//! Temporary NAT egress for a private builder (`builder.egress = "nat"`): the preflight check of
//! the builder subnet's route table, the Elastic IP, NAT gateway and default route taken for a
//! bake and shared by concurrent bakes, their release by the last user, and `bake gc`'s search.
//!
//! # Sharing
//!
//! Bakes whose builders use one route table share one NAT gateway. The route table is the source
//! of truth: a bake that finds `0.0.0.0/0 -> nat-…` where the NAT gateway carries
//! `bake:egress = <route table>` joins it by tagging it `bake:egress-user:<run-id>`; a bake that
//! finds no default route creates an address, a gateway (tagged with itself as a user) and the
//! route. Leaving removes the user tag; the run that finds no other user left is the last one
//! out and removes the route, the gateway (waiting until it is deleted) and its address.
//!
//! Races, and what is guaranteed:
//! - Two creators at once: both create a gateway, one CreateRoute wins, the other gets
//!   RouteAlreadyExists, joins the winner's gateway and removes its own (never routed, so never
//!   used by anyone else).
//! - A joiner against the last leaver: the leaver tags the gateway `bake:egress-closing` *before*
//!   it reads the users; a joiner tags itself a user *before* it reads `bake:egress-closing`. So
//!   at least one of them sees the other: the leaver that sees a new user stays (removes its
//!   closing tag and leaves the gateway to it), the joiner that sees the closing tag backs off,
//!   waits until the route is gone and creates a new gateway. This holds as far as EC2's tag
//!   reads see earlier tag writes; EC2 documents its API as eventually consistent, so a joiner
//!   also re-reads the route after joining and re-creates it if a leaver removed it.
//! - Within one bake process the takes and releases on one route table are serialised by a lock,
//!   so two images baked at once never race each other at all.
//! - Nothing here replaces a default route bake did not add: preflight refuses such a table, and
//!   a take that finds one appearing later stops without touching it.
//! - `bake gc` removes a gateway whose users all joined before its cutoff (the rule it uses for
//!   builders: `--ttl` longer than any bake), so `--ttl 0s` takes a gateway from a live bake too.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::describe_nat_gateways::DescribeNatGatewaysOutput;
use aws_sdk_ec2::types::{
    Address, ConnectivityType, DomainType, NatGateway, NatGatewayState, ResourceType, RouteTable,
    Tag,
};
use futures_util::future::BoxFuture;

use super::share::{self, Locks, Users};
use crate::aws::{self, CallError, Clients, Failed, Settle};
use crate::config::ResourceRef;
use crate::janitor::{Hold, Janitor, Left, Resource};
use crate::output::Progress;
use crate::poll::{self, Check, PollError};
use crate::resolve::{self, DefaultRoute, Routing, Subnet, filter, filter_any};
use crate::tags;

/// The destination bake routes through the NAT gateway.
const DEFAULT_ROUTE: &str = "0.0.0.0/0";

/// AWS documents a NAT gateway as `pending` for a few minutes; Terraform's provider waits up to
/// 10 minutes for `available` by default, and so does bake.
const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Deleting takes AWS about a minute, sometimes several; 10 minutes is a stuck gateway (Terraform
/// allows 30 before it gives up; bake reports it for `bake gc` instead of holding the run).
const DELETED_TIMEOUT: Duration = Duration::from_secs(600);
/// A joiner that finds the gateway closing waits for its last user to remove the route: a few
/// calls, but the leaver may be waiting on AWS's deletion too, so allow as long as that.
const CLOSING_TIMEOUT: Duration = DELETED_TIMEOUT;
/// How often a take starts over (after a lost route race or a closing gateway) before it stops:
/// each round changes who holds the route, so three rounds mean something else keeps changing it.
const TAKE_ROUNDS: usize = 3;

/// ReleaseAddress answers InvalidIPAddress.InUse while a deleted NAT gateway's network interface
/// still holds the address: seconds after `deleted`, minutes at worst.
const ADDRESS_RELEASE: Settle = Settle::new(
    "the deleted NAT gateway to let go of its Elastic IP",
    &["InvalidIPAddress.InUse"],
    Duration::from_secs(300),
);
/// A NAT gateway id just returned by CreateNatGateway may be unknown for a few seconds
/// (eventual consistency in the EC2 API), rarely a minute.
const NEW_NAT: Settle = Settle::new(
    "EC2 to learn of the new NAT gateway",
    &["NatGatewayNotFound", "InvalidNatGatewayID.NotFound"],
    Duration::from_secs(120),
);
/// The gateway's users: `bake:egress-user:<run-id>`; an untag asks again while EC2 does not know
/// a gateway just created.
const USERS: Users = Users {
    prefix: tags::EGRESS_USER_PREFIX,
    kind: "NAT gateway",
    settle: NEW_NAT,
    gone: NEW_NAT.codes,
};
/// CreateRoute right after the gateway became available may not know it yet.
const NAT_FOR_ROUTE: Settle = Settle::new(
    "EC2 to accept the new NAT gateway as a route target",
    &["InvalidNatGatewayID.NotFound", "NatGatewayNotFound"],
    Duration::from_secs(120),
);

/// Where a bake's temporary NAT goes: resolved at preflight.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The builder subnet's route table (its own, else the VPC's main one).
    pub table: String,
    /// The builder subnet.
    pub subnet: String,
    /// The public subnet the NAT gateway is created in.
    pub nat_subnet: String,
}

/// Why the temporary NAT could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] CallError),
    #[error("NAT gateway {nat} in {region} {what}")]
    Gateway {
        nat: String,
        region: String,
        what: String,
    },
    #[error(
        "route table {table} in {region} got a default route to {target} after preflight; bake \
         does not replace it"
    )]
    Taken {
        table: String,
        target: String,
        region: String,
    },
    #[error(
        "route table {table} in {region}: the default route changed hands {TAKE_ROUNDS} times \
         while bake was taking it ({last})"
    )]
    Contended {
        table: String,
        region: String,
        last: String,
    },
}

/// Preflight: the builder subnet's route table must have no default route other than one of
/// bake's temporary NAT gateways, and a public subnet of the same VPC must hold the gateway:
/// `nat_subnet` when given (it must be public and in the VPC), else one whose route table sends
/// 0.0.0.0/0 to an internet gateway, in the builder's zone when there is one. Errors are the
/// caller's to place in the config (`resolve::at`).
pub async fn plan(
    clients: &Clients,
    subnet: &Subnet,
    routing: &Routing,
    nat_subnet: Option<&ResourceRef>,
) -> Result<Plan, PlanError> {
    let table_id = routing.id.clone();
    if let Some(route) = &routing.default_route {
        let ours = match route {
            DefaultRoute::NatGateway(nat) => describe_nat(clients, nat)
                .await
                .map_err(|e| PlanError::Subnet(e.into()))?
                .is_some_and(|n| is_ours(&n, &table_id)),
            _ => false,
        };
        if !ours {
            return Err(PlanError::Route(resolve::Error::DefaultRoute {
                table: table_id,
                subnet: subnet.id.clone(),
                target: route.to_string(),
                region: clients.region.clone(),
            }));
        }
    }
    let nat_subnet = match nat_subnet {
        Some(r) => {
            let found = resolve::subnet(clients, r)
                .await
                .map_err(PlanError::NatSubnet)?;
            if found.vpc_id != subnet.vpc_id {
                return Err(PlanError::NatSubnet(resolve::Error::Lookup {
                    kind: "subnet",
                    reference: found.id,
                    region: clients.region.clone(),
                    detail: format!(
                        "is in {}, not in the builder's VPC {}: the NAT gateway must be in the \
                         builder's VPC",
                        found.vpc_id, subnet.vpc_id
                    ),
                }));
            }
            resolve::check_public(clients, &found)
                .await
                .map_err(PlanError::NatSubnet)?;
            found.id
        }
        None => public_subnet(clients, subnet)
            .await
            .map_err(PlanError::Subnet)?,
    };
    Ok(Plan {
        table: table_id,
        subnet: subnet.id.clone(),
        nat_subnet,
    })
}

/// A preflight problem and which config field it belongs to.
#[derive(Debug)]
pub enum PlanError {
    /// About the builder subnet (`builder.subnet`), or a failed call.
    Subnet(resolve::Error),
    /// Its route table's default route (`builder.egress`).
    Route(resolve::Error),
    /// About `builder.nat_subnet`.
    NatSubnet(resolve::Error),
}

/// A public subnet of the builder's VPC (0.0.0.0/0 -> igw-… in its route table, explicit or
/// main), in the builder's zone when one is; the first by id otherwise, so repeated bakes agree.
async fn public_subnet(clients: &Clients, builder: &Subnet) -> Result<String, resolve::Error> {
    let vpc = vec![filter("vpc-id", &builder.vpc_id)];
    let request = clients
        .ec2
        .describe_subnets()
        .set_filters(Some(vpc.clone()));
    let subnets = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("list the subnets of {}", builder.vpc_id))
        .await?
        .subnets
        .unwrap_or_default();
    let tables = resolve::route_tables(clients, vpc).await?;
    let main_public = tables
        .iter()
        .find(|t| t.associations().iter().any(|a| a.main() == Some(true)))
        .is_some_and(is_public);
    let mut public: Vec<(bool, String)> = subnets
        .iter()
        .filter_map(|s| {
            let id = s.subnet_id()?;
            let own = tables
                .iter()
                .find(|t| t.associations().iter().any(|a| a.subnet_id() == Some(id)));
            let is_public = match own {
                Some(t) => is_public(t),
                None => main_public,
            };
            let other_zone = s.availability_zone() != Some(builder.zone.as_str());
            (is_public && id != builder.id).then(|| (other_zone, id.to_owned()))
        })
        .collect();
    public.sort();
    public
        .into_iter()
        .next()
        .map(|(_, id)| id)
        .ok_or_else(|| resolve::Error::NoNatSubnet {
            vpc: builder.vpc_id.clone(),
            region: clients.region.clone(),
        })
}

/// Whether a route table sends 0.0.0.0/0 to an internet gateway.
fn is_public(table: &RouteTable) -> bool {
    matches!(
        resolve::default_route(table),
        Some(DefaultRoute::InternetGateway(_))
    )
}

/// Whether a NAT gateway is one of bake's temporary ones for this route table.
fn is_ours(nat: &NatGateway, table: &str) -> bool {
    tags::value(nat.tags(), tags::EGRESS) == Some(table)
}

fn state_of(nat: &NatGateway) -> &str {
    nat.state().map_or("unknown", NatGatewayState::as_str)
}

/// A gateway that still exists or is on its way (not deleting, deleted or failed).
fn is_live(nat: &NatGateway) -> bool {
    matches!(
        nat.state(),
        Some(NatGatewayState::Pending | NatGatewayState::Available)
    )
}

/// Whether `nat` is one of bake's temporary gateways (it goes when its bake ends: no path for
/// anything else to rely on); false when EC2 does not know it.
pub(super) async fn is_bakes(clients: &Clients, nat: &str) -> Result<bool, CallError> {
    Ok(describe_nat(clients, nat)
        .await?
        .is_some_and(|n| tags::value(n.tags(), tags::EGRESS).is_some()))
}

/// The gateway, or None when EC2 does not know it.
async fn describe_nat(clients: &Clients, id: &str) -> Result<Option<NatGateway>, CallError> {
    let request = clients.ec2.describe_nat_gateways().nat_gateway_ids(id);
    let out = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_none(
            &["NatGatewayNotFound", "InvalidNatGatewayID.NotFound"],
            || format!("describe NAT gateway {id}"),
        )
        .await?;
    Ok(out.and_then(|o| {
        o.nat_gateways
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.nat_gateway_id() == Some(id))
    }))
}

/// The route table by id, with its routes now.
async fn read_table(clients: &Clients, table: &str) -> Result<RouteTable, CallError> {
    resolve::route_tables(clients, vec![filter("route-table-id", table)])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            clients.failed(
                format!("read route table {table}"),
                "EC2 no longer lists it",
            )
        })
}

/// The in-process locks, one per route table.
static TABLE_LOCKS: Locks = Locks::new();

/// One bake's share of the temporary NAT: what it created and which gateways it is a user of,
/// for the janitor to give back ([`Hold`]).
pub struct Lease {
    clients: Clients,
    run_id: String,
    table: String,
    taken: Mutex<Taken>,
}

impl Hold for Lease {
    fn release(&self) -> BoxFuture<'_, Result<Vec<Resource>, Vec<Left>>> {
        Box::pin(self.give_back())
    }
}

#[derive(Debug, Default, Clone)]
struct Taken {
    /// Gateways this run is (or may be, the tag request was sent) tagged a user of.
    using: Vec<String>,
    /// A CreateNatGateway sent but not answered: asked again with its ClientToken on release.
    creating:
        Option<aws_sdk_ec2::operation::create_nat_gateway::builders::CreateNatGatewayFluentBuilder>,
}

/// Takes the temporary NAT for a bake (creating it or joining the one its route table already
/// uses) and returns when the route table sends 0.0.0.0/0 to an available gateway. The janitor
/// holds the lease from before the first request, so any exit gives it back.
pub async fn take(
    clients: &Clients,
    plan: &Plan,
    run_tags: &[Tag],
    janitor: &Janitor,
    progress: &Progress,
) -> Result<String, Error> {
    let lease = Arc::new(Lease {
        clients: clients.clone(),
        run_id: janitor.run_id().to_owned(),
        table: plan.table.clone(),
        taken: Mutex::new(Taken::default()),
    });
    janitor.hold(lease.clone());
    let lock = TABLE_LOCKS.of(&plan.table);
    let _guard = lock.lock().await;
    let mut last = String::new();
    for _ in 0..TAKE_ROUNDS {
        let table = read_table(clients, &plan.table).await?;
        match resolve::default_route(&table) {
            None => {
                progress.step("creating the temporary NAT gateway");
                let nat = lease.create(plan, run_tags).await?;
                wait_available(clients, &nat, progress).await?;
                match lease.route(&nat).await? {
                    None => return Ok(nat),
                    Some(winner) => {
                        // Another bake's route won: its gateway serves both; ours goes.
                        last = format!("lost the route to {winner}");
                        lease.retire(&nat).await?;
                    }
                }
            }
            Some(DefaultRoute::NatGateway(nat)) => {
                let found = describe_nat(clients, &nat).await?;
                match found {
                    Some(n) if is_ours(&n, &plan.table) => {
                        progress.step(format!("joining the temporary NAT gateway {nat}"));
                        match lease.join(&n, progress).await? {
                            Joined::Yes => return Ok(nat),
                            Joined::Closing => last = format!("{nat} was closing"),
                        }
                    }
                    _ => {
                        return Err(Error::Taken {
                            table: plan.table.clone(),
                            target: nat,
                            region: clients.region.clone(),
                        });
                    }
                }
            }
            Some(other) => {
                return Err(Error::Taken {
                    table: plan.table.clone(),
                    target: other.to_string(),
                    region: clients.region.clone(),
                });
            }
        }
    }
    Err(Error::Contended {
        table: plan.table.clone(),
        region: clients.region.clone(),
        last,
    })
}

/// How a join ended.
enum Joined {
    Yes,
    /// The last user was removing it: start over once its route is gone.
    Closing,
}

impl Lease {
    fn taken(&self) -> std::sync::MutexGuard<'_, Taken> {
        self.taken.lock().expect("lease lock")
    }

    /// Allocates the address and creates the gateway in the public subnet, tagged with this run
    /// as its first user; returns the gateway's id (pending).
    async fn create(&self, plan: &Plan, run_tags: &[Tag]) -> Result<String, Error> {
        let clients = &self.clients;
        let name = format!("bake-egress-{}", plan.table);
        let mut egress_tags = run_tags.to_vec();
        egress_tags.push(tags::tag(tags::EGRESS, &plan.table));
        let allocate = clients
            .ec2
            .allocate_address()
            .domain(DomainType::Vpc)
            .tag_specifications(tags::at_creation(
                ResourceType::ElasticIp,
                &name,
                &egress_tags,
            ));
        let address = clients
            .call(|| allocate.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_fail(|| "allocate an Elastic IP for the temporary NAT gateway".into())
            .await?;
        let allocation = address.allocation_id().unwrap_or_default().to_owned();
        tracing::debug!(%allocation, run_id = %self.run_id, "allocated");
        let mut nat_tags = egress_tags;
        nat_tags.push(USERS.tag(&self.run_id));
        // The ClientToken makes a repeat of this request (after a cancelled run) answer the same
        // gateway instead of a second one; 64 ASCII characters at most.
        let token = format!("bake-egress-{}", self.run_id);
        let request = clients
            .ec2
            .create_nat_gateway()
            .subnet_id(&plan.nat_subnet)
            .allocation_id(&allocation)
            .connectivity_type(ConnectivityType::Public)
            .client_token(token)
            .tag_specifications(tags::at_creation(
                ResourceType::Natgateway,
                &name,
                &nat_tags,
            ));
        self.taken().creating = Some(request.clone());
        let created = clients
            .call(|| request.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_fail(|| {
                format!(
                    "create a NAT gateway in {} with Elastic IP {allocation}",
                    plan.nat_subnet
                )
            })
            .await;
        let created = match created {
            Ok(out) => out,
            Err(e) => {
                // Refused for good: nothing to ask again on release.
                self.taken().creating = None;
                return Err(e.into());
            }
        };
        let nat = created
            .nat_gateway()
            .and_then(|n| n.nat_gateway_id())
            .unwrap_or_default()
            .to_owned();
        {
            let mut taken = self.taken();
            taken.creating = None;
            taken.using.push(nat.clone());
        }
        tracing::debug!(%nat, run_id = %self.run_id, "created");
        Ok(nat)
    }

    /// Adds 0.0.0.0/0 -> `nat` to the route table; `Some(winner)` when another bake's route got
    /// there first (RouteAlreadyExists).
    async fn route(&self, nat: &str) -> Result<Option<String>, Error> {
        let clients = &self.clients;
        let request = clients
            .ec2
            .create_route()
            .route_table_id(&self.table)
            .destination_cidr_block(DEFAULT_ROUTE)
            .nat_gateway_id(nat);
        match clients
            .call(|| request.clone().send())
            .settle(&NAT_FOR_ROUTE)
            .answer()
            .await
        {
            Ok(_) => Ok(None),
            Err(e) if e.is(&["RouteAlreadyExists"]) => {
                let table = read_table(clients, &self.table).await?;
                match resolve::default_route(&table) {
                    Some(DefaultRoute::NatGateway(n)) if n == nat => Ok(None),
                    Some(target) => Ok(Some(target.to_string())),
                    // Gone again already (a leaver): the next round takes it anew.
                    None => Ok(Some("a route removed meanwhile".into())),
                }
            }
            Err(e) => Err(e
                .or_fail(|| format!("add 0.0.0.0/0 -> {nat} to route table {}", self.table))
                .into()),
        }
    }

    /// Tags this run a user of `nat`, then looks for its last user's closing tag; re-creates the
    /// route when a leaver removed it meanwhile.
    async fn join(&self, nat: &NatGateway, progress: &Progress) -> Result<Joined, Error> {
        let clients = &self.clients;
        let id = nat.nat_gateway_id().unwrap_or_default().to_owned();
        self.taken().using.push(id.clone());
        USERS.join(clients, &id, &self.run_id).await?;
        let now = describe_nat(clients, &id).await?;
        let closing = now
            .as_ref()
            .is_none_or(|n| !is_live(n) || tags::value(n.tags(), tags::EGRESS_CLOSING).is_some());
        if closing {
            USERS.leave(clients, &id, &self.run_id).await?;
            self.taken().using.retain(|n| *n != id);
            wait_route_gone(clients, &self.table, &id).await?;
            return Ok(Joined::Closing);
        }
        wait_available(clients, &id, progress).await?;
        let table = read_table(clients, &self.table).await?;
        if resolve::default_route(&table).is_none() {
            // A leaver removed the route after our tag: put it back (its second look sees us).
            self.route(&id).await?;
        }
        Ok(Joined::Yes)
    }

    /// Removes a gateway this run created and nobody else uses (it lost the route race).
    async fn retire(&self, nat: &str) -> Result<(), Error> {
        let left = leave(
            &self.clients,
            &self.table,
            nat,
            &self.run_id,
            &mut Vec::new(),
        )
        .await;
        self.taken().using.retain(|n| n != nat);
        left.map_err(|reason| Error::Gateway {
            nat: nat.to_owned(),
            region: self.clients.region.clone(),
            what: format!("could not be removed after losing the route race: {reason}"),
        })
    }

    /// Gives the share back (see [`Hold`]).
    async fn give_back(&self) -> Result<Vec<Resource>, Vec<Left>> {
        let clients = &self.clients;
        let mut removed = Vec::new();
        let mut left = Vec::new();
        let lock = TABLE_LOCKS.of(&self.table);
        let _guard = lock.lock().await;
        let creating = self.taken().creating.take();
        if let Some(request) = creating {
            // The run was cancelled while CreateNatGateway was in flight: the same ClientToken
            // answers the gateway it created (or creates it now, to be removed with the rest).
            match clients
                .call(|| request.clone().send())
                .settle(&aws::THROTTLE_BURST)
                .answer()
                .await
            {
                Ok(out) => {
                    if let Some(id) = out.nat_gateway().and_then(|n| n.nat_gateway_id()) {
                        self.taken().using.push(id.to_owned());
                    }
                }
                // Its address or subnet is gone: then the first request created nothing either.
                Err(e) if !e.transient() => {}
                Err(e) => left.push(Left {
                    resource: Resource::NatGateway(format!("(being created for {})", self.table)),
                    reason: e.describe(),
                }),
            }
        }
        let using = self.taken().using.clone();
        for nat in using.iter().rev() {
            match leave(clients, &self.table, nat, &self.run_id, &mut removed).await {
                Ok(()) => self.taken().using.retain(|n| n != nat),
                Err(reason) => left.push(Left {
                    resource: Resource::NatGateway(nat.clone()),
                    reason,
                }),
            }
        }
        // Addresses this run allocated that no gateway holds (the run stopped before, or its
        // gateway failed): found by tag, so one allocated by a request in flight is found too.
        let swept = release_unused(clients, Some(&self.run_id), None, &mut removed).await;
        share::gather(&mut left, swept, || {
            Resource::Address(format!("(of run {})", self.run_id))
        });
        share::outcome(removed, left)
    }
}

/// Removes this run's user tag from `nat`; when no other user is left, removes the route (if it
/// still points at `nat`), the gateway (waiting until it is deleted) and its address, adding what
/// it removed to `removed`. The closing tag is written before the users are read (see the module
/// docs). Errors say what is left and why.
async fn leave(
    clients: &Clients,
    table: &str,
    nat: &str,
    run_id: &str,
    removed: &mut Vec<Resource>,
) -> Result<(), String> {
    USERS
        .leave(clients, nat, run_id)
        .await
        .map_err(|e| e.to_string())?;
    let Some(found) = describe_settled(clients, nat).await? else {
        return Ok(());
    };
    if !is_live(&found) {
        // Already deleted (by another leaver or gc); the route may be left as a blackhole.
        remove_route(clients, table, nat, removed).await?;
        return Ok(());
    }
    let others = |n: &NatGateway| USERS.of(n.tags()).into_iter().any(|(r, _)| r != run_id);
    if others(&found) {
        tracing::debug!(%nat, "other bakes still use it");
        return Ok(());
    }
    let closing = tags::tag(tags::EGRESS_CLOSING, run_id);
    share::add_tag(clients, nat, closing, || {
        format!("mark NAT gateway {nat} as closing")
    })
    .await
    .map_err(|e| e.to_string())?;
    let again = describe_nat(clients, nat)
        .await
        .map_err(|e| e.to_string())?;
    if again.as_ref().is_some_and(others) {
        // A joiner tagged itself before our closing tag: it keeps the gateway.
        let (key, settle) = (tags::EGRESS_CLOSING, &aws::THROTTLE_BURST);
        share::remove_tag(clients, nat, key, settle, &[], || {
            format!("unmark NAT gateway {nat} as closing")
        })
        .await
        .map_err(|e| e.to_string())?;
        return Ok(());
    }
    remove_gateway(clients, table, &found, removed).await
}

/// Describes a gateway a moment after this run created or tagged it, asking again while EC2
/// does not know it yet.
async fn describe_settled(clients: &Clients, nat: &str) -> Result<Option<NatGateway>, String> {
    let request = clients.ec2.describe_nat_gateways().nat_gateway_ids(nat);
    match clients
        .call(|| request.clone().send())
        .settle(&NEW_NAT)
        .answer()
        .await
    {
        Ok(out) => Ok(out
            .nat_gateways
            .unwrap_or_default()
            .into_iter()
            .find(|n| n.nat_gateway_id() == Some(nat))),
        Err(e) if e.is(NEW_NAT.codes) => Ok(None),
        Err(e) => Err(e.describe()),
    }
}

/// Removes the route (when it points at the gateway), deletes the gateway, waits until it is
/// deleted and releases its address.
async fn remove_gateway(
    clients: &Clients,
    table: &str,
    nat: &NatGateway,
    removed: &mut Vec<Resource>,
) -> Result<(), String> {
    let id = nat.nat_gateway_id().unwrap_or_default();
    remove_route(clients, table, id, removed).await?;
    let delete = clients.ec2.delete_nat_gateway().nat_gateway_id(id);
    let answer = clients
        .call(|| delete.clone().send())
        .settle(&NEW_NAT)
        .answer()
        .await;
    done_or_gone(answer, NEW_NAT.codes, || "DeleteNatGateway".into())?;
    wait_deleted(clients, id).await?;
    removed.push(Resource::NatGateway(id.to_owned()));
    for allocation in nat
        .nat_gateway_addresses()
        .iter()
        .filter_map(|a| a.allocation_id())
    {
        release_address(clients, allocation).await?;
        removed.push(Resource::Address(allocation.to_owned()));
    }
    Ok(())
}

/// Deletes the table's default route when it points at `nat` (never anyone else's).
async fn remove_route(
    clients: &Clients,
    table: &str,
    nat: &str,
    removed: &mut Vec<Resource>,
) -> Result<(), String> {
    let now = read_table(clients, table)
        .await
        .map_err(|e| e.to_string())?;
    if resolve::default_route(&now) != Some(DefaultRoute::NatGateway(nat.to_owned())) {
        return Ok(());
    }
    let delete = clients
        .ec2
        .delete_route()
        .route_table_id(table)
        .destination_cidr_block(DEFAULT_ROUTE);
    let answer = clients
        .call(|| delete.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .answer()
        .await;
    if done_or_gone(answer, &["InvalidRoute.NotFound"], || {
        format!("DeleteRoute 0.0.0.0/0 in {table}")
    })? {
        removed.push(Resource::Route(table.to_owned()));
    }
    Ok(())
}

/// ReleaseAddress, asked again while the deleted gateway still holds it; NotFound is released.
async fn release_address(clients: &Clients, allocation: &str) -> Result<(), String> {
    let release = clients.ec2.release_address().allocation_id(allocation);
    let answer = clients
        .call(|| release.clone().send())
        .settle(&ADDRESS_RELEASE)
        .answer()
        .await;
    done_or_gone(answer, &["InvalidAllocationID.NotFound"], || {
        format!("ReleaseAddress {allocation}")
    })
    .map(|_| ())
}

/// A removal's answer: done (true), or gone already (one of `gone`: false); a refusal reads
/// "`request`: AWS's code and message".
fn done_or_gone<T, E>(
    answer: Result<T, Failed<E>>,
    gone: &[&str],
    request: impl FnOnce() -> String,
) -> Result<bool, String>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match answer {
        Ok(_) => Ok(true),
        Err(e) if e.is(gone) => Ok(false),
        Err(e) => Err(format!("{}: {}", request(), e.describe())),
    }
}

/// Releases bake's temporary-NAT addresses that no live gateway holds: one run's (`run`), or
/// every run's allocated before `cutoff` (gc). Returns what could not be released.
async fn release_unused(
    clients: &Clients,
    run: Option<&str>,
    cutoff: Option<SystemTime>,
    removed: &mut Vec<Resource>,
) -> Result<Vec<Left>, CallError> {
    let mut candidates = addresses(clients, run).await?;
    candidates.retain(|a| cutoff.is_none_or(|c| allocated_by(a, c)));
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let held = held_addresses(clients).await?;
    candidates.retain(|a| {
        a.allocation_id()
            .is_some_and(|id| !held.iter().any(|h| h == id))
    });
    let mut left = Vec::new();
    for address in candidates {
        let id = address.allocation_id().unwrap_or_default();
        match release_address(clients, id).await {
            Ok(()) => removed.push(Resource::Address(id.to_owned())),
            Err(reason) => left.push(Left {
                resource: Resource::Address(id.to_owned()),
                reason,
            }),
        }
    }
    Ok(left)
}

/// bake's temporary-NAT Elastic IPs (tagged `bake:egress`; the tag is checked here too), one
/// run's when `run` is given.
async fn addresses(clients: &Clients, run: Option<&str>) -> Result<Vec<Address>, CallError> {
    let mut filters = vec![filter("tag-key", tags::EGRESS)];
    if let Some(run) = run {
        filters.push(tags::filter(tags::RUN_ID, run));
    }
    let request = clients.ec2.describe_addresses().set_filters(Some(filters));
    let addresses = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| "list bake's Elastic IPs".into())
        .await?
        .addresses
        .unwrap_or_default();
    Ok(addresses
        .into_iter()
        .filter(|a| tags::value(a.tags(), tags::EGRESS).is_some())
        .filter(|a| run.is_none_or(|r| tags::value(a.tags(), tags::RUN_ID) == Some(r)))
        .collect())
}

/// Whether the address's `bake:created` tag is at or before `cutoff` (no such tag: not).
fn allocated_by(address: &Address, cutoff: SystemTime) -> bool {
    tags::value(address.tags(), tags::CREATED)
        .and_then(|v| humantime::parse_rfc3339(v).ok())
        .is_some_and(|created| created <= cutoff)
}

/// The allocation ids bake's live (or deleting) gateways hold.
async fn held_addresses(clients: &Clients) -> Result<Vec<String>, CallError> {
    Ok(live_gateways(clients)
        .await?
        .iter()
        .flat_map(|n| n.nat_gateway_addresses())
        .filter_map(|a| a.allocation_id().map(str::to_owned))
        .collect())
}

/// bake's temporary gateways that are pending, available or being deleted (they still hold
/// their address), found by tag (the tag is checked here too).
async fn live_gateways(clients: &Clients) -> Result<Vec<NatGateway>, CallError> {
    // Pages of up to 1000: bounded by how many gateways a region allows (a few hundred at most).
    let pages = aws::pages::all(
        100,
        "list bake's NAT gateways",
        |token| {
            let request = clients
                .ec2
                .describe_nat_gateways()
                .filter(filter("tag-key", tags::EGRESS))
                .filter(filter_any("state", &["pending", "available", "deleting"]))
                .max_results(1000)
                .set_next_token(token);
            clients.call(move || request.clone().send())
        },
        DescribeNatGatewaysOutput::next_token,
    )
    .await?;
    Ok(pages
        .iter()
        .flat_map(|out| out.nat_gateways())
        .filter(|n| {
            tags::value(n.tags(), tags::EGRESS).is_some()
                && matches!(
                    n.state(),
                    Some(
                        NatGatewayState::Pending
                            | NatGatewayState::Available
                            | NatGatewayState::Deleting
                    )
                )
        })
        .cloned()
        .collect())
}

/// Waits until the gateway is available; `failed` ends the wait with AWS's reason.
async fn wait_available(clients: &Clients, nat: &str, progress: &Progress) -> Result<(), Error> {
    progress.step(format!("waiting for NAT gateway {nat} to be available"));
    let result = watch(clients, nat, "available", AVAILABLE_TIMEOUT, |seen| {
        let found = match seen {
            Ok(Some(found)) => found,
            Ok(None) => return Check::Pending("not listed yet".into()),
            Err(unknown) => return Check::Pending(unknown),
        };
        match found.state() {
            Some(NatGatewayState::Available) => Check::Ready(()),
            Some(NatGatewayState::Pending) => Check::Pending("pending".into()),
            _ => Check::Failed(format!(
                "is {} ({})",
                state_of(found),
                found
                    .failure_message()
                    .or(found.failure_code())
                    .unwrap_or("no reason given")
            )),
        }
    })
    .await;
    result.map_err(|e| Error::Gateway {
        nat: nat.to_owned(),
        region: clients.region.clone(),
        what: match e {
            PollError::Failed(what) => what,
            PollError::TimedOut { last } => {
                format!("is still not available after {AVAILABLE_TIMEOUT:?} ({last})")
            }
        },
    })
}

/// Waits until the gateway is deleted (AWS refuses to release its address before).
async fn wait_deleted(clients: &Clients, nat: &str) -> Result<(), String> {
    let result = watch(
        clients,
        nat,
        "deleted",
        DELETED_TIMEOUT,
        |seen| match seen {
            // Asked after DeleteNatGateway succeeded: EC2 knew it, so NotFound is gone.
            Err(_) | Ok(None) => Check::Ready(()),
            Ok(Some(n)) => match n.state() {
                Some(NatGatewayState::Deleted | NatGatewayState::Failed) => Check::Ready(()),
                state => Check::Pending(state.map_or("unknown", |s| s.as_str()).into()),
            },
        },
    )
    .await;
    result.map_err(|e| match e {
        PollError::Failed(what) => format!("watching it be deleted: {what}"),
        PollError::TimedOut { last } => {
            format!("not deleted after {DELETED_TIMEOUT:?} ({last})")
        }
    })
}

/// Describes the gateway on [`share::SCHEDULE`] until `judge` ends the wait, or `timeout`. `judge`
/// sees the gateway, `Ok(None)` when EC2 lists none, or `Err` with EC2's NotFound answer (a
/// gateway just created, or just deleted); a throttle or 5xx answer is asked again.
async fn watch(
    clients: &Clients,
    nat: &str,
    goal: &str,
    timeout: Duration,
    judge: impl Fn(Result<Option<&NatGateway>, String>) -> Check<(), String>,
) -> Result<(), PollError<String>> {
    poll::until(
        &format!("waiting for NAT gateway {nat} to be {goal}"),
        poll::deadline(timeout),
        share::SCHEDULE,
        |_| {},
        || async {
            let out = clients
                .ec2
                .describe_nat_gateways()
                .nat_gateway_ids(nat)
                .send()
                .await;
            match out {
                Ok(out) => judge(Ok(out.nat_gateways().first())),
                Err(e) if aws::code(&e).is_some_and(|c| NEW_NAT.codes.contains(&c)) => {
                    judge(Err(aws::describe(&e)))
                }
                Err(e) => aws::unless_transient(&e, aws::describe),
            }
        },
    )
    .await
}

/// Waits until the route table's default route no longer points at `nat` (its last user is
/// removing it).
async fn wait_route_gone(clients: &Clients, table: &str, nat: &str) -> Result<(), Error> {
    let result = poll::until(
        &format!("waiting for the route to closing NAT gateway {nat} to go"),
        poll::deadline(CLOSING_TIMEOUT),
        share::SCHEDULE,
        |_| {},
        || async {
            match read_table(clients, table).await {
                Ok(t)
                    if resolve::default_route(&t)
                        == Some(DefaultRoute::NatGateway(nat.to_owned())) =>
                {
                    // A gateway deleted under its route leaves a blackhole nobody will remove.
                    match describe_nat(clients, nat).await {
                        Ok(Some(n)) if n.state() == Some(&NatGatewayState::Deleted) => {
                            Check::Ready(())
                        }
                        _ => Check::Pending(format!("{table} still routes to {nat}")),
                    }
                }
                Ok(_) => Check::Ready(()),
                Err(e) => Check::Failed(e),
            }
        },
    )
    .await;
    match result {
        Ok(()) => remove_route(clients, table, nat, &mut Vec::new())
            .await
            .map_err(|what| Error::Gateway {
                nat: nat.to_owned(),
                region: clients.region.clone(),
                what,
            }),
        Err(PollError::Failed(e)) => Err(e.into()),
        Err(PollError::TimedOut { last }) => Err(Error::Gateway {
            nat: nat.to_owned(),
            region: clients.region.clone(),
            what: format!(
                "was still being closed by its last user after {CLOSING_TIMEOUT:?} ({last})"
            ),
        }),
    }
}

/// What a SIGKILLed run left of the temporary NAT, for `bake gc`: bake's gateways whose users all
/// joined before `cutoff` (with their routes and addresses), and addresses of bake's no gateway
/// holds, allocated before `cutoff`. Lists only; [`remove_left`] removes.
pub async fn find_left(clients: &Clients, cutoff: SystemTime) -> Result<Vec<Resource>, CallError> {
    let mut found = Vec::new();
    let gateways = left_gateways(clients, cutoff).await?;
    for nat in &gateways {
        if let Some(table) = tags::value(nat.tags(), tags::EGRESS) {
            let now = read_table(clients, table).await;
            if now.is_ok_and(|t| {
                resolve::default_route(&t)
                    == Some(DefaultRoute::NatGateway(
                        nat.nat_gateway_id().unwrap_or_default().to_owned(),
                    ))
            }) {
                found.push(Resource::Route(table.to_owned()));
            }
        }
        found.push(Resource::NatGateway(
            nat.nat_gateway_id().unwrap_or_default().to_owned(),
        ));
        found.extend(
            nat.nat_gateway_addresses()
                .iter()
                .filter_map(|a| a.allocation_id())
                .map(|a| Resource::Address(a.to_owned())),
        );
    }
    let held = held_addresses(clients).await?;
    for address in addresses(clients, None).await? {
        if let Some(id) = address.allocation_id()
            && allocated_by(&address, cutoff)
            && !held.iter().any(|h| h == id)
        {
            found.push(Resource::Address(id.to_owned()));
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

/// Gateways (pending or available) whose users all joined before `cutoff`; one without users
/// counts by its `bake:created` tag.
async fn left_gateways(
    clients: &Clients,
    cutoff: SystemTime,
) -> Result<Vec<NatGateway>, CallError> {
    Ok(live_gateways(clients)
        .await?
        .into_iter()
        .filter(is_live)
        .filter(|n| {
            let users = USERS.of(n.tags());
            if users.is_empty() {
                tags::value(n.tags(), tags::CREATED)
                    .and_then(|v| humantime::parse_rfc3339(v).ok())
                    .is_some_and(|c| c <= cutoff)
            } else {
                users
                    .iter()
                    .all(|(_, joined)| joined.is_some_and(|j| j <= cutoff))
            }
        })
        .collect())
}

/// Removes what [`find_left`] finds (found again now, so a gateway a bake joined meanwhile is
/// kept): each gateway's route, the gateway (waiting until deleted) and its address, then the
/// addresses no gateway holds. Errors list what is left.
pub async fn remove_left(
    clients: &Clients,
    cutoff: SystemTime,
) -> Result<Vec<Resource>, Vec<Left>> {
    let failed = |resource: &str, e: CallError| {
        vec![Left {
            resource: Resource::NatGateway(resource.to_owned()),
            reason: e.to_string(),
        }]
    };
    let mut removed = Vec::new();
    let mut left = Vec::new();
    let gateways = left_gateways(clients, cutoff)
        .await
        .map_err(|e| failed("(listing)", e))?;
    for nat in &gateways {
        let id = nat.nat_gateway_id().unwrap_or_default();
        let Some(table) = tags::value(nat.tags(), tags::EGRESS) else {
            continue;
        };
        let lock = TABLE_LOCKS.of(table);
        let _guard = lock.lock().await;
        if let Err(reason) = remove_gateway(clients, table, nat, &mut removed).await {
            left.push(Left {
                resource: Resource::NatGateway(id.to_owned()),
                reason,
            });
        }
    }
    let swept = release_unused(clients, None, Some(cutoff), &mut removed).await;
    share::gather(&mut left, swept, || {
        Resource::NatGateway("(addresses)".to_owned())
    });
    share::outcome(removed, left)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_is_ours_for_its_table_only_and_its_users_are_its_user_tags() {
        let nat = NatGateway::builder()
            .nat_gateway_id("nat-1")
            .tags(tags::tag(tags::EGRESS, "rtb-1"))
            .tags(tags::tag(&USERS.key("r1"), "2026-11-24T00:00:00Z"))
            .tags(tags::tag(&USERS.key("r2"), "not a time"))
            .tags(tags::tag(tags::RUN_ID, "r1"))
            .build();
        assert!(is_ours(&nat, "rtb-1"));
        assert!(!is_ours(&nat, "rtb-2"));
        let users = USERS.of(nat.tags());
        assert_eq!(users.len(), 2, "{users:?}");
        assert_eq!(users[0].0, "r1");
        assert!(users[0].1.is_some());
        assert_eq!(users[1], ("r2".into(), None));
        assert!(!is_ours(&NatGateway::builder().build(), "rtb-1"));
    }
}
