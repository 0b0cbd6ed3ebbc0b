//! Clients whose calls are answered by aws-smithy-mocks rules, for the AWS answers the lab cannot
//! produce. A service without rules answers nothing (a call to it fails the test).

#![allow(dead_code)]

use aws_smithy_mocks::{MockResponseInterceptor, Rule, RuleMode, create_mock_http_client};
use aws_smithy_types::error::ErrorMetadata;
use bake::aws::Clients;
use bake::output::Progress;

/// The rules answering each service's calls.
#[derive(Default)]
pub struct Answers<'a> {
    pub autoscaling: &'a [&'a Rule],
    pub cloudwatch: &'a [&'a Rule],
    pub ec2: &'a [&'a Rule],
    pub elb: &'a [&'a Rule],
    pub ssm: &'a [&'a Rule],
    pub iam: &'a [&'a Rule],
    pub kms: &'a [&'a Rule],
    pub s3: &'a [&'a Rule],
}

/// A client of `$sdk` in `$region` answered by `$rules` (this SDK version predates
/// `mock_client!`'s defaults).
macro_rules! mocked {
    ($sdk:ident, $region:expr, $rules:expr) => {{
        let mut interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny);
        for rule in $rules {
            interceptor = interceptor.with_rule(rule);
        }
        $sdk::Client::from_conf(
            $sdk::Config::builder()
                .with_test_defaults()
                .region($sdk::config::Region::new($region.to_owned()))
                .http_client(create_mock_http_client())
                .interceptor(interceptor)
                .build(),
        )
    }};
}

impl Answers<'_> {
    /// The clients of `region` (`in_region` keeps the mocks for other regions).
    pub fn clients(&self, region: &str) -> Clients {
        Clients {
            autoscaling: mocked!(aws_sdk_autoscaling, region, self.autoscaling),
            cloudwatch: mocked!(aws_sdk_cloudwatch, region, self.cloudwatch),
            ec2: mocked!(aws_sdk_ec2, region, self.ec2),
            elb: mocked!(aws_sdk_elasticloadbalancingv2, region, self.elb),
            ssm: mocked!(aws_sdk_ssm, region, self.ssm),
            iam: mocked!(aws_sdk_iam, region, self.iam),
            kms: mocked!(aws_sdk_kms, region, self.kms),
            s3: mocked!(aws_sdk_s3, region, self.s3),
            region: region.into(),
        }
    }
}

/// The clients of ap-northeast-2 whose EC2, Auto Scaling and load balancing calls are answered by
/// the given rules (other services answer nothing).
pub fn clients_of(ec2: &[&Rule], autoscaling: &[&Rule], elb: &[&Rule]) -> Clients {
    Answers {
        ec2,
        autoscaling,
        elb,
        ..Answers::default()
    }
    .clients("ap-northeast-2")
}

/// The error an AWS service answers with: its `code` and `message`.
pub fn meta(code: &str, message: &str) -> ErrorMetadata {
    ErrorMetadata::builder().code(code).message(message).build()
}

/// Progress for image `web` that draws nowhere, for driving a module directly.
pub fn progress() -> Progress {
    Progress::new(
        &indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden()),
        "web",
    )
}
