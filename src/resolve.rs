//! Finding what the config refers to: EC2 filters, the one resource a reference matches (subnet,
//! VPC), the checks on them (a public subnet, an instance profile that exists), the AMI baked
//! from an image's inputs (with the rule for when a deprecated one stops counting), and why a
//! reference does not resolve, at its place in the config: every preflight problem. Also the
//! region-wide listings of launch templates and Auto Scaling groups (paged and bounded) that
//! prune and the janitor read.

use std::future::Future;
use std::ops::Range;
use std::time::SystemTime;

use aws_sdk_autoscaling::operation::describe_auto_scaling_groups::DescribeAutoScalingGroupsOutput;
use aws_sdk_autoscaling::types::AutoScalingGroup;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::operation::describe_launch_templates::DescribeLaunchTemplatesOutput;
use aws_sdk_ec2::types::{Filter, Image, Instance, LaunchTemplate, RouteState, RouteTable};

use crate::aws::{self, CallError, Clients};
use crate::config::{Config, Location, ResourceRef};
use crate::render;
use crate::tags;

/// A subnet a reference resolved to.
#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    /// Its availability zone.
    pub zone: String,
}

/// Why a bake or a rollout cannot start: a reference in the config that does not resolve or
/// fails its check (at its place in the config), or a failed call. Nothing has been created or
/// changed when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Render(#[from] render::Error),
    /// A problem with a reference in the config, at its place in the file.
    #[error("{at}: {field}: {source}")]
    At {
        at: Location,
        field: String,
        source: Box<Error>,
    },
    /// None or several matched, or the one found cannot be used: `kind` is "subnet", "VPC",
    /// "base image" or "AMI".
    #[error("{kind} {reference} in {region}: {detail}")]
    Lookup {
        kind: &'static str,
        reference: String,
        region: String,
        detail: String,
    },
    #[error(
        "subnet {subnet} in {region} has no route to an internet gateway \
         (0.0.0.0/0 -> igw-...); it must be reachable from the internet: pick a public subnet"
    )]
    NotPublic { subnet: String, region: String },
    /// The builder subnet's route table already sends 0.0.0.0/0 somewhere else than a temporary NAT
    /// gateway of bake's: bake does not replace a route it did not add.
    #[error(
        "route table {table} of subnet {subnet} in {region} already has a default route \
         (0.0.0.0/0 -> {target}); egress = \"nat\" adds its own and never replaces one: use \
         egress = \"existing\" to bake through that route, or a subnet without one"
    )]
    DefaultRoute {
        table: String,
        subnet: String,
        target: String,
        region: String,
    },
    /// A private builder's subnet has no way to SSM that outlives the bake: neither the three
    /// interface endpoints with private DNS nor a NAT gateway route of its own.
    #[error(
        "a private builder in subnet {subnet} cannot reach SSM: VPC {vpc} in {region} lacks the \
         interface endpoints {missing} (with private DNS) and {routing} has no NAT gateway route \
         of its own (bake's temporary NAT does not count: it goes while the bake runs); create \
         them, or set builder.endpoints = \"create\" to have bake make them for the bake"
    )]
    NoSsmPath {
        vpc: String,
        subnet: String,
        region: String,
        missing: String,
        routing: String,
    },
    /// No subnet of the VPC routes 0.0.0.0/0 to an internet gateway, for the temporary NAT.
    #[error(
        "no public subnet (0.0.0.0/0 -> igw-...) in VPC {vpc} in {region} for the temporary NAT \
         gateway; add one, or name it in builder.nat_subnet"
    )]
    NoNatSubnet { vpc: String, region: String },
    #[error(
        "instance profile {profile:?} does not exist; create it with a role that has \
         AmazonSSMManagedInstanceCore (the verify step runs through SSM)"
    )]
    NoProfile { profile: String },
    #[error(
        "cannot find this runner's address for allow_cidr = \"auto\" from {url}: {detail}; \
             set allow_cidr to a CIDR, or --checkip-url"
    )]
    CheckIp { url: String, detail: String },
    #[error("subnet {subnet} is in {found}, not in the rollout's VPC {vpc}")]
    WrongVpc {
        subnet: String,
        found: String,
        vpc: String,
    },
    #[error(
        "the load balancer's subnets are all in {zone}; an Application Load Balancer needs two \
         availability zones"
    )]
    OneZone { zone: String },
    #[error(
        "subnet {subnet} is in {zone}, where the load balancer has no subnet (it has {covered}): \
         its instances would stay `unused` (Target.NotInUse); add a subnet in {zone} to \
         alb_subnets or move the instances out of it"
    )]
    ZoneNotCovered {
        subnet: String,
        zone: String,
        covered: String,
    },
    #[error(
        "no available AMI in {region} was baked from image {image}'s current inputs (digest \
         {digest:.12}); run `bake ami {image}` first, or pass --ami"
    )]
    NotBaked {
        image: String,
        digest: String,
        region: String,
    },
    /// An AWS call failed (credentials, network, permissions).
    #[error(transparent)]
    Api(#[from] CallError),
}

impl Error {
    /// Problems with the config's references are usage errors (2); failed calls are failures (1).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Api(_) => 1,
            Error::At { source, .. } => source.exit_code(),
            _ => 2,
        }
    }

    /// Where in the config the problem is, when it has a place: a reference's, or a template's
    /// (file, line, column).
    pub fn position(&self) -> Option<(String, usize, Option<usize>)> {
        match self {
            Error::At { at, .. } => Some((at.path.display().to_string(), at.line, Some(at.col))),
            Error::Render(e) => e.location(),
            _ => None,
        }
    }
}

/// Puts a problem with the reference at `span` of the config at its place, naming it `field`
/// (`image.web.builder.subnet`); a failed call stays as it is.
pub fn at(config: &Config, span: Range<usize>, field: String) -> impl FnOnce(Error) -> Error {
    let at = config.source.locate(span.start);
    move |e| match e {
        Error::Api(_) => e,
        other => Error::At {
            at,
            field,
            source: Box::new(other),
        },
    }
}

/// An EC2 filter: `name` is one of `values`' one value.
pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// An EC2 filter: `name` is any of `values`.
pub fn filter_any(name: &str, values: &[&str]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| (*v).to_owned()).collect()))
        .build()
}

/// DescribeInstances answers up to 1,000 instances a page; 100 pages (100,000 instances) is more
/// than a region's vCPU quotas let an account run, and bounds the listing.
const INSTANCES_PER_PAGE: i32 = 1000;
const INSTANCE_PAGES: usize = 100;

/// The instances `filters` pick that are not terminated or on their way out: they hold their
/// AMI and security groups.
pub async fn live_instances(
    clients: &Clients,
    filters: Vec<Filter>,
) -> Result<Vec<Instance>, CallError> {
    let live = ["pending", "running", "stopping", "stopped"];
    let listing = clients
        .ec2
        .describe_instances()
        .set_filters(Some(filters))
        .filters(filter_any("instance-state-name", &live))
        .max_results(INSTANCES_PER_PAGE);
    let pages = aws::pages::all(
        INSTANCE_PAGES,
        "list instances",
        |token| {
            let request = listing.clone().set_next_token(token);
            clients.call(move || request.clone().send())
        },
        DescribeInstancesOutput::next_token,
    )
    .await?;
    Ok(pages
        .into_iter()
        .flat_map(|page| page.reservations.unwrap_or_default())
        .flat_map(|reservation| reservation.instances.unwrap_or_default())
        .collect())
}

/// DescribeLaunchTemplates answers up to 200 a page; a region holds at most 5,000 launch
/// templates (EC2's quota), 25 pages: 50 bounds the listing with room.
const TEMPLATES_PER_PAGE: i32 = 200;
const TEMPLATE_PAGES: usize = 50;

/// The launch templates `filters` pick (all of the region's with none).
pub async fn launch_templates(
    clients: &Clients,
    filters: Vec<Filter>,
) -> Result<Vec<LaunchTemplate>, CallError> {
    let listing = clients
        .ec2
        .describe_launch_templates()
        .set_filters(Some(filters).filter(|f| !f.is_empty()))
        .max_results(TEMPLATES_PER_PAGE);
    let pages = aws::pages::all(
        TEMPLATE_PAGES,
        "list launch templates",
        |token| {
            let request = listing.clone().set_next_token(token);
            clients.call(move || request.clone().send())
        },
        DescribeLaunchTemplatesOutput::next_token,
    )
    .await?;
    Ok(pages
        .into_iter()
        .flat_map(|page| page.launch_templates.unwrap_or_default())
        .collect())
}

/// DescribeAutoScalingGroups answers up to 100 a page; 100 pages is 10,000 groups, twenty times
/// Auto Scaling's default quota of 500 a region.
const GROUPS_PER_PAGE: i32 = 100;
const GROUP_PAGES: usize = 100;

/// The Auto Scaling groups `filters` pick (all of the region's with none).
pub async fn auto_scaling_groups(
    clients: &Clients,
    filters: Vec<aws_sdk_autoscaling::types::Filter>,
) -> Result<Vec<AutoScalingGroup>, CallError> {
    let listing = clients
        .autoscaling
        .describe_auto_scaling_groups()
        .set_filters(Some(filters).filter(|f| !f.is_empty()))
        .max_records(GROUPS_PER_PAGE);
    let pages = aws::pages::all(
        GROUP_PAGES,
        "list Auto Scaling groups",
        |token| {
            let request = listing.clone().set_next_token(token);
            clients.call(move || request.clone().send())
        },
        DescribeAutoScalingGroupsOutput::next_token,
    )
    .await?;
    Ok(pages
        .into_iter()
        .flat_map(|page| page.auto_scaling_groups.unwrap_or_default())
        .collect())
}

/// EC2 filters for an id-or-tags reference, and how to name it in messages.
pub fn filters(r: &ResourceRef, id_filter: &str) -> (Vec<Filter>, String) {
    match &r.id {
        Some(id) => (vec![filter(id_filter, id)], id.clone()),
        None => (
            r.tag.iter().map(|(k, v)| tags::filter(k, v)).collect(),
            r.tag
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

/// The one resource a reference matched, or what is wrong: none, or several (with their ids).
pub fn exactly_one<T>(
    found: Vec<T>,
    kind: &str,
    id: impl Fn(&T) -> Option<&str>,
) -> Result<T, String> {
    match <[T; 1]>::try_from(found) {
        Ok([one]) => Ok(one),
        Err(none) if none.is_empty() => Err(format!("no such {kind}")),
        Err(many) => Err(format!(
            "matches {} {kind}s ({}); make the reference unique",
            many.len(),
            many.iter().filter_map(id).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// A kind of resource a reference can name: its name in messages, the EC2 filter on its id, and
/// how to read a found one's id.
struct Kind<T> {
    name: &'static str,
    id_filter: &'static str,
    id: fn(&T) -> Option<&str>,
}

/// The one resource of `kind` that `r` names: `describe` asks EC2 with the reference's filters,
/// `found` takes the matches from its answer.
async fn one<T, O, E, Fut>(
    clients: &Clients,
    r: &ResourceRef,
    kind: &Kind<T>,
    describe: impl Fn(Vec<Filter>) -> Fut,
    found: impl FnOnce(O) -> Option<Vec<T>>,
) -> Result<T, Error>
where
    Fut: Future<Output = Result<O, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (filters, reference) = filters(r, kind.id_filter);
    let answer = clients
        .call(|| describe(filters.clone()))
        .settle(&aws::THROTTLE_BURST)
        .or_fail(|| format!("describe {}s", kind.name))
        .await?;
    let all = found(answer).unwrap_or_default();
    exactly_one(all, kind.name, kind.id).map_err(|detail| Error::Lookup {
        kind: kind.name,
        reference,
        region: clients.region.clone(),
        detail,
    })
}

const SUBNET: Kind<aws_sdk_ec2::types::Subnet> = Kind {
    name: "subnet",
    id_filter: "subnet-id",
    id: |s| s.subnet_id(),
};

/// The one subnet a reference names.
pub async fn subnet(clients: &Clients, r: &ResourceRef) -> Result<Subnet, Error> {
    let ec2 = &clients.ec2;
    let describe = |f| ec2.describe_subnets().set_filters(Some(f)).send();
    let one = one(clients, r, &SUBNET, describe, |o| o.subnets).await?;
    Ok(Subnet {
        id: one.subnet_id().unwrap_or_default().to_owned(),
        vpc_id: one.vpc_id().unwrap_or_default().to_owned(),
        zone: one.availability_zone().unwrap_or_default().to_owned(),
    })
}

/// The id of the one VPC a reference names.
pub async fn vpc(clients: &Clients, r: &ResourceRef) -> Result<String, Error> {
    let vpc = Kind {
        name: "VPC",
        id_filter: "vpc-id",
        id: |v: &aws_sdk_ec2::types::Vpc| v.vpc_id(),
    };
    let describe = |f| clients.ec2.describe_vpcs().set_filters(Some(f)).send();
    Ok(one(clients, r, &vpc, describe, |o| o.vpcs)
        .await?
        .vpc_id
        .unwrap_or_default())
}

/// The route tables matching `filters`.
pub async fn route_tables(
    clients: &Clients,
    filters: Vec<Filter>,
) -> Result<Vec<RouteTable>, CallError> {
    let request = clients
        .ec2
        .describe_route_tables()
        .set_filters(Some(filters));
    let out = clients.call(|| request.clone().send());
    let out = out.settle(&aws::THROTTLE_BURST);
    let out = out.or_fail(|| "describe route tables".into()).await?;
    Ok(out.route_tables.unwrap_or_default())
}

/// How a subnet reaches beyond its VPC: the route table it uses (its own, explicitly associated,
/// else the VPC's main one) and where that table's default route goes.
#[derive(Debug, Clone)]
pub struct Routing {
    pub id: String,
    /// True when the subnet has no table of its own and uses the VPC's main one.
    pub main: bool,
    /// Where 0.0.0.0/0 goes, if anywhere.
    pub default_route: Option<DefaultRoute>,
}

/// The target of a route table's 0.0.0.0/0 route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultRoute {
    /// `igw-…`: the subnet is public.
    InternetGateway(String),
    /// `nat-…`: instances reach the internet (and SSM's public endpoints) without an address.
    NatGateway(String),
    /// Anything else (a transit gateway, an instance, a peering connection, …), by its id, or a
    /// route whose target is gone (`… (blackhole)`): it still holds the table's default route.
    Other(String),
}

impl std::fmt::Display for DefaultRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DefaultRoute::InternetGateway(id)
            | DefaultRoute::NatGateway(id)
            | DefaultRoute::Other(id) => f.write_str(id),
        }
    }
}

impl Routing {
    /// "route table rtb-… (the VPC's main one)" or "route table rtb-…".
    pub fn describe(&self) -> String {
        if self.main {
            format!("route table {} (the VPC's main one)", self.id)
        } else {
            format!("route table {}", self.id)
        }
    }

    /// Whether 0.0.0.0/0 goes to an internet gateway.
    pub fn public(&self) -> bool {
        matches!(self.default_route, Some(DefaultRoute::InternetGateway(_)))
    }
}

/// How `subnet` reaches beyond its VPC: the route table explicitly associated with it, else the
/// VPC's main one, and that table's default route.
pub async fn routing(clients: &Clients, subnet: &Subnet) -> Result<Routing, Error> {
    let own = route_tables(clients, vec![filter("association.subnet-id", &subnet.id)]).await?;
    let main = own.is_empty();
    let table = match own.into_iter().next() {
        Some(table) => Some(table),
        None => {
            let main = vec![
                filter("vpc-id", &subnet.vpc_id),
                filter("association.main", "true"),
            ];
            route_tables(clients, main).await?.into_iter().next()
        }
    };
    let Some(table) = table else {
        return Err(Error::Lookup {
            kind: "subnet",
            reference: subnet.id.clone(),
            region: clients.region.clone(),
            detail: format!(
                "has no route table of its own and VPC {} has no main one",
                subnet.vpc_id
            ),
        });
    };
    Ok(Routing {
        id: table.route_table_id().unwrap_or_default().to_owned(),
        main,
        default_route: default_route(&table),
    })
}

/// Where a route table's 0.0.0.0/0 route goes, if it has one. A route to a NAT gateway is that
/// gateway's whatever its state (bake's own may be replaced); any other blackhole is `Other`.
pub fn default_route(table: &RouteTable) -> Option<DefaultRoute> {
    let route = table
        .routes()
        .iter()
        .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))?;
    if let Some(nat) = route.nat_gateway_id() {
        return Some(DefaultRoute::NatGateway(nat.to_owned()));
    }
    let blackhole = route.state() == Some(&RouteState::Blackhole);
    if let Some(igw) = route.gateway_id().filter(|g| g.starts_with("igw-"))
        && !blackhole
    {
        return Some(DefaultRoute::InternetGateway(igw.to_owned()));
    }
    let target = [
        route.gateway_id(),
        route.instance_id(),
        route.network_interface_id(),
        route.transit_gateway_id(),
        route.vpc_peering_connection_id(),
        route.egress_only_internet_gateway_id(),
        route.local_gateway_id(),
        route.carrier_gateway_id(),
        route.core_network_arn(),
    ]
    .into_iter()
    .flatten()
    .next()
    .unwrap_or("an unnamed target");
    let state = if blackhole { " (blackhole)" } else { "" };
    Some(DefaultRoute::Other(format!("{target}{state}")))
}

/// A public subnet has a default route to an internet gateway, in its own route table or (when it
/// has none of its own) in the VPC's main one.
pub async fn check_public(clients: &Clients, subnet: &Subnet) -> Result<(), Error> {
    if routing(clients, subnet).await?.public() {
        Ok(())
    } else {
        Err(Error::NotPublic {
            subnet: subnet.id.clone(),
            region: clients.region.clone(),
        })
    }
}

/// The instance profile must exist; returns its name.
pub async fn check_profile(clients: &Clients, profile: &str) -> Result<String, Error> {
    let request = clients
        .iam
        .get_instance_profile()
        .instance_profile_name(profile);
    let read = clients.call(|| request.clone().send());
    match read.settle(&aws::THROTTLE_BURST).answer().await {
        Ok(_) => Ok(profile.to_owned()),
        Err(e) if e.is(&["NoSuchEntity"]) => Err(Error::NoProfile {
            profile: profile.to_owned(),
        }),
        Err(e) => Err(e
            .or_fail(|| format!("read instance profile {profile}"))
            .into()),
    }
}

/// The AMI of these inputs: the newest available AMI of this account tagged with `digest` (and
/// with `base` as its base AMI, when given) whose deprecation time has not come and whose test
/// neither failed nor is still running (`bake:test`, [`tags::untested`]). A deprecated or untested
/// AMI does not count as baked: `bake ami` bakes anew, `bake rollout` does not pick it.
pub async fn baked_ami(
    clients: &Clients,
    digest: &str,
    base: Option<&str>,
) -> Result<Option<Image>, CallError> {
    let mut request = clients
        .ec2
        .describe_images()
        .owners("self")
        .filters(tags::filter(tags::DIGEST, digest))
        .filters(filter("state", "available"));
    if let Some(base) = base {
        request = request.filters(tags::filter(tags::BASE_AMI, base));
    }
    let out = clients.call(|| request.clone().send());
    let out = out.settle(&aws::THROTTLE_BURST);
    let out = out
        .or_fail(|| "look for an AMI with the same digest".into())
        .await?;
    let now = SystemTime::now();
    Ok(out
        .images
        .unwrap_or_default()
        .into_iter()
        .filter(|image| !deprecated(image, now) && tags::untested(image.tags()).is_none())
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date())))
}

/// Whether an image's deprecation time has come (an unreadable time counts as not deprecated).
fn deprecated(image: &Image, now: SystemTime) -> bool {
    image
        .deprecation_time()
        .and_then(|t| humantime::parse_rfc3339_weak(t.trim_end_matches('Z')).ok())
        .is_some_and(|at| at <= now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::Route;
    use aws_sdk_ec2::types::builders::RouteBuilder;

    /// The default route of a table with a local route and `route`.
    fn read(route: RouteBuilder) -> Option<DefaultRoute> {
        let local = Route::builder()
            .destination_cidr_block("10.20.0.0/16")
            .gateway_id("local");
        let table = RouteTable::builder()
            .route_table_id("rtb-1")
            .routes(local.build())
            .routes(route.build())
            .build();
        default_route(&table)
    }

    fn to_anywhere() -> RouteBuilder {
        Route::builder().destination_cidr_block("0.0.0.0/0")
    }

    #[test]
    fn the_default_route_is_read_whatever_its_target() {
        assert_eq!(
            read(to_anywhere().gateway_id("igw-1")),
            Some(DefaultRoute::InternetGateway("igw-1".into()))
        );
        assert_eq!(
            read(
                to_anywhere()
                    .nat_gateway_id("nat-1")
                    .state(RouteState::Blackhole)
            ),
            Some(DefaultRoute::NatGateway("nat-1".into()))
        );
        assert_eq!(
            read(
                to_anywhere()
                    .gateway_id("igw-1")
                    .state(RouteState::Blackhole)
            ),
            Some(DefaultRoute::Other("igw-1 (blackhole)".into()))
        );
        assert_eq!(
            read(to_anywhere().network_interface_id("eni-1")),
            Some(DefaultRoute::Other("eni-1".into()))
        );
        let peering = Route::builder()
            .destination_cidr_block("10.30.0.0/16")
            .gateway_id("pcx-1");
        assert_eq!(read(peering), None);
    }

    fn image(deprecation: Option<&str>) -> Image {
        Image::builder()
            .set_deprecation_time(deprecation.map(Into::into))
            .build()
    }

    #[test]
    fn an_image_is_deprecated_once_its_time_has_come() {
        let now = humantime::parse_rfc3339("2026-11-22T12:00:00Z").unwrap();
        assert!(deprecated(&image(Some("2026-11-22T12:00:00.000Z")), now));
        assert!(deprecated(&image(Some("2026-01-01T00:00:00Z")), now));
        assert!(!deprecated(&image(Some("2026-11-22T12:01:00.000Z")), now));
        assert!(!deprecated(&image(None), now));
        assert!(!deprecated(&image(Some("soon")), now));
    }

    #[test]
    fn a_reference_matches_one_or_says_how_many() {
        fn id<'a>(s: &'a (&'static str,)) -> Option<&'a str> {
            Some(s.0)
        }
        assert_eq!(
            exactly_one(vec![("subnet-a",)], "subnet", id),
            Ok(("subnet-a",))
        );
        assert_eq!(
            exactly_one(Vec::new(), "subnet", id),
            Err("no such subnet".to_owned())
        );
        assert_eq!(
            exactly_one(vec![("vpc-a",), ("vpc-b",)], "VPC", id),
            Err("matches 2 VPCs (vpc-a, vpc-b); make the reference unique".to_owned())
        );
    }
}
