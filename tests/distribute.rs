//! Distribution (`[image.NAME.distribute]`): the KMS preflight per region and the copy stage
//! against answers the lab cannot produce (aws-smithy-mocks: throttling in one region only, a key
//! of the wrong kind), and against the lab: two regions and a second account, idempotence, a
//! copy forced to fail, and bad input at its line.

mod support;

use std::path::Path;
use std::time::Duration;

use aws_sdk_ec2::operation::copy_image::{CopyImageError, CopyImageOutput};
use aws_sdk_ec2::operation::delete_snapshot::DeleteSnapshotOutput;
use aws_sdk_ec2::operation::deregister_image::DeregisterImageOutput;
use aws_sdk_ec2::operation::describe_images::DescribeImagesOutput;
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::operation::describe_security_groups::DescribeSecurityGroupsOutput;
use aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput;
use aws_sdk_ec2::operation::enable_image_deprecation::EnableImageDeprecationOutput;
use aws_sdk_ec2::operation::modify_image_attribute::ModifyImageAttributeOutput;
use aws_sdk_ec2::operation::modify_snapshot_attribute::ModifySnapshotAttributeOutput;
use aws_sdk_ec2::operation::run_instances::RunInstancesOutput;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Image, ImageState, Instance, StateReason, Tag,
};
use aws_sdk_kms::operation::describe_key::{DescribeKeyError, DescribeKeyOutput};
use aws_sdk_kms::types::{KeyManagerType, KeyMetadata, KeySpec, KeyState};
use aws_smithy_mocks::{Rule, mock};

use bake::ami::copy::{self, Source};
use bake::ami::distribute::{self, CopyOutcome, Plan, Share, Target};
use bake::aws::Clients;
use bake::config::Config;
use bake::janitor::Janitor;
use support::mocks::{Answers, meta, progress};

/// Clients in ap-northeast-2 whose EC2 and KMS calls (in every region: `in_region` keeps the
/// mocks) are answered by the rules.
fn mocked_clients(ec2: &[&Rule], kms: &[&Rule]) -> Clients {
    Answers {
        ec2,
        kms,
        ..Answers::default()
    }
    .clients("ap-northeast-2")
}

const CONFIG: &str = r#"
[image.web]
base = { ssm = "/aws/service/debian/release/bookworm/latest/amd64" }
template = "nginx"
os = "debian"

[image.web.builder]
subnet = { tag = { Name = "Public subnet A" } }
instance_profile = "SSMInstanceProfile"

[image.web.distribute]
regions = ["ap-northeast-2", "us-east-1", "eu-west-1"]
accounts = ["111122223333"]
kms_key = { ap-northeast-2 = "alias/bake-apne2", us-east-1 = "alias/bake-use1", eu-west-1 = "KEY" }
"#;

fn config(eu_key: &str) -> Config {
    Config::parse(Path::new("bake.toml"), CONFIG.replace("KEY", eu_key)).unwrap()
}

fn key(id: &str, region: &str, state: KeyState, manager: KeyManagerType, spec: KeySpec) -> Rule {
    let arn = format!("arn:aws:kms:{region}:123456789012:key/{id}");
    let alias = format!("alias/{id}");
    mock!(aws_sdk_kms::Client::describe_key)
        .match_requests(move |r| r.key_id() == Some(alias.as_str()))
        .then_output(move || {
            DescribeKeyOutput::builder()
                .key_metadata(
                    KeyMetadata::builder()
                        .key_id("k")
                        .arn(&arn)
                        .key_state(state.clone())
                        .key_manager(manager.clone())
                        .key_spec(spec.clone())
                        .build()
                        .unwrap(),
                )
                .build()
        })
}

fn good(id: &str, region: &str) -> Rule {
    key(
        id,
        region,
        KeyState::Enabled,
        KeyManagerType::Customer,
        KeySpec::SymmetricDefault,
    )
}

#[tokio::test(start_paused = true)]
async fn preflight_resolves_each_regions_key_there_to_its_arn() {
    let kms = [
        good("bake-apne2", "ap-northeast-2"),
        good("bake-use1", "us-east-1"),
        good("bake-euw1", "eu-west-1"),
    ];
    let clients = mocked_clients(&[], &kms.iter().collect::<Vec<_>>());
    let config = config("alias/bake-euw1");
    let plan = distribute::plan(&clients, &config, "web", &config.image["web"])
        .await
        .unwrap();
    assert_eq!(
        plan.build_key.as_deref(),
        Some("arn:aws:kms:ap-northeast-2:123456789012:key/bake-apne2")
    );
    let copies: Vec<(&str, &str)> = plan
        .copies
        .iter()
        .map(|t| (t.region.as_str(), t.kms_key.as_deref().unwrap()))
        .collect();
    assert_eq!(
        copies,
        [
            (
                "us-east-1",
                "arn:aws:kms:us-east-1:123456789012:key/bake-use1"
            ),
            (
                "eu-west-1",
                "arn:aws:kms:eu-west-1:123456789012:key/bake-euw1"
            ),
        ],
        "the build region gets no copy; the others keep config order"
    );
    assert_eq!(plan.share.accounts, ["111122223333"]);
}

#[tokio::test(start_paused = true)]
async fn a_missing_alias_a_disabled_key_and_a_shared_aws_managed_key_exit_2_at_their_line() {
    let line = CONFIG.lines().count();
    let missing = mock!(aws_sdk_kms::Client::describe_key)
        .match_requests(|r| r.key_id() == Some("alias/nowhere"))
        .then_error(|| {
            DescribeKeyError::NotFoundException(
                aws_sdk_kms::types::error::NotFoundException::builder()
                    .message("Alias arn:aws:kms:eu-west-1:123456789012:alias/nowhere is not found.")
                    .meta(meta("NotFoundException", "Alias is not found."))
                    .build(),
            )
        });
    let disabled = key(
        "off",
        "eu-west-1",
        KeyState::Disabled,
        KeyManagerType::Customer,
        KeySpec::SymmetricDefault,
    );
    let managed = key(
        "theirs",
        "eu-west-1",
        KeyState::Enabled,
        KeyManagerType::Aws,
        KeySpec::SymmetricDefault,
    );
    let asymmetric = key(
        "rsa",
        "eu-west-1",
        KeyState::Enabled,
        KeyManagerType::Customer,
        KeySpec::Rsa2048,
    );
    let kms = [
        good("bake-apne2", "ap-northeast-2"),
        good("bake-use1", "us-east-1"),
        missing,
        disabled,
        managed,
        asymmetric,
    ];
    let clients = mocked_clients(&[], &kms.iter().collect::<Vec<_>>());
    for (key, says) in [
        ("alias/nowhere", "does not exist in this region"),
        ("alias/off", "is Disabled, not Enabled"),
        ("alias/theirs", "is an AWS managed key"),
        (
            "alias/rsa",
            "is a RSA_2048 key; EBS encrypts only with symmetric keys",
        ),
    ] {
        let config = config(key);
        // The eu-west-1 key's opening quote on the last line.
        let last = CONFIG.replace("KEY", key);
        let column = last
            .lines()
            .last()
            .unwrap()
            .find(&format!("\"{key}\""))
            .unwrap()
            + 1;
        let err = distribute::plan(&clients, &config, "web", &config.image["web"])
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(&format!(
                "bake.toml:{line}:{column}: image.web.distribute.kms_key: KMS key {key} in eu-west-1: {says}"
            )),
            "{msg}"
        );
        assert_eq!(err.exit_code(), 2, "{msg}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_builders_volume_is_encrypted_with_the_build_regions_key() {
    let key = "arn:aws:kms:ap-northeast-2:123456789012:key/bake-apne2";
    let run = mock!(aws_sdk_ec2::Client::run_instances)
        .match_requests(move |r| {
            let ebs = r.block_device_mappings()[0].ebs();
            ebs.and_then(|e| e.encrypted()) == Some(true)
                && ebs.and_then(|e| e.kms_key_id()) == Some(key)
        })
        .then_output(|| {
            RunInstancesOutput::builder()
                .instances(Instance::builder().instance_id("i-builder").build())
                .build()
        });
    let clients = mocked_clients(&[&run], &[]);
    let config = config("alias/bake-euw1");
    let janitor = Janitor::new(clients.clone(), RUN.into());
    let plan = bake::ami::preflight::Plan {
        image: "web".into(),
        template: "nginx".into(),
        os: bake::config::Os::Debian,
        base: bake::ami::preflight::BaseAmi {
            id: "ami-base".into(),
            name: "debian-12".into(),
            root_device: "/dev/xvda".into(),
        },
        subnet: bake::resolve::Subnet {
            id: "subnet-a".into(),
            vpc_id: "vpc-lab".into(),
            zone: "ap-northeast-2a".into(),
        },
        routing: bake::resolve::Routing {
            id: "rtb-a".into(),
            main: false,
            default_route: Some(bake::resolve::DefaultRoute::InternetGateway(
                "igw-lab".into(),
            )),
        },
        access: bake::config::Access::Public,
        instance_profile: "SSMInstanceProfile".into(),
        allow_cidr: "198.51.100.7/32".into(),
        rendered: bake::render::Rendered {
            script: "#!/bin/bash\n".into(),
            payload: b"#!/bin/bash\n".to_vec(),
            compressed: false,
            digest: "d".repeat(64),
            inputs: Default::default(),
        },
        ami_name: "web".into(),
        egress: None,
        endpoints: None,
        distribute: Plan {
            build_key: Some(key.into()),
            ..Plan::default()
        },
    };
    let spec = bake::ami::launch::Spec::builder(&plan, janitor.run_id());
    let builder = &config.image["web"].builder;
    let id = bake::ami::launch::instance(&clients, &plan, builder, &spec, "sg-1", &[], &janitor)
        .await
        .unwrap();
    assert_eq!(id, "i-builder");
    assert_eq!(run.num_calls(), 1);
}

/// The source image in ap-northeast-2, as the test stage left it.
fn source_image() -> Image {
    Image::builder()
        .image_id("ami-src")
        .name("web-nginx-20261124-abc")
        .description("bake image web")
        .state(ImageState::Available)
        .deprecation_time("2027-02-22T00:00:00.000Z")
        .set_tags(Some(vec![
            tag("Name", "web-nginx-20261124-abc"),
            tag("bake:digest", "d1"),
            tag("bake:base-ami", "ami-base"),
            tag("bake:test", "passed"),
            tag("bake:run-id", "run-old"),
        ]))
        .block_device_mappings(snapshot("snap-src"))
        .build()
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

fn snapshot(id: &str) -> BlockDeviceMapping {
    BlockDeviceMapping::builder()
        .device_name("/dev/xvda")
        .ebs(EbsBlockDevice::builder().snapshot_id(id).build())
        .build()
}

fn image(id: &str, state: ImageState) -> Image {
    let mut image = Image::builder()
        .image_id(id)
        .state(state.clone())
        .block_device_mappings(snapshot(&format!("snap-{id}")));
    if state == ImageState::Failed {
        image = image.state_reason(
            StateReason::builder()
                .code("Server.InternalError")
                .message("copy failed")
                .build(),
        );
    }
    image.build()
}

fn plan() -> Plan {
    Plan {
        copies: ["us-east-1", "eu-west-1"]
            .iter()
            .map(|r| Target {
                region: (*r).into(),
                kms_key: Some(format!("arn:aws:kms:{r}:123456789012:key/k")),
            })
            .collect(),
        build_key: None,
        share: Share {
            accounts: vec!["111122223333".into()],
            ..Share::default()
        },
    }
}

fn source() -> Source {
    Source {
        ami_id: "ami-src".into(),
        digest: "d1".into(),
        base_ami: "ami-base".into(),
    }
}

const RUN: &str = "20261124t000000-abcdef";

/// A CopyImage rule for `region` (told apart by its client token), checking what bake asks for.
fn copy_to(
    region: &'static str,
) -> aws_smithy_mocks::RuleBuilder<
    aws_sdk_ec2::operation::copy_image::CopyImageInput,
    CopyImageOutput,
    CopyImageError,
> {
    let token = copy::client_token("ami-src", region, RUN);
    mock!(aws_sdk_ec2::Client::copy_image).match_requests(move |r| {
        let image_tags = r
            .tag_specifications()
            .iter()
            .find(|s| s.resource_type().map(|t| t.as_str()) == Some("image"))
            .map(|s| s.tags().to_vec())
            .unwrap_or_default();
        let has = |k: &str, v: &str| {
            image_tags
                .iter()
                .any(|t| t.key() == Some(k) && t.value() == Some(v))
        };
        r.client_token() == Some(token.as_str())
            && r.source_image_id() == Some("ami-src")
            && r.source_region() == Some("ap-northeast-2")
            && r.name() == Some("web-nginx-20261124-abc")
            && r.encrypted() == Some(true)
            && r.kms_key_id() == Some(format!("arn:aws:kms:{region}:123456789012:key/k").as_str())
            && has("bake:digest", "d1")
            && has("bake:test", "passed")
            && has("bake:run-id", RUN)
            && has("bake:source-ami", "ami-src")
            && has("bake:source-region", "ap-northeast-2")
    })
}

/// The answers every region shares: no copy there yet, the source, the copies' states, and the
/// calls that share, deprecate and clean up.
struct Common {
    deprecate: Rule,
    share_image: Rule,
    share_snapshot: Rule,
    rules: Vec<Rule>,
}

impl Common {
    fn new(copies: &[(&'static str, ImageState)]) -> Common {
        let mut rules = vec![
            mock!(aws_sdk_ec2::Client::describe_images)
                .match_requests(|r| r.image_ids() == ["ami-src"])
                .then_output(|| {
                    DescribeImagesOutput::builder()
                        .images(source_image())
                        .build()
                }),
            // Skip by digest, and cleanup's search by run tag: nothing there.
            mock!(aws_sdk_ec2::Client::describe_images)
                .match_requests(|r| r.image_ids().is_empty())
                .then_output(|| DescribeImagesOutput::builder().build()),
            mock!(aws_sdk_ec2::Client::describe_instances)
                .then_output(|| DescribeInstancesOutput::builder().build()),
            mock!(aws_sdk_ec2::Client::describe_security_groups)
                .then_output(|| DescribeSecurityGroupsOutput::builder().build()),
            mock!(aws_sdk_ec2::Client::describe_snapshots)
                .then_output(|| DescribeSnapshotsOutput::builder().build()),
        ];
        for (id, state) in copies {
            let id = *id;
            let state = state.clone();
            rules.push(
                mock!(aws_sdk_ec2::Client::describe_images)
                    .match_requests(move |r| r.image_ids() == [id])
                    .then_output(move || {
                        DescribeImagesOutput::builder()
                            .images(image(id, state.clone()))
                            .build()
                    }),
            );
        }
        Common {
            deprecate: mock!(aws_sdk_ec2::Client::enable_image_deprecation)
                .match_requests(|r| r.deprecate_at().map(|t| t.secs()) == Some(1_803_254_400))
                .then_output(|| EnableImageDeprecationOutput::builder().build()),
            share_image: mock!(aws_sdk_ec2::Client::modify_image_attribute)
                .match_requests(|r| {
                    r.launch_permission().map(|p| {
                        p.add()
                            .iter()
                            .filter_map(|l| l.user_id())
                            .collect::<Vec<_>>()
                    }) == Some(vec!["111122223333"])
                })
                .then_output(|| ModifyImageAttributeOutput::builder().build()),
            share_snapshot: mock!(aws_sdk_ec2::Client::modify_snapshot_attribute)
                .match_requests(|r| r.user_ids() == ["111122223333"])
                .then_output(|| ModifySnapshotAttributeOutput::builder().build()),
            rules,
        }
    }

    fn all(&self) -> impl Iterator<Item = &Rule> {
        [&self.deprecate, &self.share_image, &self.share_snapshot]
            .into_iter()
            .chain(self.rules.iter())
    }
}

#[tokio::test(start_paused = true)]
async fn copies_go_to_every_region_at_once_and_throttling_in_one_does_not_fail_the_other() {
    let throttled =
        || CopyImageError::generic(meta("RequestLimitExceeded", "Request limit exceeded."));
    // us-east-1 throttles through the SDK's retries and then some; eu-west-1 answers at once.
    let use1 = copy_to("us-east-1")
        .sequence()
        .error(throttled)
        .times(6)
        .output(|| CopyImageOutput::builder().image_id("ami-use1").build())
        .build();
    let euw1 = copy_to("eu-west-1")
        .then_output(|| CopyImageOutput::builder().image_id("ami-euw1").build());
    let common = Common::new(&[
        ("ami-use1", ImageState::Available),
        ("ami-euw1", ImageState::Available),
    ]);
    let mut rules: Vec<&Rule> = vec![&use1, &euw1];
    rules.extend(common.all());
    let clients = mocked_clients(&rules, &[]);
    let janitor = Janitor::new(clients.clone(), RUN.into());
    let copies = copy::run(&clients, &plan(), &source(), &janitor, &progress())
        .await
        .unwrap();
    let got: Vec<(&str, Option<&str>, &CopyOutcome)> = copies
        .iter()
        .map(|c| (c.region.as_str(), c.ami_id.as_deref(), &c.outcome))
        .collect();
    assert_eq!(
        got,
        [
            ("us-east-1", Some("ami-use1"), &CopyOutcome::Copied),
            ("eu-west-1", Some("ami-euw1"), &CopyOutcome::Copied),
        ]
    );
    assert_eq!(
        use1.num_calls(),
        7,
        "the throttled region asked again until it was answered"
    );
    assert_eq!(euw1.num_calls(), 1);
    // The source and both copies shared, with their snapshots; the source's deprecation time
    // set on each copy.
    assert_eq!(common.share_image.num_calls(), 3);
    assert_eq!(common.share_snapshot.num_calls(), 3);
    assert_eq!(common.deprecate.num_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_region_throttled_past_its_budget_fails_alone_and_a_failed_copy_is_cleaned_up() {
    let throttled =
        || CopyImageError::generic(meta("RequestLimitExceeded", "Request limit exceeded."));
    let use1 = copy_to("us-east-1").then_error(throttled);
    let euw1 = copy_to("eu-west-1")
        .then_output(|| CopyImageOutput::builder().image_id("ami-euw1").build());
    let common = Common::new(&[("ami-euw1", ImageState::Available)]);
    let mut rules: Vec<&Rule> = vec![&use1, &euw1];
    rules.extend(common.all());
    let clients = mocked_clients(&rules, &[]);
    let janitor = Janitor::new(clients.clone(), RUN.into());
    let started = tokio::time::Instant::now();
    let copies = copy::run(&clients, &plan(), &source(), &janitor, &progress())
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(100),
        "throttling is ridden out for its window before the region fails"
    );
    assert_eq!(copies[1].outcome, CopyOutcome::Copied);
    assert_eq!(copies[1].ami_id.as_deref(), Some("ami-euw1"));
    match &copies[0].outcome {
        CopyOutcome::Failed(why) => assert!(
            why.contains("RequestLimitExceeded") && why.contains("us-east-1"),
            "{why}"
        ),
        other => panic!("us-east-1: {other:?}"),
    }
    assert_eq!(copies[0].ami_id, None);

    // A copy that EC2 fails: deregistered with its snapshot; the other region's copy stays.
    let use1 = copy_to("us-east-1")
        .then_output(|| CopyImageOutput::builder().image_id("ami-use1").build());
    let euw1 = copy_to("eu-west-1")
        .then_output(|| CopyImageOutput::builder().image_id("ami-euw1").build());
    let common = Common::new(&[
        ("ami-use1", ImageState::Failed),
        ("ami-euw1", ImageState::Available),
    ]);
    let deregister = mock!(aws_sdk_ec2::Client::deregister_image)
        .match_requests(|r| r.image_id() == Some("ami-use1"))
        .then_output(|| DeregisterImageOutput::builder().build());
    let delete_snapshot = mock!(aws_sdk_ec2::Client::delete_snapshot)
        .match_requests(|r| r.snapshot_id() == Some("snap-ami-use1"))
        .then_output(|| DeleteSnapshotOutput::builder().build());
    let mut rules: Vec<&Rule> = vec![&use1, &euw1, &deregister, &delete_snapshot];
    rules.extend(common.all());
    // The failed copy's snapshot is found through the image, as the run's cleanup lists it.
    let by_tag = mock!(aws_sdk_ec2::Client::describe_images)
        .match_requests(|r| {
            r.image_ids().is_empty()
                && !r.filters().is_empty()
                && r.filters()
                    .iter()
                    .any(|f| f.name() == Some("tag:bake:run-id"))
        })
        .then_output(|| {
            DescribeImagesOutput::builder()
                .images(image("ami-use1", ImageState::Failed))
                .build()
        });
    rules.insert(0, &by_tag);
    let clients = mocked_clients(&rules, &[]);
    let janitor = Janitor::new(clients.clone(), RUN.into());
    let copies = copy::run(&clients, &plan(), &source(), &janitor, &progress())
        .await
        .unwrap();
    match &copies[0].outcome {
        CopyOutcome::Failed(why) => assert!(why.contains("copy failed"), "{why}"),
        other => panic!("us-east-1: {other:?}"),
    }
    assert_eq!(copies[0].available(), None);
    assert_eq!(copies[1].available(), Some("ami-euw1"));
    assert!(
        deregister.num_calls() >= 1,
        "the failed copy is deregistered"
    );
    assert!(delete_snapshot.num_calls() >= 1, "and its snapshot deleted");
}

#[tokio::test(start_paused = true)]
async fn a_region_with_a_copy_of_this_ami_is_not_copied_again_but_one_of_an_older_bake_is() {
    for (source_of_copy, copied) in [("ami-src", false), ("ami-older-source", true)] {
        let use1 = copy_to("us-east-1")
            .then_output(|| CopyImageOutput::builder().image_id("ami-use1").build());
        let euw1 = copy_to("eu-west-1")
            .then_output(|| CopyImageOutput::builder().image_id("ami-euw1").build());
        // Every region answers the digest look-up with a copy already there.
        let there = mock!(aws_sdk_ec2::Client::describe_images)
            .match_requests(|r| {
                r.image_ids().is_empty()
                    && r.filters()
                        .iter()
                        .any(|f| f.name() == Some("tag:bake:digest"))
                    && r.filters()
                        .iter()
                        .any(|f| f.name() == Some("tag:bake:base-ami"))
            })
            .then_output(move || {
                let mut there = image("ami-there", ImageState::Available);
                there.tags = Some(vec![tag("bake:source-ami", source_of_copy)]);
                DescribeImagesOutput::builder().images(there).build()
            });
        let common = Common::new(&[
            ("ami-use1", ImageState::Available),
            ("ami-euw1", ImageState::Available),
        ]);
        let mut rules: Vec<&Rule> = vec![&there, &use1, &euw1];
        rules.extend(common.all());
        let clients = mocked_clients(&rules, &[]);
        let janitor = Janitor::new(clients.clone(), RUN.into());
        let copies = copy::run(&clients, &plan(), &source(), &janitor, &progress())
            .await
            .unwrap();
        if copied {
            // A copy of an older bake of the same inputs (before `--force`) is not this AMI's.
            assert!(
                copies.iter().all(|c| c.outcome == CopyOutcome::Copied),
                "{copies:?}"
            );
            assert_eq!(use1.num_calls() + euw1.num_calls(), 2);
        } else {
            assert!(
                copies.iter().all(|c| c.outcome == CopyOutcome::Skipped
                    && c.ami_id.as_deref() == Some("ami-there")),
                "{copies:?}"
            );
            assert_eq!(use1.num_calls() + euw1.num_calls(), 0, "nothing copied");
            // Shared anew: the accounts may have grown since.
            assert_eq!(common.share_image.num_calls(), 3);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_pending_copy_is_left_to_the_stage_by_the_cleanup_beside_it_and_removed_when_interrupted()
{
    let use1 = copy_to("us-east-1")
        .then_output(|| CopyImageOutput::builder().image_id("ami-use1").build());
    let euw1 = copy_to("eu-west-1")
        .then_output(|| CopyImageOutput::builder().image_id("ami-euw1").build());
    // Both copies stay pending.
    let common = Common::new(&[
        ("ami-use1", ImageState::Pending),
        ("ami-euw1", ImageState::Pending),
    ]);
    let deregister = mock!(aws_sdk_ec2::Client::deregister_image)
        .then_output(|| DeregisterImageOutput::builder().build());
    let delete_snapshot = mock!(aws_sdk_ec2::Client::delete_snapshot)
        .then_output(|| DeleteSnapshotOutput::builder().build());
    let mut rules: Vec<&Rule> = vec![&use1, &euw1, &deregister, &delete_snapshot];
    rules.extend(common.all());
    let clients = mocked_clients(&rules, &[]);
    let janitor = Janitor::new(clients.clone(), RUN.into());
    let progress = progress();
    let plan = plan();
    let source = source();
    let stage = copy::run(&clients, &plan, &source, &janitor, &progress);
    // The builder's cleanup runs beside the stage (as after a passed test) and leaves the copies.
    let beside = async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        janitor.clean_recorded().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    };
    tokio::select! {
        done = stage => panic!("the copies never become available: {done:?}"),
        () = beside => {}
    }
    assert_eq!(use1.num_calls() + euw1.num_calls(), 2);
    assert_eq!(
        deregister.num_calls(),
        0,
        "the cleanup beside the stage left its copies"
    );
    // The stage was dropped (as a signal drops it): the run's cleanup removes both copies.
    let removed = janitor.clean().await.unwrap();
    let mut images: Vec<String> = removed
        .iter()
        .filter_map(|r| match r {
            bake::janitor::Resource::Image(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    images.sort();
    assert_eq!(images, ["ami-euw1", "ami-use1"]);
    assert!(deregister.num_calls() >= 2);
}

// The lab: two regions and a second account, as on AWS.

use support::output::{stderr, stdout};
use support::{Lab, REGION, repo};

/// Account B, which images are shared with; account C, which nothing is shared with (the lab's
/// `bake_lab.client` names).
const ACCOUNT_B: &str = "111122223333";
const ACCOUNT_C: &str = "444455556666";

/// An SDK config for the lab in `region`, as this account or (through STS AssumeRole, as on AWS)
/// as `account`.
async fn sdk(lab: &Lab, region: &str, account: Option<&str>) -> aws_config::SdkConfig {
    let home = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&lab.endpoint)
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "test", "test", None, None, "lab",
        ))
        .load()
        .await;
    let Some(account) = account else {
        return home;
    };
    let role =
        aws_config::sts::AssumeRoleProvider::builder(format!("arn:aws:iam::{account}:role/lab"))
            .session_name("bake-test")
            .configure(&home)
            .build()
            .await;
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&lab.endpoint)
        .region(aws_config::Region::new(region.to_owned()))
        .credentials_provider(role)
        .load()
        .await
}

/// A customer managed key in `region` with alias `alias`, whose policy lets account B use it for
/// EBS (what another account needs to launch from an encrypted image); answers its ARN.
async fn shared_key(lab: &Lab, region: &str, alias: &str) -> String {
    let kms = aws_sdk_kms::Client::new(&sdk(lab, region, None).await);
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "owner", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "b", "Effect": "Allow",
             "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT_B}:root")},
             "Action": ["kms:Decrypt", "kms:DescribeKey", "kms:CreateGrant", "kms:ReEncrypt*",
                        "kms:GenerateDataKey*"],
             "Resource": "*"}
        ]
    });
    let key = kms
        .create_key()
        .description(format!("bake distribution in {region}"))
        .policy(policy.to_string())
        .send()
        .await
        .unwrap();
    let meta = key.key_metadata().unwrap();
    kms.create_alias()
        .alias_name(alias)
        .target_key_id(meta.key_id())
        .send()
        .await
        .unwrap();
    meta.arn().unwrap().to_owned()
}

/// The nginx example with `distribute` (its `regions` line given), deprecated 90 days on.
fn distributed_config(dir: &Path, regions: &str) -> String {
    let example = std::fs::read_to_string(repo().join("examples/nginx-debian.toml")).unwrap();
    let text = example
        .replace("[image.web]\n", "[image.web]\ndeprecate_after = \"90d\"\n")
        .replace(
            "[image.web.builder]\n",
            &format!(
                "[image.web.distribute]\nregions = [{regions}]\naccounts = [\"{ACCOUNT_B}\"]\n\
                 kms_key = \"alias/bake-dist\"\n\n[image.web.builder]\n"
            ),
        );
    let path = dir.join("bake.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The CopyImage calls the lab saw, by destination region.
async fn copies_into(lab: &Lab, region: &str) -> usize {
    lab.requests()
        .await
        .iter()
        .filter(|r| r["action"] == "CopyImage" && r["region"] == region)
        .count()
}

/// The one image of `ec2`'s region (this account's) tagged with `digest`, with its snapshot.
async fn copy_in(ec2: &aws_sdk_ec2::Client, digest: &str) -> Vec<Image> {
    ec2.describe_images()
        .owners("self")
        .filters(support::filter("tag:bake:digest", digest))
        .send()
        .await
        .unwrap()
        .images()
        .to_vec()
}

fn tag_of<'a>(image: &'a Image, key: &str) -> Option<&'a str> {
    image
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_goes_to_two_regions_and_one_account_once_and_a_failed_copy_leaves_the_others() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let home_key = shared_key(&lab, REGION, "alias/bake-dist").await;
    let east_key = shared_key(&lab, "us-east-1", "alias/bake-dist").await;
    let dir = tempfile::tempdir().unwrap();
    let config = distributed_config(dir.path(), "\"ap-northeast-2\", \"us-east-1\"");
    let result = lab
        .bake_json(&["-c", &config, "-o", "json", "ami", "web"])
        .await;
    let baked = &result["images"][0];
    let source = baked["ami_id"].as_str().unwrap().to_owned();
    let digest = baked["digest"].as_str().unwrap().to_owned();
    assert_eq!(baked["copies"].as_array().unwrap().len(), 1, "{result}");
    let copied = &baked["copies"][0];
    assert_eq!(copied["region"], "us-east-1");
    assert_eq!(copied["outcome"], "copied", "{result}");
    let copy = copied["ami_id"].as_str().unwrap().to_owned();

    // The source, shared with B.
    let home = aws_sdk_ec2::Client::new(&sdk(&lab, REGION, None).await);
    let east = aws_sdk_ec2::Client::new(&sdk(&lab, "us-east-1", None).await);
    let source_image = copy_in(&home, &digest).await;
    assert_eq!(source_image.len(), 1);
    let source_image = &source_image[0];
    let snapshot_key = |ec2: aws_sdk_ec2::Client, image: Image| async move {
        let snapshot = image.block_device_mappings()[0]
            .ebs()
            .unwrap()
            .snapshot_id()
            .unwrap()
            .to_owned();
        let out = ec2
            .describe_snapshots()
            .snapshot_ids(&snapshot)
            .send()
            .await
            .unwrap();
        let s = &out.snapshots()[0];
        (s.encrypted(), s.kms_key_id().map(str::to_owned))
    };
    // The lab's CreateImage snapshots a fresh volume, not the builder's (its key is not kept, a
    // known gap of the lab): that the builder's volume asks for the build region's key is
    // `the_builders_volume_is_encrypted_with_the_build_regions_key` above.
    assert!(home_key.starts_with("arn:aws:kms:ap-northeast-2:"));
    // The copy: available in us-east-1 with that region's key, the source's tags, name and
    // deprecation time, and where it came from.
    let east_images = copy_in(&east, &digest).await;
    assert_eq!(east_images.len(), 1);
    let east_image = &east_images[0];
    assert_eq!(east_image.image_id(), Some(copy.as_str()));
    assert_eq!(east_image.state().map(|s| s.as_str()), Some("available"));
    assert_eq!(east_image.name(), source_image.name());
    assert_eq!(
        snapshot_key(east.clone(), east_image.clone()).await,
        (Some(true), Some(east_key.clone()))
    );
    for key in [
        "Name",
        "bake:image",
        "bake:digest",
        "bake:base-ami",
        "bake:test",
        "bake:baked-at",
    ] {
        assert_eq!(tag_of(east_image, key), tag_of(source_image, key), "{key}");
    }
    assert_eq!(tag_of(east_image, "bake:test"), Some("passed"));
    assert_eq!(tag_of(east_image, "bake:source-ami"), Some(source.as_str()));
    assert_eq!(tag_of(east_image, "bake:source-region"), Some(REGION));
    assert!(source_image.deprecation_time().is_some());
    assert_eq!(
        east_image
            .deprecation_time()
            .map(|t| t.trim_end_matches('Z').trim_end_matches(".000")),
        source_image
            .deprecation_time()
            .map(|t| t.trim_end_matches('Z').trim_end_matches(".000"))
    );

    // Account B sees the copy, launches it and it runs; account C cannot even see it.
    let b = aws_sdk_ec2::Client::new(&sdk(&lab, "us-east-1", Some(ACCOUNT_B)).await);
    let listed = b
        .describe_images()
        .executable_users("self")
        .send()
        .await
        .unwrap();
    assert!(
        listed
            .images()
            .iter()
            .any(|i| i.image_id() == Some(copy.as_str())),
        "B lists the copy with ExecutableUsers=self"
    );
    let launched = b
        .run_instances()
        .image_id(&copy)
        .min_count(1)
        .max_count(1)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .send()
        .await
        .unwrap();
    let instance = launched.instances()[0].instance_id().unwrap().to_owned();
    let mut state = String::new();
    for _ in 0..300 {
        let out = b.describe_instances().instance_ids(&instance).send().await;
        if let Ok(out) = out {
            state = out.reservations()[0].instances()[0]
                .state()
                .and_then(|s| s.name())
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default();
            if state == "running" || state == "terminated" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        state, "running",
        "B launches the copy (its key's policy allows B)"
    );
    b.terminate_instances()
        .instance_ids(&instance)
        .send()
        .await
        .unwrap();
    let c = aws_sdk_ec2::Client::new(&sdk(&lab, "us-east-1", Some(ACCOUNT_C)).await);
    let seen = c.describe_images().image_ids(&copy).send().await;
    assert_eq!(
        seen.err()
            .and_then(|e| aws_sdk_ec2::error::ProvideErrorMetadata::code(&e).map(str::to_owned)),
        Some("InvalidAMIID.NotFound".to_owned()),
        "C is not listed: the copy does not exist for it"
    );
    let refused = c
        .run_instances()
        .image_id(&copy)
        .min_count(1)
        .max_count(1)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .send()
        .await;
    assert!(refused.is_err(), "C cannot launch the copy");

    // Idempotence: again, nothing is baked nor copied.
    let before = copies_into(&lab, "us-east-1").await;
    let launches = lab.calls("RunInstances").await;
    let again = lab.bake_ok(&["-c", &config, "ami", "web"]).await;
    assert_eq!(stdout(&again), format!("{source}\nus-east-1 {copy}"));
    assert_eq!(
        copies_into(&lab, "us-east-1").await,
        before,
        "nothing copied again"
    );
    assert_eq!(
        lab.calls("RunInstances").await,
        launches,
        "nothing baked again"
    );

    // A third region copies only there, without a bake.
    let west_key = shared_key(&lab, "us-west-2", "alias/bake-dist").await;
    let config = distributed_config(
        dir.path(),
        "\"ap-northeast-2\", \"us-east-1\", \"us-west-2\"",
    );
    let third = lab.bake_ok(&["-c", &config, "ami", "web"]).await;
    assert_eq!(copies_into(&lab, "us-east-1").await, before);
    assert_eq!(copies_into(&lab, "us-west-2").await, 1);
    assert_eq!(
        lab.calls("RunInstances").await,
        launches,
        "nothing baked again"
    );
    let lines: Vec<String> = stdout(&third).lines().map(str::to_owned).collect();
    assert_eq!(lines[..2], [source.clone(), format!("us-east-1 {copy}")]);
    let west = aws_sdk_ec2::Client::new(&sdk(&lab, "us-west-2", None).await);
    let west_images = copy_in(&west, &digest).await;
    assert_eq!(west_images.len(), 1);
    assert_eq!(
        lines[2],
        format!("us-west-2 {}", west_images[0].image_id().unwrap())
    );
    assert_eq!(
        snapshot_key(west.clone(), west_images[0].clone()).await,
        (Some(true), Some(west_key))
    );

    // A copy forced to fail (eu-west-1): reported, cleaned up, the other regions' copies stay.
    shared_key(&lab, "eu-west-1", "alias/bake-dist").await;
    lab.control(
        "copy-failures",
        serde_json::json!({"region": "eu-west-1", "count": 1}),
    )
    .await;
    let config = distributed_config(
        dir.path(),
        "\"ap-northeast-2\", \"us-east-1\", \"us-west-2\", \"eu-west-1\"",
    );
    let failed = lab.run_bake(&["-c", &config, "ami", "web"]).await;
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    let out = stdout(&failed);
    assert!(
        out.starts_with(&format!("{source}\nus-east-1 {copy}\nus-west-2 ")),
        "{out}"
    );
    assert!(out.contains("eu-west-1 failed: "), "{out}");
    let err = stderr(&failed);
    assert!(err.contains("copies failed in eu-west-1"), "{err}");
    let euw = aws_sdk_ec2::Client::new(&sdk(&lab, "eu-west-1", None).await);
    let left = support::own_images(&euw, None).await;
    assert!(left.is_empty(), "the failed copy is deregistered: {left:?}");
    // The copy's snapshot carried the run's tags (TagSpecifications): none is left.
    let left = support::own_snapshots(&euw, Some(support::run_tagged())).await;
    assert!(left.is_empty(), "and its snapshot deleted: {left:?}");
    assert_eq!(copy_in(&east, &digest).await.len(), 1);
    assert_eq!(copy_in(&west, &digest).await.len(), 1);
    lab.assert_nothing_left(&[&source], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_alias_exits_2_at_preflight_and_the_default_key_with_sharing_at_validate() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // The alias exists in the build region only: us-east-1 has none.
    shared_key(&lab, REGION, "alias/bake-dist").await;
    let dir = tempfile::tempdir().unwrap();
    let config = distributed_config(dir.path(), "\"us-east-1\"");
    let text_of = std::fs::read_to_string(&config).unwrap();
    let line = text_of
        .lines()
        .position(|l| l.starts_with("kms_key"))
        .unwrap()
        + 1;
    let out = lab.bake_refused(&["-c", &config, "ami", "web"]).await;
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "bake.toml:{line}:11: image.web.distribute.kms_key: KMS key alias/bake-dist in us-east-1: does not exist"
        )),
        "{err}"
    );
    assert_eq!(lab.calls("RunInstances").await, 0, "nothing was created");
    assert_eq!(
        lab.calls("CreateSecurityGroup").await,
        0,
        "nothing was created"
    );

    std::fs::write(
        &config,
        text_of.replace("\"alias/bake-dist\"", "\"alias/aws/ebs\""),
    )
    .unwrap();
    let out = lab.bake_refused(&["-c", &config, "validate"]).await;
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "bake.toml:{line}:11: image.web.distribute.kms_key: alias/aws/ebs cannot be used while sharing with accounts: AWS managed keys cannot be shared"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_while_a_copy_is_pending_removes_the_copy_and_keeps_the_tested_image() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // us-east-1's copies stay pending for a minute: long enough to interrupt one.
    lab.control("latency", serde_json::json!({"image_copy.us-east-1": 60}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo().join("examples/nginx-debian.toml")).unwrap();
    let config = dir.path().join("bake.toml");
    std::fs::write(
        &config,
        example.replace(
            "[image.web.builder]\n",
            "[image.web.distribute]\nregions = [\"us-east-1\"]\n\n[image.web.builder]\n",
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap().to_owned();
    let out = lab
        .interrupt_when(
            &["-c", &config, "ami", "web"],
            "INT",
            "a CopyImage into us-east-1, the builder's cleanup done",
            Duration::from_secs(300),
            // Once the builder's cleanup is done (its group deleted): this test is about the copy
            // stage, not about an interrupted cleanup of the builder.
            || async {
                let groups = lab.run_tagged_groups().await.map(|g| g.len());
                copies_into(&lab, "us-east-1").await > 0 && groups == Some(0)
            },
        )
        .await;
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let east = aws_sdk_ec2::Client::new(&sdk(&lab, "us-east-1", None).await);
    // The copy (pending when interrupted) is deregistered and its snapshot deleted.
    let (images, snapshots) = run_tagged(&east).await;
    assert!(images.is_empty(), "copies left: {images:?}");
    assert!(snapshots.is_empty(), "snapshots left: {snapshots:?}");
    // The tested image in the build region is kept (it passed its test before the copy began).
    let home = aws_sdk_ec2::Client::new(&sdk(&lab, REGION, None).await);
    let (kept, _) = run_tagged(&home).await;
    let kept: Vec<&str> = kept.iter().map(String::as_str).collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    lab.assert_nothing_left(&kept, &[]).await;
}

/// The images and snapshots of this account in `ec2`'s region that carry bake's run tag.
async fn run_tagged(ec2: &aws_sdk_ec2::Client) -> (Vec<String>, Vec<String>) {
    (
        support::own_images(ec2, Some(support::run_tagged())).await,
        support::own_snapshots(ec2, Some(support::run_tagged())).await,
    )
}
