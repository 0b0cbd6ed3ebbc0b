//! Preflight: resolve and check everything a bake needs before anything is created.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::ImageState;

use super::{distribute, egress, endpoints};
use crate::aws::{self, Clients};
use crate::config::{Access, BaseImage, Config, Egress, Endpoints, Image, Os};
use crate::output;
use crate::render::{Rendered, Renderer};
pub use crate::resolve::Error;
use crate::resolve::{self, DefaultRoute, Routing, Subnet, filter};

/// A what's-my-IP lookup answers in well under a second; 10 s means the service is down.
const CHECKIP_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything resolved for one bake.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `[image.NAME]`.
    pub image: String,
    pub template: String,
    pub os: Os,
    pub base: BaseAmi,
    pub subnet: Subnet,
    /// The route table the builder subnet uses.
    pub routing: Routing,
    /// Public (an address, the health port open to `allow_cidr`) or private (neither; health
    /// through SSM), as configured or inferred from the route table.
    pub access: Access,
    pub instance_profile: String,
    /// Who may reach the health port.
    pub allow_cidr: String,
    pub rendered: Rendered,
    /// The new AMI's name, from the name template (a free suffix is added if it is taken).
    pub ami_name: String,
    /// Where the temporary NAT goes, with `builder.egress = "nat"`.
    pub egress: Option<egress::Plan>,
    /// The SSM endpoints a private builder's bake creates, with `builder.endpoints = "create"`
    /// and some missing at preflight.
    pub endpoints: Option<endpoints::Plan>,
    /// The copies to other regions and the sharing (`[image.NAME.distribute]`), with each
    /// region's key checked; the build region's key encrypts the builder's volume.
    pub distribute: distribute::Plan,
}

/// The resolved base image.
#[derive(Debug, Clone)]
pub struct BaseAmi {
    pub id: String,
    pub name: String,
    /// The root device, to size and encrypt the builder's root volume.
    pub root_device: String,
}

/// Resolves the base image, subnet, profile and allowed CIDR, and renders the user data.
pub async fn plan(
    clients: &Clients,
    config: &Config,
    renderer: &Renderer,
    name: &str,
    image: &Image,
    checkip_url: &str,
) -> Result<Plan, Error> {
    let rendered = renderer.render(config, name, image)?;
    let ami_name = renderer.ami_name(config, name, image, &rendered.digest, SystemTime::now())?;
    // Problems with a reference point at it in the config; failed calls stay as they are.
    let at = |span, field: &str| resolve::at(config, span, format!("image.{name}.{field}"));
    let builder = &image.builder;
    let (base, subnet, profile, allow_cidr) = tokio::try_join!(
        async {
            resolve_base(clients, image.base.get_ref())
                .await
                .map_err(at(image.base.span(), "base"))
        },
        async {
            resolve::subnet(clients, builder.subnet.get_ref())
                .await
                .map_err(at(builder.subnet.span(), "builder.subnet"))
        },
        async {
            resolve::check_profile(clients, builder.instance_profile.get_ref())
                .await
                .map_err(at(
                    builder.instance_profile.span(),
                    "builder.instance_profile",
                ))
        },
        async {
            allow_cidr(builder.allow_cidr.get_ref(), checkip_url)
                .await
                .map_err(at(builder.allow_cidr.span(), "builder.allow_cidr"))
        },
    )?;
    let distribute = distribute::plan(clients, config, name, image).await?;
    let routing = resolve::routing(clients, &subnet)
        .await
        .map_err(at(builder.subnet.span(), "builder.subnet"))?;
    let (access, why) = access(builder.access.as_ref().map(|a| *a.get_ref()), &routing);
    let access = match access {
        Ok(access) => access,
        Err(e) => {
            let span = builder
                .access
                .as_ref()
                .map_or(builder.subnet.span(), |a| a.span());
            let field = if builder.access.is_some() {
                "builder.access"
            } else {
                "builder.subnet"
            };
            return Err(at(span, field)(e(&subnet, &clients.region)));
        }
    };
    output::note(&format!("{name}: builder access {access}: {why}"));
    let egress = match builder.egress.get_ref() {
        Egress::Nat => {
            let nat_subnet = builder.nat_subnet.as_ref();
            let planned =
                egress::plan(clients, &subnet, &routing, nat_subnet.map(|s| s.get_ref())).await;
            Some(planned.map_err(|e| match e {
                egress::PlanError::Subnet(e) => at(builder.subnet.span(), "builder.subnet")(e),
                egress::PlanError::Route(e) => at(builder.egress.span(), "builder.egress")(e),
                egress::PlanError::NatSubnet(e) => {
                    let span = nat_subnet.map_or(builder.subnet.span(), |s| s.span());
                    at(span, "builder.nat_subnet")(e)
                }
            })?)
        }
        Egress::Existing | Egress::None => None,
    };
    // A private builder must reach SSM (Online, health, verify) without bake's temporary NAT.
    let endpoints = match access {
        Access::Public => None,
        Access::Private => {
            let missing = endpoints::missing(clients, &subnet, &routing).await?;
            match builder.endpoints.get_ref() {
                _ if missing.is_empty() => None,
                Endpoints::Require => {
                    return Err(at(builder.endpoints.span(), "builder.endpoints")(
                        Error::NoSsmPath {
                            vpc: subnet.vpc_id.clone(),
                            subnet: subnet.id.clone(),
                            region: clients.region.clone(),
                            missing: missing
                                .iter()
                                .map(|s| endpoints::service_name(&clients.region, s))
                                .collect::<Vec<_>>()
                                .join(", "),
                            routing: routing.describe(),
                        },
                    ));
                }
                Endpoints::Create => Some(endpoints::Plan {
                    vpc: subnet.vpc_id.clone(),
                    subnet: subnet.id.clone(),
                    missing,
                }),
            }
        }
    };
    Ok(Plan {
        image: name.to_owned(),
        template: image.template.get_ref().clone(),
        os: image.os,
        base,
        subnet,
        routing,
        access,
        instance_profile: profile,
        allow_cidr,
        rendered,
        ami_name,
        egress,
        endpoints,
        distribute,
    })
}

/// A refusal that names the subnet and region once they are known.
type Refusal = fn(&Subnet, &str) -> Error;

/// The builder's access: as configured, or inferred from the route table (a default route to an
/// internet gateway is public, anything else private); and why, naming the route table. A public
/// builder in a subnet without an internet gateway route would never be reached: refused.
fn access(configured: Option<Access>, table: &Routing) -> (Result<Access, Refusal>, String) {
    let route = match &table.default_route {
        Some(DefaultRoute::InternetGateway(igw)) => format!("sends 0.0.0.0/0 to {igw}"),
        Some(DefaultRoute::NatGateway(nat)) => {
            format!("sends 0.0.0.0/0 to {nat}, not to an internet gateway")
        }
        Some(DefaultRoute::Other(target)) => {
            format!("sends 0.0.0.0/0 to {target}, not to an internet gateway")
        }
        None => "has no 0.0.0.0/0 route".to_owned(),
    };
    let public = table.public();
    let table = table.describe();
    match configured {
        Some(Access::Public) if !public => (
            Err(|subnet, region| Error::NotPublic {
                subnet: subnet.id.clone(),
                region: region.to_owned(),
            }),
            format!("configured, but {table} {route}"),
        ),
        Some(access) => (Ok(access), format!("configured ({table} {route})")),
        None if public => (
            Ok(Access::Public),
            format!(
                "inferred: {table} {route}; set access = \"private\" to keep it off the internet"
            ),
        ),
        None => (
            Ok(Access::Private),
            format!("inferred: {table} {route}; health is checked on the builder through SSM"),
        ),
    }
}

pub async fn resolve_base(clients: &Clients, base: &BaseImage) -> Result<BaseAmi, Error> {
    let fail = |reference: String, detail: String| Error::Lookup {
        kind: "base image",
        reference,
        region: clients.region.clone(),
        detail,
    };
    let mut request = clients.ec2.describe_images();
    let reference;
    if let Some(id) = &base.id {
        reference = id.clone();
        request = request.image_ids(id);
    } else if let Some(parameter) = &base.ssm {
        reference = format!("ssm:{parameter}");
        let read = clients.call(|| clients.ssm.get_parameter().name(parameter).send());
        let value = match read.settle(&aws::THROTTLE_BURST).answer().await {
            Ok(value) => value,
            Err(e) if e.is(&["ParameterNotFound"]) => {
                return Err(fail(reference, "no such parameter".into()));
            }
            Err(e) => {
                return Err(e
                    .or_fail(|| format!("read SSM parameter {parameter}"))
                    .into());
            }
        };
        let id = value
            .parameter()
            .and_then(|p| p.value())
            .ok_or_else(|| fail(reference.clone(), "the parameter has no value".into()))?;
        request = request.image_ids(id);
    } else {
        let pattern = base.name.clone().unwrap_or_default();
        reference = format!("name {pattern:?} owned by {}", base.owners.join(", "));
        request = request
            .set_owners(Some(base.owners.clone()))
            .filters(filter("name", &pattern))
            .filters(filter("state", "available"));
    }
    let images = clients
        .call(|| request.clone().send())
        .settle(&aws::THROTTLE_BURST)
        .or_none(&["InvalidAMIID*"], || "describe the base image".into())
        .await?
        .and_then(|out| out.images)
        .unwrap_or_default();
    // Newest first: creation dates are ISO 8601, so they sort as text.
    let newest = images
        .into_iter()
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()))
        .ok_or_else(|| fail(reference.clone(), "no such image".into()))?;
    if newest.state() != Some(&ImageState::Available) {
        let state = newest.state().map_or("unknown", |s| s.as_str());
        return Err(fail(reference, format!("image is {state}, not available")));
    }
    Ok(BaseAmi {
        id: newest.image_id().unwrap_or_default().to_owned(),
        name: newest.name().unwrap_or_default().to_owned(),
        root_device: newest.root_device_name().unwrap_or("/dev/xvda").to_owned(),
    })
}

/// `auto` becomes this runner's public address /32, as a what's-my-IP service sees it.
async fn allow_cidr(configured: &str, checkip_url: &str) -> Result<String, Error> {
    if configured != "auto" {
        return Ok(configured.to_owned());
    }
    let fail = |detail: String| Error::CheckIp {
        url: checkip_url.to_owned(),
        detail,
    };
    let client = reqwest::Client::builder()
        .timeout(CHECKIP_TIMEOUT)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let body = client
        .get(checkip_url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| fail(e.to_string()))?
        .text()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let address: Ipv4Addr = body
        .trim()
        .parse()
        .map_err(|_| fail(format!("answered {:?}, not an IPv4 address", body.trim())))?;
    Ok(format!("{address}/32"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(main: bool, default_route: Option<DefaultRoute>) -> Routing {
        Routing {
            id: "rtb-1".into(),
            main,
            default_route,
        }
    }

    #[test]
    fn access_is_inferred_from_the_default_route_and_says_why_naming_the_table() {
        let igw = table(false, Some(DefaultRoute::InternetGateway("igw-1".into())));
        let (got, why) = access(None, &igw);
        assert_eq!(got.ok(), Some(Access::Public));
        assert!(
            why.contains("route table rtb-1 sends 0.0.0.0/0 to igw-1"),
            "{why}"
        );
        let nat = table(true, Some(DefaultRoute::NatGateway("nat-1".into())));
        let (got, why) = access(None, &nat);
        assert_eq!(got.ok(), Some(Access::Private));
        assert!(why.contains("route table rtb-1 (the VPC's main one) sends 0.0.0.0/0 to nat-1"));
        let (got, why) = access(None, &table(false, None));
        assert_eq!(got.ok(), Some(Access::Private));
        assert!(why.contains("has no 0.0.0.0/0 route"), "{why}");
    }

    #[test]
    fn configured_access_wins_but_public_needs_an_internet_gateway() {
        let igw = table(false, Some(DefaultRoute::InternetGateway("igw-1".into())));
        assert_eq!(
            access(Some(Access::Private), &igw).0.ok(),
            Some(Access::Private)
        );
        let (got, _) = access(Some(Access::Public), &table(false, None));
        let subnet = Subnet {
            id: "subnet-1".into(),
            vpc_id: "vpc-1".into(),
            zone: "a".into(),
        };
        let refusal = got.unwrap_err()(&subnet, "ap-northeast-2");
        assert!(
            refusal
                .to_string()
                .contains("subnet-1 in ap-northeast-2 has no route")
        );
        assert_eq!(refusal.exit_code(), 2);
    }
}
