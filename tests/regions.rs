//! Across regions against the lab (ap-northeast-2 and us-east-1, each with the workshop network):
//! a rollout with two regions goes in order and stops at the first failure, the pipeline publishes
//! in each region with that region's AMI, gc and prune with --all-regions. And, with
//! aws-smithy-mocks, gc in two regions where one is throttled throughout.

mod support;

use std::time::Duration;

use support::output::json_lines;
use support::{Lab, REGION, Scratch, pipeline_args, quick_config, quick_rollout};

/// The second region: the lab's VPC-Lab is there too.
const OTHER: &str = "us-east-1";

/// The images are encrypted with a customer managed key ([`KEY`]) in each region that grants the
/// Auto Scaling service-linked role its use, as Auto Scaling needs of such a key ("Required AWS
/// KMS key policy for use with encrypted volumes").
async fn make_keys(lab: &Lab) {
    for region in [REGION, OTHER] {
        let kms = lab.clients().await.in_region(region).kms;
        let key = kms.create_key().send().await.unwrap();
        let key_id = key.key_metadata().unwrap().key_id().to_owned();
        kms.create_alias()
            .alias_name(KEY)
            .target_key_id(&key_id)
            .send()
            .await
            .unwrap();
        kms.create_grant()
            .key_id(&key_id)
            .grantee_principal(
                "arn:aws:iam::123456789012:role/aws-service-role/autoscaling.amazonaws.com/\
             AWSServiceRoleForAutoScaling",
            )
            .set_operations(Some(
                [
                    "Decrypt",
                    "GenerateDataKeyWithoutPlaintext",
                    "ReEncryptFrom",
                    "ReEncryptTo",
                    "CreateGrant",
                    "DescribeKey",
                ]
                .into_iter()
                .map(aws_sdk_kms::types::GrantOperation::from)
                .collect(),
            ))
            .send()
            .await
            .unwrap();
    }
}

/// The quick image, copied to us-east-1 (encrypted with [`KEY`]), and a rollout `web` of it to both regions (in that
/// order) on `instance_type`.
fn two_regions(body: &str, instance_type: &str) -> String {
    format!(
        "{}\n[image.quick.distribute]\nregions = [\"{OTHER}\"]\nkms_key = \"{KEY}\"\n{}",
        quick_config(&format!("body = {body:?}"), "", ""),
        quick_rollout("web", instance_type).replace(
            "image = \"quick\"",
            &format!("image = \"quick\"\nregion = [\"{REGION}\", \"{OTHER}\"]"),
        )
    )
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Bakes the quick image in the lab's region, copied to us-east-1 by the bake: (source, copy).
async fn bake_and_copy(lab: &Lab, scratch: &Scratch) -> (String, String) {
    let out = lab
        .bake_ok(&["-c", &scratch.config(), "-o", "json", "ami", "quick"])
        .await;
    let baked = json(&out);
    let source = baked["images"][0]["ami_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no ami_id in {baked}"))
        .to_owned();
    let clients = lab.clients().await;
    let other = clients.in_region(OTHER);
    // `bake ami` copied it (the copy stage), tagged with its source.
    let copy = bake::rollout::regions::copy_of(&other, &source)
        .await
        .unwrap_or_else(|e| panic!("no copy of {source} in {OTHER}: {e}"))
        .id;
    (source, copy)
}

/// The regions the lab saw `action` called in, in the order of the calls.
async fn regions_of(lab: &Lab, action: &str) -> Vec<String> {
    lab.requests()
        .await
        .iter()
        .filter(|r| r["action"] == action && r["status"].as_u64().is_some_and(|s| s < 300))
        .map(|r| r["region"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_across_two_regions_goes_in_order_and_stops_at_the_first_failure() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    make_keys(&lab).await;
    let scratch = Scratch::new(&two_regions("v1", "t3.small"));
    let (source, copy) = bake_and_copy(&lab, &scratch).await;
    let config = scratch.config();
    let rollout = ["-c", config.as_str(), "-o", "json", "rollout", "web"];

    // No t3.small in ap-northeast-2 (its zones only): the first region fails, the second is not
    // touched.
    let failed = without_t3_small_at_home(&lab, &rollout).await;
    assert_eq!(
        failed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let result = json(&failed);
    assert_eq!(result["regions"][0]["region"], REGION);
    assert_eq!(result["regions"][0]["status"], "failed", "{result}");
    assert_eq!(result["regions"][1]["region"], OTHER);
    assert_eq!(result["regions"][1]["status"], "not started", "{result}");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains(&format!("rollout web in {REGION}")),
        "{stderr}"
    );
    assert_eq!(
        regions_of(&lab, "CreateAutoScalingGroup").await,
        [REGION],
        "us-east-1 is untouched"
    );
    assert!(
        regions_of(&lab, "CreateLoadBalancer")
            .await
            .iter()
            .all(|r| r == REGION)
    );

    // Capacity back: ap-northeast-2 first with the source, then us-east-1 with its copy.
    let done = lab.bake_ok(&rollout).await;
    let result = json(&done);
    for (n, (region, ami)) in [(REGION, &source), (OTHER, &copy)].into_iter().enumerate() {
        let r = &result["regions"][n];
        assert_eq!(r["region"], region, "{result}");
        assert_eq!(r["status"], "ok", "{result}");
        assert_eq!(r["result"]["ami_id"], ami.as_str(), "{result}");
        assert_eq!(r["result"]["region"], region, "{result}");
    }
    assert_eq!(
        regions_of(&lab, "CreateAutoScalingGroup").await,
        [REGION, REGION, OTHER],
        "the first region again, then the second"
    );
    // Each region's page serves through its own load balancer.
    for n in 0..2 {
        let url = result["regions"][n]["result"]["url"].as_str().unwrap();
        let body = reqwest::Client::builder()
            .timeout(Duration::from_secs(3))
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("v1"), "{url}: {body}");
    }

    // Rollback names its region when the rollout has several.
    let ambiguous = lab.run_bake(&["-c", &config, "rollback", "web"]).await;
    assert_eq!(ambiguous.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(stderr.contains("--region"), "{stderr}");

    // prune across the regions: the source and its copy are one family, in use in both regions.
    let prune = lab
        .bake_ok(&[
            "-c",
            &config,
            "-o",
            "json",
            "prune",
            "quick",
            "--keep",
            "0",
            "--all-regions",
            "--dry-run",
        ])
        .await;
    let pruned = json(&prune);
    let images = pruned["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{pruned}");
    for (n, (region, ami)) in [(REGION, &source), (OTHER, &copy)].into_iter().enumerate() {
        assert_eq!(images[n]["region"], region, "{pruned}");
        assert_eq!(images[n]["removed"], serde_json::json!([]), "{pruned}");
        assert_eq!(images[n]["kept"][0]["ami_id"], ami.as_str(), "{pruned}");
    }

    // gc across the regions: nothing left behind in either, each region listed.
    let gc = lab
        .bake_ok(&[
            "-c",
            &config,
            "-o",
            "json",
            "gc",
            "--all-regions",
            "--ttl",
            "0s",
            "--dry-run",
        ])
        .await;
    let collected = json(&gc);
    let regions: Vec<&str> = collected["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, [REGION, OTHER], "{collected}");
    assert!(
        lab.requests()
            .await
            .iter()
            .any(|r| r["action"] == "DescribeInstances" && r["region"] == OTHER),
        "gc looked in us-east-1"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_across_regions_removes_a_family_only_when_no_region_uses_it() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    make_keys(&lab).await;
    let scratch = Scratch::new(&two_regions("v1", "t3.micro"));
    let (source, copy) = bake_and_copy(&lab, &scratch).await;
    let config = scratch.config();
    // The copy is in use in us-east-1 only (an instance launched from it there).
    let other = lab.clients().await.in_region(OTHER);
    let subnet = other
        .ec2
        .describe_subnets()
        .filters(bake::resolve::filter("tag:Name", "Private subnet A"))
        .send()
        .await
        .unwrap()
        .subnets()[0]
        .subnet_id()
        .unwrap()
        .to_owned();
    let instance = other
        .ec2
        .run_instances()
        .image_id(&copy)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .subnet_id(&subnet)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap()
        .instances()[0]
        .instance_id()
        .unwrap()
        .to_owned();
    let prune = |dry: bool| {
        let mut args = vec![
            "-c",
            config.as_str(),
            "-o",
            "json",
            "--region",
            REGION,
            "--region",
            OTHER,
            "prune",
            "quick",
            "--keep",
            "0",
        ];
        if dry {
            args.push("--dry-run");
        }
        args.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<String>>()
    };
    let args = prune(false);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let kept = lab.bake_ok(&args).await;
    let result = json(&kept);
    // The source in ap-northeast-2 is used by nothing there, but its copy is used in us-east-1.
    assert_eq!(result["images"][0]["region"], REGION);
    assert_eq!(result["images"][0]["kept"][0]["ami_id"], source.as_str());
    let why = result["images"][0]["kept"][0]["why"].as_str().unwrap();
    assert!(
        why.contains(&copy) && why.contains(&instance) && why.contains(OTHER),
        "{why}"
    );
    assert_eq!(result["images"][1]["kept"][0]["ami_id"], copy.as_str());
    // Pruning the run's region alone reads the copies' regions too: the source stays.
    let here = lab
        .bake_ok(&[
            "-c",
            &config,
            "-o",
            "json",
            "prune",
            "quick",
            "--keep",
            "0",
            "--dry-run",
        ])
        .await;
    let result = json(&here);
    assert_eq!(result["images"].as_array().unwrap().len(), 1, "{result}");
    assert_eq!(result["images"][0]["region"], REGION, "{result}");
    assert_eq!(
        result["images"][0]["removed"],
        serde_json::json!([]),
        "{result}"
    );
    let why = result["images"][0]["kept"][0]["why"].as_str().unwrap();
    assert!(why.contains(&instance), "{why}");

    // The instance gone, nothing uses the family: both go, each with its snapshots. (A new
    // instance id may be unknown to EC2's other calls for a while: terminate until it answers.)
    lab.wait_for(
        "the instance to be terminating",
        Duration::from_secs(60),
        || {
            let ec2 = other.ec2.clone();
            let instance = instance.clone();
            async move {
                ec2.terminate_instances()
                    .instance_ids(&instance)
                    .send()
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    lab.wait_for(
        "the instance to be terminated",
        Duration::from_secs(60),
        || {
            let ec2 = other.ec2.clone();
            let instance = instance.clone();
            async move {
                ec2.describe_instances()
                    .instance_ids(&instance)
                    .send()
                    .await
                    .ok()
                    .and_then(|o| {
                        o.reservations()
                            .first()
                            .and_then(|r| r.instances().first())
                            .and_then(|i| i.state().and_then(|s| s.name().cloned()))
                    })
                    == Some(aws_sdk_ec2::types::InstanceStateName::Terminated)
            }
        },
    )
    .await;
    let removed = lab.bake_ok(&args).await;
    let result = json(&removed);
    assert_eq!(
        result["images"][0]["removed"][0]["ami_id"],
        source.as_str(),
        "{result}"
    );
    assert_eq!(
        result["images"][1]["removed"][0]["ami_id"],
        copy.as_str(),
        "{result}"
    );
    for (region, ami) in [(REGION, &source), (OTHER, &copy)] {
        let clients = lab.clients().await.in_region(region);
        let left = clients
            .ec2
            .describe_images()
            .image_ids(ami.as_str())
            .send()
            .await
            .map(|o| o.images().len())
            .unwrap_or(0);
        assert_eq!(left, 0, "{ami} in {region} is deregistered");
    }
}

/// Pipeline events (JSON Lines) as (step, status, region).
fn steps(out: &std::process::Output) -> Vec<(String, String, String)> {
    json_lines(out)
        .iter()
        .map(|e| {
            (
                e["step"].as_str().unwrap().to_owned(),
                e["status"].as_str().unwrap().to_owned(),
                e["region"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn step(step: &str, status: &str, region: &str) -> (String, String, String) {
    (step.to_owned(), status.to_owned(), region.to_owned())
}

/// The pipeline test's key, in each region.
const KEY: &str = "alias/bake-regions";

/// `/bake/quick/ami-id[:selector]` in `region`, if it is there.
async fn parameter(lab: &Lab, region: &str, selector: &str) -> Option<String> {
    let ssm = lab.clients().await.in_region(region).ssm;
    ssm.get_parameter()
        .name(format!("/bake/quick/ami-id{selector}"))
        .send()
        .await
        .ok()
        .and_then(|o| o.parameter().and_then(|p| p.value()).map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pipeline_rolls_out_region_by_region_and_publishes_each_regions_copy() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    make_keys(&lab).await;
    let scratch = Scratch::new(&two_regions("v1", "t3.small"));
    let config = scratch.config();
    let args = pipeline_args(&config, "5");

    // No t3.small in ap-northeast-2: its rollout fails, us-east-1's is not started, and the
    // parameter is published in neither region.
    let first = without_t3_small_at_home(&lab, &args).await;
    assert_eq!(
        first.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        steps(&first),
        [
            step("bake", "ok", ""),
            step("test", "ok", ""),
            step("rollout", "failed", REGION),
            step("rollout", "not started", OTHER),
        ]
    );
    assert!(
        regions_of(&lab, "CreateAutoScalingGroup")
            .await
            .iter()
            .all(|r| r == REGION)
    );
    assert_eq!(parameter(&lab, REGION, "").await, None);
    assert_eq!(parameter(&lab, OTHER, "").await, None);

    // Capacity back: the AMI (baked, tested and copied already) rolls out in ap-northeast-2 and
    // is published there, then in us-east-1 with its copy.
    let second = lab.bake_ok(&args).await;
    assert_eq!(
        steps(&second),
        [
            step("bake", "skipped", ""),
            step("test", "skipped", ""),
            step("rollout", "ok", REGION),
            step("publish", "ok", REGION),
            step("rollout", "ok", OTHER),
            step("publish", "ok", OTHER),
            step("prune", "skipped", REGION),
            step("prune", "skipped", OTHER),
        ]
    );
    let clients = lab.clients().await;
    let source = parameter(&lab, REGION, "")
        .await
        .expect("published in ap-northeast-2");
    let copy = bake::rollout::regions::copy_of(&clients.in_region(OTHER), &source)
        .await
        .expect("the copy in us-east-1")
        .id;
    assert_ne!(copy, source);
    // The SSM parameter exists in both regions, each with that region's image, tested and live.
    for (region, ami) in [(REGION, &source), (OTHER, &copy)] {
        for selector in ["", ":tested", ":live"] {
            assert_eq!(
                parameter(&lab, region, selector).await.as_deref(),
                Some(ami.as_str()),
                "{region}{selector}"
            );
        }
    }
    let order = regions_of(&lab, "PutParameter").await;
    assert_eq!(order, [REGION, OTHER], "published region by region");
}

/// Every listing gc makes, answered with nothing.
macro_rules! empty {
    ($($sdk:ident :: $op:ident => $output:path),* $(,)?) => {
        vec![$(aws_smithy_mocks::mock!($sdk::Client::$op).then_output(|| <$output>::builder().build())),*]
    };
}

/// One region's clients: EC2 either answers every listing with nothing or throttles every call
/// (RequestLimitExceeded, as EC2 throttles); the other services answer with nothing.
fn gc_clients(region: &'static str, throttled: bool) -> bake::aws::Clients {
    use aws_sdk_autoscaling::operation as asg;
    use aws_sdk_cloudwatch::operation as cw;
    use aws_sdk_ec2::operation as ec2;
    use aws_sdk_elasticloadbalancingv2::operation as elb;
    let ec2_rules: Vec<aws_smithy_mocks::Rule> = if throttled {
        macro_rules! throttle {
            ($($op:ident => $error:path),* $(,)?) => {
                vec![$(aws_smithy_mocks::mock!(aws_sdk_ec2::Client::$op).then_error(|| {
                    <$error>::generic(
                        support::mocks::meta("RequestLimitExceeded", "Request limit exceeded."),
                    )
                })),*]
            };
        }
        throttle![
            describe_instances => ec2::describe_instances::DescribeInstancesError,
            describe_security_groups => ec2::describe_security_groups::DescribeSecurityGroupsError,
            describe_images => ec2::describe_images::DescribeImagesError,
            describe_snapshots => ec2::describe_snapshots::DescribeSnapshotsError,
            describe_nat_gateways => ec2::describe_nat_gateways::DescribeNatGatewaysError,
            describe_vpc_endpoints => ec2::describe_vpc_endpoints::DescribeVpcEndpointsError,
            describe_launch_templates => ec2::describe_launch_templates::DescribeLaunchTemplatesError,
            describe_tags => ec2::describe_tags::DescribeTagsError,
            describe_addresses => ec2::describe_addresses::DescribeAddressesError,
            describe_route_tables => ec2::describe_route_tables::DescribeRouteTablesError,
            describe_subnets => ec2::describe_subnets::DescribeSubnetsError,
            describe_security_group_rules => ec2::describe_security_group_rules::DescribeSecurityGroupRulesError,
        ]
    } else {
        empty![
            aws_sdk_ec2::describe_instances => ec2::describe_instances::DescribeInstancesOutput,
            aws_sdk_ec2::describe_security_groups => ec2::describe_security_groups::DescribeSecurityGroupsOutput,
            aws_sdk_ec2::describe_images => ec2::describe_images::DescribeImagesOutput,
            aws_sdk_ec2::describe_snapshots => ec2::describe_snapshots::DescribeSnapshotsOutput,
            aws_sdk_ec2::describe_nat_gateways => ec2::describe_nat_gateways::DescribeNatGatewaysOutput,
            aws_sdk_ec2::describe_vpc_endpoints => ec2::describe_vpc_endpoints::DescribeVpcEndpointsOutput,
            aws_sdk_ec2::describe_launch_templates => ec2::describe_launch_templates::DescribeLaunchTemplatesOutput,
            aws_sdk_ec2::describe_tags => ec2::describe_tags::DescribeTagsOutput,
            aws_sdk_ec2::describe_addresses => ec2::describe_addresses::DescribeAddressesOutput,
            aws_sdk_ec2::describe_route_tables => ec2::describe_route_tables::DescribeRouteTablesOutput,
            aws_sdk_ec2::describe_subnets => ec2::describe_subnets::DescribeSubnetsOutput,
            aws_sdk_ec2::describe_security_group_rules => ec2::describe_security_group_rules::DescribeSecurityGroupRulesOutput,
        ]
    };
    let asg_rules = empty![
        aws_sdk_autoscaling::describe_auto_scaling_groups => asg::describe_auto_scaling_groups::DescribeAutoScalingGroupsOutput,
        aws_sdk_autoscaling::describe_tags => asg::describe_tags::DescribeTagsOutput,
    ];
    let elb_rules = empty![
        aws_sdk_elasticloadbalancingv2::describe_load_balancers => elb::describe_load_balancers::DescribeLoadBalancersOutput,
        aws_sdk_elasticloadbalancingv2::describe_target_groups => elb::describe_target_groups::DescribeTargetGroupsOutput,
        aws_sdk_elasticloadbalancingv2::describe_tags => elb::describe_tags::DescribeTagsOutput,
    ];
    let cw_rules = empty![
        aws_sdk_cloudwatch::describe_alarms => cw::describe_alarms::DescribeAlarmsOutput,
    ];
    fn refs(rules: &[aws_smithy_mocks::Rule]) -> Vec<&aws_smithy_mocks::Rule> {
        rules.iter().collect()
    }
    support::mocks::Answers {
        autoscaling: &refs(&asg_rules),
        cloudwatch: &refs(&cw_rules),
        ec2: &refs(&ec2_rules),
        elb: &refs(&elb_rules),
        ..Default::default()
    }
    .clients(region)
}

#[tokio::test(start_paused = true)]
async fn gc_in_two_regions_reports_a_throttled_region_alone_and_finishes_the_other() {
    let args = bake::commands::gc::Args {
        ttl: Duration::from_secs(7200),
        dry_run: true,
        all_regions: false,
    };
    let done = args
        .collect_regions(vec![gc_clients(OTHER, true), gc_clients(REGION, false)])
        .await;
    // In the order named; the throttled region's error is its own, the other region finished.
    assert_eq!(done.regions.len(), 2);
    assert_eq!(done.regions[0].region, OTHER);
    let error = done.regions[0].error.as_deref().expect("us-east-1 failed");
    assert!(error.contains("RequestLimitExceeded"), "{error}");
    assert!(error.contains(OTHER), "{error}");
    assert_eq!(done.regions[1].region, REGION);
    assert_eq!(done.regions[1].error, None, "{:?}", done.regions[1]);
    // The command fails, naming only the throttled region.
    let failed = bake::commands::Outcome::into_result(done).unwrap_err();
    assert_eq!(failed.exit_code(), 1);
    let message = failed.to_string();
    assert!(
        message.starts_with(&format!("gc in {OTHER}: ")),
        "{message}"
    );
    assert!(!message.contains(REGION), "{message}");
}

/// Runs bake with `args` while ap-northeast-2's zones have no t3.small capacity (us-east-1's
/// do), then gives the capacity back.
async fn without_t3_small_at_home(lab: &Lab, args: &[&str]) -> std::process::Output {
    lab.control(
        "capacity",
        serde_json::json!({"unavailable": [
            {"instance_type": "t3.small", "zone": "ap-northeast-2a"},
            {"instance_type": "t3.small", "zone": "ap-northeast-2c"},
        ]}),
    )
    .await;
    let out = lab.run_bake(args).await;
    lab.control("capacity", serde_json::json!({"unavailable": []}))
        .await;
    out
}
