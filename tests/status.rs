//! `bake status` against the lab: after a rollout and then a new bake, the group is one AMI
//! behind with a tested AMI waiting (text and `-o json`); the image's inputs changed since its
//! newest AMI once the config changes; the published value.

mod support;

use support::output::stdout;
use support::{Lab, Scratch, quick_config, quick_rollout};

/// The quick image (its test stage on) and a one-instance rollout of it.
fn config(body: &str) -> String {
    let mut text = quick_config(&format!("body = {body:?}"), "", "");
    text.push_str(&quick_rollout("web", "t3.micro"));
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_rollout_and_a_new_bake_the_group_is_one_ami_behind_with_a_tested_ami_waiting() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&config("first"));
    let config = scratch.config();
    // Before any bake: the image has no AMI and the group does not exist.
    let empty = lab.bake_ok(&["-c", &config, "status"]).await;
    let text = stdout(&empty);
    assert!(
        text.contains("image quick (ap-northeast-2): no AMI yet"),
        "{text}"
    );
    assert!(text.contains("group Web-ASG not found"), "{text}");

    let a = lab.bake_quick(&scratch).await;
    lab.bake_ok(&["-c", &config, "rollout", "web"]).await;
    lab.ssm
        .put_parameter()
        .name("/bake/quick/ami-id")
        .value(&a)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type("aws:ec2:image")
        .send()
        .await
        .unwrap();

    std::fs::write(scratch.path().join("bake.toml"), self::config("second")).unwrap();
    let b = lab.bake_quick(&scratch).await;
    assert_ne!(a, b);

    let out = lab.bake_ok(&["-c", &config, "status"]).await;
    let text = stdout(&out);
    assert!(
        text.contains(&format!("image quick (ap-northeast-2): {b} (")),
        "{text}"
    );
    assert!(
        text.contains("test passed, not deprecated; inputs unchanged"),
        "{text}"
    );
    let rollout = text
        .lines()
        .find(|l| l.starts_with("rollout web (ap-northeast-2): "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        rollout.contains(&format!(
            "group Web-ASG on launch template version 1 ({a}); 1 instances, 0 on another AMI"
        )),
        "{rollout}"
    );
    assert!(
        rollout.contains(&format!("newer tested AMI waiting: {b}")),
        "{rollout}"
    );
    assert!(
        rollout.contains(&format!("published /bake/quick/ami-id = {a}")),
        "{rollout}"
    );

    let json = lab
        .bake_json(&["-c", &config, "-o", "json", "status"])
        .await;
    let image = &json["images"][0];
    assert_eq!(image["image"], "quick");
    assert_eq!(image["newest"]["ami_id"], b.as_str());
    assert_eq!(image["newest"]["test"], "passed");
    assert_eq!(image["newest"]["deprecated"], false);
    assert!(image["newest"]["age_seconds"].as_u64().unwrap() < 3600);
    assert_eq!(image["changed"]["inputs"], serde_json::json!([]));
    let rollout = &json["rollouts"][0];
    assert_eq!(rollout["rollout"], "web");
    assert_eq!(rollout["exists"], true);
    assert_eq!(rollout["launch_template_version"], 1);
    assert_eq!(rollout["ami_id"], a.as_str());
    assert_eq!(rollout["instances"], 1);
    assert_eq!(rollout["other"], 0);
    assert_eq!(rollout["waiting"], b.as_str());
    assert_eq!(rollout["published"], a.as_str());

    // The config changes, nothing is baked: the image's inputs changed since its newest AMI.
    std::fs::write(scratch.path().join("bake.toml"), self::config("third")).unwrap();
    let json = lab
        .bake_json(&["-c", &config, "-o", "json", "status"])
        .await;
    assert_eq!(
        json["images"][0]["changed"]["inputs"],
        serde_json::json!(["user-data"])
    );
    let out = lab.run_bake(&["-c", &config, "status"]).await;
    assert!(
        stdout(&out).contains(&format!("user data changed since {b}")),
        "{}",
        stdout(&out)
    );
}
