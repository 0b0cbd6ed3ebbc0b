//! `bake iam-policy` proven in the lab: each command runs as a user holding exactly the printed
//! policy and succeeds, calling no action outside it and every action it always needs; with one
//! action taken out it fails, naming that action.

mod support;

use std::collections::BTreeSet;
use std::process::Output;

use serde_json::{Value, json};
use support::output::stderr;
use support::{Lab, NO_TEST_STAGE, Scratch, quick_config, quick_rollout};

/// `bake iam-policy COMMAND` for the config, as JSON.
fn policy(config: &str, command: &str) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bake"))
        .args(["-c", config, "-o", "json", "iam-policy", command])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every action of a policy document.
fn actions(policy: &Value) -> BTreeSet<String> {
    policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap().iter())
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// The policy without `action` in any statement.
fn without(policy: &Value, action: &str) -> Value {
    let mut policy = policy.clone();
    let statements = policy["Statement"].as_array_mut().unwrap();
    for s in statements.iter_mut() {
        let kept: Vec<Value> = s["Action"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| *a != action)
            .cloned()
            .collect();
        s["Action"] = json!(kept);
    }
    statements.retain(|s| !s["Action"].as_array().unwrap().is_empty());
    policy
}

/// The lab's enforced user holding `policy`: its access key and secret.
async fn user(lab: &Lab, policy: &Value) -> (String, String) {
    let text = reqwest::Client::new()
        .post(format!("{}/_lab/iam-user", lab.endpoint))
        .header("content-type", "application/json")
        .body(json!({ "name": "bake-test", "policy": policy }).to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    (
        answer["access_key_id"].as_str().unwrap().to_owned(),
        answer["secret_access_key"].as_str().unwrap().to_owned(),
    )
}

/// Runs bake as the enforced user holding `policy`.
async fn run_as(lab: &Lab, policy: &Value, args: &[&str]) -> Output {
    let (key, secret) = user(lab, policy).await;
    let mut command = lab.bake(args);
    command
        .env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// What the lab judged for the enforced user: (allowed actions, denied actions).
async fn judged(lab: &Lab) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut allowed = BTreeSet::new();
    let mut denied = BTreeSet::new();
    for line in lab.get("iam").await.lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let action = record["action"].as_str().unwrap().to_owned();
        if record["allowed"] == true {
            allowed.insert(action);
        } else {
            denied.insert(action);
        }
    }
    (allowed, denied)
}

/// Runs `args` as a user with exactly `bake iam-policy COMMAND`: it succeeds, the lab denied
/// nothing, every action used is in the policy and each action the command always needs was
/// used. Then `again` (the same work still to do) with `removed` taken out: it fails naming
/// `removed`.
async fn holds(
    lab: &Lab,
    config: &str,
    command: &str,
    args: &[&str],
    again: &[&str],
    removed: &str,
) {
    let policy = policy(config, command);
    let out = run_as(lab, &policy, args).await;
    let (used, denied) = judged(lab).await;
    assert!(
        out.status.success(),
        "{command} as the policy's user: {}",
        stderr(&out)
    );
    assert!(denied.is_empty(), "denied: {denied:?}");
    let granted = actions(&policy);
    let outside: Vec<_> = used.difference(&granted).collect();
    assert!(outside.is_empty(), "used outside the policy: {outside:?}");
    let always = always(command);
    let unused: Vec<_> = always.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "{command} always needs but never used: {unused:?}"
    );

    assert!(granted.contains(removed), "{removed} is in the policy");
    let out = run_as(lab, &without(&policy, removed), again).await;
    let (_, denied) = judged(lab).await;
    assert!(
        !out.status.success(),
        "{command} without {removed} succeeded"
    );
    assert!(
        denied.contains(removed),
        "the lab denied {removed}: {denied:?}"
    );
    let err = stderr(&out);
    assert!(err.contains(removed), "the error names {removed}: {err}");
}

/// The actions `bake iam-policy` lists for a command as always needed (`When::Always`).
fn always(command: &str) -> BTreeSet<String> {
    let command = match command {
        "ami" => bake::iam::Command::Ami,
        "rollout" => bake::iam::Command::Rollout,
        "pipeline" => bake::iam::Command::Pipeline,
        "prune" => bake::iam::Command::Prune,
        _ => bake::iam::Command::Gc,
    };
    bake::iam::actions(command, Some(bake::iam::When::Always))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

async fn bake_as_admin(lab: &Lab, config: &str, args: &[&str]) -> String {
    let out = lab.bake_ok(&[&["-c", config][..], args].concat()).await;
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn ami_runs_with_exactly_its_policy_and_without_create_tags_fails_naming_it() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&(quick_config("", "", "") + NO_TEST_STAGE));
    let config = scratch.config();
    // Another body: an image not baked yet, so the second run does not skip.
    let changed = Scratch::new(&(quick_config("body = \"two\"", "", "") + NO_TEST_STAGE));
    let again = changed.config();
    holds(
        &lab,
        &config,
        "ami",
        &["-c", &config, "ami", "quick"],
        &["-c", &again, "ami", "quick"],
        "ec2:CreateTags",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_runs_with_exactly_its_policy_and_without_create_load_balancer_fails_naming_it() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // Two rollouts of one image: the second, a stack of its own still to make, for the run
    // without the action.
    let second = quick_rollout("web2", "t3.micro").replace("\"Web", "\"Two");
    let scratch = Scratch::new(
        &(quick_config("", "", "") + NO_TEST_STAGE + &quick_rollout("web", "t3.micro") + &second),
    );
    let config = scratch.config();
    let other = config.clone();
    bake_as_admin(&lab, &config, &["ami", "quick"]).await;
    holds(
        &lab,
        &config,
        "rollout",
        &["-c", &config, "rollout", "web"],
        &["-c", &other, "rollout", "web2"],
        "elasticloadbalancing:CreateLoadBalancer",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_runs_with_exactly_its_policy_and_without_deregister_fails_naming_it() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    for body in ["one", "two", "three"] {
        let scratch =
            Scratch::new(&(quick_config(&format!("body = {body:?}"), "", "") + NO_TEST_STAGE));
        bake_as_admin(&lab, &scratch.config(), &["ami", "quick"]).await;
    }
    let scratch = Scratch::new(&quick_config("", "", ""));
    let config = scratch.config();
    // The first run removes one old AMI (keep 2 of 3), the second, without DeregisterImage,
    // finds the next one to remove (keep 1 of 2) and is refused.
    let policy = policy(&config, "prune");
    let out = run_as(
        &lab,
        &policy,
        &["-c", &config, "prune", "quick", "--keep", "2"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let (used, denied) = judged(&lab).await;
    assert!(denied.is_empty(), "denied: {denied:?}");
    let granted = actions(&policy);
    assert!(
        used.is_subset(&granted),
        "outside the policy: {:?}",
        used.difference(&granted)
    );
    let unused: Vec<_> = always("prune").difference(&used).cloned().collect();
    assert!(
        unused.is_empty(),
        "prune always needs but never used: {unused:?}"
    );
    assert!(used.contains("ec2:DeregisterImage") && used.contains("ec2:DeleteSnapshot"));

    let out = run_as(
        &lab,
        &without(&policy, "ec2:DeregisterImage"),
        &["-c", &config, "prune", "quick", "--keep", "1"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("ec2:DeregisterImage"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_runs_with_exactly_its_policy_and_without_put_parameter_fails_naming_it() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let config_with = |body: &str| {
        Scratch::new(
            &(quick_config(&format!("body = {body:?}"), "", "")
                + NO_TEST_STAGE
                + &quick_rollout("web", "t3.micro")),
        )
    };
    // The stack is there (made as the lab's admin); the pipeline bakes a changed image, rolls it
    // out and publishes it.
    let first = config_with("one");
    bake_as_admin(&lab, &first.config(), &["ami", "quick"]).await;
    bake_as_admin(&lab, &first.config(), &["rollout", "web"]).await;
    let second = config_with("two");
    let config = second.config();
    let policy = policy(&config, "pipeline");
    let out = run_as(&lab, &policy, &["-c", &config, "pipeline"]).await;
    let (used, denied) = judged(&lab).await;
    assert!(
        out.status.success(),
        "pipeline as the policy's user: {}",
        stderr(&out)
    );
    assert!(denied.is_empty(), "denied: {denied:?}");
    let granted = actions(&policy);
    let outside: Vec<_> = used.difference(&granted).collect();
    assert!(outside.is_empty(), "used outside the policy: {outside:?}");
    // A pipeline with its stack in place: everything a bake always needs, then a new launch
    // template version rolled out by a refresh, then the parameter published.
    let mut expected = always("ami");
    for action in [
        "ec2:CreateLaunchTemplateVersion",
        "autoscaling:UpdateAutoScalingGroup",
        "autoscaling:StartInstanceRefresh",
        "ssm:PutParameter",
        "ssm:LabelParameterVersion",
    ] {
        expected.insert(action.to_owned());
    }
    let unused: Vec<_> = expected.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "pipeline needs but never used: {unused:?}"
    );

    let third = config_with("three");
    let out = run_as(
        &lab,
        &without(&policy, "ssm:PutParameter"),
        &["-c", &third.config(), "pipeline"],
    )
    .await;
    let (_, denied) = judged(&lab).await;
    assert!(
        !out.status.success(),
        "pipeline without ssm:PutParameter succeeded"
    );
    assert!(denied.contains("ssm:PutParameter"), "{denied:?}");
    assert!(
        stderr(&out).contains("ssm:PutParameter"),
        "{}",
        stderr(&out)
    );
}

/// A builder and its security group as a killed run leaves them: tagged with its run id.
async fn leftovers(lab: &Lab, run: &str) {
    let image = lab
        .ssm
        .get_parameter()
        .name("/aws/service/debian/release/bookworm/latest/amd64")
        .send()
        .await
        .unwrap()
        .parameter
        .unwrap()
        .value
        .unwrap();
    let subnet = lab.subnet_named("Public subnet A").await;
    let tagged = |kind: aws_sdk_ec2::types::ResourceType| {
        aws_sdk_ec2::types::TagSpecification::builder()
            .resource_type(kind)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("bake:run-id")
                    .value(run)
                    .build(),
            )
            .build()
    };
    let group = lab
        .ec2
        .create_security_group()
        .group_name(format!("bake-{run}"))
        .description("left by a killed run")
        .vpc_id(subnet.vpc_id().unwrap())
        .tag_specifications(tagged(aws_sdk_ec2::types::ResourceType::SecurityGroup))
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap();
    // EC2 learns of a new security group within seconds (eventual consistency, which the lab
    // plays): launch into it until it is known, for at most a minute.
    let launch = || {
        lab.ec2
            .run_instances()
            .image_id(&image)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet.subnet_id().unwrap())
            .security_group_ids(&group)
            .tag_specifications(tagged(aws_sdk_ec2::types::ResourceType::Instance))
            .send()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match launch().await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("launching a leftover: {e:?}; again in 1 s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(e) => panic!("launching a leftover: {e:?}"),
        }
    }
    // gc finds it by tag once EC2 lists it (eventual consistency: seconds in the lab).
    let listed = || async {
        let out = lab
            .ec2
            .describe_instances()
            .filters(support::filter("tag:bake:run-id", run))
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        out.reservations().iter().any(|r| !r.instances().is_empty())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !listed().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{run}'s builder never listed"
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_runs_with_exactly_its_policy_and_without_terminate_fails_naming_it() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("", "", ""));
    let config = scratch.config();
    leftovers(&lab, "20260101t000000-aaaaaa").await;
    let policy = policy(&config, "gc");
    let args = ["-c", config.as_str(), "gc", "--ttl", "0s"];
    let out = run_as(&lab, &policy, &args).await;
    let (used, denied) = judged(&lab).await;
    assert!(
        out.status.success(),
        "gc as the policy's user: {}",
        stderr(&out)
    );
    assert!(denied.is_empty(), "denied: {denied:?}");
    let granted = actions(&policy);
    let outside: Vec<_> = used.difference(&granted).collect();
    assert!(outside.is_empty(), "used outside the policy: {outside:?}");
    let mut expected = always("gc");
    expected.insert("ec2:TerminateInstances".to_owned());
    let unused: Vec<_> = expected.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "gc always needs but never used: {unused:?}"
    );

    leftovers(&lab, "20260101t000000-bbbbbb").await;
    let out = run_as(&lab, &without(&policy, "ec2:TerminateInstances"), &args).await;
    let (_, denied) = judged(&lab).await;
    assert!(
        !out.status.success(),
        "gc without ec2:TerminateInstances succeeded"
    );
    assert!(denied.contains("ec2:TerminateInstances"), "{denied:?}");
    assert!(
        stderr(&out).contains("ec2:TerminateInstances"),
        "{}",
        stderr(&out)
    );
}

/// `bake iam-policy` itself (no lab): a policy document in text and JSON alike, `all` the union of
/// the commands', PassRole narrowed to the config's profiles or `--role`, a bad command exit 2.
#[test]
fn iam_policy_prints_one_document_the_union_and_the_roles_it_may_pass() {
    let scratch = Scratch::new(&quick_config("", "", ""));
    let config = scratch.config();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bake"))
            .args(args)
            .output()
            .unwrap()
    };
    let text = run(&["-c", &config, "iam-policy", "ami"]);
    assert!(text.status.success(), "{}", stderr(&text));
    let text: Value = serde_json::from_slice(&text.stdout).unwrap();
    assert_eq!(
        text,
        policy(&config, "ami"),
        "text and -o json print one document"
    );
    assert_eq!(text["Version"], "2012-10-17");
    let all = actions(&policy(&config, "all"));
    for command in ["ami", "rollout", "pipeline", "prune", "gc"] {
        let own = actions(&policy(&config, command));
        assert!(own.is_subset(&all), "{command}: {:?}", own.difference(&all));
    }
    let pass_role = |doc: &Value| {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["Action"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a == "iam:PassRole")
            })
            .unwrap()["Resource"]
            .clone()
    };
    assert_eq!(pass_role(&text), "arn:aws:iam::*:role/SSMInstanceProfile");
    // `--role Builder` narrows PassRole to it; with a [store], the store's S3 statements stay.
    let with_role = |config: &str| {
        let out = run(&[
            "-c",
            config,
            "-o",
            "json",
            "iam-policy",
            "ami",
            "--role",
            "Builder",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    assert_eq!(
        pass_role(&with_role(&config)),
        "arn:aws:iam::*:role/Builder"
    );
    let stored = Scratch::new(&format!(
        "{}\n[store]\nbucket = \"bake-state\"\n",
        quick_config("", "", "")
    ));
    let stored = with_role(&stored.config());
    assert_eq!(pass_role(&stored), "arn:aws:iam::*:role/Builder");
    assert!(
        stored
            .to_string()
            .contains("arn:aws:s3:::bake-state/bake/*"),
        "{stored:#}"
    );
    let bad = run(&["-c", &config, "iam-policy", "deploy"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}
