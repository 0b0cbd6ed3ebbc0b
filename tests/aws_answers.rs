//! AWS answers the lab cannot produce, replayed with aws-smithy-mocks: an image that fails,
//! a security group held by a lingering network interface, an instance profile still propagating,
//! an AMI whose deprecation time has passed. (Rollout answers are in tests/rollout_answers.rs.)

#[path = "support/mocks.rs"]
mod mocks;

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
use aws_smithy_mocks::{Rule, mock};

use bake::ami::preflight::{BaseAmi, Plan};
use bake::ami::{image, launch};
use bake::aws::Clients;
use bake::config::{Access, Builder, Egress, Endpoints, Os, ResourceRef, Volume};
use bake::janitor::{self, Janitor};
use bake::render::Rendered;
use bake::resolve::{DefaultRoute, Routing, Subnet};
use mocks::{clients_of, meta, progress};

fn clients(ec2_rules: &[&Rule]) -> Clients {
    clients_of(ec2_rules, &[], &[])
}

/// `image::create` of `plan`'s AMI from builder i-builder, with its own name and no extra tags.
async fn create_image(
    clients: &Clients,
    plan: &Plan,
    janitor: &Janitor,
) -> Result<(String, String), image::Error> {
    image::create(
        clients,
        plan,
        "i-builder",
        &plan.ami_name,
        false,
        &[],
        janitor,
        &progress(),
    )
    .await
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
        routing: Routing {
            id: "rtb-a".into(),
            main: false,
            default_route: Some(DefaultRoute::InternetGateway("igw-lab".into())),
        },
        access: Access::Public,
        instance_profile: "SSMInstanceProfile".into(),
        allow_cidr: "198.51.100.7/32".into(),
        rendered: Rendered {
            script: "#!/bin/bash\n".into(),
            payload: b"#!/bin/bash\n".to_vec(),
            compressed: false,
            digest: "d".repeat(64),
            inputs: Default::default(),
        },
        ami_name: "web-20261122-dddddddddddd".into(),
        egress: None,
        endpoints: None,
        distribute: Default::default(),
    }
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
    let err = create_image(&clients, &plan, &janitor).await.unwrap_err();
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
        DeleteSecurityGroupError::generic(meta(
            "DependencyViolation",
            "resource sg-1 has a dependent object",
        ))
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
    let delete = mock!(aws_sdk_ec2::Client::delete_security_group)
        .then_error(|| DeleteSecurityGroupError::generic(meta("UnauthorizedOperation", "no")));
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
        access: None,
        endpoints: toml::Spanned::new(0..0, Endpoints::Require),
        egress: toml::Spanned::new(0..0, Egress::Existing),
        nat_subnet: None,
    }
}

fn profile_not_ready() -> RunInstancesError {
    RunInstancesError::generic(meta(
        "InvalidParameterValue",
        "Value (SSMInstanceProfile) for parameter iamInstanceProfile.name is invalid. Invalid IAM Instance Profile name",
    ))
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
    let plan = plan();
    let spec = launch::Spec::builder(&plan, janitor.run_id());
    let id = launch::instance(&clients, &plan, &builder(), &spec, "sg-1", &[], &janitor)
        .await
        .unwrap();
    assert_eq!(id, "i-builder");
    assert_eq!(run.num_calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn launch_fails_at_once_on_other_invalid_parameters() {
    let run = mock!(aws_sdk_ec2::Client::run_instances).then_error(|| {
        RunInstancesError::generic(meta(
            "InvalidParameterValue",
            "Invalid value 't3.mega' for InstanceType",
        ))
    });
    let clients = clients(&[&run]);
    let janitor = Janitor::new(clients.clone(), "run-1".into());
    let plan = plan();
    let spec = launch::Spec::builder(&plan, janitor.run_id());
    let err = launch::instance(&clients, &plan, &builder(), &spec, "sg-1", &[], &janitor)
        .await
        .unwrap_err();
    assert_eq!(run.num_calls(), 1);
    assert!(err.to_string().contains("t3.mega"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_test_instance_launches_the_new_ami_without_user_data_and_a_token_of_its_own() {
    let run = mock!(aws_sdk_ec2::Client::run_instances)
        .match_requests(|r| {
            r.image_id() == Some("ami-new")
                && r.user_data().is_none()
                && r.client_token().is_some_and(|t| {
                    t.len() <= 64 && t != "20261122t113045-9f3a1c-web" && t.starts_with("test-")
                })
                && r.metadata_options()
                    .and_then(|m| m.http_tokens())
                    .map(|t| t.as_str())
                    == Some("required")
                && r.block_device_mappings()[0]
                    .ebs()
                    .and_then(|e| e.encrypted())
                    == Some(true)
                && r.network_interfaces()[0].groups() == ["sg-builder"]
        })
        .then_output(|| {
            RunInstancesOutput::builder()
                .instances(Instance::builder().instance_id("i-test").build())
                .build()
        });
    let clients = clients(&[&run]);
    let janitor = Janitor::new(clients.clone(), "20261122t113045-9f3a1c".into());
    let plan = plan();
    let spec = launch::Spec::test(&plan, janitor.run_id(), "ami-new");
    let id = launch::instance(
        &clients,
        &plan,
        &builder(),
        &spec,
        "sg-builder",
        &[],
        &janitor,
    )
    .await
    .unwrap();
    assert_eq!((id.as_str(), run.num_calls()), ("i-test", 1));
    assert_eq!(
        janitor.recorded(),
        [bake::janitor::Resource::Instance("i-test".into())],
        "cleaned up with the run"
    );
}

/// What `image::create` did when its first CreateImage was answered InvalidAMIName.Duplicate
/// (the second answered `ami-other`): the id and name it took, its CreateImage calls and its
/// listings of the taken names.
struct AfterClash {
    id: String,
    name: String,
    creates: usize,
    listings: usize,
}

/// `image::create` for run `run-1` in an account where DescribeImages lists the images named
/// `plan().ami_name` + each of `taken` (the first tagged with `owner_run`, if given) and finds
/// `ami-other` available by id.
async fn create_after_clash(
    taken: &'static [&'static str],
    owner_run: Option<&'static str>,
) -> AfterClash {
    let duplicate = || {
        aws_sdk_ec2::operation::create_image::CreateImageError::generic(meta(
            "InvalidAMIName.Duplicate",
            "AMI name web-20261122-dddddddddddd is already in use by AMI ami-taken0",
        ))
    };
    let create = mock!(aws_sdk_ec2::Client::create_image)
        .sequence()
        .error(duplicate)
        .output(|| CreateImageOutput::builder().image_id("ami-other").build())
        .build();
    let listing = mock!(aws_sdk_ec2::Client::describe_images)
        .match_requests(|r| r.image_ids().is_empty())
        .then_output(move || {
            let base = plan().ami_name;
            let mut out = DescribeImagesOutput::builder();
            for (n, suffix) in taken.iter().enumerate() {
                let tag = aws_sdk_ec2::types::Tag::builder().key(bake::tags::RUN_ID);
                let image = Image::builder()
                    .image_id(format!("ami-taken{n}"))
                    .name(format!("{base}{suffix}"))
                    .state(ImageState::Available)
                    .set_tags(
                        owner_run
                            .filter(|_| n == 0)
                            .map(|run| vec![tag.value(run).build()]),
                    );
                out = out.images(image.build());
            }
            out.build()
        });
    let by_id = mock!(aws_sdk_ec2::Client::describe_images)
        .match_requests(|r| !r.image_ids().is_empty())
        .then_output(|| {
            let image = Image::builder()
                .image_id("ami-other")
                .state(ImageState::Available);
            DescribeImagesOutput::builder()
                .images(image.build())
                .build()
        });
    let clients = clients(&[&create, &listing, &by_id]);
    let janitor = Janitor::new(clients.clone(), "run-1".into());
    let plan = plan();
    let (id, name) = create_image(&clients, &plan, &janitor).await.unwrap();
    let name = name
        .strip_prefix(&plan.ami_name)
        .unwrap_or(&name)
        .to_owned();
    AfterClash {
        id,
        name,
        creates: create.num_calls(),
        listings: listing.num_calls(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_taken_ami_name_gets_the_next_free_suffix() {
    let done = create_after_clash(&[""], None).await;
    assert_eq!((done.id.as_str(), done.name.as_str()), ("ami-other", "-2"));
    assert_eq!(done.creates, 2);
}

#[tokio::test(start_paused = true)]
async fn after_one_clash_one_listing_skips_every_taken_suffix() {
    let done = create_after_clash(&["", "-2", "-3"], None).await;
    assert_eq!((done.id.as_str(), done.name.as_str()), ("ami-other", "-4"));
    // The clash, one listing, and the create that took the first free name.
    assert_eq!((done.creates, done.listings), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn create_image_retried_by_the_sdk_finds_its_own_image_instead_of_making_a_second() {
    // The first CreateImage made the image but its answer was lost; the SDK's retry finds the
    // name taken. The image that holds it carries this run's id: bake takes it, makes no `-2`.
    let done = create_after_clash(&[""], Some("run-1")).await;
    assert_eq!((done.id.as_str(), done.name.as_str()), ("ami-taken0", ""));
    assert_eq!(done.creates, 1, "no second image");
}

#[tokio::test]
async fn an_ami_whose_test_failed_or_is_unfinished_does_not_count_as_baked() {
    let with_test = |id: &str, created: &str, verdict: &str| {
        let mut image = baked(id, created, None);
        image.tags = Some(vec![bake::tags::tag("bake:test", verdict)]);
        image
    };
    let found = mock!(aws_sdk_ec2::Client::describe_images).then_output(move || {
        DescribeImagesOutput::builder()
            .images(baked("ami-untagged", "2026-01-01T00:00:00.000Z", None))
            .images(with_test(
                "ami-passed",
                "2026-02-01T00:00:00.000Z",
                "passed",
            ))
            .images(with_test(
                "ami-failed",
                "2026-03-01T00:00:00.000Z",
                "failed",
            ))
            .images(with_test(
                "ami-pending",
                "2026-04-01T00:00:00.000Z",
                "pending",
            ))
            .build()
    });
    let clients = clients(&[&found]);
    let newest = image::existing(&clients, &plan()).await.unwrap();
    assert_eq!(
        newest.and_then(|i| i.image_id).as_deref(),
        Some("ami-passed"),
        "the newest AMI whose test passed, not the newer failed or unfinished ones"
    );
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

fn page_of(id: &str, next: Option<&str>) -> DescribeInstancesOutput {
    DescribeInstancesOutput::builder()
        .reservations(
            aws_sdk_ec2::types::Reservation::builder()
                .instances(Instance::builder().instance_id(id).build())
                .build(),
        )
        .set_next_token(next.map(str::to_owned))
        .build()
}

#[tokio::test]
async fn a_paged_listing_reads_every_page_asking_for_each_with_the_last_token() {
    let first = mock!(aws_sdk_ec2::Client::describe_instances)
        .match_requests(|r| r.next_token().is_none())
        .then_output(|| page_of("i-1", Some("page-2")));
    let second = mock!(aws_sdk_ec2::Client::describe_instances)
        .match_requests(|r| r.next_token() == Some("page-2"))
        .then_output(|| page_of("i-2", None));
    let clients = clients(&[&first, &second]);
    let found = bake::resolve::live_instances(&clients, Vec::new())
        .await
        .unwrap();
    let ids: Vec<_> = found.iter().filter_map(|i| i.instance_id()).collect();
    assert_eq!(ids, ["i-1", "i-2"]);
    assert_eq!((first.num_calls(), second.num_calls()), (1, 1));
}

#[tokio::test]
async fn a_listing_longer_than_its_bound_fails_naming_it_rather_than_answer_part() {
    // Every page says another follows: the listing stops at its bound, and says so, rather than
    // hand prune or gc part of the account as the whole.
    let endless = mock!(aws_sdk_ec2::Client::describe_instances)
        .then_output(|| page_of("i-1", Some("again")));
    let clients = clients(&[&endless]);
    let err = bake::resolve::live_instances(&clients, Vec::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("list instances"), "{err}");
    assert!(err.contains("more than 100 pages"), "{err}");
    assert_eq!(endless.num_calls(), 100);
}
