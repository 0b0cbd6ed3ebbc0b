//! SSM answers replayed by aws-smithy-mocks: Parameter Store validates an `aws:ec2:image` value
//! after PutParameter answers, so bake reads it back until it holds the new id (and says why when
//! it never does); GetCommandInvocation answers InvocationDoesNotExist right after SendCommand,
//! and throttles, which the verify wait rides out.

use aws_sdk_ssm::error::ErrorMetadata;
use aws_sdk_ssm::operation::get_command_invocation::{
    GetCommandInvocationError, GetCommandInvocationOutput,
};
use aws_sdk_ssm::operation::get_parameter::{GetParameterError, GetParameterOutput};
use aws_sdk_ssm::operation::get_parameter_history::GetParameterHistoryOutput;
use aws_sdk_ssm::operation::put_parameter::PutParameterOutput;
use aws_sdk_ssm::operation::send_command::SendCommandOutput;
use aws_sdk_ssm::types::{Command, CommandInvocationStatus, Parameter, ParameterHistory};
use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, create_mock_http_client, mock};
use bake::ami::verify;
use bake::aws::Clients;
use bake::output::Progress;
use bake::pipeline;
use std::time::Duration;

const NAME: &str = "/bake/web/ami-id";

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

fn clients(ssm_rules: &[&Rule]) -> Clients {
    let none: &[&Rule] = &[];
    Clients {
        autoscaling: mocked!(aws_sdk_autoscaling, none),
        ec2: mocked!(aws_sdk_ec2, none),
        elb: mocked!(aws_sdk_elasticloadbalancingv2, none),
        ssm: mocked!(aws_sdk_ssm, ssm_rules),
        iam: mocked!(aws_sdk_iam, none),
        region: "ap-northeast-2".into(),
    }
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
    GetParameterError::generic(
        ErrorMetadata::builder()
            .code("ParameterNotFound")
            .message("not found")
            .build(),
    )
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
    assert!(pipeline::publish(&clients, NAME, "ami-new").await.unwrap());
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
    let err = pipeline::publish(&clients, NAME, "ami-missing")
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
    assert!(!pipeline::publish(&clients, NAME, "ami-new").await.unwrap());
    assert_eq!(put.num_calls(), 0);
}

fn progress() -> Progress {
    Progress::new(
        &indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()),
        "web",
    )
}

fn sent() -> SendCommandOutput {
    SendCommandOutput::builder()
        .command(Command::builder().command_id("c-1").build())
        .build()
}

fn invocation_error(code: &'static str) -> impl Fn() -> GetCommandInvocationError {
    move || {
        GetCommandInvocationError::generic(ErrorMetadata::builder().code(code).message("m").build())
    }
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
    let commands = vec!["true".to_owned()];
    verify::run(
        &clients,
        "i-1",
        "d",
        &commands,
        Duration::from_secs(60),
        &progress(),
    )
    .await
    .unwrap();
    assert_eq!(get.num_calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn an_undeliverable_verify_command_says_so() {
    let send = mock!(aws_sdk_ssm::Client::send_command).then_output(sent);
    let get = mock!(aws_sdk_ssm::Client::get_command_invocation)
        .then_output(|| invocation(CommandInvocationStatus::Failed, "Undeliverable"));
    let clients = clients(&[&send, &get]);
    let commands = vec!["true".to_owned()];
    let err = verify::run(
        &clients,
        "i-1",
        "d",
        &commands,
        Duration::from_secs(60),
        &progress(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("verification on builder i-1 ended Failed: Undeliverable"),
        "{err}"
    );
}
