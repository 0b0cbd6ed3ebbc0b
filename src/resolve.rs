//! Finding what the config refers to: EC2 filters, the one resource a reference matches (subnet,
//! VPC), the checks on them (a public subnet, an instance profile that exists), and the AMI baked
//! from an image's inputs, with the rule for when a deprecated one stops counting.

use std::future::Future;
use std::time::SystemTime;

use aws_sdk_ec2::types::{Filter, Image};

use crate::aws::{self, CallError, Clients};
use crate::config::ResourceRef;
use crate::tags;

/// A subnet a reference resolved to.
#[derive(Debug, Clone)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    /// Its availability zone.
    pub zone: String,
}

/// Why a reference does not resolve or fails its check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// None or several matched: `kind` is "subnet" or "VPC".
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
    #[error(
        "instance profile {profile:?} does not exist; create it with a role that has \
         AmazonSSMManagedInstanceCore (the verify step runs through SSM)"
    )]
    NoProfile { profile: String },
    /// An AWS call failed (credentials, network, permissions).
    #[error(transparent)]
    Api(#[from] CallError),
}

impl Error {
    /// A reference that does not resolve is a usage error (2); a failed call a failure (1).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Api(_) => 1,
            _ => 2,
        }
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

/// Instances that are not terminated or on their way out: they hold their AMI and groups.
pub fn live_instances() -> Filter {
    filter_any(
        "instance-state-name",
        &["pending", "running", "stopping", "stopped"],
    )
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

/// The one `kind` that `r` names: `describe` lists what matches the filters for its id filter.
async fn one<T, Fut>(
    clients: &Clients,
    r: &ResourceRef,
    kind: &'static str,
    id_filter: &str,
    describe: impl FnOnce(Vec<Filter>) -> Fut,
    id: impl Fn(&T) -> Option<&str>,
) -> Result<T, Error>
where
    Fut: Future<Output = Result<Vec<T>, CallError>>,
{
    let (filters, reference) = filters(r, id_filter);
    let found = describe(filters).await?;
    exactly_one(found, kind, id).map_err(|detail| Error::Lookup {
        kind,
        reference,
        region: clients.region.clone(),
        detail,
    })
}

/// The one subnet a reference names.
pub async fn subnet(clients: &Clients, r: &ResourceRef) -> Result<Subnet, Error> {
    let describe = |filters: Vec<Filter>| async move {
        let request = clients.ec2.describe_subnets().set_filters(Some(filters));
        let out = clients.call(|| request.clone().send());
        let out = out.settle(&aws::THROTTLE_BURST);
        Ok(out
            .or_fail(|| "describe subnets".into())
            .await?
            .subnets
            .unwrap_or_default())
    };
    let one = one(clients, r, "subnet", "subnet-id", describe, |s| {
        s.subnet_id()
    })
    .await?;
    Ok(Subnet {
        id: one.subnet_id().unwrap_or_default().to_owned(),
        vpc_id: one.vpc_id().unwrap_or_default().to_owned(),
        zone: one.availability_zone().unwrap_or_default().to_owned(),
    })
}

/// The id of the one VPC a reference names.
pub async fn vpc(clients: &Clients, r: &ResourceRef) -> Result<String, Error> {
    let describe = |filters: Vec<Filter>| async move {
        let request = clients.ec2.describe_vpcs().set_filters(Some(filters));
        let out = clients.call(|| request.clone().send());
        let out = out.settle(&aws::THROTTLE_BURST);
        Ok(out
            .or_fail(|| "describe VPCs".into())
            .await?
            .vpcs
            .unwrap_or_default())
    };
    let one = one(clients, r, "VPC", "vpc-id", describe, |v| v.vpc_id()).await?;
    Ok(one.vpc_id().unwrap_or_default().to_owned())
}

/// A public subnet has a default route to an internet gateway, in its own route table or (when it
/// has none of its own) in the VPC's main one.
pub async fn check_public(clients: &Clients, subnet: &Subnet) -> Result<(), Error> {
    let tables = |filters: Vec<Filter>| async move {
        let request = clients
            .ec2
            .describe_route_tables()
            .set_filters(Some(filters));
        let out = clients.call(|| request.clone().send());
        let out = out.settle(&aws::THROTTLE_BURST);
        let out = out.or_fail(|| "describe route tables".into()).await?;
        Ok::<_, CallError>(out.route_tables.unwrap_or_default())
    };
    let mut found = tables(vec![filter("association.subnet-id", &subnet.id)]).await?;
    if found.is_empty() {
        let main = vec![
            filter("vpc-id", &subnet.vpc_id),
            filter("association.main", "true"),
        ];
        found = tables(main).await?;
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
/// with `base` as its base AMI, when given) whose deprecation time has not come. A deprecated AMI
/// no longer counts as baked: `bake ami` bakes anew, `bake rollout` does not pick it.
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
        .filter(|image| !deprecated(image, now))
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
