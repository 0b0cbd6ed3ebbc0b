//! Launch: the builder's temporary security group and the builder instance itself.

use std::time::Duration;

use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceNetworkInterfaceSpecification, IpPermission, IpRange, ResourceType, Tag, VolumeType,
};
use base64::Engine as _;

use super::preflight::Plan;
use crate::aws::{self, CallError, Clients};
use crate::config::{Access, Builder};
use crate::janitor::{Janitor, Resource};
use crate::poll::{self, Check, PollError, Schedule};
use crate::tags;

/// A freshly created instance profile is refused by RunInstances for up to ~1 minute while IAM
/// propagates; 2 minutes covers the slow tail (and the new security group's window,
/// `aws::NEW_SECURITY_GROUP`, which is as long).
const PROFILE_PROPAGATION: Duration = Duration::from_secs(120);
/// IAM propagation takes seconds: retry every 3 s, growing to 10 s.
const PROFILE_SCHEDULE: Schedule =
    Schedule::every(Duration::from_secs(3)).growing(1.5, Duration::from_secs(10));

/// Why the builder could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] CallError),
    #[error(
        "EC2 in {region} still refused to launch {what} after {waited:?} (instance profile \
         {profile:?} not yet propagated, the new security group not yet known, or throttling): \
         {last}"
    )]
    ProfileNotReady {
        what: String,
        profile: String,
        region: String,
        waited: Duration,
        last: String,
    },
}

/// Creates the builder's security group: for a public builder it lets the runner reach the health
/// port, and nothing else; a private builder's group has no ingress rule at all (its health is
/// checked on the builder through SSM, which the agent reaches outbound).
pub async fn security_group(
    clients: &Clients,
    plan: &Plan,
    port: u16,
    tags: &[Tag],
    janitor: &Janitor,
) -> Result<String, Error> {
    let name = format!("bake-{}-{}", plan.image, janitor.run_id());
    let create = clients
        .ec2
        .create_security_group()
        .group_name(&name)
        .description(match plan.access {
            Access::Public => format!(
                "bake builder for image {}: port {port} from {}",
                plan.image, plan.allow_cidr
            ),
            Access::Private => format!("bake builder for image {}: no ingress", plan.image),
        })
        .vpc_id(&plan.subnet.vpc_id)
        .tag_specifications(tags::at_creation(ResourceType::SecurityGroup, &name, tags));
    let created = clients
        .call(|| create.clone().send())
        .or_fail(|| format!("create security group {name}"))
        .await?;
    let id = created.group_id().unwrap_or_default().to_owned();
    janitor.record(Resource::SecurityGroup(id.clone()));
    if plan.access == Access::Private {
        return Ok(id);
    }
    let authorize = clients
        .ec2
        .authorize_security_group_ingress()
        .group_id(&id)
        .ip_permissions(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(i32::from(port))
                .to_port(i32::from(port))
                .ip_ranges(
                    IpRange::builder()
                        .cidr_ip(&plan.allow_cidr)
                        .description("bake health check from the runner")
                        .build(),
                )
                .build(),
        );
    // The group was just created: EC2 may not know it for a few seconds.
    clients
        .call(|| authorize.clone().send())
        .settle(&aws::NEW_SECURITY_GROUP)
        .or_fail(|| format!("open port {port} on {id}"))
        .await?;
    Ok(id)
}

/// What to launch: the builder (the base AMI with the user data) or the test instance (the new
/// AMI with none).
pub struct Spec<'a> {
    /// "the builder", "the test instance": for steps and errors.
    pub what: &'a str,
    pub ami: &'a str,
    /// Its Name tag.
    pub name: String,
    pub user_data: Option<&'a [u8]>,
    /// At most 64 characters (EC2's limit); the same one asked again answers the same instance.
    pub client_token: String,
}

impl<'a> Spec<'a> {
    /// The builder: the base AMI, the rendered user data, the client token `<run id>-<image>`.
    pub fn builder(plan: &'a Plan, run_id: &str) -> Spec<'a> {
        Spec {
            what: "the builder",
            ami: &plan.base.id,
            name: format!("bake builder {}", plan.image),
            user_data: Some(&plan.rendered.payload),
            client_token: format!("{run_id}-{}", plan.image),
        }
    }

    /// The test instance: the new AMI, no user data, and a client token of its own that stays
    /// within 64 characters whatever the image's name (a digest of the builder's).
    pub fn test(plan: &'a Plan, run_id: &str, ami: &'a str) -> Spec<'a> {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{run_id}-{}", plan.image).as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Spec {
            what: "the test instance",
            ami,
            name: format!("bake test {}", plan.image),
            user_data: None,
            client_token: format!("test-{}", &hex[..59]),
        }
    }
}

/// Launches an instance in the builder's subnet and security group with its instance profile:
/// IMDSv2 required, encrypted root volume, tags on everything at creation, a public address only
/// for a public builder (a private one asks for none, whatever the subnet's MapPublicIpOnLaunch
/// says). Retries while EC2 does not yet know a new instance profile.
pub async fn instance(
    clients: &Clients,
    plan: &Plan,
    builder: &Builder,
    spec: &Spec<'_>,
    group_id: &str,
    tags: &[Tag],
    janitor: &Janitor,
) -> Result<String, Error> {
    let name = &spec.name;
    let request = clients
        .ec2
        .run_instances()
        .image_id(spec.ami)
        .instance_type(builder.instance_type.as_str().into())
        .min_count(1)
        .max_count(1)
        .set_user_data(
            spec.user_data
                .map(|data| base64::engine::general_purpose::STANDARD.encode(data)),
        )
        .client_token(&spec.client_token)
        .iam_instance_profile(
            IamInstanceProfileSpecification::builder()
                .name(&plan.instance_profile)
                .build(),
        )
        .metadata_options(
            InstanceMetadataOptionsRequest::builder()
                .http_tokens(HttpTokensState::Required)
                .http_endpoint(InstanceMetadataEndpointState::Enabled)
                // 2 hops: what AWS sets for AL2023, so containers on the builder reach IMDS too.
                .http_put_response_hop_limit(2)
                .build(),
        )
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(&plan.base.root_device)
                .ebs(
                    EbsBlockDevice::builder()
                        .volume_size(builder.volume.size as i32)
                        .volume_type(VolumeType::from(builder.volume.kind.as_str()))
                        .encrypted(true)
                        // The distribution's key for this region, so the image is encrypted
                        // with a key the accounts it is shared with may use; else the
                        // account's default EBS key.
                        .set_kms_key_id(plan.distribute.build_key.clone())
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .network_interfaces(
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(0)
                .subnet_id(&plan.subnet.id)
                .groups(group_id)
                .associate_public_ip_address(plan.access == Access::Public)
                .delete_on_termination(true)
                .build(),
        )
        .tag_specifications(tags::at_creation(ResourceType::Instance, name, tags))
        .tag_specifications(tags::at_creation(ResourceType::Volume, name, tags))
        .tag_specifications(tags::at_creation(
            ResourceType::NetworkInterface,
            name,
            tags,
        ));
    janitor.launching(request.clone());
    let deadline = poll::deadline(PROFILE_PROPAGATION);
    let launched = poll::until(
        &format!("launch {} from {}", spec.what, spec.ami),
        deadline,
        PROFILE_SCHEDULE,
        |_| {},
        || async {
            match request.clone().send().await {
                Ok(out) => Check::Ready(out),
                Err(e) if is_profile_propagation(&e) => Check::Pending(aws::describe(&e)),
                // The builder's security group may have been created a moment ago: EC2 may not know it
                // yet. The ClientToken makes asking again safe.
                Err(e)
                    if aws::code(&e)
                        .is_some_and(|c| aws::NEW_SECURITY_GROUP.codes.contains(&c)) =>
                {
                    Check::Pending(aws::describe(&e))
                }
                Err(e) => aws::unless_transient(&e, aws::describe),
            }
        },
    )
    .await;
    let out = match launched {
        Ok(out) => out,
        Err(PollError::Failed(message)) => {
            janitor.launch_refused();
            return Err(Error::Api(clients.failed(
                format!("launch {} from {}", spec.what, spec.ami),
                message,
            )));
        }
        Err(PollError::TimedOut { last }) => {
            return Err(Error::ProfileNotReady {
                what: spec.what.to_owned(),
                profile: plan.instance_profile.clone(),
                region: clients.region.clone(),
                waited: PROFILE_PROPAGATION,
                last,
            });
        }
    };
    let id = out
        .instances()
        .first()
        .and_then(|i| i.instance_id())
        .unwrap_or_default()
        .to_owned();
    janitor.record(Resource::Instance(id.clone()));
    Ok(id)
}

/// EC2 answers InvalidParameterValue "Invalid IAM Instance Profile name" until a new profile
/// has propagated.
fn is_profile_propagation<E, R>(e: &aws_sdk_ec2::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    let Some(service) = e.as_service_error() else {
        return false;
    };
    service.code() == Some("InvalidParameterValue")
        && service
            .message()
            .is_some_and(|m| m.to_ascii_lowercase().contains("iam instance profile"))
}
