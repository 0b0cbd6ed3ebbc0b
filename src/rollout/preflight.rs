//! Preflight: resolve and check everything a rollout needs before anything is created or changed.

use aws_sdk_ec2::types::ImageState;

use crate::aws::Clients;
use crate::config::{Config, Health, ResourceRef, Rollout};
use crate::janitor;
use crate::render::Renderer;
pub use crate::resolve::Error;
use crate::resolve::{self, Subnet};

/// Everything resolved for one rollout.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The `[rollout.NAME]`.
    pub rollout: String,
    /// The `[image.NAME]` it rolls out.
    pub image: String,
    pub ami: Ami,
    pub vpc_id: String,
    pub alb_subnets: Vec<Subnet>,
    pub instance_subnets: Vec<Subnet>,
    pub instance_profile: Option<String>,
    /// The image's health check, used by the target group and for the final look through the ALB.
    pub health: Health,
    pub names: Names,
}

/// The AMI being rolled out.
#[derive(Debug, Clone)]
pub struct Ami {
    pub id: String,
    pub name: String,
}

/// The names of the stack's resources.
#[derive(Debug, Clone)]
pub struct Names {
    pub alb: String,
    pub alb_security_group: String,
    pub target_group: String,
    pub launch_template: String,
    pub asg: String,
    pub instance_security_group: String,
    /// CloudWatch alarms the stack owns: the target group's 5xx count and its target response
    /// time (the refresh's `AlarmSpecification`), and the group's average CPU (seed 002).
    pub alarm_errors: String,
    pub alarm_latency: String,
    pub alarm_cpu: String,
}

impl Names {
    /// The names `[rollout.NAME]` gives its stack's resources, defaults filled in.
    pub fn of(rollout: &Rollout) -> Names {
        Names {
            alb: rollout.alb.clone(),
            alb_security_group: rollout
                .alb_security_group
                .clone()
                .unwrap_or_else(|| format!("{}-SG", rollout.alb)),
            target_group: rollout.target_group.clone(),
            launch_template: rollout.launch_template.clone(),
            asg: rollout.asg.clone(),
            instance_security_group: rollout
                .instance_security_group
                .clone()
                .unwrap_or_else(|| format!("{}-Inst-SG", rollout.asg)),
            alarm_errors: format!("{}{}", rollout.asg, janitor::stack::ALARM_ERRORS),
            alarm_latency: format!("{}{}", rollout.asg, janitor::stack::ALARM_LATENCY),
            alarm_cpu: format!("{}{}", rollout.asg, janitor::stack::ALARM_CPU),
        }
    }
}

/// Resolves the VPC, subnets, profile and AMI of `[rollout.NAME]`.
pub async fn plan(
    clients: &Clients,
    config: &Config,
    name: &str,
    rollout: &Rollout,
    ami: Option<&str>,
) -> Result<Plan, Error> {
    let image_name = rollout.image.get_ref();
    let image = config.image(image_name).map_err(|_| Error::NotBaked {
        image: image_name.clone(),
        digest: String::new(),
        region: clients.region.clone(),
    })?;
    // Problems with a reference point at it in the config; failed calls stay as they are.
    let at = |span, field: &str| resolve::at(config, span, format!("rollout.{name}.{field}"));
    let ami = match ami {
        Some(id) => describe_ami(clients, id).await?,
        None => {
            let rendered = Renderer::new(config)?.render(config, image_name, image)?;
            newest_baked(clients, image_name, &rendered.digest).await?
        }
    };
    let vpc_id = resolve::vpc(clients, rollout.vpc.get_ref())
        .await
        .map_err(at(rollout.vpc.span(), "vpc"))?;
    let alb_subnets = subnets(clients, rollout.alb_subnets.get_ref(), &vpc_id)
        .await
        .map_err(at(rollout.alb_subnets.span(), "alb_subnets"))?;
    for subnet in &alb_subnets {
        resolve::check_public(clients, subnet)
            .await
            .map_err(at(rollout.alb_subnets.span(), "alb_subnets"))?;
    }
    if alb_subnets.iter().all(|s| s.zone == alb_subnets[0].zone) {
        return Err(at(rollout.alb_subnets.span(), "alb_subnets")(
            Error::OneZone {
                zone: alb_subnets[0].zone.clone(),
            },
        ));
    }
    let instance_subnets = subnets(clients, rollout.instance_subnets.get_ref(), &vpc_id)
        .await
        .map_err(at(rollout.instance_subnets.span(), "instance_subnets"))?;
    check_zones(&alb_subnets, &instance_subnets)
        .map_err(at(rollout.instance_subnets.span(), "instance_subnets"))?;
    let instance_profile = match &rollout.instance_profile {
        Some(profile) => Some(
            resolve::check_profile(clients, profile.get_ref())
                .await
                .map_err(at(profile.span(), "instance_profile"))?,
        ),
        None => None,
    };
    Ok(Plan {
        rollout: name.to_owned(),
        image: image_name.clone(),
        ami,
        vpc_id,
        alb_subnets,
        instance_subnets,
        instance_profile,
        health: image.health.clone(),
        names: Names::of(rollout),
    })
}

/// Every instance subnet must be in a zone the load balancer has a subnet in: a target elsewhere
/// gets no traffic and never turns healthy ("Availability Zones for your Application Load
/// Balancer").
pub fn check_zones(alb_subnets: &[Subnet], instance_subnets: &[Subnet]) -> Result<(), Error> {
    let covered: std::collections::BTreeSet<&str> =
        alb_subnets.iter().map(|s| s.zone.as_str()).collect();
    match instance_subnets
        .iter()
        .find(|s| !covered.contains(s.zone.as_str()))
    {
        None => Ok(()),
        Some(outside) => Err(Error::ZoneNotCovered {
            subnet: outside.id.clone(),
            zone: outside.zone.clone(),
            covered: covered.into_iter().collect::<Vec<_>>().join(", "),
        }),
    }
}

async fn describe_ami(clients: &Clients, id: &str) -> Result<Ami, Error> {
    let fail = |detail: &str| Error::Lookup {
        kind: "AMI",
        reference: id.to_owned(),
        region: clients.region.clone(),
        detail: detail.to_owned(),
    };
    let images = clients
        .call(|| clients.ec2.describe_images().image_ids(id).send())
        .or_none(&["InvalidAMIID*"], || "describe the AMI".into())
        .await?
        .and_then(|out| out.images)
        .unwrap_or_default();
    let image = images.first().ok_or_else(|| fail("no such image"))?;
    if image.state() != Some(&ImageState::Available) {
        let state = image.state().map_or("unknown", |s| s.as_str());
        return Err(fail(&format!("the image is {state}, not available")));
    }
    // The same rule as the AMI of the digest (resolve::baked_ami): a failed or unfinished test.
    if let Some(verdict) = crate::tags::untested(image.tags()) {
        return Err(fail(&format!(
            "its test is {verdict} ({}={verdict}): bake rolls out only an AMI that passed it",
            crate::tags::TEST
        )));
    }
    Ok(Ami {
        id: id.to_owned(),
        name: image.name().unwrap_or_default().to_owned(),
    })
}

/// The AMI baked from the image's current inputs ([`resolve::baked_ami`]).
async fn newest_baked(clients: &Clients, image: &str, digest: &str) -> Result<Ami, Error> {
    let newest = resolve::baked_ami(clients, digest, None)
        .await?
        .ok_or_else(|| Error::NotBaked {
            image: image.to_owned(),
            digest: digest.to_owned(),
            region: clients.region.clone(),
        })?;
    Ok(Ami {
        id: newest.image_id().unwrap_or_default().to_owned(),
        name: newest.name().unwrap_or_default().to_owned(),
    })
}

async fn subnets(
    clients: &Clients,
    refs: &[ResourceRef],
    vpc_id: &str,
) -> Result<Vec<Subnet>, Error> {
    let mut found = Vec::new();
    for r in refs {
        let subnet = resolve::subnet(clients, r).await?;
        if subnet.vpc_id != vpc_id {
            return Err(Error::WrongVpc {
                subnet: subnet.id,
                found: subnet.vpc_id,
                vpc: vpc_id.to_owned(),
            });
        }
        found.push(subnet);
    }
    Ok(found)
}
