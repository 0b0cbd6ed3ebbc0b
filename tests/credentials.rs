//! Credentials and the region as bake resolves them: `--profile` over environment keys, the
//! region from the profile before the config, no IMDS noise without AWS_REGION, session
//! credentials that expire refused before any call, and ExpiredToken named for what it means.

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;
use aws_smithy_mocks::{MockResponseInterceptor, RuleMode, create_mock_http_client, mock};
use support::mocks::meta;
use support::output::stderr;
use support::{Lab, REGION, Scratch, quick_config, repo};

/// bake with nothing from this machine's environment: HOME is `home`, no AWS variable is set.
fn clean_bake(home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bake"));
    command
        .args(args)
        .current_dir(repo())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .stdin(std::process::Stdio::null());
    command
}

#[test]
fn validate_without_aws_region_prints_no_warning() {
    let home = tempfile::tempdir().unwrap();
    let out = clean_bake(
        home.path(),
        &["-c", "examples/nginx-debian.toml", "validate"],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "validate printed on stderr");
}

#[test]
fn expired_session_credentials_are_refused_before_any_call() {
    let home = tempfile::tempdir().unwrap();
    // An endpoint that records whether bake ever connected.
    let endpoint = TcpListener::bind("127.0.0.1:0").unwrap();
    endpoint.set_nonblocking(true).unwrap();
    let url = format!("http://{}", endpoint.local_addr().unwrap());
    let out = clean_bake(
        home.path(),
        &["-c", "examples/nginx-debian.toml", "ami", "web"],
    )
    .env("AWS_ENDPOINT_URL", &url)
    .env("AWS_ACCESS_KEY_ID", "ASIAEXPIRED")
    .env("AWS_SECRET_ACCESS_KEY", "secret")
    .env("AWS_SESSION_TOKEN", "token")
    .env("AWS_SESSION_EXPIRATION", "2020-01-01T00:00:00Z")
    .output()
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("AWS_SESSION_EXPIRATION") && err.contains("expired at 2020-01-01T00:00:00Z"),
        "{err}"
    );
    assert!(
        endpoint.accept().is_err(),
        "bake called AWS with expired credentials"
    );
}

#[test]
fn an_unreadable_expiration_is_a_usage_error() {
    let home = tempfile::tempdir().unwrap();
    let out = clean_bake(home.path(), &["--region", REGION, "gc", "--dry-run"])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("AWS_ACCESS_KEY_ID", "ASIAEXPIRED")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_SESSION_TOKEN", "token")
        .env("AWS_CREDENTIAL_EXPIRATION", "next tuesday")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("AWS_CREDENTIAL_EXPIRATION is not an RFC 3339 time"),
        "{err}"
    );
}

#[tokio::test]
async fn expired_token_during_a_run_names_the_cause_and_the_way_out() {
    let expired = mock!(aws_sdk_ec2::Client::describe_instances).then_error(|| {
        DescribeInstancesError::generic(meta(
            "ExpiredToken",
            "The security token included in the request is expired",
        ))
    });
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::Config::builder()
            .with_test_defaults()
            .region(aws_sdk_ec2::config::Region::new(REGION))
            .http_client(create_mock_http_client())
            .interceptor(
                MockResponseInterceptor::new()
                    .rule_mode(RuleMode::MatchAny)
                    .with_rule(&expired),
            )
            .build(),
    );
    let err = ec2.describe_instances().send().await.unwrap_err();
    let message = bake::aws::describe(&err);
    assert!(
        message.starts_with("ExpiredToken: The security token included in the request is expired"),
        "{message}"
    );
    assert!(
        message.contains("expired during the run") && message.contains("bake gc"),
        "{message}"
    );
}

/// Writes a shared config and credentials file with profile `lab` (region `ap-northeast-2`).
fn profile_files(dir: &Path) -> (String, String) {
    let config = dir.join("config");
    let credentials = dir.join("credentials");
    std::fs::write(&config, format!("[profile lab]\nregion = {REGION}\n")).unwrap();
    std::fs::write(
        &credentials,
        "[lab]\naws_access_key_id = AKIDFROMPROFILE\naws_secret_access_key = secret\n",
    )
    .unwrap();
    (
        config.display().to_string(),
        credentials.display().to_string(),
    )
}

/// The lab's request log from entry `from` on: (access key, region) of each call.
async fn signed_since(lab: &Lab, from: usize) -> Vec<(String, String)> {
    lab.requests()
        .await
        .iter()
        .skip(from)
        .map(|r| {
            (
                r["access_key"].as_str().unwrap_or_default().to_owned(),
                r["region"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn profile_beats_environment_keys_and_region_comes_quietly_from_profile_or_config() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let (config_file, credentials_file) = profile_files(home.path());
    // The config names another region: the profile's comes first.
    let scratch = Scratch::new(&format!(
        "region = \"us-west-2\"\n{}",
        quick_config("", "", "")
    ));

    // --profile with environment keys set: the profile's keys and region are used.
    let before = lab.requests().await.len();
    let mut command = lab.bake(&[
        "-c",
        &scratch.config(),
        "--profile",
        "lab",
        "gc",
        "--dry-run",
    ]);
    command
        .env_remove("AWS_REGION")
        .env("HOME", home.path())
        .env("AWS_ACCESS_KEY_ID", "AKIDFROMENVIRONMENT")
        .env("AWS_CONFIG_FILE", &config_file)
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials_file);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "gc --profile printed on stderr");
    let signed = signed_since(&lab, before).await;
    assert!(!signed.is_empty(), "gc made no call");
    for (key, region) in &signed {
        assert_eq!(
            (key.as_str(), region.as_str()),
            ("AKIDFROMPROFILE", REGION),
            "{signed:?}"
        );
    }

    // No AWS_REGION, no profile, IMDS not disabled, a clean HOME: the config's region, and not
    // one warning on stderr.
    let quiet = Scratch::new(&format!(
        "region = \"{REGION}\"\n{}",
        quick_config("", "", "")
    ));
    let before = lab.requests().await.len();
    let mut command = clean_bake(home.path(), &["-c", &quiet.config(), "gc", "--dry-run"]);
    command
        .env("AWS_ENDPOINT_URL", &lab.endpoint)
        .env("AWS_ACCESS_KEY_ID", "AKIDFROMENVIRONMENT")
        .env("AWS_SECRET_ACCESS_KEY", "secret");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "gc without AWS_REGION printed on stderr");
    let signed = signed_since(&lab, before).await;
    assert!(!signed.is_empty(), "gc made no call");
    for (key, region) in &signed {
        assert_eq!(
            (key.as_str(), region.as_str()),
            ("AKIDFROMENVIRONMENT", REGION),
            "{signed:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_that_expire_during_a_run_are_renewed_when_the_provider_can() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    // A credential_process that hands out a new key on each call, valid for 5 seconds: less than
    // the SDK's 10 s refresh buffer, so every request of the run needs fresh credentials.
    let script = home.path().join("credentials.sh");
    let count = home.path().join("count");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nn=$(( $(cat '{count}' 2>/dev/null || echo 0) + 1 ))\necho $n > '{count}'\n\
             printf '{{\"Version\": 1, \"AccessKeyId\": \"AKIDPROCESS%s\", \"SecretAccessKey\": \
             \"secret\", \"SessionToken\": \"token\", \"Expiration\": \"%s\"}}\\n' \"$n\" \
             \"$(date -u -d '+5 seconds' +%Y-%m-%dT%H:%M:%SZ)\"\n",
            count = count.display()
        ),
    )
    .unwrap();
    let config = home.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile renewing]\nregion = {REGION}\ncredential_process = sh {}\n",
            script.display()
        ),
    )
    .unwrap();
    let scratch = Scratch::new(&quick_config("", "", ""));
    let before = lab.requests().await.len();
    let mut command = lab.bake(&[
        "-c",
        &scratch.config(),
        "--profile",
        "renewing",
        "gc",
        "--dry-run",
    ]);
    command
        .env_remove("AWS_REGION")
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", &config);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "gc printed on stderr");
    let keys: std::collections::BTreeSet<String> = signed_since(&lab, before)
        .await
        .into_iter()
        .map(|(key, region)| {
            assert_eq!(region, REGION);
            key
        })
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with("AKIDPROCESS")),
        "{keys:?}"
    );
    assert!(
        keys.len() >= 2,
        "the expiring credentials were not renewed during the run: {keys:?}"
    );
}
