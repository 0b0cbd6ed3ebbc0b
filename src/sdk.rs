//! The SDK config as the AWS CLI would build it: `--profile` over environment credentials, the
//! region from flags, environment, profile then the config (never IMDS), per-request timeouts, and
//! a check at start that the credentials outlast the command.

use std::time::{Duration, SystemTime};

use aws_config::meta::region::ProvideRegion;
use aws_config::profile::{ProfileFileCredentialsProvider, ProfileFileRegionProvider};
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::config::{Credentials, ProvideCredentials};

use crate::aws::{Error, Target};

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
    if let Some(region) = &target.region {
        return Ok(Region::new(region.clone()));
    }
    if let Some(region) = aws_config::environment::EnvironmentVariableRegionProvider::new()
        .region()
        .await
    {
        return Ok(region);
    }
    let mut profile = ProfileFileRegionProvider::builder();
    if let Some(name) = &target.profile {
        profile = profile.profile_name(name);
    }
    if let Some(region) = profile.build().region().await {
        return Ok(region);
    }
    target
        .config_region
        .clone()
        .map(Region::new)
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
            Some(profile) => Error::NoCredentials(format!(
                " from profile {profile}: {}",
                aws_sdk_ec2::error::DisplayErrorContext(e)
            )),
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

    #[test]
    fn every_request_has_an_attempt_timeout() {
        let t = timeouts();
        assert_eq!(t.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
        assert_eq!(t.connect_timeout(), Some(CONNECT_TIMEOUT));
        assert_eq!(t.operation_timeout(), Some(OPERATION_TIMEOUT));
    }
}
