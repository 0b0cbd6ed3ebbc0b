//! `bake prune` against the lab: old AMIs go with their snapshots; the newest and those in use stay.

mod support;

use support::{Lab, Scratch, quick_config};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn bake(lab: &Lab, body: &str) -> String {
    let scratch = Scratch::new(&quick_config(&format!("body = {body:?}"), "", ""));
    let out = lab
        .run_bake(&["-c", &scratch.config(), "ami", "quick"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn exists(lab: &Lab, ami: &str) -> bool {
    let out = lab
        .ec2
        .describe_images()
        .owners("self")
        .send()
        .await
        .unwrap();
    out.images().iter().any(|i| i.image_id() == Some(ami))
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_keeps_the_newest_and_those_in_use_and_removes_the_rest_with_snapshots() {
    let lab = Lab::start().await;
    let oldest = bake(&lab, "one").await;
    let middle = bake(&lab, "two").await;
    let newest = bake(&lab, "three").await;
    let middle_snapshots = lab.snapshots_of(&[&middle]).await;
    assert!(!middle_snapshots.is_empty());

    // The oldest stays in use: a launch template names it.
    lab.ec2
        .create_launch_template()
        .launch_template_name("old-web")
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id(&oldest)
                .build(),
        )
        .send()
        .await
        .unwrap();

    let config = Scratch::new(&quick_config("", "", ""));
    let dry = lab
        .run_bake(&[
            "-c",
            &config.config(),
            "-o",
            "json",
            "prune",
            "quick",
            "--keep",
            "1",
            "--dry-run",
        ])
        .await;
    assert!(dry.status.success(), "{}", stderr(&dry));
    let report: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let removed: Vec<&str> = report["images"][0]["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ami_id"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [middle.as_str()]);
    let kept = report["images"][0]["kept"].as_array().unwrap();
    let why = |ami: &str| {
        kept.iter()
            .find(|k| k["ami_id"] == ami)
            .map(|k| k["why"].as_str().unwrap().to_owned())
    };
    assert_eq!(why(&newest).as_deref(), Some("one of the newest 1"));
    assert!(
        why(&oldest).unwrap().contains("launch template old-web"),
        "{kept:?}"
    );
    assert!(exists(&lab, &middle).await, "a dry run removes nothing");

    let out = lab
        .run_bake(&["-c", &config.config(), "prune", "quick", "--keep", "1"])
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!exists(&lab, &middle).await);
    assert!(exists(&lab, &oldest).await);
    assert!(exists(&lab, &newest).await);
    let left = lab
        .ec2
        .describe_snapshots()
        .owner_ids("self")
        .send()
        .await
        .unwrap();
    let left: Vec<&str> = left
        .snapshots()
        .iter()
        .filter_map(|s| s.snapshot_id())
        .collect();
    for snapshot in &middle_snapshots {
        assert!(!left.contains(&snapshot.as_str()), "{snapshot} left");
    }
}
