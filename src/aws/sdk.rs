//! The SDK config as the AWS CLI would build it: `--profile` over environment credentials, the
//! region from flags, environment, profile then the config (never IMDS), per-request timeouts, an
//! HTTP client whose connection failures name their endpoint (and are not retried when nothing
//! answers), and a check at start that the credentials outlast the command. Also why that setup
//! can fail ([`Error`]), and an error's chain of causes said once ([`chain`]).

use std::time::{Duration, SystemTime};

use aws_config::meta::region::ProvideRegion;
use aws_config::profile::{ProfileFileCredentialsProvider, ProfileFileRegionProvider};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::ConfigBag;
use aws_sdk_ec2::config::{Credentials, ProvideCredentials};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::{
    RuntimeComponents, RuntimeComponentsBuilder,
};
use aws_smithy_runtime_api::client::runtime_plugin::RuntimePlugin;
use aws_smithy_runtime_api::shared::IntoShared;

/// Where to connect: `--profile`, `--region`, then the config's `region`; the endpoint comes from
/// the standard `AWS_ENDPOINT_URL` variables. [`load`] builds the SDK config from it.
#[derive(Debug, Clone, Default)]
pub struct Target {
    pub profile: Option<String>,
    pub region: Option<String>,
    pub config_region: Option<String>,
    /// How long the command may run at worst: credentials the SDK cannot refresh that expire
    /// sooner get a warning at start.
    pub runs_for: Duration,
}

/// Why the AWS clients could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no AWS region: pass --region, set AWS_REGION or a region in the profile, or `region = ...` \
         at the top of the config"
    )]
    NoRegion,
    #[error("no AWS credentials{0}")]
    NoCredentials(String),
    #[error("{variable} is not an RFC 3339 time (like 2026-01-31T12:00:00Z): {value:?}")]
    BadExpiration {
        variable: &'static str,
        value: String,
    },
    #[error(
        "the session credentials from {from} {when}: bake does not start with them, as nothing \
         this run created could be cleaned up once they expire; get new credentials and run again"
    )]
    Expiring { from: String, when: String },
}

/// An error's message followed by its sources' (`dispatch failure: io error: ...`), each said
/// once: what `DisplayErrorContext` prints, without its `Debug` dump of the whole error.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let message = e.to_string();
        // A wrapper that already quotes its source ("tcp connect error: refused") says it once.
        if !message.is_empty() && !parts.last().is_some_and(|last| last.contains(&message)) {
            parts.push(message);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// [`chain`] of what lies below the first error in `error`'s chain that `from` picks (below
/// `error` itself when none does): the specific cause under generic wrappers.
pub fn chain_below(
    error: &(dyn std::error::Error + 'static),
    from: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> String {
    let mut next = Some(error);
    while let Some(e) = next {
        if from(e) {
            break;
        }
        next = e.source();
    }
    match next.unwrap_or(error).source() {
        Some(below) => chain(below),
        None => chain(next.unwrap_or(error)),
    }
}

/// Throttling and 5xx answers are retried by the SDK: standard mode, with more attempts than its
/// default 3 so a burst of RequestLimitExceeded does not fail a 20-minute bake.
const MAX_ATTEMPTS: u32 = 10;
/// The first retry waits about this long (jittered); the SDK doubles it up to its 20 s cap.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// A TCP + TLS handshake with a regional endpoint takes well under a second; ten seconds is a
/// blackholed route, and the attempt is retried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// AWS answers every call bake makes (RunInstances and CreateImage included) in seconds; a minute
/// without an answer is a dead connection, retried as a transient error. A minute, not less, so a
/// loaded lab that starts a container inside RunInstances is not cut off.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// One call, all its retries included: ten attempts with the SDK's backoff (capped at 20 s) take
/// about 3 minutes when each fails fast; past 5 minutes the service is down, not throttling.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(300);
/// Credentials with less left than this are refused at start: no command that creates something
/// can create it and remove it again in less (a builder alone takes minutes to boot).
const MIN_LIFETIME: Duration = Duration::from_secs(5 * 60);
/// Variables that tell when static session credentials in the environment expire: the AWS CLI
/// (aws/aws-cli#7398) and the JavaScript SDK read `AWS_CREDENTIAL_EXPIRATION`; aws-vault sets
/// `AWS_SESSION_EXPIRATION`. The Rust SDK reads neither.
const EXPIRATION_VARIABLES: &[&str] = &["AWS_CREDENTIAL_EXPIRATION", "AWS_SESSION_EXPIRATION"];

/// The timeouts every request gets.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Loads the SDK config for `target` and checks its credentials.
pub async fn load(target: &Target) -> Result<SdkConfig, Error> {
    let region = region(target).await?;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(INITIAL_BACKOFF),
        )
        .timeout_config(timeouts())
        .region(region);
    if let Some(client) = http_client() {
        loader = loader.http_client(client);
    }
    if let Some(profile) = &target.profile {
        // As in the AWS CLI, a profile named on the command line wins over AWS_ACCESS_KEY_ID and
        // friends; the SDK's default chain would look at the environment first.
        loader = loader.profile_name(profile).credentials_provider(
            ProfileFileCredentialsProvider::builder()
                .profile_name(profile)
                .build(),
        );
    }
    let sdk = loader.load().await;
    check_credentials(&sdk, target).await?;
    Ok(sdk)
}

/// `--region`, then `AWS_REGION`/`AWS_DEFAULT_REGION`, then the profile's `region`, then the
/// config's. IMDS is never asked: it is not where a workstation's region is, and on a machine
/// without it the SDK prints a warning per attempt.
pub async fn region(target: &Target) -> Result<Region, Error> {
    region_and_source(target).await.map(|(region, _)| region)
}

/// [`region`], and where it came from, for people: "--region", "AWS_REGION", "profile default's
/// `region`", "`region` in the config".
pub async fn region_and_source(target: &Target) -> Result<(Region, String), Error> {
    if let Some(region) = &target.region {
        return Ok((Region::new(region.clone()), "--region".to_owned()));
    }
    if let Some(region) = aws_config::environment::EnvironmentVariableRegionProvider::new()
        .region()
        .await
    {
        let variable = if std::env::var_os("AWS_REGION").is_some_and(|v| !v.is_empty()) {
            "AWS_REGION"
        } else {
            "AWS_DEFAULT_REGION"
        };
        return Ok((region, variable.to_owned()));
    }
    let mut profile = ProfileFileRegionProvider::builder();
    if let Some(name) = &target.profile {
        profile = profile.profile_name(name);
    }
    if let Some(region) = profile.build().region().await {
        let name = target
            .profile
            .clone()
            .or_else(|| std::env::var("AWS_PROFILE").ok().filter(|p| !p.is_empty()))
            .unwrap_or_else(|| "default".to_owned());
        return Ok((region, format!("profile {name}'s `region`")));
    }
    target
        .config_region
        .clone()
        .map(|r| (Region::new(r), "`region` in the config".to_owned()))
        .ok_or(Error::NoRegion)
}

/// Resolves the credentials once and refuses to start with credentials that are missing, or that
/// cannot be refreshed and expire too soon; warns when they may expire before the command ends.
async fn check_credentials(sdk: &SdkConfig, target: &Target) -> Result<(), Error> {
    let Some(provider) = sdk.credentials_provider() else {
        return Err(Error::NoCredentials("no credentials provider".into()));
    };
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|e| match &target.profile {
            // The profile provider answers CredentialsNotLoaded ("not enabled") for a profile
            // the files do not have; the crate naming that variant is not one of bake's.
            Some(profile) if format!("{e:?}").starts_with("CredentialsNotLoaded") => {
                Error::NoCredentials(format!(
                    " from profile {profile}: no such profile, or no credentials in it, in \
                     ~/.aws/config or ~/.aws/credentials (AWS_CONFIG_FILE, \
                     AWS_SHARED_CREDENTIALS_FILE)"
                ))
            }
            Some(profile) => {
                Error::NoCredentials(format!(" from profile {profile}: {}", chain(&e)))
            }
            None => Error::NoCredentials(
                ": set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, name a profile with --profile \
                 or AWS_PROFILE, or run where an instance or container role provides them \
                 (-v shows what each source answered)"
                    .into(),
            ),
        })?;
    let Some(lifetime) = static_lifetime(&credentials, target)? else {
        return Ok(());
    };
    judge(lifetime, target.runs_for)
}

/// When credentials the SDK cannot refresh expire: environment session credentials whose expiry
/// is in AWS_CREDENTIAL_EXPIRATION or AWS_SESSION_EXPIRATION. Refreshable providers (SSO, assume
/// role, credential_process, IMDS, ECS) are renewed by the SDK's identity cache before they
/// expire, so they give `None`, as do static credentials with no known expiry.
fn static_lifetime(credentials: &Credentials, target: &Target) -> Result<Option<Lifetime>, Error> {
    // The SDK does not say which provider answered; without --profile, the default chain takes
    // the environment's keys first, so these are they when the key id matches and no expiry
    // came with them.
    let from_environment = target.profile.is_none()
        && credentials.expiry().is_none()
        && std::env::var("AWS_ACCESS_KEY_ID").is_ok_and(|k| k == credentials.access_key_id());
    if !from_environment || credentials.session_token().is_none() {
        return Ok(None);
    }
    for variable in EXPIRATION_VARIABLES {
        let Ok(value) = std::env::var(variable) else {
            continue;
        };
        let at = parse_time(&value).ok_or_else(|| Error::BadExpiration {
            variable,
            value: value.clone(),
        })?;
        return Ok(Some(Lifetime {
            source: format!("the environment (AWS_SESSION_TOKEN, {variable})"),
            at,
            text: value,
        }));
    }
    Ok(None)
}

/// An RFC 3339 time: `2026-11-23T19:00:00Z`, or with an offset (`+01:00`) as aws-vault writes.
fn parse_time(value: &str) -> Option<SystemTime> {
    use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
    let value = value.trim();
    let parse = |utc: &str| {
        DateTime::from_str(utc, DateTimeFormat::DateTime)
            .ok()
            .and_then(|t| SystemTime::try_from(t).ok())
    };
    if value.ends_with(['Z', 'z']) {
        return parse(value);
    }
    // `...+HH:MM` / `...-HH:MM`: the same wall time in UTC, moved back by the offset.
    let (local, offset) = value.split_at_checked(value.len().checked_sub(6)?)?;
    let sign = match offset.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (hours, minutes) = offset[1..].split_once(':')?;
    let seconds =
        i64::from(hours.parse::<u8>().ok()?) * 3600 + i64::from(minutes.parse::<u8>().ok()?) * 60;
    let utc = parse(&format!("{local}Z"))?;
    let shift = Duration::from_secs(seconds.unsigned_abs());
    if sign > 0 {
        utc.checked_sub(shift)
    } else {
        utc.checked_add(shift)
    }
}

/// Credentials that expire at a known time and cannot be refreshed.
#[derive(Debug)]
struct Lifetime {
    source: String,
    at: SystemTime,
    text: String,
}

/// Refuses credentials that are expired or nearly so; warns when they expire before `runs_for`.
fn judge(lifetime: Lifetime, runs_for: Duration) -> Result<(), Error> {
    let left = lifetime
        .at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    let at = lifetime.text;
    if left.is_zero() {
        return Err(Error::Expiring {
            from: lifetime.source,
            when: format!("expired at {at}"),
        });
    }
    if left < MIN_LIFETIME.min(runs_for) {
        return Err(Error::Expiring {
            from: lifetime.source,
            when: format!(
                "expire at {at}, in {}",
                humantime::format_duration(Duration::from_secs(left.as_secs()))
            ),
        });
    }
    if left < runs_for {
        crate::output::note(&format!(
            "warning: the session credentials from {} expire at {at} (in {}), and this command \
             may run up to {}; the SDK cannot refresh them, so a run that outlasts them stops \
             with ExpiredToken and leaves what it created for `bake gc`. Get credentials that \
             last longer to be safe.",
            lifetime.source,
            humantime::format_duration(Duration::from_secs(left.as_secs())),
            humantime::format_duration(runs_for),
        ));
    }
    Ok(())
}

/// The SDK's own default HTTP client (rustls, proxies from `HTTPS_PROXY`/`NO_PROXY`), wrapped so
/// that a request that gets no answer says where it went; `None` where the SDK has no default.
fn http_client() -> Option<SharedHttpClient> {
    let plugin = aws_smithy_runtime::client::defaults::default_http_client_plugin_v2(
        BehaviorVersion::latest(),
    )?;
    let inner = plugin
        .runtime_components(&RuntimeComponentsBuilder::new("bake"))
        .http_client()?;
    Some(Describing { inner }.into_shared())
}

/// An HTTP client whose connection failures become [`Unreachable`].
#[derive(Debug)]
struct Describing {
    inner: SharedHttpClient,
}

impl HttpClient for Describing {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        DescribingConnector {
            inner: self.inner.http_connector(settings, components),
        }
        .into_shared()
    }

    fn validate_base_client_config(
        &self,
        components: &RuntimeComponentsBuilder,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.inner.validate_base_client_config(components, cfg)
    }

    fn validate_final_config(
        &self,
        components: &RuntimeComponents,
        cfg: &ConfigBag,
    ) -> Result<(), BoxError> {
        self.inner.validate_final_config(components, cfg)
    }

    fn connector_metadata(
        &self,
    ) -> Option<aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata> {
        self.inner.connector_metadata()
    }
}

#[derive(Debug)]
struct DescribingConnector {
    inner: SharedHttpConnector,
}

impl HttpConnector for DescribingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let endpoint = Endpoint::of(request.uri(), request.headers().get("authorization"));
        let call = self.inner.call(request);
        HttpConnectorFuture::new(async move { call.await.map_err(|e| endpoint.failed(e)) })
    }
}

/// Where a request went: the service (from the request's SigV4 credential scope, else its host),
/// the endpoint's scheme and authority, and the region it was signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// The service's signing name (`ec2`, `elasticloadbalancing`).
    service: String,
    /// `https://ec2.eu-west-1.amazonaws.com`, or what `AWS_ENDPOINT_URL` named.
    url: String,
    region: Option<String>,
}

/// bake's services: signing name, name for people, and the suffix of their own
/// `AWS_ENDPOINT_URL_*` variable.
const SERVICES: &[(&str, &str, &str)] = &[
    ("ec2", "EC2", "EC2"),
    ("autoscaling", "Auto Scaling", "AUTO_SCALING"),
    (
        "elasticloadbalancing",
        "Elastic Load Balancing",
        "ELASTIC_LOAD_BALANCING_V2",
    ),
    ("ssm", "Systems Manager (SSM)", "SSM"),
    ("monitoring", "CloudWatch", "CLOUDWATCH"),
    ("iam", "IAM", "IAM"),
    ("sts", "STS", "STS"),
];

impl Endpoint {
    fn of(uri: &str, authorization: Option<&str>) -> Endpoint {
        let (scheme, rest) = uri.split_once("://").unwrap_or(("https", uri));
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        // `AWS4-HMAC-SHA256 Credential=AKID/20250101/eu-west-1/ec2/aws4_request, ...`
        let scope: Vec<&str> = authorization
            .and_then(|a| a.split_once("Credential="))
            .map(|(_, rest)| rest.split([',', ' ']).next().unwrap_or(rest))
            .map(|credential| credential.split('/').collect())
            .unwrap_or_default();
        let (region, service) = match scope.as_slice() {
            [_, _, region, service, _] => (Some((*region).to_owned()), (*service).to_owned()),
            _ => {
                let host = authority.rsplit('@').next().unwrap_or(authority);
                (
                    None,
                    host.split(['.', ':']).next().unwrap_or(host).to_owned(),
                )
            }
        };
        Endpoint {
            service,
            url: format!("{scheme}://{authority}"),
            region,
        }
    }

    /// The connector's error as an [`Unreachable`]. A connection that could not be made (refused,
    /// no such host, no route, TLS refused) is final: the SDK would retry it for tens of seconds
    /// and get the same answer. Timeouts and connections lost mid-request keep their kind, so they
    /// are retried as before.
    fn failed(self, error: ConnectorError) -> ConnectorError {
        let how = if error.is_timeout() {
            How::Timeout
        } else if never_connected(&error) {
            How::Connect
        } else {
            How::Lost
        };
        let retry = error.as_other();
        let (io, timeout, user) = (error.is_io(), error.is_timeout(), error.is_user());
        let unreachable: BoxError = Box::new(Unreachable::new(self, how, error));
        match how {
            How::Connect => ConnectorError::other(unreachable, None).never_connected(),
            _ if timeout => ConnectorError::timeout(unreachable),
            _ if io => ConnectorError::io(unreachable),
            _ if user => ConnectorError::user(unreachable),
            _ => ConnectorError::other(unreachable, retry),
        }
    }
}

/// True when the connection itself could not be made (DNS, TCP, TLS), as the HTTP client says.
fn never_connected(error: &ConnectorError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// No connection: refused, no such host, no route, TLS handshake refused.
    Connect,
    /// No answer in time.
    Timeout,
    /// The connection broke during the request.
    Lost,
}

/// A request that got no answer: which service, at which endpoint, why, and what to check. Its
/// message is one paragraph for people; the SDK's error is kept as its source.
#[derive(Debug)]
pub struct Unreachable {
    endpoint: Endpoint,
    how: How,
    /// The environment variable that chose the endpoint, and its value.
    configured_by: Option<(String, String)>,
    /// The proxy variable the request went through, and its value.
    proxy: Option<(String, String)>,
    source: ConnectorError,
}

impl Unreachable {
    fn new(endpoint: Endpoint, how: How, source: ConnectorError) -> Unreachable {
        let suffix = SERVICES
            .iter()
            .find(|(name, ..)| *name == endpoint.service)
            .map(|(.., suffix)| *suffix);
        let set = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .map(|v| (name.to_owned(), v))
        };
        let configured_by = suffix
            .and_then(|s| set(&format!("AWS_ENDPOINT_URL_{s}")))
            .or_else(|| set("AWS_ENDPOINT_URL"));
        let proxies: &[&str] = if endpoint.url.starts_with("http://") {
            &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
        } else {
            &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
        };
        let proxy = proxies.iter().find_map(|name| set(name));
        Unreachable {
            endpoint,
            how,
            configured_by,
            proxy,
            source,
        }
    }

    /// The service's name for people.
    fn service(&self) -> &str {
        SERVICES
            .iter()
            .find(|(name, ..)| *name == self.endpoint.service)
            .map_or(self.endpoint.service.as_str(), |(_, shown, _)| shown)
    }
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let service = self.service();
        let url = &self.endpoint.url;
        let region = self
            .endpoint
            .region
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        // What the HTTP client said, below its generic "io error" / "client error (Connect)".
        let cause = chain_below(&self.source, |e| {
            e.downcast_ref::<hyper_util::client::legacy::Error>()
                .is_some()
        });
        match self.how {
            How::Connect => write!(f, "cannot connect to {service} at {url}{region}: {cause}.")?,
            How::Timeout => write!(
                f,
                "no answer from {service} at {url}{region} in time: {cause}."
            )?,
            How::Lost => write!(
                f,
                "the connection to {service} at {url}{region} broke: {cause}."
            )?,
        }
        match &self.configured_by {
            Some((variable, value)) => write!(
                f,
                " That endpoint comes from {variable}={value}: check that it is the right \
                 address and that the service is up there, or unset it to use AWS's endpoints."
            )?,
            None if !is_aws(url) => write!(
                f,
                " That endpoint is not AWS's own: it comes from `endpoint_url` in the AWS config \
                 file's profile; check it, or remove it to use AWS's endpoints."
            )?,
            None => write!(
                f,
                " Check the region (--region, AWS_REGION, the profile's `region`, or `region` in \
                 the config) and that this machine can resolve and reach that host (DNS, \
                 firewall, VPN)."
            )?,
        }
        match &self.proxy {
            Some((variable, value)) => write!(
                f,
                " Requests go through the proxy in {variable} ({value}): check that it is up, or \
                 add the endpoint's host to NO_PROXY to reach it directly."
            ),
            None => write!(
                f,
                " If this network reaches AWS only through a proxy, set HTTPS_PROXY (and NO_PROXY \
                 for hosts reached directly)."
            ),
        }
    }
}

impl std::error::Error for Unreachable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// True for AWS's own endpoints (`*.amazonaws.com`, `*.amazonaws.com.cn`, `*.api.aws`).
fn is_aws(url: &str) -> bool {
    let host = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = host.rsplit('@').next().unwrap_or(host);
    let host = host.split(':').next().unwrap_or(host);
    [".amazonaws.com", ".amazonaws.com.cn", ".api.aws"]
        .iter()
        .any(|suffix| host.ends_with(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifetime(left: Duration) -> Lifetime {
        Lifetime {
            source: "the environment".into(),
            at: SystemTime::now() + left,
            text: "then".into(),
        }
    }

    #[test]
    fn credentials_that_outlast_the_command_pass() {
        let hour = Duration::from_secs(3600);
        assert!(judge(lifetime(2 * hour), hour).is_ok());
    }

    #[test]
    fn credentials_that_expire_before_the_command_ends_are_only_warned_about() {
        let hour = Duration::from_secs(3600);
        assert!(judge(lifetime(hour / 2), hour).is_ok());
    }

    #[test]
    fn expired_or_nearly_expired_credentials_are_refused() {
        let hour = Duration::from_secs(3600);
        let past = Lifetime {
            at: SystemTime::now() - hour,
            ..lifetime(hour)
        };
        let refused = judge(past, hour).unwrap_err().to_string();
        assert!(refused.contains("expired at then"), "{refused}");
        assert!(judge(lifetime(Duration::from_secs(60)), hour).is_err());
    }

    #[test]
    fn expiry_times_parse_with_zulu_or_offset() {
        let z = parse_time("2026-11-23T19:00:00Z").unwrap();
        assert_eq!(parse_time("2026-11-23T20:00:00+01:00"), Some(z));
        assert_eq!(parse_time("2026-11-23T18:30:00-00:30"), Some(z));
        assert_eq!(parse_time("2026-11-23T19:00:00.000+00:00"), Some(z));
        assert!(parse_time("tomorrow").is_none());
        assert!(parse_time("2026-11-23T19:00:00").is_none());
    }

    const SIGNED: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/eu-west-1/ec2/aws4_request, \
        SignedHeaders=host;x-amz-date, Signature=abc";

    #[test]
    fn an_endpoint_is_named_by_its_signing_scope_and_address() {
        let endpoint = Endpoint::of(
            "http://127.0.0.1:4566/?Action=DescribeSubnets",
            Some(SIGNED),
        );
        assert_eq!(
            endpoint,
            Endpoint {
                service: "ec2".into(),
                url: "http://127.0.0.1:4566".into(),
                region: Some("eu-west-1".into()),
            }
        );
        // Unsigned: the host's first label names the service.
        let endpoint = Endpoint::of("https://sts.us-east-1.amazonaws.com/", None);
        assert_eq!(endpoint.service, "sts");
        assert_eq!(endpoint.url, "https://sts.us-east-1.amazonaws.com");
        assert_eq!(endpoint.region, None);
    }

    #[test]
    fn timeouts_and_lost_connections_keep_their_kind_so_they_are_still_retried() {
        let endpoint = || Endpoint::of("https://ec2.eu-west-1.amazonaws.com/", Some(SIGNED));
        let timeout = endpoint().failed(ConnectorError::timeout("read timed out".into()));
        assert!(timeout.is_timeout());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let lost = endpoint().failed(ConnectorError::io(reset.into()));
        assert!(lost.is_io());
        let other = endpoint().failed(ConnectorError::other(
            "odd".into(),
            Some(aws_smithy_runtime_api::client::retries::ErrorKind::TransientError),
        ));
        assert_eq!(
            other.as_other(),
            Some(aws_smithy_runtime_api::client::retries::ErrorKind::TransientError)
        );
        // Each now says where it went, once, in words.
        let text = chain(&lost);
        assert!(
            text.contains(
                "the connection to EC2 at https://ec2.eu-west-1.amazonaws.com \
                           (eu-west-1) broke: connection reset"
            ),
            "{text}"
        );
        assert!(text.contains("Check the region"), "{text}");
    }

    #[test]
    fn an_endpoint_from_the_profile_is_not_blamed_on_the_region() {
        assert!(is_aws("https://ec2.eu-west-1.amazonaws.com"));
        assert!(is_aws("https://ec2.cn-north-1.amazonaws.com.cn"));
        assert!(is_aws("https://ec2.eu-west-1.api.aws:443"));
        assert!(!is_aws("http://localhost:4566"));
        assert!(!is_aws("https://amazonaws.com.evil.example"));
    }

    #[test]
    fn every_request_has_an_attempt_timeout() {
        let t = timeouts();
        assert_eq!(t.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
        assert_eq!(t.connect_timeout(), Some(CONNECT_TIMEOUT));
        assert_eq!(t.operation_timeout(), Some(OPERATION_TIMEOUT));
    }

    #[test]
    fn chains_say_each_cause_once_and_never_dump_debug() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "dispatch failure: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(chain(&Outer(refused())), "dispatch failure: refused");
        assert_eq!(chain_below(&Outer(refused()), |_| false), "refused");
        let io = refused();
        assert_eq!(chain(&io), "refused");
    }
}
