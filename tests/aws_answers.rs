//! AWS answers the lab cannot produce, replayed with aws-smithy-mocks: an image that fails,
//! a security group held by a lingering network interface, an instance profile still propagating,
//! an instance refresh that AWS rolls back on its own, an AMI whose deprecation time has passed.

use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation::create_image::CreateImageOutput;
use aws_sdk_ec2::operation::delete_security_group::{
    DeleteSecurityGroupError, DeleteSecurityGroupOutput,
};
use aws_sdk_ec2::operation::delete_snapshot::DeleteSnapshotOutput;
use aws_sdk_ec2::operation::deregister_image::DeregisterImageOutput;
use aws_sdk_ec2::operation::describe_images::DescribeImagesOutput;
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::operation::describe_security_groups::DescribeSecurityGroupsOutput;
use aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput;
use aws_sdk_ec2::operation::run_instances::{RunInstancesError, RunInstancesOutput};
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Image, ImageState, Instance, Snapshot, StateReason,
};
use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, create_mock_http_client, mock};

use aws_sdk_autoscaling::operation::describe_auto_scaling_groups::DescribeAutoScalingGroupsOutput;
use aws_sdk_autoscaling::operation::describe_instance_refreshes::DescribeInstanceRefreshesOutput;
use aws_sdk_autoscaling::operation::rollback_instance_refresh::RollbackInstanceRefreshOutput;
use aws_sdk_autoscaling::types::{
    AutoScalingGroup, InstanceRefresh, InstanceRefreshStatus, LaunchTemplateSpecification,
    LifecycleState,
};
use aws_sdk_ec2::operation::authorize_security_group_ingress::AuthorizeSecurityGroupIngressOutput;
use aws_sdk_ec2::operation::create_security_group::CreateSecurityGroupOutput;
use aws_sdk_elasticloadbalancingv2::operation::create_load_balancer::CreateLoadBalancerError;
use aws_sdk_elasticloadbalancingv2::operation::create_target_group::CreateTargetGroupOutput;
use aws_sdk_elasticloadbalancingv2::operation::delete_target_group::DeleteTargetGroupOutput;
use aws_sdk_elasticloadbalancingv2::operation::describe_load_balancers::DescribeLoadBalancersError;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::DescribeTargetGroupsError;
use aws_sdk_elasticloadbalancingv2::operation::describe_target_health::DescribeTargetHealthOutput;
use aws_sdk_elasticloadbalancingv2::operation::modify_target_group_attributes::ModifyTargetGroupAttributesOutput;
use aws_sdk_elasticloadbalancingv2::types::TargetGroup;
use bake::ami::preflight::{BaseAmi, Plan, Subnet};
use bake::ami::{image, launch};
use bake::aws::Clients;
use bake::config::{Builder, Os, ResourceRef, Volume};
use bake::janitor::{self, Janitor};
use bake::output::Progress;
use bake::render::Rendered;
use bake::rollout::refresh;
use bake::rollout::stack::{self, Stack};

/// A client of `$sdk` answered by `rules` (this SDK version predates `mock_client!`'s defaults).
macro_rules! mocked {
    ($sdk:ident, $rules:expr) => {{
        let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
        for rule in $rules {
            interceptor = interceptor.with_rule(rule);
        }
        $sdk::Client::from_conf(
            $sdk::Config::builder()
                .with_test_defaults()
                .region($sdk::config::Region::new("ap-northeast-2"))
                .http_client(create_mock_http_client())
                .interceptor(interceptor)
                .build(),
        )
    }};
}

fn clients(ec2_rules: &[&Rule]) -> Clients {
    clients_of(ec2_rules, &[], &[])
}

fn clients_of(ec2_rules: &[&Rule], autoscaling_rules: &[&Rule], elb_rules: &[&Rule]) -> Clients {
    Clients {
        autoscaling: mocked!(aws_sdk_autoscaling, autoscaling_rules),
        ec2: mocked!(aws_sdk_ec2, ec2_rules),
        elb: mocked!(aws_sdk_elasticloadbalancingv2, elb_rules),
        ssm: mocked!(aws_sdk_ssm, &[] as &[&Rule]),
        iam: mocked!(aws_sdk_iam, &[] as &[&Rule]),
        region: "ap-northeast-2".into(),
    }
}

fn plan() -> Plan {
    Plan {
        image: "web".into(),
        template: "nginx".into(),
        os: Os::Debian,
        base: BaseAmi {
            id: "ami-base".into(),
            name: "debian-12-amd64-20261101-1".into(),
            root_device: "/dev/xvda".into(),
        },
        subnet: Subnet {
            id: "subnet-a".into(),
            vpc_id: "vpc-lab".into(),
            zone: "ap-northeast-2a".into(),
        },
        instance_profile: "SSMInstanceProfile".into(),
        allow_cidr: "198.51.100.7/32".into(),
        rendered: Rendered {
            script: "#!/bin/bash\n".into(),
            payload: b"#!/bin/bash\n".to_vec(),
            compressed: false,
            digest: "d".repeat(64),
        },
        ami_name: "web-20261122-dddddddddddd".into(),
    }
}

fn progress() -> Progress {
    Progress::new(
        &indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()),
        "web",
    )
}

fn failed_image() -> Image {
    Image::builder()
        .image_id("ami-new")
        .state(ImageState::Failed)
        .state_reason(
            StateReason::builder()
                .code("Client.InternalError")
                .message("snapshot creation failed")
                .build(),
        )
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/xvda")
                .ebs(EbsBlockDevice::builder().snapshot_id("snap-new").build())
                .build(),
        )
        .build()
}

#[tokio::test(start_paused = true)]
async fn a_failed_image_is_deregistered_and_its_snapshots_deleted() {
    let names = mock!(aws_sdk_ec2::Client::describe_images)
        .match_requests(|r| r.image_ids().is_empty())
        .then_output(|| {
            DescribeImagesOutput::builder()
                .images(failed_image())
                .build()
        });
    let create = mock!(aws_sdk_ec2::Client::create_image)
        .then_output(|| CreateImageOutput::builder().image_id("ami-new").build());
    let watch = mock!(aws_sdk_ec2::Client::describe_images)
        .match_requests(|r| r.image_ids() == ["ami-new"])
        .then_output(|| {
            DescribeImagesOutput::builder()
                .images(failed_image())
                .build()
        });
    let instances = mock!(aws_sdk_ec2::Client::describe_instances)
        .then_output(|| DescribeInstancesOutput::builder().build());
    let groups = mock!(aws_sdk_ec2::Client::describe_security_groups)
        .then_output(|| DescribeSecurityGroupsOutput::builder().build());
    let snapshots = mock!(aws_sdk_ec2::Client::describe_snapshots).then_output(|| {
        DescribeSnapshotsOutput::builder()
            .snapshots(Snapshot::builder().snapshot_id("snap-new").build())
            .build()
    });
    let deregister = mock!(aws_sdk_ec2::Client::deregister_image)
        .match_requests(|r| r.image_id() == Some("ami-new"))
        .then_output(|| DeregisterImageOutput::builder().build());
    let delete_snapshot = mock!(aws_sdk_ec2::Client::delete_snapshot)
        .match_requests(|r| r.snapshot_id() == Some("snap-new"))
        .then_output(|| DeleteSnapshotOutput::builder().build());
    let clients = clients(&[
        &watch,
        &names,
        &create,
        &instances,
        &groups,
        &snapshots,
        &deregister,
        &delete_snapshot,
    ]);
    let janitor = Janitor::new(clients.clone(), "run-1".into());
    let plan = plan();
    let err = image::create(
        &clients,
        &plan,
        "i-builder",
        &plan.ami_name,
        false,
        &[],
        &janitor,
        &progress(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "AMI ami-new in ap-northeast-2 failed: state failed (snapshot creation failed)"
    );
    assert_eq!(watch.num_calls(), 1, "a failed state ends the wait at once");
    let removed = janitor.clean().await.unwrap();
    assert_eq!(deregister.num_calls(), 1);
    assert_eq!(delete_snapshot.num_calls(), 1);
    assert_eq!(
        removed,
        vec![
            janitor::Resource::Image("ami-new".into()),
            janitor::Resource::Snapshot("snap-new".into())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn security_group_delete_is_retried_through_dependency_violation() {
    let violation = || {
        DeleteSecurityGroupError::generic(
            ErrorMetadata::builder()
                .code("DependencyViolation")
                .message("resource sg-1 has a dependent object")
                .build(),
        )
    };
    let delete = mock!(aws_sdk_ec2::Client::delete_security_group)
        .sequence()
        .error(violation)
        .times(3)
        .output(|| DeleteSecurityGroupOutput::builder().build())
        .build();
    let clients = clients(&[&delete]);
    let started = tokio::time::Instant::now();
    janitor::delete_security_group(&clients, "sg-1")
        .await
        .unwrap();
    assert_eq!(delete.num_calls(), 4);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(5),
        "retries wait between tries"
    );
}

#[tokio::test(start_paused = true)]
async fn security_group_delete_gives_up_on_other_errors_at_once() {
    let delete = mock!(aws_sdk_ec2::Client::delete_security_group).then_error(|| {
        DeleteSecurityGroupError::generic(
            ErrorMetadata::builder()
                .code("UnauthorizedOperation")
                .message("no")
                .build(),
        )
    });
    let clients = clients(&[&delete]);
    let err = janitor::delete_security_group(&clients, "sg-1")
        .await
        .unwrap_err();
    assert_eq!(delete.num_calls(), 1);
    assert!(err.to_string().contains("UnauthorizedOperation"), "{err}");
}

fn builder() -> Builder {
    Builder {
        instance_type: "t3.micro".into(),
        subnet: toml::Spanned::new(
            0..0,
            ResourceRef {
                id: Some("subnet-a".into()),
                tag: Default::default(),
            },
        ),
        instance_profile: toml::Spanned::new(0..0, "SSMInstanceProfile".into()),
        allow_cidr: toml::Spanned::new(0..0, "auto".into()),
        volume: Volume::default(),
    }
}

fn profile_not_ready() -> RunInstancesError {
    RunInstancesError::generic(
        ErrorMetadata::builder()
            .code("InvalidParameterValue")
            .message("Value (SSMInstanceProfile) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name")
            .build(),
    )
}

#[tokio::test(start_paused = true)]
async fn launch_waits_while_a_new_instance_profile_propagates() {
    let run = mock!(aws_sdk_ec2::Client::run_instances)
        .match_requests(|r| {
            r.metadata_options()
                .and_then(|m| m.http_tokens())
                .map(|t| t.as_str())
                == Some("required")
                && r.block_device_mappings()[0]
                    .ebs()
                    .and_then(|e| e.encrypted())
                    == Some(true)
        })
        .sequence()
        .error(profile_not_ready)
        .times(2)
        .output(|| {
            RunInstancesOutput::builder()
                .instances(Instance::builder().instance_id("i-builder").build())
                .build()
        })
        .build();
    let clients = clients(&[&run]);
    let janitor = Janitor::new(clients.clone(), "run-1".into());
    let id = launch::instance(&clients, &plan(), &builder(), "sg-1", &[], &janitor)
        .await
        .unwrap();
    assert_eq!(id, "i-builder");
    assert_eq!(run.num_calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn launch_fails_at_once_on_other_invalid_parameters() {
    let run = mock!(aws_sdk_ec2::Client::run_instances).then_error(|| {
        RunInstancesError::generic(
            ErrorMetadata::builder()
                .code("InvalidParameterValue")
                .message("Invalid value 't3.mega' for InstanceType")
                .build(),
        )
    });
    let clients = clients(&[&run]);
    let janitor = Janitor::new(clients.clone(), "run-1".into());
    let err = launch::instance(&clients, &plan(), &builder(), "sg-1", &[], &janitor)
        .await
        .unwrap_err();
    assert_eq!(run.num_calls(), 1);
    assert!(err.to_string().contains("t3.mega"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_taken_ami_name_gets_the_next_free_suffix() {
    let duplicate = || {
        aws_sdk_ec2::operation::create_image::CreateImageError::generic(
            ErrorMetadata::builder()
                .code("InvalidAMIName.Duplicate")
                .message("AMI name web-20261122-dddddddddddd is already in use by AMI ami-old")
                .build(),
        )
    };
    let create = mock!(aws_sdk_ec2::Client::create_image)
        .sequence()
        .error(duplicate)
        .output(|| CreateImageOutput::builder().image_id("ami-new").build())
        .build();
    let available = mock!(aws_sdk_ec2::Client::describe_images).then_output(|| {
        DescribeImagesOutput::builder()
            .images(
                Image::builder()
                    .image_id("ami-new")
                    .state(ImageState::Available)
                    .build(),
            )
            .build()
    });
    let clients = clients(&[&create, &available]);
    let janitor = Janitor::new(clients.clone(), "run-1".into());
    let plan = plan();
    let (id, name) = image::create(
        &clients,
        &plan,
        "i-builder",
        &plan.ami_name,
        false,
        &[],
        &janitor,
        &progress(),
    )
    .await
    .unwrap();
    assert_eq!(id, "ami-new");
    assert_eq!(name, format!("{}-2", plan.ami_name));
    assert_eq!(create.num_calls(), 2);
}

fn baked(id: &str, created: &str, deprecated: Option<&str>) -> Image {
    Image::builder()
        .image_id(id)
        .state(ImageState::Available)
        .creation_date(created)
        .set_deprecation_time(deprecated.map(Into::into))
        .build()
}

#[tokio::test]
async fn an_ami_past_its_deprecation_time_no_longer_counts_as_baked() {
    let found = mock!(aws_sdk_ec2::Client::describe_images)
        .sequence()
        .output(|| {
            DescribeImagesOutput::builder()
                .images(baked("ami-old", "2026-01-01T00:00:00.000Z", None))
                .images(baked(
                    "ami-current",
                    "2026-03-01T00:00:00.000Z",
                    Some("2099-01-01T00:00:00.000Z"),
                ))
                .images(baked(
                    "ami-deprecated",
                    "2026-05-01T00:00:00.000Z",
                    Some("2026-06-01T00:00:00.000Z"),
                ))
                .build()
        })
        .output(|| {
            DescribeImagesOutput::builder()
                .images(baked(
                    "ami-deprecated",
                    "2026-05-01T00:00:00.000Z",
                    Some("2026-06-01T00:00:00.000Z"),
                ))
                .build()
        })
        .build();
    let clients = clients(&[&found]);
    let newest = image::existing(&clients, &plan()).await.unwrap();
    assert_eq!(
        newest.and_then(|i| i.image_id).as_deref(),
        Some("ami-current"),
        "the newest AMI not yet deprecated"
    );
    let none = image::existing(&clients, &plan()).await.unwrap();
    assert!(none.is_none(), "only a deprecated one: bake anew");
}

/// A rollout's plan and stack as preflight and the stack step would leave them.
fn rollout_parts() -> (bake::config::Config, bake::rollout::preflight::Plan, Stack) {
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
refresh = { min_healthy = 50, warmup = "60s", timeout = "30m" }
"#;
    let config =
        bake::config::Config::parse(std::path::Path::new("bake.toml"), text.to_owned()).unwrap();
    let subnet = |id: &str, zone: &str| Subnet {
        id: id.into(),
        vpc_id: "vpc-lab".into(),
        zone: zone.into(),
    };
    let plan = bake::rollout::preflight::Plan {
        rollout: "web".into(),
        image: "web".into(),
        ami: bake::rollout::preflight::Ami {
            id: "ami-new".into(),
            name: "web-2".into(),
        },
        vpc_id: "vpc-lab".into(),
        alb_subnets: vec![subnet("subnet-a", "a"), subnet("subnet-c", "c")],
        instance_subnets: vec![subnet("subnet-pa", "a")],
        instance_profile: None,
        health: config.image["web"].health.clone(),
        names: bake::rollout::preflight::Names {
            alb: "Web-ALB".into(),
            alb_security_group: "Web-ALB-SG".into(),
            target_group: "Web-TG".into(),
            launch_template: "Web".into(),
            asg: "Web-ASG".into(),
            instance_security_group: "Web-ASG-Inst-SG".into(),
        },
    };
    let stack = Stack {
        alb_dns: "web-alb.example".into(),
        target_group_arn: "arn:tg".into(),
        launch_template_id: "lt-1".into(),
        version: 2,
        previous_version: Some("1".into()),
        group_created: false,
        unchanged: false,
        created: Vec::new(),
    };
    (config, plan, stack)
}

fn refreshes(status: InstanceRefreshStatus) -> DescribeInstanceRefreshesOutput {
    DescribeInstanceRefreshesOutput::builder()
        .instance_refreshes(
            InstanceRefresh::builder()
                .instance_refresh_id("refresh-1")
                .status(status)
                .status_reason("an instance failed its health checks")
                .build(),
        )
        .build()
}

/// Watches refresh-1 until it fails, then rolls it back; returns the failure and how many times
/// RollbackInstanceRefresh was called.
async fn watch_then_roll_back(describe: &Rule, group: &Rule) -> (String, usize) {
    let rollback = mock!(aws_sdk_autoscaling::Client::rollback_instance_refresh)
        .then_output(|| RollbackInstanceRefreshOutput::builder().build());
    let health = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_health)
        .then_output(|| DescribeTargetHealthOutput::builder().build());
    let clients = clients_of(&[], &[describe, group, &rollback], &[&health]);
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
    refresh::rollback(&clients, &plan, &stack, rollout, "refresh-1", &progress())
        .await
        .unwrap();
    (err.to_string(), rollback.num_calls())
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
    let group =
        mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups).then_output(|| {
            DescribeAutoScalingGroupsOutput::builder()
                .auto_scaling_groups(
                    AutoScalingGroup::builder()
                        .auto_scaling_group_name("Web-ASG")
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
        });
    let (err, rollbacks) = watch_then_roll_back(&describe, &group).await;
    assert_eq!(
        err,
        "the instance refresh of Web-ASG ended RollbackInProgress: an instance failed its health \
         checks"
    );
    assert_eq!(rollbacks, 0, "AWS was rolling back already");
    assert_eq!(describe.num_calls(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_that_ends_failed_without_rolling_back_is_rolled_back_by_bake() {
    let describe = mock!(aws_sdk_autoscaling::Client::describe_instance_refreshes)
        .sequence()
        .output(|| refreshes(InstanceRefreshStatus::Failed))
        .times(2)
        .output(|| refreshes(InstanceRefreshStatus::RollbackInProgress))
        .output(|| refreshes(InstanceRefreshStatus::RollbackSuccessful))
        .build();
    let group = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
        .then_output(|| DescribeAutoScalingGroupsOutput::builder().build());
    let (err, rollbacks) = watch_then_roll_back(&describe, &group).await;
    assert!(err.contains("ended Failed"), "{err}");
    assert_eq!(rollbacks, 1);
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
    let not_found = |code: &'static str| {
        ErrorMetadata::builder()
            .code(code)
            .message("not found")
            .build()
    };
    let no_target_group = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_groups)
        .then_error(move || DescribeTargetGroupsError::generic(not_found("TargetGroupNotFound")));
    let create_target_group = mock!(aws_sdk_elasticloadbalancingv2::Client::create_target_group)
        .then_output(|| {
            CreateTargetGroupOutput::builder()
                .target_groups(TargetGroup::builder().target_group_arn("arn:tg").build())
                .build()
        });
    let attributes = mock!(aws_sdk_elasticloadbalancingv2::Client::modify_target_group_attributes)
        .then_output(|| ModifyTargetGroupAttributesOutput::builder().build());
    let no_balancer = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_load_balancers)
        .then_error(move || DescribeLoadBalancersError::generic(not_found("LoadBalancerNotFound")));
    let quota =
        mock!(aws_sdk_elasticloadbalancingv2::Client::create_load_balancer).then_error(|| {
            CreateLoadBalancerError::generic(
                ErrorMetadata::builder()
                    .code("TooManyLoadBalancers")
                    .message("The quota for the number of load balancers has been reached")
                    .build(),
            )
        });
    let delete_target_group = mock!(aws_sdk_elasticloadbalancingv2::Client::delete_target_group)
        .match_requests(|r| r.target_group_arn() == Some("arn:tg"))
        .then_output(|| DeleteTargetGroupOutput::builder().build());
    let clients = clients_of(
        &[&no_groups, &create_group, &authorize, &delete_group],
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
    let err = stack::ensure(&clients, &plan, &config.rollout["web"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("TooManyLoadBalancers"), "{err}");
    assert_eq!(delete_target_group.num_calls(), 1);
    assert_eq!(delete_group.num_calls(), 2, "both security groups go");
}
