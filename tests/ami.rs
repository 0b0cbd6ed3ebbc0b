//! `bake ami` and `bake gc` against the lab: real instances, real HTTP, real SSM commands.

mod support;

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_ec2::types::InstanceStateName;
use bake::aws;
use support::output::{stderr, stdout};
use support::{Lab, Scratch, quick_config, repo, signal};

async fn tag(lab: &Lab, ami: &str, key: &str) -> Option<String> {
    let out = lab
        .ec2
        .describe_images()
        .image_ids(ami)
        .send()
        .await
        .unwrap();
    let image = out.images().first().expect("the AMI exists");
    image
        .tags()
        .iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_owned)
}

/// Launches an instance from `ami` without user data, reachable on port 80 from this runner,
/// and returns its id and public IP.
async fn launch_from(lab: &Lab, ami: &str) -> (String, String) {
    let subnet = &lab.subnet_named("Public subnet A").await;
    let group = lab
        .ec2
        .create_security_group()
        .group_name("page-check")
        .description("HTTP from the test runner")
        .vpc_id(subnet.vpc_id().unwrap())
        .send()
        .await
        .unwrap()
        .group_id()
        .unwrap()
        .to_owned();
    let runner = lab.get("checkip").await;
    // The lab is eventually consistent, as EC2: the new group and instance are unknown for a
    // moment, ridden out as bake does.
    let authorize = lab
        .ec2
        .authorize_security_group_ingress()
        .group_id(&group)
        .ip_protocol("tcp")
        .from_port(80)
        .to_port(80)
        .cidr_ip(format!("{}/32", runner.trim()));
    aws::settle(&aws::NEW_SECURITY_GROUP, "authorize", || {
        authorize.clone().send()
    })
    .await
    .unwrap();
    let run = lab
        .ec2
        .run_instances()
        .image_id(ami)
        .instance_type("t3.micro".into())
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet.subnet_id().unwrap())
        .security_group_ids(group)
        .send()
        .await
        .unwrap();
    let id = run.instances()[0].instance_id().unwrap().to_owned();
    // An instance boots in seconds in the lab; two minutes means it never will.
    for _ in 0..240 {
        let out = aws::settle(&aws::NEW_INSTANCE, "describe", || {
            lab.ec2.describe_instances().instance_ids(&id).send()
        })
        .await
        .unwrap();
        let instance = &out.reservations()[0].instances()[0];
        if instance.state().and_then(|s| s.name()) == Some(&InstanceStateName::Running) {
            let ip = instance
                .public_ip_address()
                .expect("a public IP in a public subnet");
            return (id, ip.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{id} from {ami} did not run within two minutes");
}

/// GETs the page at `ip`, retrying until it contains `want` (bounded by `limit`).
async fn page(ip: &str, want: &str, limit: Duration) -> String {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        if let Ok(r) = client.get(format!("http://{ip}/")).send().await {
            last = r.text().await.unwrap_or_default();
            if last.contains(want) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("http://{ip}/ never showed {want:?}; last: {last:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_example_bakes_once_and_the_ami_serves_the_page() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let example = repo().join("examples/nginx-debian.toml");
    let example = example.to_str().unwrap();
    let out = lab.bake_ok(&["-c", example, "ami", "web"]).await;
    let ami = stdout(&out);
    assert!(ami.starts_with("ami-"), "{ami}");

    let render = lab
        .run_bake(&["-c", example, "-o", "json", "render", "web"])
        .await;
    let rendered: serde_json::Value = serde_json::from_slice(&render.stdout).unwrap();
    assert_eq!(
        tag(&lab, &ami, "bake:digest").await.as_deref(),
        rendered["digest"].as_str()
    );
    let state = lab
        .ec2
        .describe_images()
        .image_ids(&ami)
        .send()
        .await
        .unwrap();
    assert_eq!(state.images()[0].state().unwrap().as_str(), "available");
    lab.assert_nothing_left(&[&ami], &[]).await;

    let (instance, ip) = launch_from(&lab, &ami).await;
    let body = page(&ip, "AWS Immersion Day", Duration::from_secs(60)).await;
    assert!(
        body.contains(&instance),
        "the app names the instance that served it: {body}"
    );

    // The same inputs again: nothing is launched, the same AMI is printed.
    let launches = lab.calls("RunInstances").await;
    let again = lab.bake_ok(&["-c", example, "ami", "web"]).await;
    assert_eq!(stdout(&again), ami);
    assert_eq!(
        lab.calls("RunInstances").await,
        launches,
        "no builder for known inputs"
    );

    // One var changed: a new bake, a new AMI, deprecated 90 days on as the config asks.
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("bake.toml");
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace("baked by bake.", "baked again.")
        .replace("[image.web]\n", "[image.web]\ndeprecate_after = \"90d\"\n");
    std::fs::write(&changed, text).unwrap();
    let rebaked = lab
        .bake_ok(&["-c", changed.to_str().unwrap(), "ami", "web"])
        .await;
    assert_ne!(stdout(&rebaked), ami);
    assert_eq!(
        lab.calls("RunInstances").await,
        launches + 2,
        "a builder and a test instance"
    );
    let images = lab
        .ec2
        .describe_images()
        .image_ids(stdout(&rebaked))
        .send()
        .await
        .unwrap();
    let deprecation = images.images()[0]
        .deprecation_time()
        .expect("a deprecation time");
    let at = humantime::parse_rfc3339_weak(deprecation.trim_end_matches('Z')).unwrap();
    let ahead = at.duration_since(std::time::SystemTime::now()).unwrap();
    let days_90 = Duration::from_secs(90 * 24 * 3600);
    assert!(
        ahead <= days_90 + Duration::from_secs(60) && ahead + Duration::from_secs(300) >= days_90,
        "deprecated {deprecation}, {ahead:?} from now"
    );
    lab.assert_nothing_left(&[&ami, &stdout(&rebaked)], &[&instance])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dash_v_shows_every_aws_call_of_a_bake_with_its_duration_and_dash_vv_each_wait() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config(
        "body = \"hello\"",
        "expect_body = \"hello\"",
        "",
    ));
    let out = lab
        .run_bake(&["-vv", "-c", &scratch.config(), "ami", "quick"])
        .await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let calls: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("bake::aws::trace"))
        .collect();
    // Each line: "<service> <operation> [ids]: <answer> in <duration>[ (N attempts)]".
    // A call bake stopped waiting for (the user-data watch racing the health check) may or may
    // not have reached the lab.
    let mut attempts = 0;
    let mut unanswered = 0;
    for line in &calls {
        let took = line.rsplit(" in ").next().unwrap_or_default();
        assert!(took.starts_with(|c: char| c.is_ascii_digit()), "{line}");
        if line.contains(": no answer awaited (") {
            unanswered += 1;
            continue;
        }
        attempts += took
            .split_once(" (")
            .and_then(|(_, n)| n.split(' ').next()?.parse::<usize>().ok())
            .unwrap_or(1);
    }
    for operation in ["EC2 RunInstances", "EC2 CreateImage", "SSM SendCommand"] {
        assert!(
            calls.iter().any(|l| l.contains(operation)),
            "{operation}: {calls:#?}"
        );
    }
    assert!(
        calls.iter().any(|l| l.contains("EC2 RunInstances ami-")),
        "the ids a call was about: {calls:#?}"
    );
    // The lab logs every request it serves; those naming no API action are not bake's calls.
    let requests: Vec<String> = lab
        .requests()
        .await
        .iter()
        .filter_map(|r| r["action"].as_str().filter(|a| !a.is_empty()))
        .map(str::to_owned)
        .collect();
    assert!(
        (attempts..=attempts + unanswered).contains(&requests.len()),
        "one line per call the lab answered, its attempts counted ({attempts}, and {unanswered} \
         not awaited): {requests:?}\n{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.contains("DEBUG") && l.contains("waiting for the builder to run")),
        "-vv shows the waits' looks: {err}"
    );
    lab.assert_nothing_left(&[&stdout(&out)], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn builder_that_never_serves_fails_at_the_health_deadline_and_leaves_nothing() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("serve = false", "timeout = \"15s\"", ""));
    let out = lab
        .run_bake(&["-c", &scratch.config(), "ami", "quick"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("was not healthy at http://100.64."), "{err}");
    assert!(err.contains("last answer: connection refused"), "{err}");
    assert!(stdout(&out).is_empty());
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_public_builders_failed_user_data_ends_the_health_wait_long_before_its_deadline() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("fail = true", "timeout = \"10m\"", ""));
    let started = std::time::Instant::now();
    let out = lab
        .run_bake(&["-c", &scratch.config(), "ami", "quick"])
        .await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("user data on builder"), "{err}");
    assert!(
        err.contains("failed before its health page was served"),
        "{err}"
    );
    // The failed step and the log's tail, read on the builder.
    assert!(err.contains("false"), "{err}");
    assert!(err.contains("a step of this user data fails"), "{err}");
    // Boot, agent Online and one 5 s look: well inside a minute and a half, not the 10 minutes.
    assert!(
        took < std::time::Duration::from_secs(150),
        "{took:?}\n{err}"
    );
    assert!(stdout(&out).is_empty());
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_verify_command_fails_with_its_output_and_leaves_nothing() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config(
        "body = \"hello\"",
        "expect_body = \"hello\"",
        "commands = [\"test -s /srv/www/index.html\", \"echo checking; echo broken >&2; exit 1\"]",
    ));
    let out = lab
        .run_bake(&["-c", &scratch.config(), "ami", "quick"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("verify command `echo checking; echo broken >&2; exit 1` on builder i-"),
        "{err}"
    );
    assert!(
        err.contains("exited 1") && err.contains("checking") && err.contains("broken"),
        "{err}"
    );
    assert_eq!(lab.calls("CreateImage").await, 0);
    lab.assert_nothing_left(&[], &[]).await;
}

/// Starts `bake ami` in the background, waits for `ready`, sends `sig`, and returns its exit.
async fn interrupt_when<F, Fut>(
    lab: &Lab,
    scratch: &Scratch,
    sig: &str,
    what: &str,
    ready: F,
) -> std::process::Output
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let args = ["-c", &scratch.config(), "ami", "quick"];
    lab.interrupt_when(&args, sig, what, Duration::from_secs(120), ready)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_during_the_health_wait_cleans_up_and_exits_130() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("serve = false", "timeout = \"10m\"", ""));
    let out = interrupt_when(&lab, &scratch, "INT", "the builder to run", || async {
        lab.events()
            .await
            .iter()
            .any(|e| e["event"] == "instance_running")
    })
    .await;
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("interrupted by SIGINT"),
        "{}",
        stderr(&out)
    );
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_during_the_image_wait_removes_the_partial_image_and_exits_130() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // The image stays pending long enough to be interrupted.
    lab.control("latency", serde_json::json!({ "image_available": 120 }))
        .await;
    let scratch = Scratch::new(&quick_config("", "", ""));
    let out = interrupt_when(&lab, &scratch, "INT", "CreateImage", || async {
        lab.calls("CreateImage").await > 0
    })
    .await;
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cleans_up_and_exits_143() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("serve = false", "timeout = \"10m\"", ""));
    let out = interrupt_when(&lab, &scratch, "TERM", "the builder launch", || async {
        lab.calls("RunInstances").await > 0
    })
    .await;
    assert_eq!(out.status.code(), Some(143), "{}", stderr(&out));
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_leaves_resources_that_gc_removes() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("serve = false", "timeout = \"10m\"", ""));
    let out = interrupt_when(&lab, &scratch, "KILL", "the builder to run", || async {
        lab.events()
            .await
            .iter()
            .any(|e| e["event"] == "instance_running")
    })
    .await;
    assert_eq!(out.status.code(), None, "killed by a signal");
    assert_eq!(
        lab.containers().await.len(),
        1,
        "a killed bake leaves its builder"
    );
    // gc finds what EC2 lists by tag, and EC2 lists a new instance only after a moment
    // (eventual consistency; seconds in the lab): wait until it does.
    lab.wait_until_builders_listed().await;

    let dry = lab
        .bake_ok(&["-c", &scratch.config(), "gc", "--ttl", "0s", "--dry-run"])
        .await;
    assert!(
        stdout(&dry).contains("would delete instance i-"),
        "{}",
        stdout(&dry)
    );
    assert!(
        stdout(&dry).contains("would delete security group sg-"),
        "{}",
        stdout(&dry)
    );
    assert_eq!(lab.containers().await.len(), 1, "a dry run deletes nothing");

    let young = lab
        .run_bake(&["-c", &scratch.config(), "gc", "--ttl", "2h"])
        .await;
    assert!(
        young.status.success() && stdout(&young).is_empty(),
        "{}",
        stdout(&young)
    );

    lab.bake_ok(&["-c", &scratch.config(), "gc", "--ttl", "0s"])
        .await;
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bake_succeeds_through_throttling_and_503s() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    lab.control(
        "faults",
        serde_json::json!({ "rules": [
            { "rate": 0.2, "kind": "throttle" },
            { "rate": 0.02, "kind": "5xx" },
        ], "seed": 7 }),
    )
    .await;
    let scratch = Scratch::new(&quick_config(
        "body = \"through the storm\"",
        "expect_body = \"storm\"",
        "commands = [\"true\"]",
    ));
    let ami = lab.bake_quick(&scratch).await;
    assert!(lab.faulted().await > 0, "faults were injected");
    lab.faults_off().await;
    lab.assert_nothing_left(&[&ami], &[]).await;
}

/// The quick template with `vars` and its test stage's `test` lines.
fn tested_config(vars: &str, test: &str) -> String {
    format!(
        "{}\n[image.quick.test]\n{test}\n",
        quick_config(vars, "", "")
    )
}

/// The instances named `name` (terminated ones too, as EC2 lists them for a while).
async fn instances_named(lab: &Lab, name: &str) -> Vec<aws_sdk_ec2::types::Instance> {
    lab.ec2
        .describe_instances()
        .filters(support::filter("tag:Name", name))
        .send()
        .await
        .unwrap()
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_stage_boots_the_new_ami_without_user_data_and_reports_its_time() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&tested_config(
        "body = \"proved\"",
        "commands = [\"grep -q proved /srv/www/index.html\"]",
    ));
    let out = lab
        .bake_ok(&["-c", &scratch.config(), "-o", "json", "ami", "quick"])
        .await;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let baked = &result["images"][0];
    let ami = baked["ami_id"].as_str().unwrap();
    let test_seconds = baked["test"]["seconds"].as_f64().expect("the test's time");
    assert!(
        test_seconds > 0.0 && test_seconds < baked["seconds"].as_f64().unwrap(),
        "{baked}"
    );
    assert!(
        stderr(&out).contains("its test passed in"),
        "{}",
        stderr(&out)
    );
    assert_eq!(tag(&lab, ami, "bake:test").await.as_deref(), Some("passed"));
    assert_eq!(lab.calls("RunInstances").await, 2);
    let tested = instances_named(&lab, "bake test quick").await;
    assert_eq!(tested.len(), 1);
    let instance = &tested[0];
    assert_eq!(
        Some(instance.instance_id().unwrap()),
        baked["test"]["instance_id"].as_str()
    );
    assert_eq!(instance.image_id(), Some(ami), "launched from the new AMI");
    let user_data = lab
        .ec2
        .describe_instance_attribute()
        .instance_id(instance.instance_id().unwrap())
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    assert!(
        user_data.user_data().and_then(|u| u.value()).is_none(),
        "no user data: {user_data:?}"
    );
    assert_eq!(
        instance
            .metadata_options()
            .and_then(|m| m.http_tokens())
            .map(|t| t.as_str()),
        Some("required"),
        "IMDSv2"
    );
    assert!(
        instance
            .tags()
            .iter()
            .any(|t| t.key() == Some("bake:run-id")),
        "owned by the run: {:?}",
        instance.tags()
    );
    lab.assert_nothing_left(&[ami], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_not_enabled_at_boot_passes_the_builder_and_fails_the_test_stage() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&tested_config("at_boot = false", "timeout = \"20s\""));
    let out = lab
        .run_bake(&["-c", &scratch.config(), "ami", "quick"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("waiting for ami-") && err.contains("to be available"),
        "the builder served its page and was imaged: {err}"
    );
    assert!(
        err.contains("the test of ami-") && err.contains("did not become healthy"),
        "{err}"
    );
    assert!(err.contains("last answer: connection refused"), "{err}");
    assert!(stdout(&out).is_empty());
    assert_eq!(lab.calls("CreateImage").await, 1);
    // The AMI and its snapshots are gone with the builder and the test instance.
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_test_with_keep_on_failure_keeps_the_ami_tagged_failed_and_never_picks_it() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&tested_config("at_boot = false", "timeout = \"15s\""));
    let out = lab
        .run_bake(&["-c", &scratch.config(), "ami", "quick", "--keep-on-failure"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let tested = instances_named(&lab, "bake test quick").await;
    let test_instance = tested[0].instance_id().unwrap();
    assert!(
        err.contains(&format!(
            "reach the test instance with `aws ssm start-session --target {test_instance}`"
        )),
        "{err}"
    );
    let images = lab
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap();
    let ami = images.images()[0].image_id().unwrap().to_owned();
    assert_eq!(
        tag(&lab, &ami, "bake:test").await.as_deref(),
        Some("failed")
    );
    assert!(
        err.contains(&format!("{ami} is tagged bake:test=failed")),
        "{err}"
    );
    // A rollout does not take it, named or as the AMI of these inputs.
    let rollout = format!(
        "{}\n{}",
        std::fs::read_to_string(scratch.path().join("bake.toml")).unwrap(),
        support::quick_rollout("quick", "t3.micro")
    );
    std::fs::write(scratch.path().join("bake.toml"), rollout).unwrap();
    let named = lab
        .bake_refused(&["-c", &scratch.config(), "rollout", "quick", "--ami", &ami])
        .await;
    assert!(
        stderr(&named).contains("its test is failed"),
        "{}",
        stderr(&named)
    );
    let newest = lab
        .bake_refused(&["-c", &scratch.config(), "rollout", "quick"])
        .await;
    assert!(
        stderr(&newest).contains("no available AMI"),
        "{}",
        stderr(&newest)
    );
    assert_eq!(lab.calls("CreateLoadBalancer").await, 0);
    lab.bake_ok(&["-c", &scratch.config(), "gc", "--ttl", "0s"])
        .await;
    lab.assert_nothing_left(&[&ami], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_during_the_test_stage_removes_the_ami_and_both_instances() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&tested_config("at_boot = false", "timeout = \"10m\""));
    let out = interrupt_when(&lab, &scratch, "INT", "the test instance", || async {
        lab.calls("RunInstances").await > 1
    })
    .await;
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_on_failure_leaves_the_builder_and_says_how_to_reach_it() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("serve = false", "timeout = \"10s\"", ""));
    let out = lab
        .run_bake(&["-c", &scratch.config(), "ami", "quick", "--keep-on-failure"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let containers = lab.containers().await;
    assert_eq!(containers.len(), 1, "the builder is kept");
    let builder = containers[0]["instance_id"].as_str().unwrap();
    let reach = format!("aws ssm start-session --target {builder}");
    assert!(stderr(&out).contains(&reach), "{}", stderr(&out));
    lab.bake_ok(&["-c", &scratch.config(), "gc", "--ttl", "0s"])
        .await;
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_problems_exit_2_at_their_line_and_create_nothing() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let cases = [
        (
            "Public subnet A",
            "Public subnet Z",
            "builder.subnet",
            "no such subnet",
        ),
        // A private subnet is a private builder's place; asked to be public there, it is refused.
        (
            "Public subnet A\" } }",
            "Private subnet A\" } }\naccess = \"public\"",
            "builder.access",
            "no route to an internet gateway",
        ),
        (
            "\"SSMInstanceProfile\"",
            "\"WebProfile\"",
            "builder.instance_profile",
            "does not exist",
        ),
        (
            "bookworm/latest",
            "bookworm/oldest",
            "base",
            "no such parameter",
        ),
    ];
    for (from, to, field, expected) in cases {
        let config = quick_config("", "", "").replacen(from, to, 1);
        // The line of the replacement's last line (where a two-line replacement's key is).
        let last = to.lines().last().unwrap();
        let line = config.lines().position(|l| l.contains(last)).unwrap() + 1;
        let scratch = Scratch::new(&config);
        let out = lab
            .run_bake(&["-c", &scratch.config(), "ami", "quick"])
            .await;
        assert_eq!(out.status.code(), Some(2), "{to}: {}", stderr(&out));
        let err = stderr(&out);
        let at = format!("{}:{line}:", scratch.config());
        assert!(
            err.contains(&at) && err.contains(field) && err.contains(expected),
            "{err}"
        );
    }
    for action in ["CreateSecurityGroup", "RunInstances", "CreateImage"] {
        assert_eq!(
            lab.calls(action).await,
            0,
            "{action} before preflight passed"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_one_second_after_run_instances_leaves_nothing_running() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("serve = false", "timeout = \"10m\"", ""));
    let child = lab
        .bake(&["-c", &scratch.config(), "ami", "quick"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_for("the builder launch", Duration::from_secs(120), || async {
        lab.calls("RunInstances").await > 0
    })
    .await;
    // Inside the lab's window (3 s) in which EC2 does not know the new instance yet.
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(child.id(), "INT");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let terminates = lab.statuses("TerminateInstances").await;
    // EC2 answered NotFound at first; bake asked again until it knew the instance.
    assert_eq!(terminates.first(), Some(&400), "{terminates:?}");
    assert_eq!(terminates.last(), Some(&200), "{terminates:?}");
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bake_succeeds_under_throttle_bursts_and_leaves_nothing() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // Every describe/get/list of these services is throttled 6 s out of every 30 s, from now.
    lab.control(
        "faults",
        serde_json::json!({ "kind": "burst", "duration": 6, "every": 30,
            "services": ["ec2", "ssm", "autoscaling", "elasticloadbalancing"] }),
    )
    .await;
    let scratch = Scratch::new(&quick_config(
        "body = \"through the bursts\"",
        "expect_body = \"bursts\"",
        "commands = [\"true\"]",
    ));
    let ami = lab.bake_quick(&scratch).await;
    assert!(lab.faulted().await > 0, "the bursts throttled calls");
    lab.faults_off().await;
    lab.assert_nothing_left(&[&ami], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_create_image_answer_reuses_this_runs_image_instead_of_a_second() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // CreateImage takes effect but its answer is lost (HTTP 500): the SDK retries, and the retry
    // meets the name the first attempt took.
    lab.control(
        "faults",
        serde_json::json!({ "kind": "lost", "rate": 1, "services": ["ec2"], "actions": ["CreateImage"] }),
    )
    .await;
    let scratch = Scratch::new(&quick_config(
        "body = \"answer lost\"",
        "expect_body = \"lost\"",
        "commands = [\"true\"]",
    ));
    let out = lab
        .bake_ok(&["-c", &scratch.config(), "ami", "quick"])
        .await;
    let creates = lab.statuses("CreateImage").await;
    assert_eq!(creates, [500, 400], "a lost answer, then the name taken");
    let ami = stdout(&out);
    let mine = lab
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap();
    let names: Vec<_> = mine
        .images()
        .iter()
        .filter(|i| i.name().is_some_and(|n| n.starts_with("quick-")))
        .map(|i| {
            (
                i.image_id().unwrap_or_default(),
                i.name().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(names.len(), 1, "one image, no `-2`: {names:?}");
    assert_eq!(names[0].0, ami);
    lab.faults_off().await;
    lab.assert_nothing_left(&[&ami], &[]).await;
}

/// Puts a gzipped tarball holding `index.php` into the lab's S3 (through the lab endpoint, with
/// boto3 from the lab's venv) and returns a pre-signed GET URL for AWS's real S3 endpoint, which
/// the lab's instances resolve to the lab.
fn presigned_app(lab: &Lab, php: &str) -> String {
    const SCRIPT: &str = r#"
import io, sys, tarfile, boto3
endpoint, php = sys.argv[1], sys.argv[2].encode()
archive = io.BytesIO()
with tarfile.open(fileobj=archive, mode="w:gz") as tar:
    info = tarfile.TarInfo("index.php")
    info.size = len(php)
    tar.addfile(info, io.BytesIO(php))
keys = dict(region_name="ap-northeast-2", aws_access_key_id="test", aws_secret_access_key="test")
s3 = boto3.client("s3", endpoint_url=endpoint, **keys)
s3.create_bucket(Bucket="bake-lamp-app", CreateBucketConfiguration={"LocationConstraint": "ap-northeast-2"})
s3.put_object(Bucket="bake-lamp-app", Key="app/lamp.tar.gz", Body=archive.getvalue())
print(boto3.client("s3", **keys).generate_presigned_url(
    "get_object", Params={"Bucket": "bake-lamp-app", "Key": "app/lamp.tar.gz"}, ExpiresIn=3600))
"#;
    let python = std::env::var("LAB_PYTHON").expect("LAB_PYTHON is set (make test)");
    let out = std::process::Command::new(python)
        .args(["-c", SCRIPT, &lab.endpoint, php])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[tokio::test(flavor = "multi_thread")]
async fn lamp_on_debian_bakes_with_its_app_from_a_presigned_url() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let url = presigned_app(
        &lab,
        "<?php echo 'LAMP on Debian, PHP ' . PHP_MAJOR_VERSION . ', mysqli ' . \
         (extension_loaded('mysqli') ? 'loaded' : 'missing'); ?>\n",
    );
    assert!(
        url.starts_with("https://bake-lamp-app.s3.") && url.contains("X-Amz-Signature="),
        "{url}"
    );
    // The agent-less Debian AMI: the lamp template installs the agent, then Apache, PHP, MariaDB.
    let config = format!(
        r#"[image.web]
base = {{ ssm = "/aws/service/debian/release/bookworm/latest/amd64" }}
template = "lamp"
os = "debian"
vars = {{ app_url = "{url}" }}

[image.web.builder]
subnet = {{ tag = {{ Name = "Public subnet A" }} }}
instance_profile = "SSMInstanceProfile"

[image.web.health]
expect_body = "mysqli loaded"
timeout = "15m"

[image.web.verify]
commands = [
  "systemctl is-active apache2 mariadb amazon-ssm-agent",
  "mysql -N -e 'SELECT 6 * 7'",
  "curl -fsS http://127.0.0.1/ | grep -q 'LAMP on Debian, PHP 8'",
]
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bake.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let validate = lab.run_bake(&["-c", path, "validate"]).await;
    assert_eq!(
        stderr(&validate),
        "",
        "no warning for the built-in template"
    );
    let out = lab.bake_ok(&["-c", path, "ami", "web"]).await;
    let ami = stdout(&out);
    assert!(ami.starts_with("ami-"), "{ami}");
    lab.assert_nothing_left(&[&ami], &[]).await;

    // An instance of the AMI serves the PHP page at boot: Apache, PHP and MariaDB are enabled.
    let (instance, ip) = launch_from(&lab, &ami).await;
    let body = page(&ip, "mysqli loaded", Duration::from_secs(60)).await;
    assert!(body.starts_with("LAMP on Debian, PHP 8"), "{body}");
    // The agent is enabled in the image: given a profile, the instance comes Online.
    lab.ec2
        .associate_iam_instance_profile()
        .instance_id(&instance)
        .iam_instance_profile(
            aws_sdk_ec2::types::IamInstanceProfileSpecification::builder()
                .name("SSMInstanceProfile")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&lab.endpoint)
        .region(aws_config::Region::new(support::REGION))
        .credentials_provider(aws_sdk_ssm::config::Credentials::new(
            "test", "test", None, None, "lab",
        ))
        .load()
        .await;
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    // The lab registers a running agent within seconds (ssm_online 2 s); 30 s means it never will.
    lab.wait_for(
        "the AMI's instance Online in SSM",
        Duration::from_secs(30),
        || async {
            let out = ssm.describe_instance_information().send().await.unwrap();
            out.instance_information_list().iter().any(|i| {
                i.instance_id() == Some(instance.as_str())
                    && i.ping_status() == Some(&aws_sdk_ssm::types::PingStatus::Online)
            })
        },
    )
    .await;
    lab.assert_nothing_left(&[&ami], &[&instance]).await;
}

/// How many requests instances sent to AWS's endpoints (the agent's download among them).
async fn endpoint_requests(lab: &Lab) -> u64 {
    let info = lab.info().await;
    info["aws_front"]["requests"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_template_downloads_the_agent_on_debian_and_uses_ubuntus_own() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let debian = Scratch::new(&quick_config("", "", "commands = [\"true\"]"));
    let ubuntu = Scratch::new(&quick_config("", "", "commands = [\"true\"]").replace(
        "/aws/service/debian/release/bookworm/latest/amd64",
        "/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id",
    ));
    let out = lab.bake_ok(&["-c", &ubuntu.config(), "ami", "quick"]).await;
    assert_eq!(
        endpoint_requests(&lab).await,
        0,
        "Ubuntu's AMI ships the agent: nothing downloaded"
    );
    let ubuntu_ami = stdout(&out);
    let out = lab.bake_ok(&["-c", &debian.config(), "ami", "quick"]).await;
    assert!(
        endpoint_requests(&lab).await >= 1,
        "Debian's AMI has no agent: the user data fetched it from S3"
    );
    lab.assert_nothing_left(&[&ubuntu_ami, &stdout(&out)], &[])
        .await;
}
