//! A rollout stack's resources in the ledger: deleting them in dependency order, finding by tag
//! the ones a dead run left half-built, and unmarking a stack once it is whole.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsOutput;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancingv2::operation::describe_load_balancers::DescribeLoadBalancersOutput;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::DescribeTargetGroupsOutput;

use super::{Left, Resource, ids_of};
use crate::aws::{self, CallError, Clients, Failed};
use crate::poll::{self, Check, PollError, Schedule};
use crate::tags;

/// A deleted group's instances terminate within minutes.
const GROUP_GONE_TIMEOUT: Duration = Duration::from_secs(900);
/// Deleting a group takes minutes: a look every 2 s, growing to 10 s.
const GROUP_GONE_SCHEDULE: Schedule = Schedule::every(Duration::from_secs(2))
    .first_after(Duration::from_secs(2))
    .dense_for(Duration::from_secs(120))
    .growing(1.2, Duration::from_secs(10));
/// Listings are paged (50 groups, 400 load balancers, 100 alarms a page); 50 pages is more than
/// any account bake works in holds, and bounds the loop (a longer listing is an error).
const MAX_PAGES: usize = 50;
/// ELB's DescribeTags takes at most 20 ARNs a call.
const ELB_TAGS_PER_CALL: usize = 20;
/// The endings of a stack's alarm names after its group's name (`rollout::preflight::Names`
/// builds them from these): the target group's 5xx count, its response time, the group's CPU.
pub const ALARM_ERRORS: &str = "-TG-5xx";
pub const ALARM_LATENCY: &str = "-TG-latency";
pub const ALARM_CPU: &str = "-CPU-high";
/// Only alarms named so are asked for their tags when `bake gc` looks for stacks.
pub const ALARM_SUFFIXES: [&str; 3] = [ALARM_ERRORS, ALARM_LATENCY, ALARM_CPU];

/// Deletes the stack resources among `resources`: groups first (and waits until their instances
/// are gone), then alarms, load balancers, target groups and launch templates. Every one is
/// tried; what stays is added to `left`. True when a group or load balancer was deleted (their
/// network interfaces hold the security groups a while longer).
pub(super) async fn delete(
    clients: &Clients,
    resources: &[Resource],
    left: &mut Vec<Left>,
) -> bool {
    let mut held = false;
    let groups = futures_util::future::join_all(resources.iter().filter_map(|r| match r {
        Resource::AutoScalingGroup(name) => {
            Some(async move { (r, delete_group(clients, name).await) })
        }
        _ => None,
    }))
    .await;
    for (resource, result) in groups {
        held = true;
        if let Err(reason) = result {
            left.push(Left {
                resource: resource.clone(),
                reason,
            });
        }
    }
    for step in AFTER_GROUPS {
        for resource in resources.iter().filter(|r| step(r)) {
            held |= matches!(resource, Resource::LoadBalancer(_));
            if let Err(reason) = delete_one(clients, resource).await {
                left.push(Left {
                    resource: resource.clone(),
                    reason,
                });
            }
        }
    }
    held
}

/// What is deleted after the groups, step by step: alarms, then load balancers before their
/// target groups (a target group a listener forwards to answers ResourceInUse until the load
/// balancer is gone), then target groups and launch templates.
const AFTER_GROUPS: [fn(&Resource) -> bool; 3] = [
    |r| matches!(r, Resource::Alarm(_)),
    |r| matches!(r, Resource::LoadBalancer(_)),
    |r| matches!(r, Resource::TargetGroup(_) | Resource::LaunchTemplate(_)),
];

/// Deletes one alarm, load balancer, target group or launch template; one already gone counts
/// as deleted.
async fn delete_one(clients: &Clients, resource: &Resource) -> Result<(), String> {
    match resource {
        Resource::Alarm(name) => {
            let delete = clients.cloudwatch.delete_alarms().alarm_names(name);
            let gone = |e: &Failed<_>| e.is(&["ResourceNotFound"]);
            released(clients, || delete.clone().send(), gone).await
        }
        Resource::LoadBalancer(arn) => {
            let delete = clients.elb.delete_load_balancer().load_balancer_arn(arn);
            let gone = |e: &Failed<_>| e.is(&["LoadBalancerNotFound"]);
            released(clients, || delete.clone().send(), gone).await
        }
        Resource::TargetGroup(arn) => {
            let delete = clients.elb.delete_target_group().target_group_arn(arn);
            let gone = |e: &Failed<_>| e.is(&["TargetGroupNotFound"]);
            released(clients, || delete.clone().send(), gone).await
        }
        Resource::LaunchTemplate(id) => {
            let delete = clients.ec2.delete_launch_template().launch_template_id(id);
            let gone = |e: &Failed<_>| e.is(&["InvalidLaunchTemplateId*"]);
            released(clients, || delete.clone().send(), gone).await
        }
        other => Err(format!("{other:?} is not a stack resource")),
    }
}

/// Force-deletes a group (its instances go with it) and waits until it is gone.
async fn delete_group(clients: &Clients, name: &str) -> Result<(), String> {
    let delete = clients
        .autoscaling
        .delete_auto_scaling_group()
        .auto_scaling_group_name(name)
        .force_delete(true);
    let gone = |e: &Failed<_>| e.describe().contains("not found");
    released(clients, || delete.clone().send(), gone).await?;
    group_gone(clients, name).await.map_err(|e| e.message)
}

/// One delete, asked again while the load balancer releases what it held
/// ([`aws::LOAD_BALANCER_RELEASE`]); gone already counts as deleted. AWS's answer when it stays.
async fn released<T, E, Fut>(
    clients: &Clients,
    send: impl FnMut() -> Fut,
    gone: impl Fn(&Failed<E>) -> bool,
) -> Result<(), String>
where
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let deleted = clients.call(send).settle(&aws::LOAD_BALANCER_RELEASE);
    match deleted.answer().await {
        Ok(_) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(e.describe()),
    }
}

/// An alarm's tags (none when the alarm is gone).
pub async fn alarm_tags(
    clients: &Clients,
    name: &str,
    arn: &str,
) -> Result<BTreeMap<String, String>, CallError> {
    let listed = clients
        .call(|| {
            clients
                .cloudwatch
                .list_tags_for_resource()
                .resource_arn(arn)
                .send()
        })
        .settle(&aws::THROTTLE_BURST)
        .or_none(&["ResourceNotFound", "ResourceNotFoundException"], || {
            format!("read the tags of alarm {name}")
        })
        .await?;
    Ok(tags::map(
        listed
            .iter()
            .flat_map(|o| o.tags())
            .map(|t| (t.key(), t.value())),
    ))
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

/// Which run's marks to look for: one run's (`Some`), or any run's (`None`).
fn marked_by(run: Option<&str>, tags: &BTreeMap<String, String>) -> bool {
    match (run, tags.get(tags::RUN_ID)) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(run), Some(value)) => value == run,
    }
}

/// When the resource says it was created (`bake:created`), else AWS's own time.
fn created(tags: &BTreeMap<String, String>, aws_time: Option<SystemTime>) -> Option<SystemTime> {
    tags.get(tags::CREATED)
        .and_then(|v| humantime::parse_rfc3339(v).ok())
        .or(aws_time)
}

/// The stack resources still marked by a run (`run`, or any when `None`) whose creation passes
/// `old_enough`: groups, launch templates, load balancers, target groups and alarms.
pub(super) async fn find(
    clients: &Clients,
    run: Option<&str>,
    old_enough: &(dyn Fn(Option<SystemTime>) -> bool + Sync),
) -> Result<Vec<Resource>, CallError> {
    let mut found = Vec::new();
    let key_filter = aws_sdk_autoscaling::types::Filter::builder()
        .name("tag-key")
        .values(tags::RUN_ID)
        .build();
    for group in crate::resolve::auto_scaling_groups(clients, vec![key_filter]).await? {
        let tags = tags::map(group.tags().iter().map(|t| (t.key(), t.value())));
        let at = group
            .created_time()
            .and_then(|t| SystemTime::try_from(*t).ok());
        if marked_by(run, &tags) && old_enough(created(&tags, at)) {
            found.push(Resource::AutoScalingGroup(
                group
                    .auto_scaling_group_name()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
    }

    let key_filter = crate::resolve::filter("tag-key", tags::RUN_ID);
    for template in crate::resolve::launch_templates(clients, vec![key_filter]).await? {
        let tags = tags::map(template.tags().iter().map(|t| (t.key(), t.value())));
        let at = template
            .create_time()
            .and_then(|t| SystemTime::try_from(*t).ok());
        if marked_by(run, &tags) && old_enough(created(&tags, at)) {
            found.push(Resource::LaunchTemplate(
                template.launch_template_id().unwrap_or_default().to_owned(),
            ));
        }
    }

    // ELB lists no tags and filters by none: list, then DescribeTags 20 ARNs at a time.
    let mut arns: Vec<(String, Option<SystemTime>, bool)> = Vec::new();
    let load_balancers = aws::pages::all(
        MAX_PAGES,
        "list load balancers",
        |marker| {
            let request = clients.elb.describe_load_balancers().set_marker(marker);
            clients.call(move || request.clone().send())
        },
        DescribeLoadBalancersOutput::next_marker,
    )
    .await?;
    for lb in load_balancers.iter().flat_map(|out| out.load_balancers()) {
        let at = lb
            .created_time()
            .and_then(|t| SystemTime::try_from(*t).ok());
        if let Some(arn) = lb.load_balancer_arn() {
            arns.push((arn.to_owned(), at, true));
        }
    }
    let target_groups = aws::pages::all(
        MAX_PAGES,
        "list target groups",
        |marker| {
            let request = clients.elb.describe_target_groups().set_marker(marker);
            clients.call(move || request.clone().send())
        },
        DescribeTargetGroupsOutput::next_marker,
    )
    .await?;
    for tg in target_groups.iter().flat_map(|out| out.target_groups()) {
        if let Some(arn) = tg.target_group_arn() {
            arns.push((arn.to_owned(), None, false));
        }
    }
    for chunk in arns.chunks(ELB_TAGS_PER_CALL) {
        let request = clients
            .elb
            .describe_tags()
            .set_resource_arns(Some(chunk.iter().map(|(arn, ..)| arn.clone()).collect()));
        let out = clients
            .call(|| request.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_none(&["LoadBalancerNotFound", "TargetGroupNotFound"], || {
                "read the tags of load balancers and target groups".into()
            })
            .await?;
        for description in out.iter().flat_map(|o| o.tag_descriptions()) {
            let Some((arn, at, is_lb)) = chunk
                .iter()
                .find(|(arn, ..)| Some(arn.as_str()) == description.resource_arn())
            else {
                continue;
            };
            let tags = tags::map(description.tags().iter().map(|t| (t.key(), t.value())));
            if marked_by(run, &tags) && old_enough(created(&tags, *at)) {
                found.push(if *is_lb {
                    Resource::LoadBalancer(arn.clone())
                } else {
                    Resource::TargetGroup(arn.clone())
                });
            }
        }
    }

    let alarms = aws::pages::all(
        MAX_PAGES,
        "list CloudWatch alarms",
        |token| {
            let request = clients.cloudwatch.describe_alarms().set_next_token(token);
            clients.call(move || request.clone().send())
        },
        DescribeAlarmsOutput::next_token,
    )
    .await?;
    for alarm in alarms.iter().flat_map(|out| out.metric_alarms()) {
        let (Some(name), Some(arn)) = (alarm.alarm_name(), alarm.alarm_arn()) else {
            continue;
        };
        if !ALARM_SUFFIXES.iter().any(|s| name.ends_with(s)) {
            continue;
        }
        let tags = alarm_tags(clients, name, arn).await?;
        let at = alarm
            .alarm_configuration_updated_timestamp()
            .and_then(|t| SystemTime::try_from(*t).ok());
        if marked_by(run, &tags) && old_enough(created(&tags, at)) {
            found.push(Resource::Alarm(name.to_owned()));
        }
    }
    Ok(found)
}

/// Removes the marks of a stack under construction ([`tags::STACK_PENDING`]) from `resources`:
/// the stack is whole, and `bake gc` must leave it alone. Resources of other kinds are skipped.
pub async fn unmark(clients: &Clients, resources: &[Resource]) -> Result<(), CallError> {
    let ec2_ids = ids_of(resources, |r| {
        matches!(r, Resource::SecurityGroup(_) | Resource::LaunchTemplate(_))
    });
    if !ec2_ids.is_empty() {
        let mut request = clients
            .ec2
            .delete_tags()
            .set_resources(Some(ec2_ids.clone()));
        for key in tags::STACK_PENDING {
            request = request.tags(aws_sdk_ec2::types::Tag::builder().key(key).build());
        }
        clients
            .call(|| request.clone().send())
            .settle(&aws::NEW_SECURITY_GROUP)
            .or_fail(|| format!("remove the run's tags from {}", ec2_ids.join(", ")))
            .await?;
    }
    let arns = ids_of(resources, |r| {
        matches!(r, Resource::LoadBalancer(_) | Resource::TargetGroup(_))
    });
    if !arns.is_empty() {
        let request = clients
            .elb
            .remove_tags()
            .set_resource_arns(Some(arns.clone()))
            .set_tag_keys(Some(tags::STACK_PENDING.map(str::to_owned).to_vec()));
        clients
            .call(|| request.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_fail(|| format!("remove the run's tags from {}", arns.join(", ")))
            .await?;
    }
    let groups = ids_of(resources, |r| matches!(r, Resource::AutoScalingGroup(_)));
    if !groups.is_empty() {
        let mut request = clients.autoscaling.delete_tags();
        for group in &groups {
            for key in tags::STACK_PENDING {
                request = request.tags(
                    aws_sdk_autoscaling::types::Tag::builder()
                        .resource_id(group)
                        .resource_type("auto-scaling-group")
                        .key(key)
                        .build(),
                );
            }
        }
        clients
            .call(|| request.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_fail(|| format!("remove the run's tags from {}", groups.join(", ")))
            .await?;
    }
    let alarms = ids_of(resources, |r| matches!(r, Resource::Alarm(_)));
    if !alarms.is_empty() {
        let request = clients
            .cloudwatch
            .describe_alarms()
            .set_alarm_names(Some(alarms.clone()));
        let out = clients
            .call(|| request.clone().send())
            .settle(&aws::THROTTLE_BURST)
            .or_fail(|| format!("describe alarms {}", alarms.join(", ")))
            .await?;
        for alarm in out.metric_alarms() {
            let Some(arn) = alarm.alarm_arn() else {
                continue;
            };
            let request = clients
                .cloudwatch
                .untag_resource()
                .resource_arn(arn)
                .set_tag_keys(Some(tags::STACK_PENDING.map(str::to_owned).to_vec()));
            clients
                .call(|| request.clone().send())
                .settle(&aws::THROTTLE_BURST)
                .or_fail(|| format!("remove the run's tags from alarm {arn}"))
                .await?;
        }
    }
    Ok(())
}
