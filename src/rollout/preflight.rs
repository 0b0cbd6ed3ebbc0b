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
    check_snapshot_keys(clients, image).await?;
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
    check_snapshot_keys(clients, &newest).await?;
    Ok(Ami {
        id: newest.image_id().unwrap_or_default().to_owned(),
        name: newest.name().unwrap_or_default().to_owned(),
    })
}

/// The Auto Scaling service-linked role: it launches the group's instances, so it must be allowed
/// to use a customer managed key that encrypts the AMI's snapshots ("Required AWS KMS key policy
/// for use with encrypted volumes"; AWS managed keys need nothing).
pub const AUTOSCALING_ROLE: &str = "AWSServiceRoleForAutoScaling";

/// What the role needs of the key, as that page's two key policy statements give it.
const ROLE_NEEDS: [&str; 7] = [
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:DescribeKey",
    "kms:CreateGrant",
];

/// A group cannot launch from an image whose snapshots' customer managed key lets the Auto
/// Scaling service-linked role do nothing: EC2 accepts each launch and terminates the instance
/// ("Client.InternalError: Client error on launch"), which a refresh would only see after minutes
/// of failed activities. The role may use the key through a grant (the way for another account's
/// key) or through the key policy (same account). A key bake may not read is not judged.
pub async fn check_snapshot_keys(
    clients: &Clients,
    image: &aws_sdk_ec2::types::Image,
) -> Result<(), Error> {
    let ami = image.image_id().unwrap_or_default();
    let snapshots: Vec<String> = image
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs()?.snapshot_id().map(ToOwned::to_owned))
        .collect();
    if snapshots.is_empty() {
        return Ok(());
    }
    let described = clients
        .call(|| {
            clients
                .ec2
                .describe_snapshots()
                .set_snapshot_ids(Some(snapshots.clone()))
                .send()
        })
        .or_fail(|| format!("describe the snapshots of {ami}"))
        .await?;
    let keys: std::collections::BTreeSet<&str> = described
        .snapshots()
        .iter()
        .filter(|s| s.encrypted() == Some(true))
        .filter_map(|s| s.kms_key_id())
        .collect();
    for key in keys {
        let Some(metadata) = readable(
            clients
                .call(|| clients.kms.describe_key().key_id(key).send())
                .answer()
                .await,
            || format!("describe key {key} of {ami}'s snapshots"),
        )?
        .and_then(|out| out.key_metadata) else {
            continue;
        };
        if metadata.key_manager() != Some(&aws_sdk_kms::types::KeyManagerType::Customer) {
            continue;
        }
        let unusable = |detail: String| Error::Lookup {
            kind: "AMI",
            reference: ami.to_owned(),
            region: clients.region.clone(),
            detail,
        };
        if metadata.key_state() != Some(&aws_sdk_kms::types::KeyState::Enabled) {
            let state = metadata.key_state().map_or("unknown", |s| s.as_str());
            return Err(unusable(format!(
                "its snapshots' key {key} is {state}: the group cannot launch from it"
            )));
        }
        if role_may_use(clients, key).await? != Some(false) {
            continue;
        }
        let account = image.owner_id().unwrap_or("ACCOUNT");
        let role = format!(
            "arn:aws:iam::{account}:role/aws-service-role/autoscaling.amazonaws.com/{AUTOSCALING_ROLE}"
        );
        return Err(unusable(format!(
            "its snapshots are encrypted with customer managed key {key}, which the Auto Scaling \
             service-linked role may not use (no grant, and the key policy does not allow it), so \
             every launch of the group would fail with Client.InternalError. Let the role use the \
             key in its key policy, or grant it from this account: aws kms create-grant --region \
             {region} --key-id {key} --grantee-principal {role} --operations Encrypt Decrypt \
             ReEncryptFrom ReEncryptTo GenerateDataKeyWithoutPlaintext DescribeKey CreateGrant",
            region = clients.region,
        )));
    }
    Ok(())
}

/// Whether the Auto Scaling role may use the key: Some(true) through a grant or the key policy,
/// Some(false) through neither, None where bake may not read the grants or the policy.
async fn role_may_use(clients: &Clients, key: &str) -> Result<Option<bool>, Error> {
    let mut marker: Option<String> = None;
    // A key has at most 50,000 grants; 100 pages of 100 is past any key a group uses.
    for _ in 0..100 {
        let Some(page) = readable(
            clients
                .call(|| {
                    clients
                        .kms
                        .list_grants()
                        .key_id(key)
                        .limit(100)
                        .set_marker(marker.clone())
                        .send()
                })
                .answer()
                .await,
            || format!("list the grants of key {key}"),
        )?
        else {
            return Ok(None);
        };
        if page.grants().iter().any(|g| {
            g.grantee_principal()
                .is_some_and(|p| p.ends_with(&format!("/{AUTOSCALING_ROLE}")))
        }) {
            return Ok(Some(true));
        }
        match page.next_marker() {
            Some(next) if page.truncated() => marker = Some(next.to_owned()),
            _ => break,
        }
    }
    let Some(policy) = readable(
        clients
            .call(|| {
                clients
                    .kms
                    .get_key_policy()
                    .key_id(key)
                    .policy_name("default")
                    .send()
            })
            .answer()
            .await,
        || format!("read the key policy of {key}"),
    )?
    .and_then(|out| out.policy) else {
        return Ok(None);
    };
    Ok(Some(policy_allows_role(&policy)))
}

/// An answer, None where AWS denied bake the read (AccessDenied: the key is another account's, or
/// bake's policy does not reach it), else the failure.
fn readable<T, E>(
    answer: Result<T, crate::aws::Failed<E>>,
    action: impl FnOnce() -> String,
) -> Result<Option<T>, Error>
where
    E: aws_sdk_kms::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match answer {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.is(&["AccessDeniedException", "AccessDenied"]) => Ok(None),
        Err(e) => Err(e.or_fail(action).into()),
    }
}

/// Whether the key policy's Allow statements name the Auto Scaling service-linked role and give it
/// every action in [`ROLE_NEEDS`] (`kms:*` and `kms:ReEncrypt*`-style wildcards count).
pub fn policy_allows_role(policy: &str) -> bool {
    use serde_json::Value;
    let Ok(policy) = serde_json::from_str::<Value>(policy) else {
        return false;
    };
    let list = |v: Option<&Value>| -> Vec<String> {
        match v {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(all)) => all
                .iter()
                .filter_map(|a| a.as_str().map(ToOwned::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    let statements = match policy.get("Statement") {
        Some(Value::Array(all)) => all.clone(),
        Some(one @ Value::Object(_)) => vec![one.clone()],
        _ => Vec::new(),
    };
    let mut allowed = std::collections::BTreeSet::new();
    for statement in &statements {
        if statement.get("Effect").and_then(Value::as_str) != Some("Allow") {
            continue;
        }
        let principals = list(statement.get("Principal").and_then(|p| p.get("AWS")));
        if !principals.iter().any(|p| {
            p.ends_with(&format!(
                ":role/aws-service-role/autoscaling.amazonaws.com/{AUTOSCALING_ROLE}"
            ))
        }) {
            continue;
        }
        for pattern in list(statement.get("Action")) {
            for needed in ROLE_NEEDS {
                if action_matches(&pattern, needed) {
                    allowed.insert(needed);
                }
            }
        }
    }
    allowed.len() == ROLE_NEEDS.len()
}

/// IAM action matching: case-insensitive, `*` for any run of characters.
fn action_matches(pattern: &str, action: &str) -> bool {
    let (pattern, action) = (pattern.to_ascii_lowercase(), action.to_ascii_lowercase());
    match pattern.split_once('*') {
        None => pattern == action,
        Some((head, tail)) => {
            action.len() >= head.len() + tail.len()
                && action.starts_with(head)
                && action[head.len()..].ends_with(tail)
        }
    }
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
