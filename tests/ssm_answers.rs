//! SSM answers replayed by aws-smithy-mocks: Parameter Store validates an `aws:ec2:image` value
//! after PutParameter answers, so bake reads it back until it holds the new id (and says why when
//! it never does); GetCommandInvocation answers InvocationDoesNotExist right after SendCommand,
//! and throttles, which the verify wait rides out; prune reads the published parameter in other
//! regions, warns about a region that denies it and stops at any other failure.

#[path = "support/mocks.rs"]
mod mocks;

use aws_sdk_ssm::operation::get_command_invocation::{
    GetCommandInvocationError, GetCommandInvocationOutput,
};
use aws_sdk_ssm::operation::get_parameter::{GetParameterError, GetParameterOutput};
use aws_sdk_ssm::operation::get_parameter_history::GetParameterHistoryOutput;
use aws_sdk_ssm::operation::put_parameter::PutParameterOutput;
use aws_sdk_ssm::operation::send_command::SendCommandOutput;
use aws_sdk_ssm::types::{Command, CommandInvocationStatus, Parameter, ParameterHistory};
use aws_smithy_mocks::{MockResponse, Rule, mock};
use bake::ami::verify;
use bake::aws::Clients;
use bake::publish;
use mocks::{Answers, meta, progress};
use std::time::Duration;

const NAME: &str = "/bake/web/ami-id";

fn clients(ssm_rules: &[&Rule]) -> Clients {
    account(ssm_rules, &[], &[])
}

/// Clients whose SSM, EC2 and Auto Scaling calls are answered by the given rules.
fn account(ssm_rules: &[&Rule], ec2_rules: &[&Rule], autoscaling_rules: &[&Rule]) -> Clients {
    Answers {
        ssm: ssm_rules,
        ec2: ec2_rules,
        autoscaling: autoscaling_rules,
        ..Answers::default()
    }
    .clients("ap-northeast-2")
}

fn holding(value: &str, version: i64) -> GetParameterOutput {
    GetParameterOutput::builder()
        .parameter(
            Parameter::builder()
                .name(NAME)
                .value(value)
                .version(version)
                .build(),
        )
        .build()
}

fn not_found() -> GetParameterError {
    GetParameterError::generic(meta("ParameterNotFound", "not found"))
}

/// `verify::run` of one command (`true`) on builder i-1, given a minute.
async fn verify_true(clients: &Clients) -> Result<(), verify::Error> {
    let commands = vec!["true".to_owned()];
    verify::run(
        clients,
        "i-1",
        "d",
        &commands,
        Duration::from_secs(60),
        &progress(),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn a_new_parameter_is_read_back_until_validation_has_created_it() {
    // Before PutParameter, then twice during validation: not there; then the new id.
    let get = mock!(aws_sdk_ssm::Client::get_parameter)
        .sequence()
        .error(not_found)
        .times(3)
        .output(|| holding("ami-new", 1))
        .build();
    let put = mock!(aws_sdk_ssm::Client::put_parameter)
        .match_requests(|r| r.value() == Some("ami-new") && r.data_type() == Some("aws:ec2:image"))
        .then_output(|| PutParameterOutput::builder().version(1).build());
    let clients = clients(&[&get, &put]);
    let published = publish::publish(&clients, NAME, "ami-new").await.unwrap();
    assert_eq!(
        published,
        publish::Published {
            changed: true,
            version: 1
        }
    );
    assert_eq!((put.num_calls(), get.num_calls()), (1, 4));
}

#[tokio::test(start_paused = true)]
async fn a_value_validation_drops_fails_the_publish_with_the_reason() {
    let get = mock!(aws_sdk_ssm::Client::get_parameter).then_output(|| holding("ami-old", 1));
    let put = mock!(aws_sdk_ssm::Client::put_parameter)
        .then_output(|| PutParameterOutput::builder().version(2).build());
    let history = mock!(aws_sdk_ssm::Client::get_parameter_history).then_output(|| {
        GetParameterHistoryOutput::builder()
            .parameters(
                ParameterHistory::builder()
                    .name(NAME)
                    .value("ami-old")
                    .version(1)
                    .build(),
            )
            .build()
    });
    let clients = clients(&[&get, &put, &history]);
    let started = tokio::time::Instant::now();
    let err = publish::publish(&clients, NAME, "ami-missing")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "cannot publish ami-missing in SSM parameter /bake/web/ami-id in ap-northeast-2"
        ),
        "{err}"
    );
    assert!(
        err.contains("PutParameter answered version 2")
            && err.contains("it still holds ami-old (version 1)")
            && err.contains("its history has no version 2"),
        "{err}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_secs(55)
            && waited <= std::time::Duration::from_secs(70),
        "bounded by the validation window: {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_parameter_that_already_holds_the_id_is_left_alone() {
    let get = mock!(aws_sdk_ssm::Client::get_parameter).then_output(|| holding("ami-new", 3));
    let put = mock!(aws_sdk_ssm::Client::put_parameter)
        .then_output(|| PutParameterOutput::builder().version(4).build());
    let clients = clients(&[&get, &put]);
    let published = publish::publish(&clients, NAME, "ami-new").await.unwrap();
    assert_eq!(
        published,
        publish::Published {
            changed: false,
            version: 3
        },
        "the version that holds it, to label"
    );
    assert_eq!(put.num_calls(), 0);
}

fn sent() -> SendCommandOutput {
    SendCommandOutput::builder()
        .command(Command::builder().command_id("c-1").build())
        .build()
}

fn invocation_error(code: &'static str) -> impl Fn() -> GetCommandInvocationError {
    move || GetCommandInvocationError::generic(meta(code, "m"))
}

fn invocation(status: CommandInvocationStatus, details: &str) -> GetCommandInvocationOutput {
    GetCommandInvocationOutput::builder()
        .status(status)
        .status_details(details)
        .response_code(if details == "Success" { 0 } else { -1 })
        .build()
}

#[tokio::test(start_paused = true)]
async fn verify_rides_out_invocation_does_not_exist_and_throttling() {
    let send = mock!(aws_sdk_ssm::Client::send_command).then_output(sent);
    let get = mock!(aws_sdk_ssm::Client::get_command_invocation)
        .sequence()
        .error(invocation_error("InvocationDoesNotExist"))
        .times(2)
        .output(|| invocation(CommandInvocationStatus::InProgress, "InProgress"))
        .error(invocation_error("ThrottlingException"))
        .output(|| invocation(CommandInvocationStatus::Success, "Success"))
        .build();
    let clients = clients(&[&send, &get]);
    verify_true(&clients).await.unwrap();
    assert_eq!(get.num_calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn an_undeliverable_verify_command_says_so() {
    let send = mock!(aws_sdk_ssm::Client::send_command).then_output(sent);
    let get = mock!(aws_sdk_ssm::Client::get_command_invocation)
        .then_output(|| invocation(CommandInvocationStatus::Failed, "Undeliverable"));
    let clients = clients(&[&send, &get]);
    let err = verify_true(&clients).await.unwrap_err().to_string();
    assert!(
        err.contains("verification on builder i-1 ended Failed: Undeliverable"),
        "{err}"
    );
}

/// How many calls pruning made: published-parameter reads in other regions, DescribeRegions,
/// DescribeLaunchTemplates (the account-wide census).
#[derive(Debug, PartialEq)]
struct PruneCalls {
    reads: usize,
    regions: usize,
    templates: usize,
}

/// `prune_each` of `web` alone.
async fn prune_with(
    other_region: impl Fn() -> MockResponse<GetParameterOutput, GetParameterError>
    + Send
    + Sync
    + 'static,
) -> (Result<bake::prune::Pruned, bake::prune::Error>, usize) {
    let (mut results, calls) = prune_each(&["web"], other_region).await;
    (results.remove(0), calls.reads)
}

/// An account with two AMIs of each image (the older one prunable with `--keep 1`), nothing
/// using either in this region, and one other region whose GetParameter of a published
/// parameter answers `other_region`; the images pruned one after another as `bake prune` does.
async fn prune_each(
    names: &[&str],
    other_region: impl Fn() -> MockResponse<GetParameterOutput, GetParameterError>
    + Send
    + Sync
    + 'static,
) -> (
    Vec<Result<bake::prune::Pruned, bake::prune::Error>>,
    PruneCalls,
) {
    use aws_sdk_autoscaling::operation::describe_auto_scaling_groups::DescribeAutoScalingGroupsOutput;
    use aws_sdk_ec2::operation::describe_images::DescribeImagesOutput;
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
    use aws_sdk_ec2::operation::describe_launch_templates::DescribeLaunchTemplatesOutput;
    use aws_sdk_ec2::operation::describe_regions::DescribeRegionsOutput;
    use aws_sdk_ec2::types::{Image, Region};
    use aws_sdk_ssm::operation::get_parameters_by_path::GetParametersByPathOutput;

    let images = mock!(aws_sdk_ec2::Client::describe_images).then_output(|| {
        DescribeImagesOutput::builder()
            .images(
                Image::builder()
                    .image_id("ami-old")
                    .name("web-old")
                    .creation_date("2026-01-01T00:00:00.000Z")
                    .build(),
            )
            .images(
                Image::builder()
                    .image_id("ami-new")
                    .name("web-new")
                    .creation_date("2026-02-01T00:00:00.000Z")
                    .build(),
            )
            .build()
    });
    let instances = mock!(aws_sdk_ec2::Client::describe_instances)
        .then_output(|| DescribeInstancesOutput::builder().build());
    let templates = mock!(aws_sdk_ec2::Client::describe_launch_templates)
        .then_output(|| DescribeLaunchTemplatesOutput::builder().build());
    let regions = mock!(aws_sdk_ec2::Client::describe_regions).then_output(|| {
        DescribeRegionsOutput::builder()
            .regions(Region::builder().region_name("ap-northeast-2").build())
            .regions(Region::builder().region_name("us-east-1").build())
            .build()
    });
    let groups = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_groups)
        .then_output(|| DescribeAutoScalingGroupsOutput::builder().build());
    let here = mock!(aws_sdk_ssm::Client::get_parameters_by_path)
        .then_output(|| GetParametersByPathOutput::builder().build());
    let elsewhere = mock!(aws_sdk_ssm::Client::get_parameter)
        .match_requests(|r| r.name().is_some_and(|n| n.ends_with("/ami-id")))
        .then_compute_response(move |_| other_region());
    let clients = account(
        &[&here, &elsewhere],
        &[&images, &instances, &templates, &regions],
        &[&groups],
    );
    let options = bake::prune::Options {
        keep: 1,
        dry_run: true,
        publish_prefix: "/bake".into(),
    };
    let mut census = bake::prune::Census::default();
    let mut results = Vec::new();
    for name in names {
        results.push(bake::prune::prune(&clients, name, &options, &mut census).await);
    }
    let calls = PruneCalls {
        reads: elsewhere.num_calls(),
        regions: regions.num_calls(),
        templates: templates.num_calls(),
    };
    (results, calls)
}

#[tokio::test(start_paused = true)]
async fn pruning_several_images_reads_the_account_once() {
    let (results, calls) = prune_each(&["web", "api", "worker"], || {
        MockResponse::Output(GetParameterOutput::builder().build())
    })
    .await;
    for pruned in results {
        let pruned = pruned.unwrap();
        assert_eq!(pruned.removed.len(), 1, "{pruned:?}");
    }
    // One census (regions, templates) for all three; each image's own parameter in the other
    // region.
    assert_eq!(
        calls,
        PruneCalls {
            reads: 3,
            regions: 1,
            templates: 1
        }
    );
}

#[tokio::test(start_paused = true)]
async fn prune_keeps_an_ami_another_regions_parameter_publishes() {
    let (pruned, reads) = prune_with(|| MockResponse::Output(holding("ami-old", 7))).await;
    let pruned = pruned.unwrap();
    assert_eq!(reads, 1, "one read, in the one other region");
    assert!(pruned.removed.is_empty(), "{:?}", pruned.removed);
    let old = pruned.kept.iter().find(|k| k.ami_id == "ami-old").unwrap();
    assert_eq!(
        old.why,
        "published in SSM parameter /bake/web/ami-id in us-east-1"
    );
}

#[tokio::test(start_paused = true)]
async fn a_region_that_denies_the_read_is_reported_and_one_that_fails_stops_the_prune() {
    let denied = || {
        MockResponse::Error(GetParameterError::generic(meta(
            "AccessDeniedException",
            "explicit deny in a service control policy",
        )))
    };
    let (pruned, _) = prune_with(denied).await;
    let pruned = pruned.unwrap();
    assert_eq!(
        pruned
            .removed
            .iter()
            .map(|r| r.ami_id.as_str())
            .collect::<Vec<_>>(),
        ["ami-old"]
    );
    assert_eq!(pruned.unread.len(), 1, "{:?}", pruned.unread);
    assert!(
        pruned.unread[0].starts_with("us-east-1: AccessDeniedException"),
        "{:?}",
        pruned.unread
    );

    let broken = || {
        MockResponse::Error(GetParameterError::generic(meta(
            "InvalidKeyId",
            "the parameter's key is disabled",
        )))
    };
    let err = prune_with(broken).await.0.unwrap_err().to_string();
    assert!(
        err.contains("read /bake/web/ami-id in us-east-1") && err.contains("InvalidKeyId"),
        "{err}"
    );
}
