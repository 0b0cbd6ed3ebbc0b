//! The AWS SDK config and the service clients, built in one place.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region};

/// The clients bake needs, sharing one SDK config.
#[derive(Clone, Debug)]
pub struct Clients {
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub ec2: aws_sdk_ec2::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub iam: aws_sdk_iam::Client,
    /// The region the clients talk to, for messages.
    pub region: String,
}

/// Where to connect: `--profile`, `--region`, then the config's `region`; the endpoint comes from
/// the standard `AWS_ENDPOINT_URL` variables.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub config_region: Option<String>,
}

/// Throttling and 5xx answers are retried by the SDK: standard mode, with more attempts than its
/// default 3 so a burst of RequestLimitExceeded does not fail a 20-minute bake.
const MAX_ATTEMPTS: u32 = 10;
/// The first retry waits about this long (jittered); the SDK doubles it up to its 20 s cap.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);

impl Clients {
    /// Loads the SDK config with the standard credential chain and builds the clients.
    pub async fn load(target: &Target) -> Result<Clients, Error> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(INITIAL_BACKOFF),
        );
        if let Some(profile) = &target.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &target.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let mut sdk = loader.load().await;
        if sdk.region().is_none() {
            let Some(region) = &target.config_region else {
                return Err(Error::NoRegion);
            };
            sdk = sdk
                .into_builder()
                .region(Region::new(region.clone()))
                .build();
        }
        Ok(Clients::from_sdk(&sdk))
    }

    /// Clients from an SDK config (tests pass one of their own).
    pub fn from_sdk(sdk: &aws_config::SdkConfig) -> Clients {
        Clients {
            autoscaling: aws_sdk_autoscaling::Client::new(sdk),
            ec2: aws_sdk_ec2::Client::new(sdk),
            elb: aws_sdk_elasticloadbalancingv2::Client::new(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
            iam: aws_sdk_iam::Client::new(sdk),
            region: sdk.region().map_or_else(String::new, ToString::to_string),
        }
    }
}

impl Clients {
    /// A failed call, described for the person reading the error.
    pub fn failed(&self, action: impl Into<String>, message: impl Into<String>) -> CallError {
        CallError {
            action: action.into(),
            region: self.region.clone(),
            message: message.into(),
        }
    }
}

/// An AWS call that failed: what bake was doing, where, and what AWS answered.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} in {region}: {message}")]
pub struct CallError {
    pub action: String,
    pub region: String,
    pub message: String,
}

/// Why the AWS clients could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no AWS region: pass --region, set AWS_REGION or a region in the profile, or `region = ...` \
         at the top of the config"
    )]
    NoRegion,
}

/// The service's message for an SDK error, including its code (`InvalidParameterValue: ...`).
pub fn describe<E, R>(err: &aws_sdk_ec2::error::SdkError<E, R>) -> String
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_ec2::error::SdkError;
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                _ => aws_sdk_ec2::error::DisplayErrorContext(err).to_string(),
            }
        }
        _ => aws_sdk_ec2::error::DisplayErrorContext(err).to_string(),
    }
}

/// The error code of an SDK error, when the service sent one.
pub fn code<E, R>(err: &aws_sdk_ec2::error::SdkError<E, R>) -> Option<&str>
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    err.as_service_error()
        .and_then(aws_sdk_ec2::error::ProvideErrorMetadata::code)
}
