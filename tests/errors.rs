//! Errors for people, from the real binary: an unreachable endpoint fails fast in one paragraph
//! that names it, `-o json` reports errors as one JSON object, no colour codes off a terminal or
//! with NO_COLOR, a named config is always read (gc included), and bad command-line values are
//! refused with their allowed range.

mod support;

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use support::home::bake_at_home;
use support::output::stderr;
use support::{REGION, Scratch, quick_config, repo};

/// Words of Rust's `Debug` output that must never reach a person.
const DEBUG_WORDS: &[&str] = &[
    "DispatchFailure",
    "ConnectorError",
    "Some(",
    "{ ",
    "Os {",
    "kind: ",
    "hyper_util",
    "Error(",
];

/// A loopback URL where nothing listens: connections are refused at once.
fn refusing_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// A valid config in a scratch directory whose preflight needs AWS only (a fixed allow_cidr, so
/// no what's-my-IP service is asked).
fn scratch() -> Scratch {
    let config = format!("region = \"{REGION}\"\n{}", quick_config("", "", "")).replace(
        "instance_profile = \"SSMInstanceProfile\"\n",
        "instance_profile = \"SSMInstanceProfile\"\nallow_cidr = \"203.0.113.7/32\"\n",
    );
    Scratch::new(&config)
}

fn assert_no_debug_dump(text: &str) {
    for word in DEBUG_WORDS {
        assert!(!text.contains(word), "{word:?} in: {text}");
    }
}

#[test]
fn unreachable_endpoint_fails_within_seconds_in_one_paragraph_naming_it() {
    let scratch = scratch();
    let endpoint = refusing_endpoint();
    let started = Instant::now();
    let out = bake_at_home(scratch.path(), &["-c", &scratch.config(), "ami", "quick"])
        .env("AWS_ENDPOINT_URL", &endpoint)
        .output()
        .unwrap();
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The SDK's retries and backoff took 13-40 s here before.
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    let message = err.trim_end();
    assert!(!message.contains('\n'), "not one paragraph:\n{err}");
    assert!(message.starts_with("error: image quick: "), "{err}");
    assert!(message.contains(&format!("at {endpoint}")), "{err}");
    assert!(message.contains("cannot connect to"), "{err}");
    assert!(
        message.contains(&format!("AWS_ENDPOINT_URL={endpoint}")),
        "the message does not say where the endpoint came from: {err}"
    );
    assert!(message.contains("HTTPS_PROXY"), "{err}");
    assert_no_debug_dump(message);
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn unreachable_endpoint_with_json_output_is_one_json_object_on_stderr() {
    let scratch = scratch();
    let endpoint = refusing_endpoint();
    let out = bake_at_home(
        scratch.path(),
        &["-c", &scratch.config(), "-o", "json", "ami", "quick"],
    )
    .env("AWS_ENDPOINT_URL", &endpoint)
    .output()
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let json: serde_json::Value = serde_json::from_str(err.trim_end()).unwrap_or_else(|e| {
        panic!("stderr is not one JSON object ({e}):\n{err}");
    });
    assert_eq!(json["code"], 1, "{json}");
    assert_eq!(json["kind"], "ami", "{json}");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains(&endpoint), "{json}");
    assert_no_debug_dump(message);
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn an_image_named_twice_is_planned_once() {
    let scratch = scratch();
    let out = bake_at_home(
        scratch.path(),
        &["-c", &scratch.config(), "ami", "quick", "quick"],
    )
    .env("AWS_ENDPOINT_URL", refusing_endpoint())
    .output()
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // Each planned image reports its own failure.
    assert_eq!(err.matches("image quick:").count(), 1, "{err}");
}

#[test]
fn json_config_error_names_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bake.toml");
    std::fs::write(&config, "region = \"eu-west-1\"\n\n[image.web\n").unwrap();
    let config = config.display().to_string();
    let out = bake_at_home(dir.path(), &["-c", &config, "-o", "json", "validate"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty());
    let json: serde_json::Value = serde_json::from_str(err.trim_end()).unwrap();
    assert_eq!(json["code"], 2, "{json}");
    assert_eq!(json["kind"], "config", "{json}");
    assert_eq!(json["file"], config.as_str(), "{json}");
    assert_eq!(json["line"], 3, "{json}");
    assert!(json["column"].as_u64().is_some_and(|c| c >= 1), "{json}");
    assert!(
        json["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{config}:3:")),
        "{json}"
    );
}

#[test]
fn json_reports_every_problem_of_validate_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bake.toml");
    let image = |name: &str| {
        format!(
            "[image.{name}]\nbase = {{ id = \"ami-0123456789abcdef0\" }}\ntemplate = \"nope\"\n\
             os = \"debian\"\n[image.{name}.builder]\nsubnet = {{ id = \"subnet-1\" }}\n\
             instance_profile = \"p\"\nallow_cidr = \"203.0.113.7/32\"\n\n"
        )
    };
    std::fs::write(
        &config,
        format!("region = \"eu-west-1\"\n\n{}{}", image("one"), image("two")),
    )
    .unwrap();
    let config = config.display().to_string();
    let out = bake_at_home(dir.path(), &["-c", &config, "-o", "json", "validate"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let json: serde_json::Value = serde_json::from_str(err.trim_end()).unwrap();
    assert_eq!(json["code"], 2, "{json}");
    let errors = json["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(errors.len(), 2, "{json}");
    // Each points at its own image's `template`, lines apart.
    let lines: Vec<u64> = errors
        .iter()
        .map(|e| {
            assert_eq!(e["file"], config.as_str(), "{json}");
            assert!(e["column"].as_u64().is_some(), "{json}");
            assert!(
                e["message"].as_str().unwrap().contains("template"),
                "{json}"
            );
            e["line"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(lines, vec![5, 14], "{json}");
}

#[test]
fn json_usage_error_is_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["-o", "json", "prune", "web", "--keep", "-1"][..],
        &["prune", "--output=json", "web", "--keep", "-1"][..],
    ] {
        let out = bake_at_home(dir.path(), args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        let json: serde_json::Value = serde_json::from_str(err.trim_end())
            .unwrap_or_else(|e| panic!("{args:?}: not one JSON object ({e}):\n{err}"));
        assert_eq!(json["code"], 2, "{json}");
        assert_eq!(json["kind"], "usage", "{json}");
        assert!(
            json["message"]
                .as_str()
                .unwrap()
                .contains("must be a non-negative whole number"),
            "{json}"
        );
    }
    // A missing argument says which, on one line.
    let out = bake_at_home(dir.path(), &["-o", "json", "ami"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(stderr(&out).trim_end()).unwrap();
    assert!(
        json["message"].as_str().unwrap().contains("<IMAGES>"),
        "{json}"
    );
}

#[test]
fn negative_keep_says_it_must_be_a_non_negative_number() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["prune", "web", "--keep", "-1"][..],
        &["pipeline", "--keep", "-1"][..],
    ] {
        let out = bake_at_home(dir.path(), args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("non-negative"), "{args:?}: {err}");
        assert!(!err.contains("unexpected argument"), "{args:?}: {err}");
    }
}

#[test]
fn gc_ttl_past_the_range_is_a_usage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = TcpListener::bind("127.0.0.1:0").unwrap();
    endpoint.set_nonblocking(true).unwrap();
    let url = format!("http://{}", endpoint.local_addr().unwrap());
    for ttl in ["300000000000y", "11y", "18446744073709551615s"] {
        let out = bake_at_home(
            dir.path(),
            &["--region", REGION, "gc", "--ttl", ttl, "--dry-run"],
        )
        .env("AWS_ENDPOINT_URL", &url)
        .output()
        .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{ttl}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("--ttl"), "{err}");
    }
    let out = bake_at_home(dir.path(), &["gc", "--ttl", "300000000000y"])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("from 0s to 10years"),
        "{}",
        stderr(&out)
    );
    assert!(endpoint.accept().is_err(), "gc called AWS with a bad --ttl");
}

#[test]
fn gc_reads_the_config_it_is_told_to_read() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = TcpListener::bind("127.0.0.1:0").unwrap();
    endpoint.set_nonblocking(true).unwrap();
    let url = format!("http://{}", endpoint.local_addr().unwrap());
    let missing = dir.path().join("missing.toml").display().to_string();
    let named = bake_at_home(
        dir.path(),
        &["--region", REGION, "-c", &missing, "gc", "--dry-run"],
    )
    .env("AWS_ENDPOINT_URL", &url)
    .output()
    .unwrap();
    let by_variable = bake_at_home(dir.path(), &["--region", REGION, "gc", "--dry-run"])
        .env("AWS_ENDPOINT_URL", &url)
        .env("BAKE_CONFIG", &missing)
        .output()
        .unwrap();
    for out in [named, by_variable] {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&missing) && err.contains("cannot read the config"),
            "{err}"
        );
    }
    assert!(
        endpoint.accept().is_err(),
        "gc went to AWS without its config"
    );
}

#[test]
fn gc_without_a_config_says_which_region_it_uses_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = refusing_endpoint();
    let out = bake_at_home(dir.path(), &["gc", "--dry-run"])
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_REGION", "eu-north-1")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.starts_with(
            "gc: no config (bake.toml is not here; name one with -c or BAKE_CONFIG): working in \
             region eu-north-1, from AWS_REGION\n"
        ),
        "{err}"
    );
    // And then it tried AWS there.
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&endpoint), "{err}");

    let out = bake_at_home(dir.path(), &["--region", "eu-south-2", "gc", "--dry-run"])
        .env("AWS_ENDPOINT_URL", &endpoint)
        .env("AWS_REGION", "eu-north-1")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("working in region eu-south-2, from --region"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn piped_stderr_carries_no_colour_codes() {
    let scratch = scratch();
    // Debug logs from bake and the SDK: tracing colours its level names on a terminal.
    let out = bake_at_home(scratch.path(), &["-c", &scratch.config(), "ami", "quick"])
        .env("AWS_ENDPOINT_URL", refusing_endpoint())
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(err.contains("DEBUG"), "no log lines to check:\n{err}");
    assert!(!err.contains("\x1b["), "colour codes on a pipe:\n{err}");
}

/// Runs `bake` under a pseudo-terminal (util-linux `script`), where colour is allowed unless
/// NO_COLOR is set; `None` when `script` is not installed.
fn on_a_terminal(no_color: Option<&str>) -> Option<String> {
    let scratch = scratch();
    let line = format!(
        "{} -c {} ami quick",
        env!("CARGO_BIN_EXE_bake"),
        scratch.config()
    );
    let mut script = Command::new("script");
    script
        .args(["-qec", &line, "/dev/null"])
        .current_dir(scratch.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", scratch.path())
        .env("SHELL", "/bin/sh")
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .env("AWS_ENDPOINT_URL", refusing_endpoint())
        .env("RUST_LOG", "debug")
        .stdin(std::process::Stdio::null());
    if let Some(value) = no_color {
        script.env("NO_COLOR", value);
    }
    let out = script.output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn no_color_means_no_colour_codes_even_on_a_terminal() {
    let Some(coloured) = on_a_terminal(None) else {
        eprintln!("skipped: util-linux `script` is not installed");
        return;
    };
    // The control: on a terminal, log levels are coloured.
    assert!(coloured.contains("DEBUG"), "{coloured}");
    assert!(
        coloured.contains("\x1b["),
        "no colour even on a terminal:\n{coloured}"
    );
    let plain = on_a_terminal(Some("1")).unwrap();
    assert!(plain.contains("DEBUG"), "{plain}");
    assert!(
        !plain.contains("\x1b["),
        "colour codes with NO_COLOR:\n{plain}"
    );
}

#[test]
fn json_results_stay_on_stdout_with_nothing_on_stderr() {
    let out = Command::new(env!("CARGO_BIN_EXE_bake"))
        .args(["-c", "examples/nginx-debian.toml", "-o", "json", "validate"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["config"], "examples/nginx-debian.toml");
}
