//! `bake pipeline` against the lab: bake, test, roll out, then publish (labels `tested`, `live`),
//! prune; nothing to do the second time; a failed test or rollout publishes nothing; one pipeline
//! per config at a time.

mod support;

use std::time::Duration;

use support::output::json_lines;
use support::{Lab, Scratch, pipeline_args, quick_config, quick_rollout};

fn steps(events: &[serde_json::Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["step"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pair(step: &str, status: &str) -> (String, String) {
    (step.to_owned(), status.to_owned())
}

const PARAMETER: &str = "/bake/quick/ami-id";

/// What `PARAMETER:SELECTOR` (a version or a label) holds, if anything.
async fn selected(ssm: &aws_sdk_ssm::Client, selector: &str) -> Option<String> {
    ssm.get_parameter()
        .name(format!("{PARAMETER}:{selector}"))
        .send()
        .await
        .ok()
        .and_then(|out| out.parameter().and_then(|p| p.value()).map(str::to_owned))
}

/// The parameter's history: (version, value, labels), oldest first.
async fn history(ssm: &aws_sdk_ssm::Client) -> Vec<(i64, String, Vec<String>)> {
    ssm.get_parameter_history()
        .name(PARAMETER)
        .send()
        .await
        .unwrap()
        .parameters()
        .iter()
        .map(|p| {
            (
                p.version(),
                p.value().unwrap_or_default().to_owned(),
                p.labels().to_vec(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_publishes_only_what_its_rollout_serves_and_moves_the_labels() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // The rollout's instances are t3.small, the builder and the test instance t3.micro: taking
    // t3.small's capacity away fails a rollout of an AMI that passed its test.
    let text = |body: &str| {
        format!(
            "{}{}",
            quick_config(&format!("body = {body:?}"), "", ""),
            quick_rollout("web", "t3.small")
        )
    };
    let scratch = Scratch::new(&text("v1"));
    let config = scratch.config();
    let args = pipeline_args(&config, "5");
    let ssm = &lab.ssm;

    let first = lab.bake_ok(&args).await;
    let run1 = json_lines(&first);
    assert_eq!(
        steps(&run1),
        [
            pair("bake", "ok"),
            pair("test", "ok"),
            pair("rollout", "ok"),
            pair("publish", "ok"),
            pair("prune", "skipped")
        ]
    );
    let v1 = run1[0]["ami_id"].as_str().unwrap().to_owned();
    assert_eq!(selected(ssm, "tested").await.as_deref(), Some(v1.as_str()));
    assert_eq!(selected(ssm, "live").await.as_deref(), Some(v1.as_str()));

    // v2 passes its test, but its rollout cannot launch: rolled back, and nothing is published.
    std::fs::write(scratch.path().join("bake.toml"), text("v2")).unwrap();
    lab.control(
        "capacity",
        serde_json::json!({"unavailable": [
            {"instance_type": "t3.small", "zone": "ap-northeast-2a"},
            {"instance_type": "t3.small", "zone": "ap-northeast-2c"},
        ]}),
    )
    .await;
    let second = lab.run_bake(&args).await;
    lab.control("capacity", serde_json::json!({"unavailable": []}))
        .await;
    assert_eq!(second.status.code(), Some(1));
    let run2 = json_lines(&second);
    assert_eq!(
        steps(&run2),
        [
            pair("bake", "ok"),
            pair("test", "ok"),
            pair("rollout", "failed")
        ]
    );
    let v2 = run2[0]["ami_id"].as_str().unwrap().to_owned();
    assert_ne!(v2, v1);
    assert!(
        run2[2]["message"]
            .as_str()
            .unwrap()
            .contains("/bake/quick/ami-id is not published"),
        "{run2:?}"
    );
    assert_eq!(selected(ssm, "1").await.as_deref(), Some(v1.as_str()));
    assert_eq!(
        history(ssm).await,
        [(1, v1.clone(), vec!["tested".to_owned(), "live".to_owned()])],
        "the value and its labels stay on the old AMI"
    );
    assert_eq!(lab.calls("PutParameter").await, 1);

    // Capacity back: v2 (already baked and tested) rolls out, then is published; both labels
    // move to its version.
    let third = lab.bake_ok(&args).await;
    let run3 = json_lines(&third);
    assert_eq!(
        steps(&run3),
        [
            pair("bake", "skipped"),
            pair("test", "skipped"),
            pair("rollout", "ok"),
            pair("publish", "ok"),
            pair("prune", "skipped")
        ]
    );
    assert_eq!(run3[0]["ami_id"].as_str(), Some(v2.as_str()));
    assert_eq!(
        history(ssm).await,
        [
            (1, v1.clone(), vec![]),
            (2, v2.clone(), vec!["tested".to_owned(), "live".to_owned()])
        ]
    );
    assert_eq!(selected(ssm, "live").await.as_deref(), Some(v2.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_that_fails_its_test_is_neither_rolled_out_nor_published() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&format!(
        "{}\n[image.quick.test]\ntimeout = \"20s\"\n{}",
        quick_config("at_boot = false", "", ""),
        quick_rollout("web", "t3.micro")
    ));
    let out = lab
        .run_bake(&["-c", &scratch.config(), "-o", "json", "pipeline"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let run = json_lines(&out);
    assert_eq!(steps(&run), [pair("bake", "ok"), pair("test", "failed")]);
    let message = run[1]["message"].as_str().unwrap();
    assert!(message.contains("did not become healthy"), "{message}");
    for action in [
        "CreateLoadBalancer",
        "CreateAutoScalingGroup",
        "PutParameter",
    ] {
        assert_eq!(lab.calls(action).await, 0, "{action}");
    }
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_bakes_publishes_and_prunes_then_has_nothing_to_do() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("body = \"v1\"", "", ""));
    let config = scratch.config();

    let first = lab.bake_ok(&pipeline_args(&config, "1")).await;
    let run1 = json_lines(&first);
    assert_eq!(
        steps(&run1),
        [
            pair("bake", "ok"),
            pair("test", "ok"),
            pair("publish", "ok"),
            pair("prune", "skipped")
        ]
    );
    let ami = run1[0]["ami_id"].as_str().unwrap().to_owned();
    let ssm = &lab.ssm;
    let published = ssm
        .get_parameter()
        .name("/bake/quick/ami-id")
        .send()
        .await
        .unwrap();
    assert_eq!(
        published.parameter().and_then(|p| p.value()),
        Some(ami.as_str())
    );

    // Same inputs: nothing is launched, written or removed.
    let launches = lab.calls("RunInstances").await;
    let again = lab.bake_ok(&pipeline_args(&config, "1")).await;
    assert_eq!(
        steps(&json_lines(&again)),
        [
            pair("bake", "skipped"),
            pair("test", "skipped"),
            pair("publish", "skipped"),
            pair("prune", "skipped")
        ]
    );
    assert_eq!(lab.calls("RunInstances").await, launches);
    assert_eq!(lab.calls("PutParameter").await, 1);

    // New inputs: a new AMI, published; the old one pruned with --keep 1.
    std::fs::write(
        scratch.path().join("bake.toml"),
        quick_config("body = \"v2\"", "", ""),
    )
    .unwrap();
    let third = lab.bake_ok(&pipeline_args(&config, "1")).await;
    let run3 = json_lines(&third);
    assert_eq!(
        steps(&run3),
        [
            pair("bake", "ok"),
            pair("test", "ok"),
            pair("publish", "ok"),
            pair("prune", "ok")
        ]
    );
    let new_ami = run3[0]["ami_id"].as_str().unwrap();
    assert_ne!(new_ami, ami);
    assert!(
        run3[3]["message"].as_str().unwrap().contains(&ami),
        "{run3:?}"
    );
    lab.assert_nothing_left(&[new_ami], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_pipeline_on_the_same_config_refuses_to_start() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // Without the test stage: its launch would race the count of launches below.
    let scratch = Scratch::new(&format!(
        "{}\n[image.quick.test]\nenabled = false\n",
        quick_config("", "", "")
    ));
    let config = scratch.config();
    let mut first = lab.bake(&["-c", &config, "pipeline"]);
    let mut first = first
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    lab.wait_for(
        "the first pipeline's builder",
        Duration::from_secs(60),
        || async { lab.calls("RunInstances").await > 0 },
    )
    .await;
    let second = lab.run_bake(&["-c", &config, "pipeline"]).await;
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another `bake pipeline` for this config is running"),
        "{err}"
    );
    assert_eq!(
        lab.calls("RunInstances").await,
        1,
        "the second baked nothing"
    );
    let status = tokio::task::spawn_blocking(move || first.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
}
