//! `bake rollout` against the lab: a real load balancer proxy, target health from real HTTP
//! probes, instance refreshes that replace real instances.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::output::{stderr, stdout};
use support::web::{bodies, web_group, web_instances, web_newest_refresh};
use support::{Lab, NO_TEST_STAGE, Scratch, lab_rollout, quick_config};

/// The quick image (a page served at boot by systemd) and a rollout of it shaped like the
/// workshops' part 2: Web-ALB on the public subnets, Web-ASG on the private ones.
fn config(body: &str) -> String {
    let mut text = quick_config(&format!("body = {body:?}"), "", "");
    text.push_str(NO_TEST_STAGE);
    text.push_str(&lab_rollout(
        "web",
        "capacity = { min = 2, desired = 2, max = 4 }\ncpu_target = 30\n\
         refresh = { min_healthy = 50, warmup = \"5s\", timeout = \"5m\" }\n\
         tags = { Name = \"ASG-Web-Instance\" }",
    ));
    text
}

/// Runs `bake rollout web`, which must succeed, and returns its JSON result.
async fn roll_out(lab: &Lab, scratch: &Scratch) -> serde_json::Value {
    let out = lab
        .bake_ok(&["-c", &scratch.config(), "-o", "json", "rollout", "web"])
        .await;
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Asserts every part of the rollout's stack is gone: group, load balancer, target group, launch
/// template and the security groups tagged with the rollout.
async fn assert_stack_gone(lab: &Lab) {
    assert!(web_group(lab).await.is_none());
    assert!(
        lab.elb
            .describe_load_balancers()
            .names("Web-ALB")
            .send()
            .await
            .is_err()
    );
    assert!(
        lab.elb
            .describe_target_groups()
            .names("Web-TG")
            .send()
            .await
            .is_err()
    );
    assert!(
        lab.ec2
            .describe_launch_templates()
            .launch_template_names("Web")
            .send()
            .await
            .is_err()
    );
    let named = lab
        .ec2
        .describe_security_groups()
        .filters(support::filter("tag-key", "bake:rollout"))
        .send()
        .await
        .unwrap();
    assert!(named.security_groups().is_empty(), "{named:?}");
    let alarms = lab
        .clients()
        .await
        .cloudwatch
        .describe_alarms()
        .alarm_name_prefix("Web-ASG")
        .send()
        .await
        .unwrap();
    assert!(alarms.metric_alarms().is_empty(), "{alarms:?}");
}

/// The calls in `requests` that change something (anything but Describe*, Get*, List*).
fn changing(requests: &[serde_json::Value]) -> Vec<String> {
    requests
        .iter()
        .filter_map(|r| r["action"].as_str())
        .filter(|a| !["Describe", "Get", "List"].iter().any(|p| a.starts_with(p)))
        .map(str::to_owned)
        .collect()
}

/// `bake rollout web --plan -o json`, which must succeed without one changing call.
async fn plan(lab: &Lab, scratch: &Scratch) -> serde_json::Value {
    let before = lab.requests().await.len();
    let out = lab
        .bake_ok(&[
            "-c",
            &scratch.config(),
            "-o",
            "json",
            "rollout",
            "web",
            "--plan",
        ])
        .await;
    let requests = lab.requests().await;
    assert!(requests.len() > before, "the plan reads the account");
    assert_eq!(changing(&requests[before..]), Vec::<String>::new());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_lists_the_stack_then_nothing_then_a_version_and_its_replacements_changing_nothing() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let first = Scratch::new(&config("first page"));
    let ami = lab.bake_quick(&first).await;

    // A fresh lab: the whole stack.
    let fresh = plan(&lab, &first).await;
    let create: Vec<&str> = fresh["create"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for part in [
        "security group Web-ALB-SG",
        "security group Web-ASG-Inst-SG",
        "target group Web-TG",
        "load balancer Web-ALB",
        "listener HTTP:80 on Web-ALB",
        "launch template Web",
        "Auto Scaling group Web-ASG (min 2 desired 2 max 4, metrics collected)",
        "scaling policy bake-cpu-target on Web-ASG (average CPU 30%)",
        "CloudWatch alarm Web-ASG-TG-5xx",
        "CloudWatch alarm Web-ASG-TG-latency",
    ] {
        assert!(
            create.iter().any(|c| c.starts_with(part)),
            "{part} in {create:?}"
        );
    }
    assert_eq!(fresh["launch_template_version"]["to_ami"], ami.as_str());
    assert_eq!(fresh["replace"].as_array().unwrap().len(), 0);
    assert_eq!(lab.calls("CreateLoadBalancer").await, 0);

    // After the rollout: nothing, in JSON and in words.
    roll_out(&lab, &first).await;
    let done = plan(&lab, &first).await;
    for key in ["create", "change", "replace"] {
        assert_eq!(done[key], serde_json::json!([]), "{key}: {done}");
    }
    assert!(done["launch_template_version"].is_null(), "{done}");
    assert!(done["publish"].is_null(), "{done}");
    let words = lab
        .bake_ok(&["-c", &first.config(), "rollout", "web", "--plan"])
        .await;
    assert!(
        stdout(&words).ends_with("nothing to do"),
        "{}",
        stdout(&words)
    );

    // A new AMI, published before: one launch template version, both instances replaced, the
    // published value changed.
    let clients = lab.clients().await;
    clients
        .ssm
        .put_parameter()
        .name("/bake/quick/ami-id")
        .value(&ami)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    let second = Scratch::new(&config("second page"));
    let next = lab.bake_quick(&second).await;
    let versions = lab.calls("CreateLaunchTemplateVersion").await;
    let new = plan(&lab, &second).await;
    assert_eq!(new["create"], serde_json::json!([]), "{new}");
    assert_eq!(new["change"], serde_json::json!([]), "{new}");
    assert_eq!(new["launch_template_version"]["from_ami"], ami.as_str());
    assert_eq!(new["launch_template_version"]["to_ami"], next.as_str());
    let running: BTreeSet<String> = web_instances(&lab)
        .await
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    let replaced: BTreeSet<String> = new["replace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(replaced, running);
    assert_eq!(replaced.len(), 2);
    assert_eq!(new["publish"]["parameter"], "/bake/quick/ami-id");
    assert_eq!(new["publish"]["from"], ami.as_str());
    assert_eq!(new["publish"]["to"], next.as_str());
    assert_eq!(lab.calls("CreateLaunchTemplateVersion").await, versions);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_during_stack_creation_removes_what_it_had_created() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&config("page"));
    let ami = lab.bake_quick(&scratch).await;
    // Auto Scaling throttles the group's creation: the run is inside the stack step, with the
    // security groups, target group, load balancer and launch template made, when the signal comes.
    lab.throttle("autoscaling", "CreateAutoScalingGroup").await;
    let out = lab
        .interrupt_when(
            &["-c", &scratch.config(), "rollout", "web"],
            "INT",
            "the group's creation",
            Duration::from_secs(120),
            || async { lab.calls("CreateAutoScalingGroup").await > 0 },
        )
        .await;
    lab.faults_off().await;
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert!(err.contains("removed what this run had created"), "{err}");
    assert_eq!(lab.calls("CreateLoadBalancer").await, 1);
    assert_stack_gone(&lab).await;
    lab.assert_nothing_left(&[&ami], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_stack_creation_then_gc_leaves_nothing() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&config("page").replace(
        "cpu_target = 30",
        "cpu_target = 30\ncpu_alarm = { threshold = 70, periods = 2 }",
    ));
    let ami = lab.bake_quick(&scratch).await;
    // EC2 throttles the last step, taking the run's tags off the finished stack: everything,
    // group and alarms included, exists and still carries the run's tags when the kill comes.
    lab.throttle("ec2", "DeleteTags").await;
    let out = lab
        .interrupt_when(
            &["-c", &scratch.config(), "rollout", "web"],
            "KILL",
            "the stack's last step",
            Duration::from_secs(120),
            || async { lab.calls("DeleteTags").await > 0 },
        )
        .await;
    lab.faults_off().await;
    assert_eq!(out.status.code(), None, "killed: {}", stderr(&out));
    assert_eq!(lab.calls("PutMetricAlarm").await, 3, "5xx, latency, CPU");
    assert_eq!(lab.calls("CreateAutoScalingGroup").await, 1);

    let gc = lab
        .bake_ok(&["-c", &scratch.config(), "gc", "--ttl", "0s"])
        .await;
    let removed = stdout(&gc);
    for part in [
        "Auto Scaling group Web-ASG",
        "CloudWatch alarm Web-ASG-CPU-high",
        "CloudWatch alarm Web-ASG-TG-5xx",
        "load balancer arn:",
        "target group arn:",
        "launch template lt-",
    ] {
        assert!(removed.contains(part), "{part} in {removed}");
    }
    assert_stack_gone(&lab).await;
    lab.assert_nothing_left(&[&ami], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_creates_the_stack_then_replaces_every_instance_through_the_alb() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let first = Scratch::new(&config("first page"));
    let ami = lab.bake_quick(&first).await;

    let result = roll_out(&lab, &first).await;
    assert_eq!(result["ami_id"], ami.as_str());
    assert_eq!(result["version"], 1);
    let url = result["url"].as_str().unwrap().to_owned();
    assert_eq!(
        bodies(&url, 6).await,
        BTreeSet::from(["first page".to_owned()])
    );
    let instances = web_instances(&lab).await;
    assert_eq!(instances.len(), 2, "{instances:?}");
    // The scaling state: sizes, in service, the CPU target, metrics, the alarms' states.
    let scaling = &result["scaling"];
    assert_eq!(
        (&scaling["min"], &scaling["desired"], &scaling["max"]),
        (&2.into(), &2.into(), &4.into()),
        "{scaling}"
    );
    assert_eq!(scaling["in_service"], 2, "{scaling}");
    assert_eq!(scaling["cpu_target"], 30.0, "{scaling}");
    assert_eq!(scaling["metrics_enabled"], true, "{scaling}");
    let states = scaling["alarms"].as_object().unwrap();
    assert_eq!(
        states.keys().collect::<Vec<_>>(),
        ["Web-ASG-TG-5xx", "Web-ASG-TG-latency"],
        "no cpu_alarm in this config: {scaling}"
    );
    // The alarms watch this target group behind this load balancer with AWS's one-minute period,
    // carry the rollout's tag and, the stack being whole, no run's.
    let clients = lab.clients().await;
    let alarms = clients
        .cloudwatch
        .describe_alarms()
        .alarm_names("Web-ASG-TG-5xx")
        .alarm_names("Web-ASG-TG-latency")
        .send()
        .await
        .unwrap();
    assert_eq!(alarms.metric_alarms().len(), 2);
    for alarm in alarms.metric_alarms() {
        assert_eq!(alarm.namespace(), Some("AWS/ApplicationELB"));
        assert_eq!(alarm.period(), Some(60));
        assert_eq!(alarm.evaluation_periods(), Some(2));
        let dims: BTreeSet<String> = alarm
            .dimensions()
            .iter()
            .map(|d| format!("{}={}", d.name().unwrap(), d.value().unwrap()))
            .collect();
        assert!(
            dims.iter()
                .any(|d| d.starts_with("LoadBalancer=app/Web-ALB/"))
                && dims
                    .iter()
                    .any(|d| d.starts_with("TargetGroup=targetgroup/Web-TG/")),
            "{dims:?}"
        );
        let tags = clients
            .cloudwatch
            .list_tags_for_resource()
            .resource_arn(alarm.alarm_arn().unwrap())
            .send()
            .await
            .unwrap();
        let keys: BTreeSet<&str> = tags.tags().iter().filter_map(|t| t.key()).collect();
        assert!(keys.contains("bake:rollout"), "{keys:?}");
        assert!(!keys.contains("bake:run-id"), "{keys:?}");
    }
    assert_eq!(alarms.metric_alarms()[0].threshold(), Some(5.0));
    assert_eq!(alarms.metric_alarms()[1].threshold(), Some(2.0));
    // So `bake gc` leaves the finished stack alone.
    let gc = lab
        .bake_ok(&["-c", &first.config(), "gc", "--ttl", "0s", "--dry-run"])
        .await;
    assert!(!stdout(&gc).contains("Web"), "{}", stdout(&gc));
    let zones: BTreeSet<&str> = instances.iter().map(|(_, _, z)| z.as_str()).collect();
    assert_eq!(zones.len(), 2, "spread over both zones: {instances:?}");

    // The template asks for IMDSv2 and names the profile; the instances' group admits the ALB only.
    let template = lab
        .ec2
        .describe_launch_template_versions()
        .launch_template_name("Web")
        .versions("1")
        .send()
        .await
        .unwrap();
    let data = template.launch_template_versions()[0]
        .launch_template_data()
        .unwrap();
    assert_eq!(data.image_id(), Some(ami.as_str()));
    assert_eq!(
        data.metadata_options()
            .and_then(|m| m.http_tokens())
            .map(|t| t.as_str()),
        Some("required")
    );
    let groups = lab
        .ec2
        .describe_security_groups()
        .group_ids(&data.security_group_ids()[0])
        .send()
        .await
        .unwrap();
    let rules = groups.security_groups()[0].ip_permissions();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(
        rules[0].ip_ranges().is_empty(),
        "no CIDR may reach the instances: {rules:?}"
    );
    assert_eq!(rules[0].user_id_group_pairs().len(), 1, "{rules:?}");

    // The same AMI again: nothing to replace.
    let refreshes = lab.calls("StartInstanceRefresh").await;
    let versions = lab.calls("CreateLaunchTemplateVersion").await;
    let again = lab
        .bake_ok(&["-c", &first.config(), "rollout", "web"])
        .await;
    let text = stdout(&again);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(url.as_str()), "{text}");
    assert_eq!(
        lines.next(),
        Some("Web-ASG: min 2 desired 2 max 4, 2 in service, CPU target 30%, group metrics on"),
        "{text}"
    );
    assert!(text.contains("\nalarm Web-ASG-TG-5xx: "), "{text}");
    assert!(text.contains("\nalarm Web-ASG-TG-latency: "), "{text}");
    assert_eq!(lab.calls("StartInstanceRefresh").await, refreshes);
    assert_eq!(lab.calls("CreateLaunchTemplateVersion").await, versions);

    // Someone moved the group to $Latest: a refresh from there could not roll back, so bake pins
    // the group to the version it runs before adding the new one (the lab, as AWS, refuses
    // AutoRollback on $Latest).
    lab.autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name("Web-ASG")
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                .launch_template_name("Web")
                .version("$Latest")
                .build(),
        )
        .send()
        .await
        .unwrap();

    // A new AMI: a new version, every instance replaced, the new page through the same ALB.
    let second = Scratch::new(&config("second page"));
    let ami2 = lab.bake_quick(&second).await;
    let result = roll_out(&lab, &second).await;
    assert_eq!(result["ami_id"], ami2.as_str());
    assert_eq!(result["version"], 2);
    assert_eq!(result["previous_version"], "1");
    assert_eq!(result["url"], url.as_str());
    assert_eq!(
        bodies(&url, 6).await,
        BTreeSet::from(["second page".to_owned()])
    );
    let replaced = web_instances(&lab).await;
    assert!(
        replaced.iter().all(
            |(id, version, _)| version == "2" && !instances.iter().any(|(old, _, _)| old == id)
        ),
        "before {instances:?}, after {replaced:?}"
    );
    let newest = web_newest_refresh(&lab).await;
    assert_eq!(
        newest.preferences().and_then(|p| p.auto_rollback()),
        Some(true),
        "{newest:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_that_cannot_launch_ends_the_rollout_within_a_minute_with_awss_message() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&config("page"));
    let base = lab.debian_image().await;
    lab.control(
        "capacity",
        serde_json::json!({"unavailable": [
            {"instance_type": "t3.micro", "zone": "ap-northeast-2a"},
            {"instance_type": "t3.micro", "zone": "ap-northeast-2c"},
        ]}),
    )
    .await;
    let out = lab
        .run_bake(&["-c", &scratch.config(), "rollout", "web", "--ami", &base])
        .await;
    lab.control("capacity", serde_json::json!({"unavailable": []}))
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "Web-ASG cannot launch instances: We currently do not have sufficient t3.micro \
             capacity in the Availability Zone you requested"
        ),
        "{err}"
    );
    assert!(err.contains("removed the stack it had created"), "{err}");
    assert_stack_gone(&lab).await;

    // bake gave up (and began removing the group) within a minute of the first failed launch.
    let first_failure = lab
        .first_event_time("launch_failed")
        .await
        .expect("the lab recorded the failed launch");
    let removal = lab
        .first_call_time("DeleteAutoScalingGroup")
        .await
        .expect("bake deleted the group");
    assert!(
        removal - first_failure < 60.0,
        "{:.0} s from the first failed activity to giving up",
        removal - first_failure
    );
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_succeeds_under_throttle_bursts_and_light_faults() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&config("steady page"));
    lab.bake_quick(&scratch).await;
    // Every describe/get/list of these services throttled 6 s out of every 30 s (AWS throttles
    // per account and region), and on top of that a few random throttles and 5xx answers.
    lab.control(
        "faults",
        serde_json::json!({"rules": [
            {"kind": "burst", "duration": 6, "every": 30,
             "services": ["ec2", "ssm", "autoscaling", "elasticloadbalancing"]},
            {"rate": 0.1, "kind": "throttle",
             "services": ["autoscaling", "elasticloadbalancing", "ec2"]},
            {"rate": 0.05, "kind": "5xx",
             "services": ["autoscaling", "elasticloadbalancing", "ec2"]},
        ], "seed": 9}),
    )
    .await;
    let out = lab
        .run_bake(&["-c", &scratch.config(), "-o", "json", "rollout", "web"])
        .await;
    lab.faults_off().await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(lab.faulted().await > 0, "the run met some faults");
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        bodies(result["url"].as_str().unwrap(), 4).await,
        BTreeSet::from(["steady page".to_owned()])
    );
    assert_eq!(lab.calls("RollbackInstanceRefresh").await, 0);
    // Nothing leaked: every instance still up belongs to the group.
    let up = lab
        .ec2
        .describe_instances()
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
    for instance in up.reservations().iter().flat_map(|r| r.instances()) {
        assert!(
            instance
                .tags()
                .iter()
                .any(|t| t.key() == Some("aws:autoscaling:groupName")),
            "{:?} is not the group's",
            instance.instance_id()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_rolls_back_when_the_new_instances_stay_unhealthy() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&config("good page"));
    lab.bake_quick(&scratch).await;
    let url = roll_out(&lab, &scratch).await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = web_instances(&lab).await;

    // The Debian base image serves nothing on port 80.
    let info = lab.info().await;
    let base = info["debian_images"]["ap-northeast-2"]
        .as_str()
        .expect("the lab names its Debian AMI")
        .to_owned();
    let out = lab
        .run_bake(&["-c", &scratch.config(), "rollout", "web", "--ami", &base])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("stayed unhealthy in target group Web-TG"),
        "{err}"
    );
    assert!(
        err.contains("rolled back: Web-ASG runs version 1 again"),
        "{err}"
    );

    assert_eq!(
        bodies(&url, 6).await,
        BTreeSet::from(["good page".to_owned()])
    );
    let after = web_instances(&lab).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        after.iter().all(|(_, version, _)| version == "1"),
        "{after:?}"
    );
    assert!(
        before
            .iter()
            .any(|(id, _, _)| after.iter().any(|(a, _, _)| a == id)),
        "at least one original instance kept serving: before {before:?}, after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_first_rollout_removes_the_stack_it_created() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let scratch = Scratch::new(&config("page"));
    let base = lab.debian_image().await;
    let out = lab
        .run_bake(&["-c", &scratch.config(), "rollout", "web", "--ami", &base])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("removed the stack it had created"), "{err}");

    assert_stack_gone(&lab).await;
    lab.assert_nothing_left(&[], &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollout_preflight_problems_exit_2_at_their_line_and_change_nothing() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // Nothing baked from these inputs yet.
    let scratch = Scratch::new(&config("never baked"));
    let out = lab
        .bake_refused(&["-c", &scratch.config(), "rollout", "web"])
        .await;
    assert!(
        stderr(&out).contains("run `bake ami quick` first"),
        "{}",
        stderr(&out)
    );

    // Both load balancer subnets in one zone.
    let base = lab.debian_image().await;
    let one_zone = config("page").replace(
        "{ tag = { Name = \"Public subnet C\" } },\n]",
        "{ tag = { Name = \"Public subnet A\" } },\n]",
    );
    let scratch = Scratch::new(&one_zone);
    let out = lab
        .bake_refused(&["-c", &scratch.config(), "rollout", "web", "--ami", &base])
        .await;
    let err = stderr(&out);
    let line = one_zone
        .lines()
        .position(|l| l.starts_with("alb_subnets"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("bake.toml:{line}:")), "{err}");
    assert!(err.contains("rollout.web.alb_subnets"), "{err}");
    assert!(err.contains("two availability zones"), "{err}");

    // A private subnet cannot host an internet-facing load balancer.
    let private = config("page").replace(
        "{ tag = { Name = \"Public subnet C\" } },\n]",
        "{ tag = { Name = \"Private subnet C\" } },\n]",
    );
    let scratch = Scratch::new(&private);
    let out = lab
        .bake_refused(&["-c", &scratch.config(), "rollout", "web", "--ami", &base])
        .await;
    assert!(
        stderr(&out).contains("no route to an internet gateway"),
        "{}",
        stderr(&out)
    );

    // Instances in a zone the load balancer has no subnet in would stay `unused`.
    let vpcs = lab
        .ec2
        .describe_vpcs()
        .filters(support::filter("tag:Name", "VPC-Lab"))
        .send()
        .await
        .unwrap();
    let vpc = vpcs.vpcs()[0].vpc_id().unwrap().to_owned();
    let zone_b = lab
        .ec2
        .create_subnet()
        .vpc_id(vpc)
        .cidr_block("10.0.91.0/24")
        .availability_zone("ap-northeast-2b")
        .send()
        .await
        .unwrap();
    let zone_b = zone_b.subnet().unwrap().subnet_id().unwrap().to_owned();
    let outside = config("page").replace(
        "{ tag = { Name = \"Private subnet C\" } },\n]",
        &format!("{{ id = \"{zone_b}\" }},\n]"),
    );
    assert_ne!(outside, config("page"));
    let scratch = Scratch::new(&outside);
    let out = lab
        .bake_refused(&["-c", &scratch.config(), "rollout", "web", "--ami", &base])
        .await;
    let err = stderr(&out);
    let line = outside
        .lines()
        .position(|l| l.starts_with("instance_subnets"))
        .unwrap()
        + 1;
    assert!(err.contains(&format!("bake.toml:{line}:")), "{err}");
    assert!(err.contains("rollout.web.instance_subnets"), "{err}");
    assert!(
        err.contains(&format!("subnet {zone_b} is in ap-northeast-2b")),
        "{err}"
    );

    for action in [
        "CreateSecurityGroup",
        "CreateTargetGroup",
        "CreateLoadBalancer",
        "CreateLaunchTemplate",
        "CreateAutoScalingGroup",
    ] {
        assert_eq!(lab.calls(action).await, 0, "{action}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_during_the_refresh_rolls_back_and_exits_130() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let first = Scratch::new(&config("first page"));
    lab.bake_quick(&first).await;
    let url = roll_out(&lab, &first).await["url"]
        .as_str()
        .unwrap()
        .to_owned();

    // A long warmup keeps the refresh going while the signal comes.
    let second =
        Scratch::new(&config("second page").replace("warmup = \"5s\"", "warmup = \"30s\""));
    lab.bake_quick(&second).await;
    let child = lab
        .bake(&["-c", &second.config(), "rollout", "web"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    lab.wait_for("the instance refresh", Duration::from_secs(60), || async {
        lab.calls("StartInstanceRefresh").await > 0
    })
    .await;
    support::signal(child.id(), "INT");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert!(
        err.contains("rolled back: Web-ASG runs version 1 again"),
        "{err}"
    );
    assert_eq!(lab.calls("RollbackInstanceRefresh").await, 1);
    let after = web_instances(&lab).await;
    assert!(
        after.iter().all(|(_, version, _)| version == "1"),
        "{after:?}"
    );
    assert_eq!(
        bodies(&url, 4).await,
        BTreeSet::from(["first page".to_owned()])
    );
}
