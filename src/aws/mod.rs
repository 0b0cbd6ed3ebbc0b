//! The AWS side of bake: the service clients (their SDK config is [`sdk`]'s), each call made
//! through [`Clients::call`] ([`call`]: what it was about, its eventual-consistency window), how
//! AWS's answers are read ([`answer`]), and a log line per call at `-v` ([`trace`]).

pub mod answer;
pub mod call;
pub mod pages;
pub mod sdk;
pub mod trace;

pub use answer::{code, describe, transient};
pub use call::{
    Call, CallError, Failed, INSTANCE_RELEASE, LOAD_BALANCER_RELEASE, NEW_IMAGE, NEW_INSTANCE,
    NEW_INVOCATION, NEW_SECURITY_GROUP, SNAPSHOT_RELEASE, Settle, THROTTLE_BURST, settle,
    settle_until, unless_transient,
};
pub use sdk::{Error, Target, chain, chain_below};

use std::future::Future;

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

/// The clients bake needs, sharing one SDK config.
#[derive(Clone, Debug)]
pub struct Clients {
    pub autoscaling: aws_sdk_autoscaling::Client,
    /// CloudWatch: the stack's alarms.
    pub cloudwatch: aws_sdk_cloudwatch::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub iam: aws_sdk_iam::Client,
    /// KMS: the distribution's keys, checked at preflight in each region.
    pub kms: aws_sdk_kms::Client,
    /// S3: the config's `[store]` (the cross-machine lease, each image's records). Path-style
    /// addressing only when an endpoint is configured (a lab or proxy), virtual-hosted on AWS.
    pub s3: aws_sdk_s3::Client,
    /// The region the clients talk to, for messages.
    pub region: String,
}

impl Clients {
    /// Loads the SDK config (profile, region, credentials, timeouts) and builds the clients.
    pub async fn load(target: &Target) -> Result<Clients, Error> {
        let sdk = sdk::load(target).await?;
        Ok(Clients::from_sdk(&sdk))
    }

    /// Clients from an SDK config (tests pass one of their own), each logging its calls at `-v`.
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Clients {
        macro_rules! client {
            ($sdk:ident) => {
                $sdk::Client::from_conf(
                    $sdk::config::Builder::from(sdk)
                        .interceptor(trace::Trace)
                        .build(),
                )
            };
        }
        Clients {
            autoscaling: client!(aws_sdk_autoscaling),
            cloudwatch: client!(aws_sdk_cloudwatch),
            ec2: client!(aws_sdk_ec2),
            elb: client!(aws_sdk_elasticloadbalancingv2),
            ssm: client!(aws_sdk_ssm),
            iam: client!(aws_sdk_iam),
            kms: client!(aws_sdk_kms),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(sdk)
                    .force_path_style(sdk.endpoint_url().is_some())
                    .interceptor(trace::Trace)
                    .build(),
            ),
            region: sdk.region().map_or_else(String::new, ToString::to_string),
        }
    }

    /// An SSM client like this one (credentials, retries, timeouts, tracing) for another region.
    pub fn ssm_in(&self, region: &str) -> aws_sdk_ssm::Client {
        let config = self
            .ssm
            .config()
            .to_builder()
            .region(aws_config::Region::new(region.to_owned()))
            .build();
        aws_sdk_ssm::Client::from_conf(config)
    }

    /// Clients like these (credentials, retries, timeouts, tracing) that talk to another region.
    pub fn in_region(&self, region: &str) -> Clients {
        let region_of = || aws_config::Region::new(region.to_owned());
        macro_rules! moved {
            ($field:ident, $sdk:ident) => {
                $sdk::Client::from_conf(
                    self.$field
                        .config()
                        .to_builder()
                        .region(region_of())
                        .build(),
                )
            };
        }
        Clients {
            autoscaling: moved!(autoscaling, aws_sdk_autoscaling),
            cloudwatch: moved!(cloudwatch, aws_sdk_cloudwatch),
            ec2: moved!(ec2, aws_sdk_ec2),
            elb: moved!(elb, aws_sdk_elasticloadbalancingv2),
            ssm: self.ssm_in(region),
            iam: self.iam.clone(),
            kms: moved!(kms, aws_sdk_kms),
            s3: moved!(s3, aws_sdk_s3),
            region: region.to_owned(),
        }
    }

    /// One call in this region: `send` makes the request (`|| clients.ec2.x().y(id).send()`);
    /// then [`Call::or_fail`] names what it was about, [`Call::settle`] its window.
    pub fn call<F, Fut, T, E>(&self, send: F) -> Call<'_, F>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        Call::new(&self.region, send)
    }

    /// A failure bake read in an answer or a wait (no SDK error to keep), for the person reading
    /// the error.
    pub fn failed(&self, action: impl Into<String>, message: impl Into<String>) -> CallError {
        CallError::new(action, self.region.clone(), message)
    }
}
