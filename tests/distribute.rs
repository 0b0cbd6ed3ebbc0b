//! Distribution (`[image.NAME.distribute]`): the KMS preflight per region and the copy stage
//! against answers the lab cannot produce (aws-smithy-mocks: throttling in one region only, a key
//! of the wrong kind), and against the lab: two regions and a second account, idempotence, a
//! copy forced to fail, and bad input at its line.

mod support;

use std::path::Path;
use std::time::Duration;

use aws_sdk_ec2::error::ErrorMetadata;
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
use aws_sdk_ec2::types::{BlockDeviceMapping, EbsBlockDevice, Image, ImageState, StateReason, Tag};
use aws_sdk_kms::operation::describe_key::{DescribeKeyError, DescribeKeyOutput};
use aws_sdk_kms::types::{KeyManagerType, KeyMetadata, KeySpec, KeyState};
use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, create_mock_http_client, mock};

use bake::ami::copy::{self, Source};
use bake::ami::distribute::{self, CopyOutcome, Plan, Share, Target};
use bake::aws::Clients;
use bake::config::Config;
use bake::janitor::Janitor;
use bake::output::Progress;

/// A client of `$sdk` answered by `rules`.
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

/// Clients in ap-northeast-2 whose EC2 and KMS calls (in every region: `in_region` keeps the
/// mocks) are answered by the rules.
fn mocked_clients(ec2: &[&Rule], kms: &[&Rule]) -> Clients {
    let none: &[&Rule] = &[];
    Clients {
        autoscaling: mocked!(aws_sdk_autoscaling, none),
        cloudwatch: mocked!(aws_sdk_cloudwatch, none),
        ec2: mocked!(aws_sdk_ec2, ec2),
        elb: mocked!(aws_sdk_elasticloadbalancingv2, none),
        ssm: mocked!(aws_sdk_ssm, none),
        iam: mocked!(aws_sdk_iam, none),
        kms: mocked!(aws_sdk_kms, kms),
        region: "ap-northeast-2".into(),
    }
}

fn progress() -> Progress {
    Progress::new(
        &indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()),
        "web",
    )
}

fn meta(code: &str, message: &str) -> ErrorMetadata {
    ErrorMetadata::builder().code(code).message(message).build()
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
async fn a_region_with_a_copy_of_the_same_digest_and_base_is_not_copied_again() {
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
        .then_output(|| {
            DescribeImagesOutput::builder()
                .images(image("ami-there", ImageState::Available))
                .build()
        });
    let common = Common::new(&[]);
    let mut rules: Vec<&Rule> = vec![&there, &use1, &euw1];
    rules.extend(common.all());
    let clients = mocked_clients(&rules, &[]);
    let janitor = Janitor::new(clients.clone(), RUN.into());
    let copies = copy::run(&clients, &plan(), &source(), &janitor, &progress())
        .await
        .unwrap();
    assert!(
        copies
            .iter()
            .all(|c| c.outcome == CopyOutcome::Skipped && c.ami_id.as_deref() == Some("ami-there")),
        "{copies:?}"
    );
    assert_eq!(use1.num_calls() + euw1.num_calls(), 0, "nothing copied");
}
