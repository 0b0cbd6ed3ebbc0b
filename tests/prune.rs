//! `bake prune` against the lab: old AMIs go with their snapshots; the newest and those in use stay.

mod support;

use std::time::Duration;

use support::{Lab, NO_TEST_STAGE, Scratch, quick_config};

async fn bake(lab: &Lab, body: &str) -> String {
    let config = quick_config(&format!("body = {body:?}"), "", "") + NO_TEST_STAGE;
    let scratch = Scratch::new(&config);
    lab.bake_quick(&scratch).await
}

/// `bake -o json prune quick --keep 1` with `extra` flags for `config`: prune's report.
async fn prune_keep_one(lab: &Lab, config: &Scratch, extra: &[&str]) -> serde_json::Value {
    let path = config.config();
    let mut args = vec![
        "-c",
        path.as_str(),
        "-o",
        "json",
        "prune",
        "quick",
        "--keep",
        "1",
    ];
    args.extend_from_slice(extra);
    lab.bake_json(&args).await
}

/// The AMIs a prune report removed.
fn removed(report: &serde_json::Value) -> Vec<&str> {
    report["images"][0]["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ami_id"].as_str().unwrap())
        .collect()
}

/// Why a prune report kept `ami` (empty where it did not keep it).
fn why_kept(report: &serde_json::Value, ami: &str) -> String {
    report["images"][0]["kept"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["ami_id"] == ami)
        .map(|k| k["why"].as_str().unwrap().to_owned())
        .unwrap_or_default()
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
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
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
    let report = prune_keep_one(&lab, &config, &["--dry-run"]).await;
    let removed = removed(&report);
    assert_eq!(removed, [middle.as_str()]);
    let kept = &report["images"][0]["kept"];
    assert_eq!(why_kept(&report, &newest), "one of the newest 1");
    assert!(
        why_kept(&report, &oldest).contains("launch template old-web"),
        "{kept}"
    );
    assert!(exists(&lab, &middle).await, "a dry run removes nothing");

    lab.bake_ok(&["-c", &config.config(), "prune", "quick", "--keep", "1"])
        .await;
    assert!(!exists(&lab, &middle).await);
    assert!(exists(&lab, &oldest).await);
    assert!(exists(&lab, &newest).await);
    let left = support::own_snapshots(&lab.ec2, None).await;
    for snapshot in &middle_snapshots {
        assert!(!left.contains(snapshot), "{snapshot} left");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_rides_out_snapshots_in_use_and_keeps_published_and_mixed_instances_amis() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // Snapshots of a deregistered AMI stay InvalidSnapshot.InUse for 6 s (AWS: seconds to minutes).
    lab.control(
        "consistency",
        serde_json::json!({ "windows": { "snapshot_release": 6 } }),
    )
    .await;
    let published = bake(&lab, "one").await;
    let mixed = bake(&lab, "two").await;
    let doomed = bake(&lab, "three").await;
    let abroad = bake(&lab, "abroad").await;
    let newest = bake(&lab, "four").await;
    let doomed_snapshots = lab.snapshots_of(&[&doomed]).await;
    assert!(!doomed_snapshots.is_empty());

    lab.ssm
        .put_parameter()
        .name("/bake/quick/ami-id")
        .value(&published)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .data_type("aws:ec2:image")
        .send()
        .await
        .unwrap();
    // Parameter Store validates an aws:ec2:image value after PutParameter answers: wait, as
    // bake's publish does, until the parameter holds the AMI.
    lab.wait_for(
        "the parameter to hold the AMI",
        Duration::from_secs(30),
        || async {
            lab.ssm
                .get_parameter()
                .name("/bake/quick/ami-id")
                .send()
                .await
                .ok()
                .and_then(|o| o.parameter().and_then(|p| p.value()).map(str::to_owned))
                .as_deref()
                == Some(published.as_str())
        },
    )
    .await;
    // Another region's published parameter names this region's AMI (a text value: Parameter
    // Store validates aws:ec2:image values against the parameter's own region).
    let us_east_1 = aws_sdk_ssm::Client::from_conf(
        lab.ssm
            .config()
            .to_builder()
            .region(aws_sdk_ssm::config::Region::new("us-east-1"))
            .build(),
    );
    us_east_1
        .put_parameter()
        .name("/bake/quick/ami-id")
        .value(&abroad)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    lab.ec2
        .create_launch_template()
        .launch_template_name("mixed-web")
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id(&mixed)
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .unwrap();
    // The template's default and latest version name the newest AMI: only the group, which
    // launches version 1, still uses the `mixed` one.
    lab.ec2
        .create_launch_template_version()
        .launch_template_name("mixed-web")
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id(&newest)
                .build(),
        )
        .send()
        .await
        .unwrap();
    lab.ec2
        .modify_launch_template()
        .launch_template_name("mixed-web")
        .default_version("2")
        .send()
        .await
        .unwrap();
    let subnet = lab
        .subnet_named("Public subnet A")
        .await
        .subnet_id()
        .unwrap()
        .to_owned();
    use aws_sdk_autoscaling::types::{
        LaunchTemplate, LaunchTemplateOverrides, LaunchTemplateSpecification, MixedInstancesPolicy,
    };
    lab.autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name("mixed-web")
        .min_size(0)
        .max_size(0)
        .desired_capacity(0)
        .vpc_zone_identifier(&subnet)
        .mixed_instances_policy(
            MixedInstancesPolicy::builder()
                .launch_template(
                    LaunchTemplate::builder()
                        .launch_template_specification(
                            LaunchTemplateSpecification::builder()
                                .launch_template_name("mixed-web")
                                .version("1")
                                .build(),
                        )
                        .overrides(
                            LaunchTemplateOverrides::builder()
                                .instance_type("t3.micro")
                                .build(),
                        )
                        .overrides(
                            LaunchTemplateOverrides::builder()
                                .instance_type("t3.small")
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let config = Scratch::new(&quick_config("", "", ""));
    let report = prune_keep_one(&lab, &config, &[]).await;
    let removed = removed(&report);
    assert_eq!(
        removed,
        [doomed.as_str()],
        "published {published}, mixed {mixed}: {report:#}; events {:?}",
        lab.events()
            .await
            .iter()
            .filter(|e| e["event"]
                .as_str()
                .unwrap_or_default()
                .contains("parameter"))
            .collect::<Vec<_>>()
    );
    let kept = &report["images"][0]["kept"];
    let why = |ami: &str| why_kept(&report, ami);
    assert!(
        why(&published).contains("published in SSM parameter /bake/quick/ami-id"),
        "{kept}"
    );
    assert_eq!(
        why(&mixed),
        "launched by Auto Scaling group mixed-web",
        "{kept}"
    );
    assert_eq!(why(&newest), "one of the newest 1");
    assert_eq!(
        why(&abroad),
        "published in SSM parameter /bake/quick/ami-id in us-east-1",
        "{kept}"
    );

    // EC2 refused the snapshots while the AMI released them; prune asked again until it could.
    let deletes = lab.statuses("DeleteSnapshot").await;
    assert_eq!(deletes.first(), Some(&400), "{deletes:?}");
    assert_eq!(deletes.last(), Some(&200), "{deletes:?}");
    assert!(!exists(&lab, &doomed).await);
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
    for snapshot in &doomed_snapshots {
        assert!(
            !left.contains(&snapshot.as_str()),
            "orphan snapshot {snapshot} left"
        );
    }
    for ami in [&published, &mixed, &abroad, &newest] {
        assert!(exists(&lab, ami).await, "{ami} was kept");
    }
}
