//! The stack: security groups, target group, load balancer and listener, launch template and its
//! new version, the Auto Scaling group and its scaling policy; found by name, created when missing,
//! and removed again (waiting for a deleted group's instances) when a first rollout fails.

use std::time::Duration;

use aws_sdk_autoscaling::types::{
    AutoScalingGroup, LaunchTemplateSpecification, MetricType, PredefinedMetricSpecification,
    TargetTrackingConfiguration,
};
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    InstanceType, IpPermission, IpRange, LaunchTemplateHttpTokensState,
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateTagSpecificationRequest, LaunchTemplateVersion, RequestLaunchTemplateData,
    ResourceType, UserIdGroupPair,
};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, LoadBalancerSchemeEnum, LoadBalancerTypeEnum, Matcher, ProtocolEnum,
    TargetGroupAttribute, TargetTypeEnum,
};

use super::preflight::Plan;
use crate::aws::{self, CallError, Clients, Failed};
use crate::config::Rollout;
use crate::poll::{self, Check, PollError, Schedule};
use crate::resolve::filter;
use crate::tags;
/// Targets are checked every 10 s and change state after 2 answers: a new instance counts as
/// healthy about 20 s after it serves, instead of the 2.5 minutes of ELB's defaults.
const HEALTH_CHECK_INTERVAL_SECONDS: i32 = 10;
const HEALTH_CHECK_TIMEOUT_SECONDS: i32 = 5;
const HEALTHY_THRESHOLD: i32 = 2;
const UNHEALTHY_THRESHOLD: i32 = 2;
/// A replaced instance drains for 30 s (ELB's default is 300 s), plenty for short web requests.
const DEREGISTRATION_DELAY_SECONDS: &str = "30";
/// The name of the target-tracking policy bake keeps on the group.
const CPU_POLICY: &str = "bake-cpu-target";
/// A deleted group's instances terminate within minutes.
const GROUP_GONE_TIMEOUT: Duration = Duration::from_secs(900);
/// Deleting a group takes minutes: a look every 2 s, growing to 10 s.
const GROUP_GONE_SCHEDULE: Schedule = Schedule::every(Duration::from_secs(2))
    .first_after(Duration::from_secs(2))
    .dense_for(Duration::from_secs(120))
    .growing(1.2, Duration::from_secs(10));

/// The stack as found or made, with the launch template version to roll out.
#[derive(Debug, Clone)]
pub struct Stack {
    pub alb_dns: String,
    pub target_group_arn: String,
    pub launch_template_id: String,
    /// The version holding the new AMI.
    pub version: i64,
    /// The version the group ran before (None when the group is new).
    pub previous_version: Option<String>,
    /// Whether the group was created by this run (its first instances are the rollout).
    pub group_created: bool,
    /// Whether AWS can roll a refresh of the group back (StartInstanceRefresh's AutoRollback,
    /// RollbackInstanceRefresh): the group runs a numbered version whose image is an AMI id, not a
    /// `resolve:ssm:` parameter.
    pub auto_rollback: bool,
    /// Whether the group already runs this AMI (no new version, no refresh).
    pub unchanged: bool,
    /// What this run created, in creation order.
    pub created: Vec<Created>,
}

/// A stack resource this run created, so a failed first rollout can remove it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    SecurityGroup(String),
    TargetGroup(String),
    LoadBalancer(String),
    LaunchTemplate(String),
    AutoScalingGroup(String),
}

/// Finds or creates every resource of the stack and adds a launch template version with the AMI.
pub async fn ensure(clients: &Clients, plan: &Plan, rollout: &Rollout) -> Result<Stack, CallError> {
    let mut created = Vec::new();
    let result = build(clients, plan, rollout, &mut created).await;
    match result {
        Ok(mut stack) => {
            stack.created = created;
            Ok(stack)
        }
        Err(e) => {
            // Half a stack is worth nothing: remove what this run made before reporting.
            if let Err(cleanup) = remove(clients, &created).await {
                crate::output::note(&format!("error: {cleanup}"));
            }
            Err(e)
        }
    }
}

async fn build(
    clients: &Clients,
    plan: &Plan,
    rollout: &Rollout,
    created: &mut Vec<Created>,
) -> Result<Stack, CallError> {
    let alb_sg = security_group(
        clients,
        plan,
        &plan.names.alb_security_group,
        &format!("bake {}: HTTP to the load balancer", plan.rollout),
        rollout.alb_port,
        Source::Cidr(rollout.alb_allow_cidr.get_ref()),
        created,
    )
    .await?;
    let instance_sg = security_group(
        clients,
        plan,
        &plan.names.instance_security_group,
        &format!(
            "bake {}: the health port from the load balancer only",
            plan.rollout
        ),
        plan.health.port,
        Source::Group(&alb_sg),
        created,
    )
    .await?;
    let target_group_arn = target_group(clients, plan, created).await?;
    let (alb_arn, alb_dns) = load_balancer(clients, plan, &alb_sg, created).await?;
    listener(clients, &alb_arn, rollout.alb_port, &target_group_arn).await?;
    // Before the new version exists: `$Latest` would name it.
    pin(clients, &plan.names.asg).await?;
    let current = current_version(clients, &plan.names.asg).await?;
    let unchanged = current
        .as_ref()
        .filter(|(_, _, ami)| *ami == plan.ami.id)
        .map(|(id, version, _)| (id.clone(), *version));
    let (launch_template_id, version) = match &unchanged {
        Some(same) => same.clone(),
        None => launch_template(clients, plan, rollout, &instance_sg, created).await?,
    };
    let Group {
        previous_version,
        created: group_created,
        auto_rollback,
    } = group(
        clients,
        plan,
        rollout,
        &launch_template_id,
        version,
        &target_group_arn,
        created,
    )
    .await?;
    if let Some(cpu) = &rollout.cpu_target {
        scaling_policy(clients, &plan.names.asg, *cpu.get_ref()).await?;
    }
    Ok(Stack {
        alb_dns,
        target_group_arn,
        launch_template_id,
        version,
        previous_version,
        group_created,
        auto_rollback,
        unchanged: unchanged.is_some(),
        created: Vec::new(),
    })
}

/// The group named `asg`, when it exists.
async fn describe_group(
    clients: &Clients,
    asg: &str,
) -> Result<Option<AutoScalingGroup>, CallError> {
    let request = clients
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(asg);
    let found = clients
        .call(|| request.clone().send())
        .or_fail(|| format!("describe Auto Scaling group {asg}"))
        .await?;
    Ok(found
        .auto_scaling_groups
        .unwrap_or_default()
        .into_iter()
        .next())
}

/// Moves a group on `$Latest` or `$Default` to the version number that names now: an instance
/// refresh can roll back only to a numbered version ("Undo changes with a manual or auto
/// rollback"), and the group's own spec stays the one to go back to.
async fn pin(clients: &Clients, asg: &str) -> Result<(), CallError> {
    let Some(spec) = describe_group(clients, asg)
        .await?
        .and_then(|g| g.launch_template)
    else {
        return Ok(());
    };
    let version = spec.version().unwrap_or("$Default");
    let Some(id) = spec.launch_template_id() else {
        return Ok(());
    };
    if version.parse::<i64>().is_ok() {
        return Ok(());
    }
    let (number, _) = pinned_version(clients, id, version).await?;
    let request = clients
        .autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(asg)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(id)
                .version(number.to_string())
                .build(),
        );
    clients
        .call(|| request.clone().send())
        .or_fail(|| format!("pin {asg} from {version} to launch template version {number}"))
        .await?;
    crate::output::note(&format!(
        "{asg} used launch template {id} version {version}; pinned it to version {number} so \
         the refresh can roll back"
    ));
    Ok(())
}

/// The launch template id, version number and AMI the group runs now, when it exists and names a
/// numbered version.
async fn current_version(
    clients: &Clients,
    asg: &str,
) -> Result<Option<(String, i64, String)>, CallError> {
    let Some(spec) = describe_group(clients, asg)
        .await?
        .and_then(|g| g.launch_template)
    else {
        return Ok(None);
    };
    let (Some(id), Some(version)) = (
        spec.launch_template_id(),
        spec.version().and_then(|v| v.parse::<i64>().ok()),
    ) else {
        return Ok(None);
    };
    let ami = template_version(clients, id, &version.to_string())
        .await?
        .and_then(|v| v.launch_template_data)
        .and_then(|d| d.image_id);
    Ok(ami.map(|ami| (id.to_owned(), version, ami)))
}

enum Source<'a> {
    Cidr(&'a str),
    Group(&'a str),
}

/// A security group opening `port` to `source` only.
async fn security_group(
    clients: &Clients,
    plan: &Plan,
    name: &str,
    description: &str,
    port: u16,
    source: Source<'_>,
    created: &mut Vec<Created>,
) -> Result<String, CallError> {
    let describe = clients
        .ec2
        .describe_security_groups()
        .filters(filter("vpc-id", &plan.vpc_id))
        .filters(filter("group-name", name));
    let found = clients
        .call(|| describe.clone().send())
        .or_fail(|| format!("describe security group {name}"))
        .await?;
    let id = match found.security_groups().first().and_then(|g| g.group_id()) {
        Some(id) => id.to_owned(),
        None => {
            let create = clients
                .ec2
                .create_security_group()
                .group_name(name)
                .description(description)
                .vpc_id(&plan.vpc_id)
                .tag_specifications(tags::at_creation(
                    ResourceType::SecurityGroup,
                    name,
                    &[tags::tag(tags::ROLLOUT, &plan.rollout)],
                ));
            let out = clients
                .call(|| create.clone().send())
                .or_fail(|| format!("create security group {name}"))
                .await?;
            let id = out.group_id().unwrap_or_default().to_owned();
            created.push(Created::SecurityGroup(id.clone()));
            id
        }
    };
    let mut permission = IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(port.into())
        .to_port(port.into());
    permission = match source {
        Source::Cidr(cidr) => permission.ip_ranges(IpRange::builder().cidr_ip(cidr).build()),
        Source::Group(group) => {
            permission.user_id_group_pairs(UserIdGroupPair::builder().group_id(group).build())
        }
    };
    let authorize = clients
        .ec2
        .authorize_security_group_ingress()
        .group_id(&id)
        .ip_permissions(permission.build());
    // A group created a moment ago may be unknown to EC2 for a few seconds.
    let opened = clients
        .call(|| authorize.clone().send())
        .settle(&aws::NEW_SECURITY_GROUP)
        .answer()
        .await;
    match opened {
        Ok(_) => Ok(id),
        Err(e) if e.is(&["InvalidPermission.Duplicate"]) => Ok(id),
        Err(e) => Err(e.or_fail(|| format!("open port {port} in security group {name}"))),
    }
}

fn elb_tag(plan: &Plan) -> aws_sdk_elasticloadbalancingv2::types::Tag {
    aws_sdk_elasticloadbalancingv2::types::Tag::builder()
        .key(tags::ROLLOUT)
        .value(&plan.rollout)
        .build()
}

/// The target group checks the image's health path on its port.
async fn target_group(
    clients: &Clients,
    plan: &Plan,
    created: &mut Vec<Created>,
) -> Result<String, CallError> {
    let name = &plan.names.target_group;
    let found = clients
        .call(|| clients.elb.describe_target_groups().names(name).send())
        .or_none(&["TargetGroupNotFound"], || {
            format!("describe target group {name}")
        })
        .await?
        .and_then(|out| out.target_groups?.into_iter().next()?.target_group_arn);
    let health = &plan.health;
    let matcher = Matcher::builder()
        .http_code(health.expect_status.to_string())
        .build();
    if let Some(arn) = found {
        let modify = clients
            .elb
            .modify_target_group()
            .target_group_arn(&arn)
            .health_check_path(health.path.get_ref())
            .health_check_port(health.port.to_string())
            .matcher(matcher);
        clients
            .call(|| modify.clone().send())
            .or_fail(|| format!("update the health check of target group {name}"))
            .await?;
        return Ok(arn);
    }
    let create = clients
        .elb
        .create_target_group()
        .name(name)
        .protocol(ProtocolEnum::Http)
        .port(health.port.into())
        .vpc_id(&plan.vpc_id)
        .target_type(TargetTypeEnum::Instance)
        .health_check_path(health.path.get_ref())
        .health_check_interval_seconds(HEALTH_CHECK_INTERVAL_SECONDS)
        .health_check_timeout_seconds(HEALTH_CHECK_TIMEOUT_SECONDS)
        .healthy_threshold_count(HEALTHY_THRESHOLD)
        .unhealthy_threshold_count(UNHEALTHY_THRESHOLD)
        .matcher(matcher)
        .tags(elb_tag(plan));
    let out = clients
        .call(|| create.clone().send())
        .or_fail(|| format!("create target group {name}"))
        .await?;
    let arn = out
        .target_groups()
        .first()
        .and_then(|g| g.target_group_arn())
        .unwrap_or_default()
        .to_owned();
    created.push(Created::TargetGroup(arn.clone()));
    let delay = clients
        .elb
        .modify_target_group_attributes()
        .target_group_arn(&arn)
        .attributes(
            TargetGroupAttribute::builder()
                .key("deregistration_delay.timeout_seconds")
                .value(DEREGISTRATION_DELAY_SECONDS)
                .build(),
        );
    clients
        .call(|| delay.clone().send())
        .or_fail(|| format!("set the deregistration delay of {name}"))
        .await?;
    Ok(arn)
}

/// An internet-facing Application Load Balancer in the public subnets. Returns its ARN and DNS name.
async fn load_balancer(
    clients: &Clients,
    plan: &Plan,
    security_group: &str,
    created: &mut Vec<Created>,
) -> Result<(String, String), CallError> {
    let name = &plan.names.alb;
    let found = clients
        .call(|| clients.elb.describe_load_balancers().names(name).send())
        .or_none(&["LoadBalancerNotFound"], || {
            format!("describe load balancer {name}")
        })
        .await?
        .and_then(|out| out.load_balancers?.into_iter().next());
    let lb = match found {
        Some(lb) => lb,
        None => {
            let create = clients
                .elb
                .create_load_balancer()
                .name(name)
                .r#type(LoadBalancerTypeEnum::Application)
                .scheme(LoadBalancerSchemeEnum::InternetFacing)
                .set_subnets(Some(
                    plan.alb_subnets.iter().map(|s| s.id.clone()).collect(),
                ))
                .security_groups(security_group)
                .tags(elb_tag(plan));
            let action = || format!("create load balancer {name}");
            let out = clients
                .call(|| create.clone().send())
                .or_fail(action)
                .await?;
            let lb = out.load_balancers().first().cloned().ok_or_else(|| {
                clients.failed(action(), "AWS answered without the load balancer")
            })?;
            created.push(Created::LoadBalancer(
                lb.load_balancer_arn().unwrap_or_default().to_owned(),
            ));
            lb
        }
    };
    Ok((
        lb.load_balancer_arn().unwrap_or_default().to_owned(),
        lb.dns_name().unwrap_or_default().to_owned(),
    ))
}

/// An HTTP listener on `port` forwarding to the target group (it goes with the load balancer).
async fn listener(
    clients: &Clients,
    alb_arn: &str,
    port: u16,
    target_group_arn: &str,
) -> Result<(), CallError> {
    let found = clients
        .call(|| {
            clients
                .elb
                .describe_listeners()
                .load_balancer_arn(alb_arn)
                .send()
        })
        .or_fail(|| "describe listeners".into())
        .await?;
    if found
        .listeners()
        .iter()
        .any(|l| l.port() == Some(port.into()))
    {
        return Ok(());
    }
    let create = clients
        .elb
        .create_listener()
        .load_balancer_arn(alb_arn)
        .protocol(ProtocolEnum::Http)
        .port(port.into())
        .default_actions(
            Action::builder()
                .r#type(ActionTypeEnum::Forward)
                .target_group_arn(target_group_arn)
                .build(),
        );
    clients
        .call(|| create.clone().send())
        .or_fail(|| format!("create the HTTP:{port} listener"))
        .await?;
    Ok(())
}

/// The launch template, created or given a new version, with the AMI, IMDSv2 required and no user
/// data (the AMI holds the server). Returns its id and the new version number.
async fn launch_template(
    clients: &Clients,
    plan: &Plan,
    rollout: &Rollout,
    security_group: &str,
    created: &mut Vec<Created>,
) -> Result<(String, i64), CallError> {
    let name = &plan.names.launch_template;
    let mut instance_tags = LaunchTemplateTagSpecificationRequest::builder()
        .resource_type(ResourceType::Instance)
        .tags(tags::tag(tags::ROLLOUT, &plan.rollout));
    for (k, v) in &rollout.tags {
        instance_tags = instance_tags.tags(tags::tag(k, v));
    }
    let mut data = RequestLaunchTemplateData::builder()
        .image_id(&plan.ami.id)
        .instance_type(InstanceType::from(rollout.instance_type.as_str()))
        .security_group_ids(security_group)
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_tokens(LaunchTemplateHttpTokensState::Required)
                .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                .build(),
        )
        .tag_specifications(instance_tags.build());
    if let Some(profile) = &plan.instance_profile {
        data = data.iam_instance_profile(
            LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                .name(profile)
                .build(),
        );
    }
    let data = data.build();
    let description = format!("bake {}: {} ({})", plan.rollout, plan.ami.id, plan.ami.name);
    let describe = clients
        .ec2
        .describe_launch_templates()
        .launch_template_names(name);
    let found = clients
        .call(|| describe.clone().send())
        .or_none(
            &["InvalidLaunchTemplateName*", "InvalidLaunchTemplateId*"],
            || format!("describe launch template {name}"),
        )
        .await?
        .and_then(|out| out.launch_templates?.into_iter().next()?.launch_template_id);
    if let Some(id) = found {
        let add = clients
            .ec2
            .create_launch_template_version()
            .launch_template_id(&id)
            .version_description(description)
            .launch_template_data(data);
        let out = clients
            .call(|| add.clone().send())
            .or_fail(|| format!("add a version to launch template {name}"))
            .await?;
        let version = out
            .launch_template_version()
            .and_then(|v| v.version_number())
            .unwrap_or_default();
        return Ok((id, version));
    }
    let create = clients
        .ec2
        .create_launch_template()
        .launch_template_name(name)
        .version_description(description)
        .launch_template_data(data)
        .tag_specifications(tags::at_creation(
            ResourceType::LaunchTemplate,
            name,
            &[tags::tag(tags::ROLLOUT, &plan.rollout)],
        ));
    let out = clients
        .call(|| create.clone().send())
        .or_fail(|| format!("create launch template {name}"))
        .await?;
    let template = out.launch_template();
    let id = template
        .and_then(|t| t.launch_template_id())
        .unwrap_or_default()
        .to_owned();
    created.push(Created::LaunchTemplate(id.clone()));
    let version = template
        .and_then(|t| t.latest_version_number())
        .unwrap_or(1);
    Ok((id, version))
}

/// The group as [`group`] found or made it.
struct Group {
    /// The numbered version it ran before (None when created now).
    previous_version: Option<String>,
    created: bool,
    auto_rollback: bool,
}

/// The Auto Scaling group, created on the new version, or updated (sizes, subnets, target group)
/// keeping its current version (pinned to a number by [`pin`]): the refresh moves it.
async fn group(
    clients: &Clients,
    plan: &Plan,
    rollout: &Rollout,
    template_id: &str,
    version: i64,
    target_group_arn: &str,
    created: &mut Vec<Created>,
) -> Result<Group, CallError> {
    let name = &plan.names.asg;
    let found = describe_group(clients, name).await?;
    let capacity = rollout.capacity.get_ref();
    let subnets = plan
        .instance_subnets
        .iter()
        .map(|s| s.id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let grace = i32::try_from(rollout.refresh.get_ref().warmup.0.as_secs()).unwrap_or(i32::MAX);
    if let Some(existing) = &found {
        let current = existing.launch_template();
        let pinned = match current.and_then(|t| t.launch_template_id()) {
            Some(id) => Some(
                pinned_version(
                    clients,
                    id,
                    current.and_then(|t| t.version()).unwrap_or("$Default"),
                )
                .await?,
            ),
            None => None,
        };
        let update = clients
            .autoscaling
            .update_auto_scaling_group()
            .auto_scaling_group_name(name)
            .min_size(capacity.min as i32)
            .max_size(capacity.max as i32)
            .vpc_zone_identifier(&subnets)
            .health_check_type("ELB")
            .health_check_grace_period(grace);
        clients
            .call(|| update.clone().send())
            .or_fail(|| format!("update Auto Scaling group {name}"))
            .await?;
        if !existing
            .target_group_arns()
            .iter()
            .any(|a| a == target_group_arn)
        {
            let attach = clients
                .autoscaling
                .attach_load_balancer_target_groups()
                .auto_scaling_group_name(name)
                .target_group_arns(target_group_arn);
            clients
                .call(|| attach.clone().send())
                .or_fail(|| format!("attach the target group to {name}"))
                .await?;
        }
        return Ok(Group {
            auto_rollback: pinned
                .as_ref()
                .is_some_and(|(_, image)| !image.starts_with("resolve:ssm:")),
            previous_version: pinned.map(|(number, _)| number.to_string()),
            created: false,
        });
    }
    let create = clients
        .autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(
            LaunchTemplateSpecification::builder()
                .launch_template_id(template_id)
                .version(version.to_string())
                .build(),
        )
        .min_size(capacity.min as i32)
        .max_size(capacity.max as i32)
        .desired_capacity(capacity.desired as i32)
        .vpc_zone_identifier(&subnets)
        .target_group_arns(target_group_arn)
        .health_check_type("ELB")
        .health_check_grace_period(grace)
        .tags(
            aws_sdk_autoscaling::types::Tag::builder()
                .key(tags::ROLLOUT)
                .value(&plan.rollout)
                .propagate_at_launch(false)
                .resource_id(name)
                .resource_type("auto-scaling-group")
                .build(),
        );
    clients
        .call(|| create.clone().send())
        .or_fail(|| format!("create Auto Scaling group {name}"))
        .await?;
    created.push(Created::AutoScalingGroup(name.clone()));
    Ok(Group {
        previous_version: None,
        created: true,
        auto_rollback: true,
    })
}

/// Version `spec` (a number, `$Latest` or `$Default`) of a launch template, when AWS lists it.
async fn template_version(
    clients: &Clients,
    template_id: &str,
    spec: &str,
) -> Result<Option<LaunchTemplateVersion>, CallError> {
    let request = clients
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(template_id)
        .versions(spec);
    let out = clients
        .call(|| request.clone().send())
        .or_fail(|| format!("describe version {spec} of launch template {template_id}"))
        .await?;
    Ok(out
        .launch_template_versions
        .unwrap_or_default()
        .into_iter()
        .next())
}

/// The version number `spec` (a number, `$Latest` or `$Default`) of a launch template names now,
/// and that version's image (an AMI id, or a `resolve:ssm:` parameter).
async fn pinned_version(
    clients: &Clients,
    template_id: &str,
    spec: &str,
) -> Result<(i64, String), CallError> {
    let found = template_version(clients, template_id, spec)
        .await?
        .ok_or_else(|| {
            clients.failed(
                format!("describe version {spec} of launch template {template_id}"),
                "AWS answered without the version",
            )
        })?;
    Ok((
        found.version_number().unwrap_or_default(),
        found
            .launch_template_data()
            .and_then(|d| d.image_id())
            .unwrap_or_default()
            .to_owned(),
    ))
}

/// Target tracking on the group's average CPU.
async fn scaling_policy(clients: &Clients, group: &str, cpu: f64) -> Result<(), CallError> {
    let request = clients
        .autoscaling
        .put_scaling_policy()
        .auto_scaling_group_name(group)
        .policy_name(CPU_POLICY)
        .policy_type("TargetTrackingScaling")
        .target_tracking_configuration(
            TargetTrackingConfiguration::builder()
                .predefined_metric_specification(
                    PredefinedMetricSpecification::builder()
                        .predefined_metric_type(MetricType::AsgAverageCpuUtilization)
                        .build(),
                )
                .target_value(cpu)
                .build(),
        );
    clients
        .call(|| request.clone().send())
        .or_fail(|| format!("put the CPU target policy on {group}"))
        .await?;
    Ok(())
}

/// Removes stack resources this run created, newest first, waiting where the next one depends on
/// it (the group's instances hold the security group; the load balancer holds the target group and
/// its security group for a while after DeleteLoadBalancer: ResourceInUse and DependencyViolation
/// are ridden out within [`aws::LOAD_BALANCER_RELEASE`]). It never stops at the first error: every
/// resource is tried, and the error names each one left, with its id and AWS's answer.
pub async fn remove(clients: &Clients, created: &[Created]) -> Result<(), CallError> {
    let mut left = Vec::new();
    for resource in created.iter().rev() {
        if let Err(message) = remove_one(clients, resource).await {
            left.push(format!("{resource} ({message})"));
        }
    }
    if left.is_empty() {
        return Ok(());
    }
    Err(clients.failed(
        "remove the stack this run created",
        format!(
            "left behind (remove them by hand or re-run): {}",
            left.join("; ")
        ),
    ))
}

impl std::fmt::Display for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Created::SecurityGroup(id) => write!(f, "security group {id}"),
            Created::TargetGroup(arn) => write!(f, "target group {arn}"),
            Created::LoadBalancer(arn) => write!(f, "load balancer {arn}"),
            Created::LaunchTemplate(id) => write!(f, "launch template {id}"),
            Created::AutoScalingGroup(name) => write!(f, "Auto Scaling group {name}"),
        }
    }
}

/// Removes one resource; gone already counts as removed. Returns AWS's answer when it stays.
async fn remove_one(clients: &Clients, resource: &Created) -> Result<(), String> {
    match resource {
        Created::AutoScalingGroup(name) => {
            let delete = clients
                .autoscaling
                .delete_auto_scaling_group()
                .auto_scaling_group_name(name)
                .force_delete(true);
            let gone = |e: &Failed<_>| e.describe().contains("not found");
            if delete_released(clients, || delete.clone().send(), gone).await? {
                group_gone(clients, name).await.map_err(|e| e.message)?;
            }
        }
        Created::LaunchTemplate(id) => {
            let delete = clients.ec2.delete_launch_template().launch_template_id(id);
            let gone = |e: &Failed<_>| e.is(&["InvalidLaunchTemplateId*"]);
            delete_released(clients, || delete.clone().send(), gone).await?;
        }
        Created::LoadBalancer(arn) => {
            let delete = clients.elb.delete_load_balancer().load_balancer_arn(arn);
            let gone = |e: &Failed<_>| e.is(&["LoadBalancerNotFound"]);
            delete_released(clients, || delete.clone().send(), gone).await?;
        }
        Created::TargetGroup(arn) => {
            let delete = clients.elb.delete_target_group().target_group_arn(arn);
            let gone = |e: &Failed<_>| e.is(&["TargetGroupNotFound"]);
            delete_released(clients, || delete.clone().send(), gone).await?;
        }
        Created::SecurityGroup(id) => {
            let delete = clients.ec2.delete_security_group().group_id(id);
            let gone = |e: &Failed<_>| e.is(&["InvalidGroup.NotFound"]);
            delete_released(clients, || delete.clone().send(), gone).await?;
        }
    }
    Ok(())
}

/// One delete, asked again while the load balancer releases what it held
/// ([`aws::LOAD_BALANCER_RELEASE`]). True when it was deleted now, false when `gone` says it was
/// gone already; AWS's answer when it stays.
async fn delete_released<T, E, Fut>(
    clients: &Clients,
    send: impl FnMut() -> Fut,
    gone: impl Fn(&Failed<E>) -> bool,
) -> Result<bool, String>
where
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let deleted = clients.call(send).settle(&aws::LOAD_BALANCER_RELEASE);
    match deleted.answer().await {
        Ok(_) => Ok(true),
        Err(e) if gone(&e) => Ok(false),
        Err(e) => Err(e.describe()),
    }
}

/// Waits until a deleted group is gone (its instances terminated).
pub async fn group_gone(clients: &Clients, asg: &str) -> Result<(), CallError> {
    let result = poll::until(
        &format!("waiting for {asg} to be deleted"),
        poll::deadline(GROUP_GONE_TIMEOUT),
        GROUP_GONE_SCHEDULE,
        |_| {},
        || async {
            let describe = || {
                clients
                    .autoscaling
                    .describe_auto_scaling_groups()
                    .auto_scaling_group_names(asg)
                    .send()
            };
            match clients.call(describe).answer().await {
                Ok(out) if out.auto_scaling_groups().is_empty() => Check::Ready(()),
                Ok(_) => Check::Pending("deleting".into()),
                Err(e) if e.transient() => Check::Pending(e.describe()),
                Err(e) => Check::Failed(e.describe()),
            }
        },
    )
    .await;
    result.map_err(|e| match e {
        PollError::Failed(message) => clients.failed(format!("delete {asg}"), message),
        PollError::TimedOut { last } => clients.failed(
            format!("delete {asg}"),
            format!("still {last} after {GROUP_GONE_TIMEOUT:?}"),
        ),
    })
}
