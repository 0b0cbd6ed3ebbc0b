//! `bake rollout` against AWS answers the lab does not give on demand, replayed with
//! aws-smithy-mocks: refreshes AWS rolls back itself or that ended and cannot be rolled back,
//! launches that fail, throttled describes inside the watch, and a stack whose removal meets the
//! load balancer's teardown lag; and which version `bake rollback` goes back to, or why none.

#[path = "support/mocks.rs"]
mod mocks;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_autoscaling::operation::cancel_instance_refresh::CancelInstanceRefreshOutput;
use aws_sdk_autoscaling::operation::describe_auto_scaling_groups::{
    DescribeAutoScalingGroupsError, DescribeAutoScalingGroupsOutput,
};
use aws_sdk_autoscaling::operation::describe_instance_refreshes::{
    DescribeInstanceRefreshesError, DescribeInstanceRefreshesOutput,
};
use aws_sdk_autoscaling::operation::describe_scaling_activities::DescribeScalingActivitiesOutput;
use aws_sdk_autoscaling::operation::rollback_instance_refresh::RollbackInstanceRefreshOutput;
use aws_sdk_autoscaling::operation::start_instance_refresh::StartInstanceRefreshOutput;
use aws_sdk_autoscaling::primitives::DateTime;
use aws_sdk_autoscaling::types::{
    Activity, AutoScalingGroup, InstanceRefresh, InstanceRefreshStatus,
    LaunchTemplateSpecification, LifecycleState, ScalingActivityStatusCode,
};
use aws_sdk_ec2::operation::authorize_security_group_ingress::AuthorizeSecurityGroupIngressOutput;
use aws_sdk_ec2::operation::create_security_group::CreateSecurityGroupOutput;
use aws_sdk_ec2::operation::delete_security_group::{
    DeleteSecurityGroupError, DeleteSecurityGroupOutput,
};
use aws_sdk_ec2::operation::describe_security_group_rules::DescribeSecurityGroupRulesOutput;
use aws_sdk_ec2::operation::describe_security_groups::DescribeSecurityGroupsOutput;
use aws_sdk_elasticloadbalancingv2::operation::create_load_balancer::CreateLoadBalancerError;
use aws_sdk_elasticloadbalancingv2::operation::create_target_group::CreateTargetGroupOutput;
use aws_sdk_elasticloadbalancingv2::operation::delete_load_balancer::DeleteLoadBalancerOutput;
use aws_sdk_elasticloadbalancingv2::operation::delete_target_group::{
    DeleteTargetGroupError, DeleteTargetGroupOutput,
};
use aws_sdk_elasticloadbalancingv2::operation::describe_load_balancers::DescribeLoadBalancersError;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::DescribeTargetGroupsError;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_health::DescribeTargetHealthOutput;
use aws_sdk_elasticloadbalancingv2::operation::modify_target_group_attributes::ModifyTargetGroupAttributesOutput;
use aws_sdk_elasticloadbalancingv2::types::TargetGroup;
use aws_smithy_mocks::{Rule, mock};
use bake::aws::Clients;
use bake::janitor::{self, Janitor, Resource};
use bake::resolve::Subnet;
use bake::rollout::preflight;
use bake::rollout::stack::{self, Stack};
use bake::rollout::{refresh, rollback};
use mocks::{Answers, clients_of, meta, progress};
use tokio::time::Instant;

fn subnet(id: &str, zone: &str) -> Subnet {
    Subnet {
        id: id.into(),
        vpc_id: "vpc-lab".into(),
        zone: zone.into(),
    }
}

/// A rollout's plan and stack as preflight and the stack step would leave them.
fn rollout_parts() -> (bake::config::Config, preflight::Plan, Stack) {
    rollout_parts_with(r#"refresh = { min_healthy = 50, warmup = "60s", timeout = "30m" }"#)
}

/// [`rollout_parts`] with another `refresh = ...` line.
fn rollout_parts_with(refresh: &str) -> (bake::config::Config, preflight::Plan, Stack) {
    let text = r#"
[image.web]
base = { id = "ami-base" }
template = "nginx"
os = "debian"
[image.web.builder]
subnet = { id = "subnet-a" }
instance_profile = "SSMInstanceProfile"

[rollout.web]
image = "web"
vpc = { id = "vpc-lab" }
alb_subnets = [{ id = "subnet-a" }, { id = "subnet-c" }]
instance_subnets = [{ id = "subnet-pa" }]
launch_template = "Web"
asg = "Web-ASG"
alb = "Web-ALB"
target_group = "Web-TG"
capacity = { min = 2, desired = 2, max = 4 }
"#;
    let text = format!("{text}{refresh}\n");
    let config = bake::config::Config::parse(std::path::Path::new("bake.toml"), text).unwrap();
    let plan = preflight::Plan {
        rollout: "web".into(),
        image: "web".into(),
        ami: preflight::Ami {
            id: "ami-new".into(),
            name: "web-2".into(),
        },
        vpc_id: "vpc-lab".into(),
        alb_subnets: vec![subnet("subnet-a", "a"), subnet("subnet-c", "c")],
        instance_subnets: vec![subnet("subnet-pa", "a")],
        instance_profile: None,
        health: config.image["web"].health.clone(),
        names: preflight::Names {
            alb: "Web-ALB".into(),
            alb_security_group: "Web-ALB-SG".into(),
            target_group: "Web-TG".into(),
            launch_template: "Web".into(),
            asg: "Web-ASG".into(),
            instance_security_group: "Web-ASG-Inst-SG".into(),
            alarm_errors: "Web-ASG-TG-5xx".into(),
            alarm_latency: "Web-ASG-TG-latency".into(),
            alarm_cpu: "Web-ASG-CPU-high".into(),
        },
    };
    let stack = Stack {
        alb_dns: "web-alb.example".into(),
        target_group_arn: "arn:tg".into(),
        launch_template_id: "lt-1".into(),
        version: 2,
        previous_version: Some("1".into()),
        group_created: false,
        auto_rollback: true,
        unchanged: false,
    };
    (config, plan, stack)
}

fn refresh_of(id: &str, status: InstanceRefreshStatus) -> DescribeInstanceRefreshesOutput {
    DescribeInstanceRefreshesOutput::builder()
        .instance_refreshes(
            InstanceRefresh::builder()
                .instance_refresh_id(id)
                .status(status)
                .status_reason("an instance failed its health checks")
                .start_time(DateTime::from_secs(1_000))
                .build(),
        )
        .build()
}

fn refreshes(status: InstanceRefreshStatus) -> DescribeInstanceRefreshesOutput {
    refresh_of("refresh-1", status)
}

/// StartInstanceRefresh back to launch template version 1, answered with refresh-2: bake's
/// restore of a refresh it could not roll back.
fn restoring_refresh() -> Rule {
    mock!(aws_sdk_autoscaling::Client::start_instance_refresh)
        .match_requests(|r| {
            r.desired_configuration()
                .and_then(|d| d.launch_template())
                .and_then(|t| t.version())
                == Some("1")
        })
        .then_output(|| {
            StartInstanceRefreshOutput::builder()
                .instance_refresh_id("refresh-2")
                .build()
        })
}

/// The restoring refresh-2, described as Successful.
fn restored() -> Rule {
    mock!(aws_sdk_autoscaling::Client::describe_instance_refreshes)
        .match_requests(|r| r.instance_refresh_ids() == ["refresh-2"])
        .then_output(|| refresh_of("refresh-2", InstanceRefreshStatus::Successful))
}

fn one_old_instance() -> DescribeAutoScalingGroupsOutput {
    DescribeAutoScalingGroupsOutput::builder()
        .auto_scaling_groups(
            AutoScalingGroup::builder()
                .auto_scaling_group_name("Web-ASG")
                .created_time(DateTime::from_secs(500))
                .instances(
                    aws_sdk_autoscaling::types::Instance::builder()
                        .instance_id("i-old")
                        .lifecycle_state(LifecycleState::InService)
                        .launch_template(
                            LaunchTemplateSpecification::builder()
                                .launch_template_id("lt-1")
                                .version("1")
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .build()
}

fn no_activities() -> Rule {
    mock!(aws_sdk_autoscaling::Client::describe_scaling_activities)
        .then_output(|| DescribeScalingActivitiesOutput::builder().build())
}

/// The groups removed together admit nobody (their rules naming each other are looked for first).
fn no_rules() -> Rule {
    mock!(aws_sdk_ec2::Client::describe_security_group_rules)
        .then_output(|| DescribeSecurityGroupRulesOutput::builder().build())
}

/// No endpoint group of bake's admits the groups being removed.
fn no_endpoint_groups() -> Rule {
    mock!(aws_sdk_ec2::Client::describe_security_groups)
        .then_output(|| DescribeSecurityGroupsOutput::builder().build())
}

fn no_targets() -> Rule {
    mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_health)
        .then_output(|| DescribeTargetHealthOutput::builder().build())
}

#[tokio::test(start_paused = true)]
async fn a_refresh_aws_rolls_back_itself_is_waited_for_and_not_rolled_back_twice() {
    let describe = mock!(aws_sdk_autoscaling::Client::describe_instance_refreshes)
        .sequence()
        .output(|| refreshes(InstanceRefreshStatus::InProgress))
        .times(2)
        .output(|| refreshes(InstanceRefreshStatus::RollbackInProgress))
        .times(3)
        .output(|| refreshes(InstanceRefreshStatus::RollbackSuccessful))
        .build();
    let group = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
        .then_output(one_old_instance);
    let rollback = mock!(aws_sdk_autoscaling::Client::rollback_instance_refresh)
        .then_output(|| RollbackInstanceRefreshOutput::builder().build());
    let start = mock!(aws_sdk_autoscaling::Client::start_instance_refresh)
        .then_output(|| StartInstanceRefreshOutput::builder().build());
    let (activities, health) = (no_activities(), no_targets());
    let clients = clients_of(
        &[],
        &[&describe, &group, &rollback, &start, &activities],
        &[&health],
    );
    let (config, plan, stack) = rollout_parts();
    let rollout = &config.rollout["web"];
    let err = refresh::watch(
        &clients,
        &plan,
        &stack,
        rollout,
        Some("refresh-1"),
        &progress(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the instance refresh of Web-ASG ended RollbackInProgress: an instance failed its health \
         checks"
    );
    refresh::rollback(&clients, &plan, &stack, rollout, "refresh-1", &progress())
        .await
        .unwrap();
    assert_eq!(rollback.num_calls(), 0, "AWS was rolling back already");
    assert_eq!(start.num_calls(), 0);
    assert_eq!(describe.num_calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_ended_is_not_rolled_back_but_restored_by_a_new_refresh() {
    // RollbackInstanceRefresh only takes an active refresh; a Failed one answers
    // ActiveInstanceRefreshNotFound. bake starts a refresh back to version 1 instead.
    let first = mock!(aws_sdk_autoscaling::Client::describe_instance_refreshes)
        .match_requests(|r| r.instance_refresh_ids() == ["refresh-1"])
        .then_output(|| refreshes(InstanceRefreshStatus::Failed));
    let restore = mock!(aws_sdk_autoscaling::Client::describe_instance_refreshes)
        .match_requests(|r| r.instance_refresh_ids() == ["refresh-2"])
        .sequence()
        .output(|| refresh_of("refresh-2", InstanceRefreshStatus::InProgress))
        .times(2)
        .output(|| refresh_of("refresh-2", InstanceRefreshStatus::Successful))
        .build();
    let start = mock!(aws_sdk_autoscaling::Client::start_instance_refresh)
        .match_requests(|r| {
            let version = r
                .desired_configuration()
                .and_then(|d| d.launch_template())
                .and_then(|t| t.version());
            let rollback = r.preferences().and_then(|p| p.auto_rollback());
            version == Some("1") && rollback == Some(false)
        })
        .then_output(|| {
            StartInstanceRefreshOutput::builder()
                .instance_refresh_id("refresh-2")
                .build()
        });
    let rollback = mock!(aws_sdk_autoscaling::Client::rollback_instance_refresh)
        .then_output(|| RollbackInstanceRefreshOutput::builder().build());
    let group = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
        .then_output(one_old_instance);
    let (activities, health) = (no_activities(), no_targets());
    let clients = clients_of(
        &[],
        &[&first, &restore, &start, &rollback, &group, &activities],
        &[&health],
    );
    let (config, plan, stack) = rollout_parts();
    let rollout = &config.rollout["web"];
    let err = refresh::watch(
        &clients,
        &plan,
        &stack,
        rollout,
        Some("refresh-1"),
        &progress(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("ended Failed"), "{err}");
    refresh::rollback(&clients, &plan, &stack, rollout, "refresh-1", &progress())
        .await
        .unwrap();
    assert_eq!(
        rollback.num_calls(),
        0,
        "an ended refresh cannot be rolled back"
    );
    assert_eq!(start.num_calls(), 1, "a new refresh to version 1");
    assert_eq!(restore.num_calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_active_refresh_is_rolled_back_by_aws_where_aws_allows_it() {
    let describe = mock!(aws_sdk_autoscaling::Client::describe_instance_refreshes)
        .sequence()
        .output(|| refreshes(InstanceRefreshStatus::InProgress))
        .output(|| refreshes(InstanceRefreshStatus::RollbackInProgress))
        .output(|| refreshes(InstanceRefreshStatus::RollbackSuccessful))
        .build();
    let rollback = mock!(aws_sdk_autoscaling::Client::rollback_instance_refresh)
        .then_output(|| RollbackInstanceRefreshOutput::builder().build());
    let group = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
        .then_output(one_old_instance);
    let (activities, health) = (no_activities(), no_targets());
    let clients = clients_of(
        &[],
        &[&describe, &rollback, &group, &activities],
        &[&health],
    );
    let (config, plan, stack) = rollout_parts();
    refresh::rollback(
        &clients,
        &plan,
        &stack,
        &config.rollout["web"],
        "refresh-1",
        &progress(),
    )
    .await
    .unwrap();
    assert_eq!(rollback.num_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_ends_just_before_the_rollback_call_is_restored_by_a_new_refresh() {
    let first = mock!(aws_sdk_autoscaling::Client::describe_instance_refreshes)
        .match_requests(|r| r.instance_refresh_ids() == ["refresh-1"])
        .then_output(|| refreshes(InstanceRefreshStatus::InProgress));
    let restore = restored();
    let rollback = mock!(aws_sdk_autoscaling::Client::rollback_instance_refresh).then_error(|| {
        aws_sdk_autoscaling::operation::rollback_instance_refresh::RollbackInstanceRefreshError::generic(
            meta(
                "ActiveInstanceRefreshNotFound",
                "No in-progress instance refresh found to roll back.",
            ),
        )
    });
    let start = restoring_refresh();
    let group = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
        .then_output(one_old_instance);
    let (activities, health) = (no_activities(), no_targets());
    let clients = clients_of(
        &[],
        &[&first, &restore, &rollback, &start, &group, &activities],
        &[&health],
    );
    let (config, plan, stack) = rollout_parts();
    refresh::rollback(
        &clients,
        &plan,
        &stack,
        &config.rollout["web"],
        "refresh-1",
        &progress(),
    )
    .await
    .unwrap();
    assert_eq!(rollback.num_calls(), 1);
    assert_eq!(start.num_calls(), 1, "restored by a refresh to version 1");
}

#[tokio::test(start_paused = true)]
async fn an_active_refresh_aws_cannot_roll_back_is_cancelled_then_restored() {
    let first = mock!(aws_sdk_autoscaling::Client::describe_instance_refreshes)
        .match_requests(|r| r.instance_refresh_ids() == ["refresh-1"])
        .sequence()
        .output(|| refreshes(InstanceRefreshStatus::InProgress))
        .output(|| refreshes(InstanceRefreshStatus::Cancelling))
        .output(|| refreshes(InstanceRefreshStatus::Cancelled))
        .build();
    let restore = restored();
    let cancel = mock!(aws_sdk_autoscaling::Client::cancel_instance_refresh)
        .then_output(|| CancelInstanceRefreshOutput::builder().build());
    let rollback = mock!(aws_sdk_autoscaling::Client::rollback_instance_refresh)
        .then_output(|| RollbackInstanceRefreshOutput::builder().build());
    let start = restoring_refresh();
    let group = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
        .then_output(one_old_instance);
    let (activities, health) = (no_activities(), no_targets());
    let clients = clients_of(
        &[],
        &[
            &first,
            &restore,
            &cancel,
            &rollback,
            &start,
            &group,
            &activities,
        ],
        &[&health],
    );
    let (config, plan, mut stack) = rollout_parts();
    stack.auto_rollback = false; // the group's previous version names a resolve:ssm: image
    refresh::rollback(
        &clients,
        &plan,
        &stack,
        &config.rollout["web"],
        "refresh-1",
        &progress(),
    )
    .await
    .unwrap();
    assert_eq!(rollback.num_calls(), 0, "AWS refuses a rollback here");
    assert_eq!(cancel.num_calls(), 1);
    assert_eq!(start.num_calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn auto_rollback_is_asked_for_only_where_aws_allows_it() {
    for allowed in [true, false] {
        let start = mock!(aws_sdk_autoscaling::Client::start_instance_refresh)
            .match_requests(move |r| {
                r.preferences().and_then(|p| p.auto_rollback()) == Some(allowed)
                    && r.desired_configuration()
                        .and_then(|d| d.launch_template())
                        .and_then(|t| t.version())
                        == Some("2")
            })
            .then_output(|| {
                StartInstanceRefreshOutput::builder()
                    .instance_refresh_id("refresh-1")
                    .build()
            });
        let clients = refresh_clients(&start, 4, 5, &["Web-ASG-TG-5xx"]);
        let (config, plan, mut stack) = rollout_parts();
        stack.auto_rollback = allowed;
        let id = refresh::start(&clients, &plan, &stack, &config.rollout["web"])
            .await
            .unwrap();
        assert_eq!(id, "refresh-1");
        assert_eq!(start.num_calls(), 1);
    }
}

/// Clients for a refresh's start: the group as AWS describes it now (`desired`, `max`), the
/// stack's alarms that exist, and `start`.
fn refresh_clients(
    start: &Rule,
    desired: i32,
    max: i32,
    alarms: &'static [&'static str],
) -> Clients {
    let group =
        mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups).then_output(move || {
            DescribeAutoScalingGroupsOutput::builder()
                .auto_scaling_groups(
                    AutoScalingGroup::builder()
                        .auto_scaling_group_name("Web-ASG")
                        .desired_capacity(desired)
                        .max_size(max)
                        .build(),
                )
                .build()
        });
    let described = mock!(aws_sdk_cloudwatch::Client::describe_alarms).then_output(move || {
        aws_sdk_cloudwatch::operation::describe_alarms::DescribeAlarmsOutput::builder()
            .set_metric_alarms(Some(
                alarms
                    .iter()
                    .map(|a| {
                        aws_sdk_cloudwatch::types::MetricAlarm::builder()
                            .alarm_name(*a)
                            .build()
                    })
                    .collect(),
            ))
            .build()
    });
    Answers {
        autoscaling: &[start, &group],
        cloudwatch: &[&described],
        ..Answers::default()
    }
    .clients("ap-northeast-2")
}

#[tokio::test]
async fn a_refresh_asks_for_the_healthy_range_the_group_allows_its_checkpoints_and_its_alarms() {
    // The config says min_healthy 50 and capacity 2 of at most 4 (which would allow 150), but the
    // group runs 4 of at most 5 now: room for 125%.
    let start = mock!(aws_sdk_autoscaling::Client::start_instance_refresh)
        .match_requests(|r| {
            let Some(p) = r.preferences() else {
                return false;
            };
            p.min_healthy_percentage() == Some(50)
                && p.max_healthy_percentage() == Some(125)
                && p.skip_matching() == Some(true)
                && p.checkpoint_percentages() == [25, 100]
                && p.checkpoint_delay() == Some(120)
                && p.bake_time() == Some(300)
                // Only the alarm that exists: StartInstanceRefresh refuses one that does not.
                && p.alarm_specification().map(|a| a.alarms().to_vec())
                    == Some(vec!["Web-ASG-TG-5xx".to_owned()])
        })
        .then_output(|| {
            StartInstanceRefreshOutput::builder()
                .instance_refresh_id("refresh-1")
                .build()
        });
    let clients = refresh_clients(&start, 4, 5, &["Web-ASG-TG-5xx"]);
    let (config, plan, stack) = rollout_parts_with(
        r#"refresh = { min_healthy = 50, checkpoints = [25, 100], checkpoint_delay = "2m", bake_time = "5m", timeout = "30m" }"#,
    );
    let id = refresh::start(&clients, &plan, &stack, &config.rollout["web"])
        .await
        .unwrap();
    assert_eq!(id, "refresh-1");
    assert_eq!(start.num_calls(), 1);
}

/// AWS's words for a launch in a zone without capacity, as a failed scaling activity.
const NO_CAPACITY: &str = "We currently do not have sufficient t3.micro capacity in the \
    Availability Zone you requested (ap-northeast-2a). Our system will be working on provisioning \
    additional capacity. You can currently get t3.micro capacity by not specifying an \
    Availability Zone in your request or choosing ap-northeast-2c. Launching EC2 instance failed.";

#[tokio::test(start_paused = true)]
async fn a_group_that_cannot_launch_ends_the_watch_at_its_first_failed_activity() {
    let (config, plan, mut stack) = rollout_parts();
    stack.group_created = true;
    stack.previous_version = None;
    stack.version = 1;
    let group =
        mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups).then_output(|| {
            DescribeAutoScalingGroupsOutput::builder()
                .auto_scaling_groups(
                    AutoScalingGroup::builder()
                        .auto_scaling_group_name("Web-ASG")
                        .created_time(DateTime::from_secs(1_000))
                        .build(),
                )
                .build()
        });
    // An older failure (a group of the same name, removed before) does not count; the new one
    // appears on the fourth look.
    let looks = Arc::new(Mutex::new(0));
    let failed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let activities = {
        let (looks, failed_at) = (looks.clone(), failed_at.clone());
        mock!(aws_sdk_autoscaling::Client::describe_scaling_activities).then_output(move || {
            let mut n = looks.lock().unwrap();
            *n += 1;
            let old = Activity::builder()
                .activity_id("act-old")
                .auto_scaling_group_name("Web-ASG")
                .status_code(ScalingActivityStatusCode::Failed)
                .status_message("an old failure")
                .start_time(DateTime::from_secs(10))
                .build();
            let mut out = DescribeScalingActivitiesOutput::builder();
            if *n >= 4 {
                failed_at.lock().unwrap().get_or_insert_with(Instant::now);
                out = out.activities(
                    Activity::builder()
                        .activity_id("act-1")
                        .auto_scaling_group_name("Web-ASG")
                        .status_code(ScalingActivityStatusCode::Failed)
                        .status_message(NO_CAPACITY)
                        .description("Launching a new EC2 instance.  Status Reason: ...")
                        .details(
                            r#"{"Subnet ID":"subnet-pa","Availability Zone":"ap-northeast-2a"}"#,
                        )
                        .start_time(DateTime::from_secs(1_030))
                        .build(),
                );
            }
            out.activities(old).build()
        })
    };
    let health = no_targets();
    let clients = clients_of(&[], &[&group, &activities], &[&health]);
    let err = refresh::watch(
        &clients,
        &plan,
        &stack,
        &config.rollout["web"],
        None,
        &progress(),
    )
    .await
    .unwrap_err();
    let seen = failed_at.lock().unwrap().expect("the failure was shown");
    assert!(
        seen.elapsed() < Duration::from_secs(60),
        "ended {:?} after the failed activity",
        seen.elapsed()
    );
    let message = err.to_string();
    assert!(message.contains(NO_CAPACITY), "{message}");
    assert!(message.contains("act-1"), "{message}");
    assert!(!message.contains("an old failure"), "{message}");
    assert_eq!(
        *looks.lock().unwrap(),
        4,
        "it ended on the look that saw it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_describe_in_the_watch_is_looked_at_again_not_rolled_back() {
    let throttled = || DescribeInstanceRefreshesError::generic(meta("Throttling", "Rate exceeded"));
    let describe = mock!(aws_sdk_autoscaling::Client::describe_instance_refreshes)
        .sequence()
        .output(|| refreshes(InstanceRefreshStatus::InProgress))
        .error(throttled)
        .times(6)
        .output(|| refreshes(InstanceRefreshStatus::InProgress))
        .output(|| refreshes(InstanceRefreshStatus::Successful))
        .repeatedly()
        .build();
    let group = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
        .sequence()
        .output(one_old_instance)
        .times(2)
        .error(|| DescribeAutoScalingGroupsError::generic(meta("Throttling", "Rate exceeded")))
        .times(4)
        .output(one_old_instance)
        .repeatedly()
        .build();
    let rollback = mock!(aws_sdk_autoscaling::Client::rollback_instance_refresh)
        .then_output(|| RollbackInstanceRefreshOutput::builder().build());
    let (activities, health) = (no_activities(), no_targets());
    let clients = clients_of(
        &[],
        &[&describe, &group, &rollback, &activities],
        &[&health],
    );
    let (config, plan, stack) = rollout_parts();
    refresh::watch(
        &clients,
        &plan,
        &stack,
        &config.rollout["web"],
        Some("refresh-1"),
        &progress(),
    )
    .await
    .expect("throttling is a reason to look again");
    assert_eq!(rollback.num_calls(), 0);
    assert!(
        describe.num_calls() >= 9,
        "every throttled answer reached the watch"
    );
    assert!(group.num_calls() >= 7, "and every throttled group describe");
}

#[tokio::test(start_paused = true)]
async fn stack_removal_rides_out_the_load_balancers_teardown_lag() {
    let delete_lb = mock!(aws_sdk_elasticloadbalancingv2::Client::delete_load_balancer)
        .then_output(|| DeleteLoadBalancerOutput::builder().build());
    let delete_tg = mock!(aws_sdk_elasticloadbalancingv2::Client::delete_target_group)
        .sequence()
        .error(|| {
            DeleteTargetGroupError::generic(meta(
                "ResourceInUse",
                "Target group 'arn:tg' is currently in use by a listener or a rule",
            ))
        })
        .times(3)
        .output(|| DeleteTargetGroupOutput::builder().build())
        .build();
    let delete_sg = mock!(aws_sdk_ec2::Client::delete_security_group)
        .sequence()
        .error(|| {
            DeleteSecurityGroupError::generic(meta(
                "DependencyViolation",
                "resource sg-alb has a dependent object",
            ))
        })
        .times(2)
        .output(|| DeleteSecurityGroupOutput::builder().build())
        .repeatedly()
        .build();
    let clients = clients_of(
        &[&delete_sg, &no_rules(), &no_endpoint_groups()],
        &[],
        &[&delete_lb, &delete_tg],
    );
    let created = [
        Resource::SecurityGroup("sg-alb".into()),
        Resource::SecurityGroup("sg-inst".into()),
        Resource::TargetGroup("arn:tg".into()),
        Resource::LoadBalancer("arn:lb".into()),
    ];
    janitor::delete(&clients, &created).await.unwrap();
    assert_eq!(delete_lb.num_calls(), 1);
    assert_eq!(delete_tg.num_calls(), 4);
    assert_eq!(delete_sg.num_calls(), 4, "two refusals, then both groups");
}

#[tokio::test(start_paused = true)]
async fn stack_removal_keeps_going_past_an_error_and_names_what_is_left() {
    let delete_lb = mock!(aws_sdk_elasticloadbalancingv2::Client::delete_load_balancer)
        .then_output(|| DeleteLoadBalancerOutput::builder().build());
    let delete_tg =
        mock!(aws_sdk_elasticloadbalancingv2::Client::delete_target_group).then_error(|| {
            DeleteTargetGroupError::generic(meta(
                "AccessDenied",
                "not authorized to perform: elasticloadbalancing:DeleteTargetGroup",
            ))
        });
    let delete_sg = mock!(aws_sdk_ec2::Client::delete_security_group)
        .then_output(|| DeleteSecurityGroupOutput::builder().build());
    let clients = clients_of(
        &[&delete_sg, &no_rules(), &no_endpoint_groups()],
        &[],
        &[&delete_lb, &delete_tg],
    );
    let created = [
        Resource::SecurityGroup("sg-alb".into()),
        Resource::TargetGroup("arn:tg".into()),
        Resource::LoadBalancer("arn:lb".into()),
        Resource::SecurityGroup("sg-inst".into()),
    ];
    let err = janitor::delete(&clients, &created).await.unwrap_err();
    assert_eq!(delete_tg.num_calls(), 1, "a refusal is not retried");
    assert_eq!(
        delete_sg.num_calls(),
        2,
        "both security groups were still removed"
    );
    assert_eq!(delete_lb.num_calls(), 1);
    let message = err.to_string();
    assert!(
        message.contains("target group arn:tg (AccessDenied: not authorized"),
        "{message}"
    );
    assert!(!message.contains("sg-"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn a_stack_that_fails_half_way_removes_what_this_run_created() {
    let no_groups = mock!(aws_sdk_ec2::Client::describe_security_groups)
        .then_output(|| DescribeSecurityGroupsOutput::builder().build());
    let create_group = mock!(aws_sdk_ec2::Client::create_security_group)
        .sequence()
        .output(|| {
            CreateSecurityGroupOutput::builder()
                .group_id("sg-alb")
                .build()
        })
        .output(|| {
            CreateSecurityGroupOutput::builder()
                .group_id("sg-inst")
                .build()
        })
        .build();
    let authorize = mock!(aws_sdk_ec2::Client::authorize_security_group_ingress)
        .then_output(|| AuthorizeSecurityGroupIngressOutput::builder().build());
    let delete_group = mock!(aws_sdk_ec2::Client::delete_security_group)
        .then_output(|| DeleteSecurityGroupOutput::builder().build());
    let no_target_group = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_groups)
        .then_error(|| {
            DescribeTargetGroupsError::generic(meta("TargetGroupNotFound", "not found"))
        });
    let create_target_group = mock!(aws_sdk_elasticloadbalancingv2::Client::create_target_group)
        .then_output(|| {
            CreateTargetGroupOutput::builder()
                .target_groups(TargetGroup::builder().target_group_arn("arn:tg").build())
                .build()
        });
    let attributes = mock!(aws_sdk_elasticloadbalancingv2::Client::modify_target_group_attributes)
        .then_output(|| ModifyTargetGroupAttributesOutput::builder().build());
    let no_balancer = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_load_balancers)
        .then_error(|| {
            DescribeLoadBalancersError::generic(meta("LoadBalancerNotFound", "not found"))
        });
    let quota =
        mock!(aws_sdk_elasticloadbalancingv2::Client::create_load_balancer).then_error(|| {
            CreateLoadBalancerError::generic(meta(
                "TooManyLoadBalancers",
                "The quota for the number of load balancers has been reached",
            ))
        });
    let delete_target_group = mock!(aws_sdk_elasticloadbalancingv2::Client::delete_target_group)
        .match_requests(|r| r.target_group_arn() == Some("arn:tg"))
        .then_output(|| DeleteTargetGroupOutput::builder().build());
    let clients = clients_of(
        &[
            &no_groups,
            &create_group,
            &authorize,
            &delete_group,
            &no_rules(),
        ],
        &[],
        &[
            &no_target_group,
            &create_target_group,
            &attributes,
            &no_balancer,
            &quota,
            &delete_target_group,
        ],
    );
    let (config, plan, _) = rollout_parts();
    let janitor = Janitor::new(clients.clone(), "run-1".into());
    let err = stack::ensure(&clients, &plan, &config.rollout["web"], &janitor)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TooManyLoadBalancers"), "{err}");
    assert_eq!(delete_target_group.num_calls(), 1);
    assert_eq!(delete_group.num_calls(), 2, "both security groups go");
}

#[test]
fn preflight_refuses_instance_subnets_in_zones_the_load_balancer_does_not_cover() {
    let alb = [
        subnet("subnet-a", "ap-northeast-2a"),
        subnet("subnet-c", "ap-northeast-2c"),
    ];
    let inside = [subnet("subnet-pa", "ap-northeast-2a")];
    preflight::check_zones(&alb, &inside).unwrap();
    let outside = [
        subnet("subnet-pa", "ap-northeast-2a"),
        subnet("subnet-pb", "ap-northeast-2b"),
    ];
    let err = preflight::check_zones(&alb, &outside).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    let message = err.to_string();
    assert!(
        message.starts_with("subnet subnet-pb is in ap-northeast-2b, where the load balancer"),
        "{message}"
    );
    assert!(message.contains("Target.NotInUse"), "{message}");
}

/// Web-ASG on version `version` of launch template Web (lt-1), with the `bake:served` history
/// `served` (no tag when none).
fn group_on(version: &'static str, served: Option<&'static str>) -> Rule {
    mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups).then_output(move || {
        let mut group = AutoScalingGroup::builder()
            .auto_scaling_group_name("Web-ASG")
            .launch_template(
                LaunchTemplateSpecification::builder()
                    .launch_template_id("lt-1")
                    .launch_template_name("Web")
                    .version(version)
                    .build(),
            );
        if let Some(served) = served {
            group = group.tags(
                aws_sdk_autoscaling::types::TagDescription::builder()
                    .key("bake:served")
                    .value(served)
                    .build(),
            );
        }
        DescribeAutoScalingGroupsOutput::builder()
            .auto_scaling_groups(group.build())
            .build()
    })
}

/// Launch template lt-1 has no version `version` (EC2's answer for a version it does not hold).
fn no_version(version: &'static str) -> Rule {
    mock!(aws_sdk_ec2::Client::describe_launch_template_versions)
        .match_requests(move |r| r.versions() == [version])
        .then_error(|| {
            aws_sdk_ec2::operation::describe_launch_template_versions::DescribeLaunchTemplateVersionsError::generic(
                meta("InvalidLaunchTemplateId.VersionNotFound", "Could not find the version"),
            )
        })
}

#[tokio::test]
async fn rollback_of_a_group_on_its_first_version_with_no_history_asks_for_to() {
    let (config, _, _) = rollout_parts();
    let group = group_on("1", None);
    let clients = clients_of(&[], &[&group], &[]);
    let rollout = &config.rollout["web"];
    let err = rollback::run(&clients, &config, "web", rollout, None, &progress())
        .await
        .unwrap_err();
    assert!(
        matches!(err, rollback::Error::NoPrevious { current: 1, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("name one with --to"), "{err}");
    assert_eq!(err.exit_code(), 1);
}

#[tokio::test]
async fn rollback_goes_to_the_version_served_before_not_the_one_numbered_before() {
    let (config, _, _) = rollout_parts();
    // Served 2 then 5 (3 and 4 were made and never served): "before" is 2, not 4.
    let group = group_on("5", Some("2,5"));
    let missing = no_version("2");
    let clients = clients_of(&[&missing], &[&group], &[]);
    let rollout = &config.rollout["web"];
    let err = rollback::run(&clients, &config, "web", rollout, None, &progress())
        .await
        .unwrap_err();
    assert!(
        matches!(err, rollback::Error::NoVersion { version: 2, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn rollback_to_a_version_the_template_lacks_names_it_and_the_region() {
    let (config, _, _) = rollout_parts();
    let group = group_on("5", Some("2,5"));
    let missing = no_version("9");
    let clients = clients_of(&[&missing], &[&group], &[]);
    let rollout = &config.rollout["web"];
    let err = rollback::run(&clients, &config, "web", rollout, Some(9), &progress())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "launch template Web has no version 9 in ap-northeast-2"
    );
}

/// An image of ap-northeast-2 whose one snapshot is encrypted with `key` (None: unencrypted).
fn encrypted_image(key: Option<&'static str>) -> (aws_sdk_ec2::types::Image, Rule) {
    use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, Image, Snapshot};
    let image = Image::builder()
        .image_id("ami-1")
        .owner_id("123456789012")
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(EbsBlockDevice::builder().snapshot_id("snap-1").build())
                .build(),
        )
        .build();
    let snapshots = mock!(aws_sdk_ec2::Client::describe_snapshots)
        .match_requests(|r| r.snapshot_ids() == ["snap-1"])
        .then_output(move || {
            aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput::builder()
                .snapshots(
                    Snapshot::builder()
                        .snapshot_id("snap-1")
                        .encrypted(key.is_some())
                        .set_kms_key_id(key.map(str::to_owned))
                        .build(),
                )
                .build()
        });
    (image, snapshots)
}

/// DescribeKey answering a key of `manager` in `state`.
fn key_described(
    manager: aws_sdk_kms::types::KeyManagerType,
    state: aws_sdk_kms::types::KeyState,
) -> Rule {
    mock!(aws_sdk_kms::Client::describe_key).then_output(move || {
        aws_sdk_kms::operation::describe_key::DescribeKeyOutput::builder()
            .key_metadata(
                aws_sdk_kms::types::KeyMetadata::builder()
                    .key_id("k")
                    .key_manager(manager.clone())
                    .key_state(state.clone())
                    .build()
                    .unwrap(),
            )
            .build()
    })
}

const KEY: &str = "arn:aws:kms:ap-northeast-2:123456789012:key/k";
const ROLE: &str = "arn:aws:iam::123456789012:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling";

fn grants(grantees: &'static [&'static str]) -> Rule {
    mock!(aws_sdk_kms::Client::list_grants).then_output(move || {
        aws_sdk_kms::operation::list_grants::ListGrantsOutput::builder()
            .set_grants(Some(
                grantees
                    .iter()
                    .map(|g| {
                        aws_sdk_kms::types::GrantListEntry::builder()
                            .grantee_principal(*g)
                            .build()
                    })
                    .collect(),
            ))
            .truncated(false)
            .build()
    })
}

fn key_policy(policy: String) -> Rule {
    mock!(aws_sdk_kms::Client::get_key_policy).then_output(move || {
        aws_sdk_kms::operation::get_key_policy::GetKeyPolicyOutput::builder()
            .policy(policy.clone())
            .build()
    })
}

#[tokio::test]
async fn a_customer_key_the_auto_scaling_role_may_not_use_stops_the_rollout_before_any_change() {
    use aws_sdk_kms::types::{KeyManagerType, KeyState};
    let owner_only = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
         "Action": "kms:*", "Resource": "*"}]})
    .to_string();
    let role_allowed = serde_json::json!({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": [ROLE]},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                    "kms:DescribeKey"], "Resource": "*"},
        {"Effect": "Allow", "Principal": {"AWS": ROLE}, "Action": "kms:CreateGrant",
         "Resource": "*"}]})
    .to_string();
    let check = |kms: Vec<Rule>, key: Option<&'static str>| async move {
        let (image, snapshots) = encrypted_image(key);
        let kms: Vec<&Rule> = kms.iter().collect();
        let clients = Answers {
            ec2: &[&snapshots],
            kms: &kms,
            ..Answers::default()
        }
        .clients("ap-northeast-2");
        preflight::check_snapshot_keys(&clients, &image).await
    };

    // No grant and a key policy naming only the owner: refused, with the grant to create.
    let refused = check(
        vec![
            key_described(KeyManagerType::Customer, KeyState::Enabled),
            grants(&["arn:aws:iam::123456789012:role/someone-else"]),
            key_policy(owner_only.clone()),
        ],
        Some(KEY),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("ami-1") && refused.contains(KEY),
        "{refused}"
    );
    assert!(
        refused.contains("AWSServiceRoleForAutoScaling"),
        "{refused}"
    );
    assert!(
        refused.contains(&format!("--grantee-principal {ROLE}")),
        "{refused}"
    );

    // A grant to the role, or a key policy giving it what the Auto Scaling page lists: fine.
    check(
        vec![
            key_described(KeyManagerType::Customer, KeyState::Enabled),
            grants(&[ROLE]),
        ],
        Some(KEY),
    )
    .await
    .unwrap();
    check(
        vec![
            key_described(KeyManagerType::Customer, KeyState::Enabled),
            grants(&[]),
            key_policy(role_allowed.clone()),
        ],
        Some(KEY),
    )
    .await
    .unwrap();
    // The policy without CreateGrant is not enough.
    let no_grant_action = role_allowed.replace("kms:CreateGrant", "kms:ListGrants");
    assert!(
        check(
            vec![
                key_described(KeyManagerType::Customer, KeyState::Enabled),
                grants(&[]),
                key_policy(no_grant_action),
            ],
            Some(KEY),
        )
        .await
        .is_err()
    );
    // An AWS managed key and an unencrypted snapshot need nothing (no grant is read: no rule).
    check(
        vec![key_described(KeyManagerType::Aws, KeyState::Enabled)],
        Some(KEY),
    )
    .await
    .unwrap();
    check(vec![], None).await.unwrap();
    // A disabled key: refused, saying so.
    let disabled = check(
        vec![key_described(KeyManagerType::Customer, KeyState::Disabled)],
        Some(KEY),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(disabled.contains("is Disabled"), "{disabled}");
}
