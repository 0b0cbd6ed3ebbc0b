//! `bake pipeline` against the lab: bake, publish, prune; nothing to do the second time; one
//! pipeline per config at a time.

mod support;

use std::time::Duration;

use support::{Lab, Scratch, quick_config};

fn events(out: &std::process::Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

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

#[tokio::test(flavor = "multi_thread")]
async fn pipeline_bakes_publishes_and_prunes_then_has_nothing_to_do() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("body = \"v1\"", "", ""));
    let config = scratch.config();

    let first = lab
        .run_bake(&["-c", &config, "-o", "json", "pipeline", "--keep", "1"])
        .await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let run1 = events(&first);
    assert_eq!(
        steps(&run1),
        [
            pair("bake", "ok"),
            pair("publish", "ok"),
            pair("prune", "skipped")
        ]
    );
    let ami = run1[0]["ami_id"].as_str().unwrap().to_owned();
    let ssm = aws_sdk_ssm::Client::new(
        &aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&lab.endpoint)
            .region(aws_config::Region::new(support::REGION))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "test", "test", None, None, "lab",
            ))
            .load()
            .await,
    );
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
    let again = lab
        .run_bake(&["-c", &config, "-o", "json", "pipeline", "--keep", "1"])
        .await;
    assert!(again.status.success());
    assert_eq!(
        steps(&events(&again)),
        [
            pair("bake", "skipped"),
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
    let third = lab
        .run_bake(&["-c", &config, "-o", "json", "pipeline", "--keep", "1"])
        .await;
    assert!(third.status.success());
    let run3 = events(&third);
    assert_eq!(
        steps(&run3),
        [
            pair("bake", "ok"),
            pair("publish", "ok"),
            pair("prune", "ok")
        ]
    );
    let new_ami = run3[0]["ami_id"].as_str().unwrap();
    assert_ne!(new_ami, ami);
    assert!(
        run3[2]["message"].as_str().unwrap().contains(&ami),
        "{run3:?}"
    );
    lab.assert_nothing_left(&[new_ami], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_pipeline_on_the_same_config_refuses_to_start() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&quick_config("", "", ""));
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
