//! The stack: security groups, target group, load balancer and listener, launch template and its
//! new version, the Auto Scaling group (with its metrics collected), its scaling policy and the
//! CloudWatch alarms; found by name, created when missing. What a run creates goes into the
//! janitor's ledger and carries the run's tags until the stack is whole, so a failed or
//! interrupted run removes it and `bake gc` finds what a killed one left.

use std::collections::BTreeMap;

use aws_sdk_autoscaling::types::{
    AutoScalingGroup, LaunchTemplateSpecification, MetricType, PredefinedMetricSpecification,
    TargetTrackingConfiguration,
};
use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, MetricAlarm, StateValue, Statistic,
};
use aws_sdk_ec2::types::{
    InstanceType, IpPermission, IpRange, LaunchTemplate, LaunchTemplateHttpTokensState,
    LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateTagSpecificationRequest, LaunchTemplateVersion, RequestLaunchTemplateData,
    ResourceType, SecurityGroup, UserIdGroupPair,
};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, LoadBalancer, LoadBalancerSchemeEnum, LoadBalancerTypeEnum, Matcher,
    ProtocolEnum, TargetGroup, TargetGroupAttribute, TargetTypeEnum,
};

use super::preflight::Plan;
use crate::aws::{self, CallError, Clients};
use crate::config::Rollout;
use crate::janitor::{Janitor, Resource};
use crate::limits;
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
pub const CPU_POLICY: &str = "bake-cpu-target";
/// The group's metrics are collected every minute, the one granularity Auto Scaling offers.
const METRICS_GRANULARITY: &str = "1Minute";
/// The group metrics bake turns on: the sizes and instance counts the console's "Enabled
/// metrics" graphs show ("Amazon CloudWatch metrics for Amazon EC2 Auto Scaling"), named rather
/// than left to "no list means all" so a later check can tell each one is on.
pub const GROUP_METRICS: [&str; 8] = [
    "GroupMinSize",
    "GroupMaxSize",
    "GroupDesiredCapacity",
    "GroupInServiceInstances",
    "GroupPendingInstances",
    "GroupStandbyInstances",
    "GroupTerminatingInstances",
    "GroupTotalInstances",
];

/// Whether every metric of [`GROUP_METRICS`] is collected for `group`.
pub fn metrics_collected(group: &AutoScalingGroup) -> bool {
    GROUP_METRICS.iter().all(|m| {
        group
            .enabled_metrics()
            .iter()
            .any(|e| e.metric() == Some(*m))
    })
}

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
}

/// What building the stack needs besides the plan: the run's ledger, and the resources found
/// carrying another (dead) run's marks, adopted by this one.
struct Build<'a> {
    clients: &'a Clients,
    plan: &'a Plan,
    janitor: &'a Janitor,
    adopted: Vec<Resource>,
}

impl Build<'_> {
    /// Records a resource this run just created.
    fn created(&self, resource: Resource) {
        self.janitor.record(resource);
    }

    /// Notes a found resource whose tags name another run: it is this run's stack now.
    fn found(&mut self, resource: Resource, tags: &BTreeMap<String, String>) {
        if tags
            .get(tags::RUN_ID)
            .is_some_and(|run| run != self.janitor.run_id())
        {
            self.adopted.push(resource);
        }
    }

    /// The tags of a resource this run creates: its rollout, the run and when.
    fn tags(&self) -> Vec<(&'static str, String)> {
        let mut all = vec![(tags::ROLLOUT, self.plan.rollout.clone())];
        all.extend(tags::of_stack(self.janitor.run_id()));
        all
    }

    fn ec2_tags(&self) -> Vec<aws_sdk_ec2::types::Tag> {
        self.tags().iter().map(|(k, v)| tags::tag(k, v)).collect()
    }

    fn elb_tags(&self) -> Vec<aws_sdk_elasticloadbalancingv2::types::Tag> {
        self.tags()
            .into_iter()
            .map(|(k, v)| {
                aws_sdk_elasticloadbalancingv2::types::Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
            })
            .collect()
    }
}

/// Finds or creates every resource of the stack and adds a launch template version with the AMI.
/// What it creates is recorded in `janitor` the moment it exists; once the stack is whole the
/// run's tags come off it (and off what it adopted from a dead run), so `bake gc` leaves it.
/// When it fails, what this run created is removed before the error is returned; when it is
/// cancelled (a signal), the caller's `janitor.clean()` removes it, finding by tag what a
/// cut-short request created.
pub async fn ensure(
    clients: &Clients,
    plan: &Plan,
    rollout: &Rollout,
    janitor: &Janitor,
) -> Result<Stack, CallError> {
    janitor.building_stack();
    let mut b = Build {
        clients,
        plan,
        janitor,
        adopted: Vec::new(),
    };
    let result = match build(&mut b, rollout).await {
        Ok(stack) => {
            let mut marked = janitor.recorded();
            marked.extend(b.adopted);
            crate::janitor::stack::unmark(clients, &marked)
                .await
                .map(|()| stack)
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        // Half a stack is worth nothing: remove what this run made before reporting.
        if let Err(cleanup) = janitor.clean_recorded().await {
            crate::output::note(&format!("error: {cleanup}"));
        }
    }
    result
}

async fn build(b: &mut Build<'_>, rollout: &Rollout) -> Result<Stack, CallError> {
    let (clients, plan) = (b.clients, b.plan);
    let alb_sg = security_group(
        b,
        &plan.names.alb_security_group,
        &format!("bake {}: HTTP to the load balancer", plan.rollout),
        rollout.alb_port,
        Source::Cidr(rollout.alb_allow_cidr.get_ref()),
    )
    .await?;
    let instance_sg = security_group(
        b,
        &plan.names.instance_security_group,
        &format!(
            "bake {}: the health port from the load balancer only",
            plan.rollout
        ),
        plan.health.port,
        Source::Group(&alb_sg),
    )
    .await?;
    let target_group_arn = target_group(b).await?;
    let (alb_arn, alb_dns) = load_balancer(b, &alb_sg).await?;
    b.elb_adopt(&alb_arn, &target_group_arn).await?;
    listener(
        clients,
        &plan.names.alb,
        &alb_arn,
        rollout.alb_port,
        &target_group_arn,
    )
    .await?;
    // Before the new version exists: `$Latest` would name it.
    pin(clients, &plan.names.asg).await?;
    let current = current_version(clients, &plan.names.asg).await?;
    let unchanged = current
        .as_ref()
        .filter(|(_, _, ami)| *ami == plan.ami.id)
        .map(|(id, version, _)| (id.clone(), *version));
    let (launch_template_id, version) = match &unchanged {
        Some(same) => same.clone(),
        None => launch_template(b, rollout, &instance_sg).await?,
    };
    let Group {
        previous_version,
        created: group_created,
        auto_rollback,
    } = group(b, rollout, &launch_template_id, version, &target_group_arn).await?;
    if let Some(cpu) = &rollout.cpu_target {
        scaling_policy(clients, &plan.names.asg, *cpu.get_ref()).await?;
    }
    alarms(b, rollout, &target_group_arn, &alb_arn).await?;
    Ok(Stack {
        alb_dns,
        target_group_arn,
        launch_template_id,
        version,
        previous_version,
        group_created,
        auto_rollback,
        unchanged: unchanged.is_some(),
    })
}

/// The group named `asg`, when it exists.
pub async fn describe_group(
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

/// The launch template the group `asg` names, when the group exists and names one.
async fn group_template(
    clients: &Clients,
    asg: &str,
) -> Result<Option<LaunchTemplateSpecification>, CallError> {
    Ok(describe_group(clients, asg)
        .await?
        .and_then(|g| g.launch_template))
}

/// Moves a group on `$Latest` or `$Default` to the version number that names now: an instance
/// refresh can roll back only to a numbered version ("Undo changes with a manual or auto
/// rollback"), and the group's own spec stays the one to go back to.
async fn pin(clients: &Clients, asg: &str) -> Result<(), CallError> {
    let Some(spec) = group_template(clients, asg).await? else {
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
    let Some(spec) = group_template(clients, asg).await? else {
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

/// The security group of this name in the VPC, if there is one.
pub(super) async fn find_security_group(
    clients: &Clients,
    vpc_id: &str,
    name: &str,
) -> Result<Option<SecurityGroup>, CallError> {
    let describe = clients
        .ec2
        .describe_security_groups()
        .filters(filter("vpc-id", vpc_id))
        .filters(filter("group-name", name));
    let found = clients
        .call(|| describe.clone().send())
        .or_fail(|| format!("describe security group {name}"))
        .await?;
    Ok(found.security_groups.unwrap_or_default().into_iter().next())
}

/// The target group of this name, if there is one.
pub(super) async fn find_target_group(
    clients: &Clients,
    name: &str,
) -> Result<Option<TargetGroup>, CallError> {
    Ok(clients
        .call(|| clients.elb.describe_target_groups().names(name).send())
        .or_none(&["TargetGroupNotFound"], || {
            format!("describe target group {name}")
        })
        .await?
        .and_then(|out| out.target_groups?.into_iter().next()))
}

/// The load balancer of this name, if there is one.
pub(super) async fn find_load_balancer(
    clients: &Clients,
    name: &str,
) -> Result<Option<LoadBalancer>, CallError> {
    Ok(clients
        .call(|| clients.elb.describe_load_balancers().names(name).send())
        .or_none(&["LoadBalancerNotFound"], || {
            format!("describe load balancer {name}")
        })
        .await?
        .and_then(|out| out.load_balancers?.into_iter().next()))
}

/// A security group opening `port` to `source` only.
async fn security_group(
    b: &mut Build<'_>,
    name: &str,
    description: &str,
    port: u16,
    source: Source<'_>,
) -> Result<String, CallError> {
    let (clients, plan) = (b.clients, b.plan);
    let found = find_security_group(clients, &plan.vpc_id, name).await?;
    let existing = found.as_ref();
    let id = match existing.and_then(|g| g.group_id()) {
        Some(id) => {
            let tags = existing.map(|g| ec2_tag_map(g.tags())).unwrap_or_default();
            b.found(Resource::SecurityGroup(id.to_owned()), &tags);
            id.to_owned()
        }
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
                    &b.ec2_tags(),
                ));
            let out = clients
                .call(|| create.clone().send())
                .or_fail(|| format!("create security group {name}"))
                .await?;
            let id = out.group_id().unwrap_or_default().to_owned();
            b.created(Resource::SecurityGroup(id.clone()));
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

/// EC2 tags as a map.
fn ec2_tag_map(tags: &[aws_sdk_ec2::types::Tag]) -> BTreeMap<String, String> {
    tags::map(tags.iter().map(|t| (t.key(), t.value())))
}

impl Build<'_> {
    /// Reads the tags of the load balancer and target group this run did not create (one
    /// DescribeTags), to adopt them when a dead run's tags are still on them.
    async fn elb_adopt(&mut self, alb_arn: &str, target_group_arn: &str) -> Result<(), CallError> {
        let recorded = self.janitor.recorded();
        let found: Vec<Resource> = [
            Resource::LoadBalancer(alb_arn.to_owned()),
            Resource::TargetGroup(target_group_arn.to_owned()),
        ]
        .into_iter()
        .filter(|r| !recorded.contains(r))
        .collect();
        if found.is_empty() {
            return Ok(());
        }
        let arns: Vec<String> = found
            .iter()
            .map(|r| match r {
                Resource::LoadBalancer(a) | Resource::TargetGroup(a) => a.clone(),
                _ => String::new(),
            })
            .collect();
        let clients = self.clients;
        let request = clients
            .elb
            .describe_tags()
            .set_resource_arns(Some(arns.clone()));
        let out = clients
            .call(|| request.clone().send())
            .or_fail(|| format!("read the tags of {}", arns.join(", ")))
            .await?;
        for description in out.tag_descriptions() {
            let tags = tags::map(description.tags().iter().map(|t| (t.key(), t.value())));
            if let Some(resource) = found
                .iter()
                .zip(&arns)
                .find(|(_, arn)| Some(arn.as_str()) == description.resource_arn())
                .map(|(r, _)| r.clone())
            {
                self.found(resource, &tags);
            }
        }
        Ok(())
    }
}

/// The target group checks the image's health path on its port.
async fn target_group(b: &mut Build<'_>) -> Result<String, CallError> {
    let (clients, plan) = (b.clients, b.plan);
    let name = &plan.names.target_group;
    let found = find_target_group(clients, name)
        .await?
        .and_then(|group| group.target_group_arn);
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
        .set_tags(Some(b.elb_tags()));
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
    b.created(Resource::TargetGroup(arn.clone()));
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
    b: &mut Build<'_>,
    security_group: &str,
) -> Result<(String, String), CallError> {
    let (clients, plan) = (b.clients, b.plan);
    let name = &plan.names.alb;
    let lb = match find_load_balancer(clients, name).await? {
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
                .set_tags(Some(b.elb_tags()));
            let action = || format!("create load balancer {name}");
            let out = clients
                .call(|| create.clone().send())
                .or_fail(action)
                .await?;
            let lb = out.load_balancers().first().cloned().ok_or_else(|| {
                clients.failed(action(), "AWS answered without the load balancer")
            })?;
            b.created(Resource::LoadBalancer(
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

/// Whether the load balancer `alb` (ARN `alb_arn`) listens on `port`.
pub(super) async fn has_listener(
    clients: &Clients,
    alb: &str,
    alb_arn: &str,
    port: u16,
) -> Result<bool, CallError> {
    let found = clients
        .call(|| {
            clients
                .elb
                .describe_listeners()
                .load_balancer_arn(alb_arn)
                .send()
        })
        .or_fail(|| format!("describe the listeners of {alb}"))
        .await?;
    Ok(found
        .listeners()
        .iter()
        .any(|l| l.port() == Some(port.into())))
}

/// An HTTP listener on `port` forwarding to the target group (it goes with the load balancer
/// `alb`, ARN `alb_arn`).
async fn listener(
    clients: &Clients,
    alb: &str,
    alb_arn: &str,
    port: u16,
    target_group_arn: &str,
) -> Result<(), CallError> {
    if has_listener(clients, alb, alb_arn, port).await? {
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
        .or_fail(|| format!("create the HTTP:{port} listener on {alb}"))
        .await?;
    Ok(())
}

/// The launch template, created or given a new version, with the AMI, IMDSv2 required and no user
/// data (the AMI holds the server). Returns its id and the new version number.
async fn launch_template(
    b: &mut Build<'_>,
    rollout: &Rollout,
    security_group: &str,
) -> Result<(String, i64), CallError> {
    let (clients, plan) = (b.clients, b.plan);
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
    if let Some(template) = find_launch_template(clients, name).await? {
        let id = template.launch_template_id().unwrap_or_default().to_owned();
        b.found(
            Resource::LaunchTemplate(id.clone()),
            &ec2_tag_map(template.tags()),
        );
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
            &b.ec2_tags(),
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
    b.created(Resource::LaunchTemplate(id.clone()));
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
    b: &mut Build<'_>,
    rollout: &Rollout,
    template_id: &str,
    version: i64,
    target_group_arn: &str,
) -> Result<Group, CallError> {
    let (clients, plan) = (b.clients, b.plan);
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
        let tags = tags::map(existing.tags().iter().map(|t| (t.key(), t.value())));
        b.found(Resource::AutoScalingGroup(name.clone()), &tags);
        if !metrics_collected(existing) {
            collect_metrics(clients, name).await?;
        }
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
        .set_tags(Some(
            b.tags()
                .into_iter()
                .map(|(k, v)| {
                    aws_sdk_autoscaling::types::Tag::builder()
                        .key(k)
                        .value(v)
                        .propagate_at_launch(false)
                        .resource_id(name)
                        .resource_type("auto-scaling-group")
                        .build()
                })
                .collect(),
        ));
    clients
        .call(|| create.clone().send())
        .or_fail(|| format!("create Auto Scaling group {name}"))
        .await?;
    b.created(Resource::AutoScalingGroup(name.clone()));
    collect_metrics(clients, name).await?;
    Ok(Group {
        previous_version: None,
        created: true,
        auto_rollback: true,
    })
}

/// Version `spec` (a number, `$Latest` or `$Default`) of a launch template, when it exists.
pub async fn template_version(
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
        .or_none(
            &[
                "InvalidLaunchTemplateId.VersionNotFound",
                "InvalidLaunchTemplateId.NotFound",
            ],
            || format!("describe version {spec} of launch template {template_id}"),
        )
        .await?;
    Ok(out.and_then(|out| out.launch_template_versions?.into_iter().next()))
}

/// The launch template version `group` names (a number, `$Latest` or `$Default`), when it names
/// one and that version exists.
pub async fn group_version(
    clients: &Clients,
    group: &AutoScalingGroup,
) -> Result<Option<LaunchTemplateVersion>, CallError> {
    let spec = group.launch_template();
    match spec.and_then(|s| s.launch_template_id().zip(s.version())) {
        Some((id, version)) => template_version(clients, id, version).await,
        None => Ok(None),
    }
}

/// The ids of `group`'s instances.
pub fn instance_ids(group: &AutoScalingGroup) -> Vec<String> {
    group
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect()
}

/// The launch template of this name, if there is one.
pub(super) async fn find_launch_template(
    clients: &Clients,
    name: &str,
) -> Result<Option<LaunchTemplate>, CallError> {
    let describe = clients
        .ec2
        .describe_launch_templates()
        .launch_template_names(name);
    Ok(clients
        .call(|| describe.clone().send())
        .or_none(
            &["InvalidLaunchTemplateName*", "InvalidLaunchTemplateId*"],
            || format!("describe launch template {name}"),
        )
        .await?
        .and_then(|out| out.launch_templates?.into_iter().next()))
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

/// Turns on the group's metrics collection (every group metric, each minute; seed 003).
async fn collect_metrics(clients: &Clients, group: &str) -> Result<(), CallError> {
    let request = clients
        .autoscaling
        .enable_metrics_collection()
        .auto_scaling_group_name(group)
        .granularity(METRICS_GRANULARITY)
        .set_metrics(Some(GROUP_METRICS.map(str::to_owned).to_vec()));
    clients
        .call(|| request.clone().send())
        .or_fail(|| format!("enable metrics collection on {group}"))
        .await?;
    Ok(())
}

/// One alarm as the config asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmSpec {
    pub name: String,
    pub description: String,
    pub namespace: &'static str,
    pub metric: &'static str,
    pub statistic: Statistic,
    pub dimensions: Vec<(&'static str, String)>,
    /// Seconds.
    pub period: i32,
    pub periods: i32,
    pub threshold: f64,
}

impl AlarmSpec {
    /// What differs between this spec and the alarm AWS holds, in words; empty when nothing does.
    pub fn differences(&self, held: &MetricAlarm) -> Vec<String> {
        let mut diff = Vec::new();
        if held.threshold() != Some(self.threshold) {
            diff.push(format!(
                "threshold {} -> {}",
                held.threshold().unwrap_or_default(),
                self.threshold
            ));
        }
        if held.evaluation_periods() != Some(self.periods) {
            diff.push(format!(
                "periods {} -> {}",
                held.evaluation_periods().unwrap_or_default(),
                self.periods
            ));
        }
        if held.period() != Some(self.period) {
            diff.push(format!(
                "period {} s -> {} s",
                held.period().unwrap_or_default(),
                self.period
            ));
        }
        if held.metric_name() != Some(self.metric) || held.namespace() != Some(self.namespace) {
            diff.push(format!("metric -> {} {}", self.namespace, self.metric));
        }
        if held.statistic() != Some(&self.statistic) {
            diff.push(format!("statistic -> {}", self.statistic.as_str()));
        }
        let dims: BTreeMap<&str, &str> = held
            .dimensions()
            .iter()
            .filter_map(|d| Some((d.name()?, d.value()?)))
            .collect();
        let want: BTreeMap<&str, &str> = self
            .dimensions
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        if dims != want {
            diff.push("dimensions".to_owned());
        }
        diff
    }
}

/// The ARN's part CloudWatch names an ELB resource by: `app/NAME/ID` of a load balancer,
/// `targetgroup/NAME/ID` of a target group ("CloudWatch metrics for your Application Load
/// Balancer").
fn metric_dimension(arn: &str) -> String {
    match arn.split_once(":loadbalancer/") {
        Some((_, rest)) => rest.to_owned(),
        None => arn.rsplit(':').next().unwrap_or(arn).to_owned(),
    }
}

/// The stack's alarms as the config asks for them: the target group's 5xx count and response
/// time, and the CPU alarm when `rollout.cpu_alarm` is given.
pub fn alarm_specs(
    plan: &Plan,
    rollout: &Rollout,
    target_group_arn: &str,
    alb_arn: &str,
) -> Vec<AlarmSpec> {
    let alarms = rollout.alarms.get_ref();
    let targets = vec![
        ("LoadBalancer", metric_dimension(alb_arn)),
        ("TargetGroup", metric_dimension(target_group_arn)),
    ];
    let periods = i32::try_from(alarms.periods).unwrap_or(i32::MAX);
    let mut specs = vec![
        AlarmSpec {
            name: plan.names.alarm_errors.clone(),
            description: format!(
                "bake {}: {} or more 5xx answers from {}'s targets in a minute",
                plan.rollout, alarms.errors, plan.names.target_group
            ),
            namespace: "AWS/ApplicationELB",
            metric: "HTTPCode_Target_5XX_Count",
            statistic: Statistic::Sum,
            dimensions: targets.clone(),
            period: limits::ALARM_PERIOD_TARGETS,
            periods,
            threshold: f64::from(alarms.errors),
        },
        AlarmSpec {
            name: plan.names.alarm_latency.clone(),
            description: format!(
                "bake {}: {}'s targets answer in {} or more on average",
                plan.rollout,
                plan.names.target_group,
                humantime::format_duration(alarms.latency.0)
            ),
            namespace: "AWS/ApplicationELB",
            metric: "TargetResponseTime",
            statistic: Statistic::Average,
            dimensions: targets,
            period: limits::ALARM_PERIOD_TARGETS,
            periods,
            threshold: alarms.latency.0.as_secs_f64(),
        },
    ];
    if let Some(cpu) = &rollout.cpu_alarm {
        let cpu = cpu.get_ref();
        specs.push(AlarmSpec {
            name: plan.names.alarm_cpu.clone(),
            description: format!(
                "bake {}: {}'s average CPU at {}% or more",
                plan.rollout, plan.names.asg, cpu.threshold
            ),
            namespace: "AWS/EC2",
            metric: "CPUUtilization",
            statistic: Statistic::Average,
            dimensions: vec![("AutoScalingGroupName", plan.names.asg.clone())],
            period: limits::ALARM_PERIOD_CPU,
            periods: i32::try_from(cpu.periods).unwrap_or(i32::MAX),
            threshold: cpu.threshold,
        });
    }
    specs
}

/// The stack's alarms AWS holds now, by name (the CPU alarm's name included when the config has
/// none, to see one left from before).
pub async fn held_alarms(
    clients: &Clients,
    plan: &Plan,
) -> Result<BTreeMap<String, MetricAlarm>, CallError> {
    let names = [
        &plan.names.alarm_errors,
        &plan.names.alarm_latency,
        &plan.names.alarm_cpu,
    ];
    let request = clients
        .cloudwatch
        .describe_alarms()
        .set_alarm_names(Some(names.iter().map(|n| (*n).clone()).collect()));
    let out = clients
        .call(|| request.clone().send())
        .or_fail(|| format!("describe the CloudWatch alarms of {}", plan.names.asg))
        .await?;
    Ok(out
        .metric_alarms()
        .iter()
        .filter_map(|a| Some((a.alarm_name()?.to_owned(), a.clone())))
        .collect())
}

/// Creates or updates the alarms (PutMetricAlarm is an upsert; tags count only at creation),
/// leaves those that match the config alone, and deletes the CPU alarm the config dropped.
async fn alarms(
    b: &mut Build<'_>,
    rollout: &Rollout,
    target_group_arn: &str,
    alb_arn: &str,
) -> Result<(), CallError> {
    let (clients, plan) = (b.clients, b.plan);
    let held = held_alarms(clients, plan).await?;
    let specs = alarm_specs(plan, rollout, target_group_arn, alb_arn);
    for spec in &specs {
        let existing = held.get(&spec.name);
        if let Some(alarm) = existing {
            adopt_alarm(b, alarm).await?;
            if spec.differences(alarm).is_empty() {
                continue;
            }
        }
        let mut request = clients
            .cloudwatch
            .put_metric_alarm()
            .alarm_name(&spec.name)
            .alarm_description(&spec.description)
            .namespace(spec.namespace)
            .metric_name(spec.metric)
            .statistic(spec.statistic.clone())
            .period(spec.period)
            .evaluation_periods(spec.periods)
            .threshold(spec.threshold)
            .comparison_operator(ComparisonOperator::GreaterThanOrEqualToThreshold)
            // No 5xx answers, no requests: the load balancer publishes nothing, which is good.
            .treat_missing_data(if spec.namespace == "AWS/ApplicationELB" {
                "notBreaching"
            } else {
                "missing"
            });
        for (name, value) in &spec.dimensions {
            request = request.dimensions(Dimension::builder().name(*name).value(value).build());
        }
        if existing.is_none() {
            for (k, v) in b.tags() {
                request = request.tags(
                    aws_sdk_cloudwatch::types::Tag::builder()
                        .key(k)
                        .value(v)
                        .build(),
                );
            }
        }
        clients
            .call(|| request.clone().send())
            .or_fail(|| format!("put CloudWatch alarm {}", spec.name))
            .await?;
        if existing.is_none() {
            b.created(Resource::Alarm(spec.name.clone()));
        }
    }
    if rollout.cpu_alarm.is_none() && held.contains_key(&plan.names.alarm_cpu) {
        let name = &plan.names.alarm_cpu;
        let request = clients.cloudwatch.delete_alarms().alarm_names(name);
        clients
            .call(|| request.clone().send())
            .or_none(&["ResourceNotFound"], || {
                format!("delete CloudWatch alarm {name} (no rollout.cpu_alarm in the config)")
            })
            .await?;
    }
    Ok(())
}

/// Reads a found alarm's tags, to adopt it when a dead run's tags are still on it.
async fn adopt_alarm(b: &mut Build<'_>, alarm: &MetricAlarm) -> Result<(), CallError> {
    let (Some(name), Some(arn)) = (alarm.alarm_name(), alarm.alarm_arn()) else {
        return Ok(());
    };
    let tags = crate::janitor::stack::alarm_tags(b.clients, name, arn).await?;
    b.found(Resource::Alarm(name.to_owned()), &tags);
    Ok(())
}

/// The group's scaling state after a rollout.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scaling {
    pub min: i32,
    pub desired: i32,
    pub max: i32,
    /// Instances InService.
    pub in_service: usize,
    /// The target-tracking policy's average CPU target, when the group has it.
    pub cpu_target: Option<f64>,
    /// Whether the group's metrics are collected.
    pub metrics_enabled: bool,
    /// Each alarm's name and state (OK, ALARM, INSUFFICIENT_DATA).
    pub alarms: BTreeMap<String, String>,
}

impl std::fmt::Display for Scaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "min {} desired {} max {}, {} in service",
            self.min, self.desired, self.max, self.in_service
        )?;
        if let Some(cpu) = self.cpu_target {
            write!(f, ", CPU target {cpu}%")?;
        }
        if self.metrics_enabled {
            write!(f, ", group metrics on")?;
        }
        for (name, state) in &self.alarms {
            write!(f, "\nalarm {name}: {state}")?;
        }
        Ok(())
    }
}

/// The target value of the group's CPU scaling policy, when it has one.
pub(super) async fn cpu_target(clients: &Clients, asg: &str) -> Result<Option<f64>, CallError> {
    let request = clients
        .autoscaling
        .describe_policies()
        .auto_scaling_group_name(asg)
        .policy_names(CPU_POLICY);
    let policies = clients
        .call(|| request.clone().send())
        .or_fail(|| format!("describe the scaling policies of {asg}"))
        .await?;
    Ok(policies
        .scaling_policies()
        .iter()
        .find_map(|p| p.target_tracking_configuration()?.target_value()))
}

/// Reads the group's sizes, in-service count, CPU target and alarms' states.
pub async fn scaling(clients: &Clients, plan: &Plan) -> Result<Scaling, CallError> {
    let asg = &plan.names.asg;
    let group = describe_group(clients, asg)
        .await?
        .ok_or_else(|| clients.failed(format!("describe {asg}"), "the group is gone"))?;
    let cpu_target = cpu_target(clients, asg).await?;
    let alarms = held_alarms(clients, plan)
        .await?
        .into_iter()
        .map(|(name, alarm)| {
            let state = alarm
                .state_value()
                .map_or("unknown", StateValue::as_str)
                .to_owned();
            (name, state)
        })
        .collect();
    Ok(Scaling {
        min: group.min_size().unwrap_or_default(),
        desired: group.desired_capacity().unwrap_or_default(),
        max: group.max_size().unwrap_or_default(),
        in_service: group
            .instances()
            .iter()
            .filter(|i| i.lifecycle_state().map(|s| s.as_str()) == Some("InService"))
            .count(),
        cpu_target,
        metrics_enabled: metrics_collected(&group),
        alarms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudwatch_names_elb_resources_by_the_arns_tail() {
        assert_eq!(
            metric_dimension(
                "arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:loadbalancer/app/Web-ALB/50dc6c495c0c9188"
            ),
            "app/Web-ALB/50dc6c495c0c9188"
        );
        assert_eq!(
            metric_dimension(
                "arn:aws:elasticloadbalancing:ap-northeast-2:123456789012:targetgroup/Web-TG/73e2d6bc24d8a067"
            ),
            "targetgroup/Web-TG/73e2d6bc24d8a067"
        );
    }

    #[test]
    fn an_alarm_as_configured_has_no_differences_and_a_new_threshold_has_one() {
        let spec = AlarmSpec {
            name: "Web-ASG-CPU-high".into(),
            description: String::new(),
            namespace: "AWS/EC2",
            metric: "CPUUtilization",
            statistic: Statistic::Average,
            dimensions: vec![("AutoScalingGroupName", "Web-ASG".into())],
            period: 300,
            periods: 2,
            threshold: 70.0,
        };
        let held = |threshold: f64| {
            MetricAlarm::builder()
                .alarm_name("Web-ASG-CPU-high")
                .namespace("AWS/EC2")
                .metric_name("CPUUtilization")
                .statistic(Statistic::Average)
                .dimensions(
                    Dimension::builder()
                        .name("AutoScalingGroupName")
                        .value("Web-ASG")
                        .build(),
                )
                .period(300)
                .evaluation_periods(2)
                .threshold(threshold)
                .build()
        };
        assert!(spec.differences(&held(70.0)).is_empty());
        assert_eq!(spec.differences(&held(80.0)), ["threshold 80 -> 70"]);
    }
}
