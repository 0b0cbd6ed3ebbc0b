//! Preflight: resolve and check everything a bake needs before anything is created.

use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::{Filter, ImageState};

use crate::aws::{self, CallError, Clients};
use crate::config::{BaseImage, Config, Image, Location, Os, ResourceRef};
use crate::render::{self, Rendered, Renderer};

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
    pub instance_profile: String,
    /// Who may reach the health port.
    pub allow_cidr: String,
    pub rendered: Rendered,
    /// The new AMI's name, from the name template (a free suffix is added if it is taken).
    pub ami_name: String,
}

/// The resolved base image.
#[derive(Debug, Clone)]
pub struct BaseAmi {
    pub id: String,
    pub name: String,
    /// The root device, to size and encrypt the builder's root volume.
    pub root_device: String,
}

/// The resolved builder subnet.
#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    /// Its availability zone.
    pub zone: String,
}

/// Why a bake cannot start. Nothing has been created when one of these is returned.
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
    #[error("base image {reference} in {region}: {detail}")]
    Base {
        reference: String,
        region: String,
        detail: String,
    },
    #[error("subnet {reference} in {region}: {detail}")]
    Subnet {
        reference: String,
        region: String,
        detail: String,
    },
    #[error(
        "subnet {subnet} in {region} has no route to an internet gateway \
         (0.0.0.0/0 -> igw-...); it must be reachable from the internet: pick a public subnet"
    )]
    NotPublic { subnet: String, region: String },
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
    let at = |span: std::ops::Range<usize>, field: &str| {
        let at = config.source.locate(span.start);
        let field = format!("image.{name}.{field}");
        move |e: Error| match e {
            Error::Api(_) => e,
            other => Error::At {
                at,
                field,
                source: Box::new(other),
            },
        }
    };
    let builder = &image.builder;
    let (base, subnet, profile, allow_cidr) = tokio::try_join!(
        async {
            resolve_base(clients, image.base.get_ref())
                .await
                .map_err(at(image.base.span(), "base"))
        },
        async {
            resolve_subnet(clients, builder.subnet.get_ref())
                .await
                .map_err(at(builder.subnet.span(), "builder.subnet"))
        },
        async {
            check_profile(clients, builder.instance_profile.get_ref())
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
    check_public(clients, &subnet)
        .await
        .map_err(at(builder.subnet.span(), "builder.subnet"))?;
    Ok(Plan {
        image: name.to_owned(),
        template: image.template.get_ref().clone(),
        os: image.os,
        base,
        subnet,
        instance_profile: profile,
        allow_cidr,
        rendered,
        ami_name,
    })
}

async fn resolve_base(clients: &Clients, base: &BaseImage) -> Result<BaseAmi, Error> {
    let fail = |reference: String, detail: String| Error::Base {
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
        let value = aws::settle(&aws::THROTTLE_BURST, "read the base parameter", || {
            clients.ssm.get_parameter().name(parameter).send()
        })
        .await
        .map_err(|e| match aws::code(&e) {
            Some("ParameterNotFound") => fail(reference.clone(), "no such parameter".into()),
            _ => clients
                .failed(format!("read SSM parameter {parameter}"), aws::describe(&e))
                .into(),
        })?;
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
            .filters(Filter::builder().name("name").values(pattern).build())
            .filters(Filter::builder().name("state").values("available").build());
    }
    let sent = aws::settle(&aws::THROTTLE_BURST, "describe the base image", || {
        request.clone().send()
    })
    .await;
    let images = match sent {
        Ok(out) => out.images.unwrap_or_default(),
        Err(e) if aws::code(&e).is_some_and(|c| c.starts_with("InvalidAMIID")) => Vec::new(),
        Err(e) => {
            return Err(clients
                .failed("describe the base image", aws::describe(&e))
                .into());
        }
    };
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

/// EC2 filters for an id-or-tags reference, and how to name it in messages.
pub fn filters(r: &ResourceRef, id_filter: &str) -> (Vec<Filter>, String) {
    match &r.id {
        Some(id) => (
            vec![Filter::builder().name(id_filter).values(id).build()],
            id.clone(),
        ),
        None => (
            r.tag
                .iter()
                .map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(v).build())
                .collect(),
            r.tag
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        ),
    }
}

/// Finds the one subnet a reference names.
pub(crate) async fn resolve_subnet(
    clients: &Clients,
    subnet: &ResourceRef,
) -> Result<Subnet, Error> {
    let (filters, reference) = filters(subnet, "subnet-id");
    let found = aws::settle(&aws::THROTTLE_BURST, "describe subnets", || {
        clients
            .ec2
            .describe_subnets()
            .set_filters(Some(filters.clone()))
            .send()
    })
    .await
    .map_err(|e| clients.failed("describe subnets", aws::describe(&e)))?;
    let fail = |detail: String| Error::Subnet {
        reference: reference.clone(),
        region: clients.region.clone(),
        detail,
    };
    let one = exactly_one(found.subnets(), "subnet", |s| s.subnet_id()).map_err(fail)?;
    Ok(Subnet {
        id: one.subnet_id().unwrap_or_default().to_owned(),
        vpc_id: one.vpc_id().unwrap_or_default().to_owned(),
        zone: one.availability_zone().unwrap_or_default().to_owned(),
    })
}

/// The one resource a reference matched, or what is wrong: none, or several (with their ids).
pub(crate) fn exactly_one<'a, T>(
    found: &'a [T],
    kind: &str,
    id: impl Fn(&T) -> Option<&str>,
) -> Result<&'a T, String> {
    match found {
        [one] => Ok(one),
        [] => Err(format!("no such {kind}")),
        many => Err(format!(
            "matches {} {kind}s ({}); make the reference unique",
            many.len(),
            many.iter().filter_map(id).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// A public builder needs a default route to an internet gateway, in the subnet's route table or
/// (when it has none of its own) in the VPC's main one.
pub(crate) async fn check_public(clients: &Clients, subnet: &Subnet) -> Result<(), Error> {
    let tables = |filters: Vec<Filter>| async move {
        aws::settle(&aws::THROTTLE_BURST, "describe route tables", || {
            clients
                .ec2
                .describe_route_tables()
                .set_filters(Some(filters.clone()))
                .send()
        })
        .await
        .map(|out| out.route_tables.unwrap_or_default())
        .map_err(|e| clients.failed("describe route tables", aws::describe(&e)))
    };
    let mut found = tables(vec![
        Filter::builder()
            .name("association.subnet-id")
            .values(&subnet.id)
            .build(),
    ])
    .await?;
    if found.is_empty() {
        found = tables(vec![
            Filter::builder()
                .name("vpc-id")
                .values(&subnet.vpc_id)
                .build(),
            Filter::builder()
                .name("association.main")
                .values("true")
                .build(),
        ])
        .await?;
    }
    let public = found.iter().flat_map(|t| t.routes()).any(|r| {
        r.destination_cidr_block() == Some("0.0.0.0/0")
            && r.gateway_id().is_some_and(|g| g.starts_with("igw-"))
    });
    if public {
        Ok(())
    } else {
        Err(Error::NotPublic {
            subnet: subnet.id.clone(),
            region: clients.region.clone(),
        })
    }
}

/// The instance profile must exist.
pub(crate) async fn check_profile(clients: &Clients, profile: &str) -> Result<String, Error> {
    let read = aws::settle(&aws::THROTTLE_BURST, "read the instance profile", || {
        clients
            .iam
            .get_instance_profile()
            .instance_profile_name(profile)
            .send()
    })
    .await;
    match read {
        Ok(_) => Ok(profile.to_owned()),
        Err(e) if aws::code(&e) == Some("NoSuchEntity") => Err(Error::NoProfile {
            profile: profile.to_owned(),
        }),
        Err(e) => Err(clients
            .failed(
                format!("read instance profile {profile}"),
                aws::describe(&e),
            )
            .into()),
    }
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
