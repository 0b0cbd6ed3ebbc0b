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
        "EC2 in {region} still refused to launch the builder after {waited:?} (instance profile \
         {profile:?} not yet propagated, the new security group not yet known, or throttling): \
         {last}"
    )]
    ProfileNotReady {
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

/// Launches the builder: IMDSv2 required, encrypted root volume, tags on everything at creation,
/// a public address only for a public builder (a private one asks for none, whatever the
/// subnet's MapPublicIpOnLaunch says).
/// Retries while EC2 does not yet know a new instance profile.
pub async fn instance(
    clients: &Clients,
    plan: &Plan,
    builder: &Builder,
    group_id: &str,
    tags: &[Tag],
    janitor: &Janitor,
) -> Result<String, Error> {
    let name = format!("bake builder {}", plan.image);
    let user_data = base64::engine::general_purpose::STANDARD.encode(&plan.rendered.payload);
    let request = clients
        .ec2
        .run_instances()
        .image_id(&plan.base.id)
        .instance_type(builder.instance_type.as_str().into())
        .min_count(1)
        .max_count(1)
        .user_data(user_data)
        .client_token(format!("{}-{}", janitor.run_id(), plan.image))
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
        .tag_specifications(tags::at_creation(ResourceType::Instance, &name, tags))
        .tag_specifications(tags::at_creation(ResourceType::Volume, &name, tags))
        .tag_specifications(tags::at_creation(
            ResourceType::NetworkInterface,
            &name,
            tags,
        ));
    janitor.launching(request.clone());
    let deadline = poll::deadline(PROFILE_PROPAGATION);
    let launched = poll::until(
        &format!("launch the builder from {}", plan.base.id),
        deadline,
        PROFILE_SCHEDULE,
        |_| {},
        || async {
            match request.clone().send().await {
                Ok(out) => Check::Ready(out),
                Err(e) if is_profile_propagation(&e) => Check::Pending(aws::describe(&e)),
                // The builder's security group was created a moment ago: EC2 may not know it
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
                format!("launch the builder from {}", plan.base.id),
                message,
            )));
        }
        Err(PollError::TimedOut { last }) => {
            return Err(Error::ProfileNotReady {
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
