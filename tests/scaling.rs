//! Seed 003 against the lab: the high-availability example rolled out with group metrics and the
//! CPU alarm, then a bounded load test through the ALB scales the group out and, once it stops,
//! back in.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::web::web_group;
use support::{Lab, repo};

/// Scale-out needs three CPU periods above the target plus a launch and its warm-up; with the
/// lab's 2-second periods that is well under a minute. Three minutes allows for a loaded machine.
const SCALE_OUT_WITHIN: Duration = Duration::from_secs(180);
/// Scale-in needs fifteen periods below 90 % of the target, then one instance at a time leaves.
const SCALE_IN_WITHIN: Duration = Duration::from_secs(300);
/// Clients hitting /load at once: more than the two instances' four gunicorn workers.
const LOAD_CLIENTS: usize = 8;

/// The group's desired capacity and its instances.
async fn capacity(lab: &Lab) -> (i32, usize) {
    let group = web_group(lab).await.expect("Web-ASG exists");
    (
        group.desired_capacity().unwrap_or_default(),
        group.instances().len(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_test_through_the_alb_scales_the_group_out_and_back_in() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let example = repo().join("examples/nginx-debian.toml");
    let example = example.to_str().unwrap();
    lab.bake_ok(&["-c", example, "ami", "web"]).await;
    let result = lab
        .bake_json(&["-c", example, "-o", "json", "rollout", "web"])
        .await;
    let scaling = &result["scaling"];
    assert_eq!(scaling["desired"], 2, "{scaling}");
    assert_eq!(scaling["metrics_enabled"], true, "{scaling}");
    assert_eq!(scaling["cpu_target"], 30.0, "{scaling}");
    assert!(
        scaling["alarms"]["Web-ASG-CPU-high"].is_string(),
        "{scaling}"
    );

    // Group metrics on, and seed 002's CPU alarm on the group's average CPU.
    let group = web_group(&lab).await.expect("Web-ASG exists");
    let enabled: Vec<&str> = group
        .enabled_metrics()
        .iter()
        .filter_map(|m| m.metric())
        .collect();
    assert!(enabled.contains(&"GroupInServiceInstances"), "{enabled:?}");
    let clients = lab.clients().await;
    let alarms = clients
        .cloudwatch
        .describe_alarms()
        .alarm_names("Web-ASG-CPU-high")
        .send()
        .await
        .unwrap();
    let cpu = &alarms.metric_alarms()[0];
    assert_eq!(cpu.namespace(), Some("AWS/EC2"));
    assert_eq!(cpu.metric_name(), Some("CPUUtilization"));
    assert_eq!(cpu.threshold(), Some(70.0));
    assert_eq!(cpu.evaluation_periods(), Some(2));
    assert_eq!(cpu.period(), Some(300));
    assert_eq!(
        cpu.dimensions()[0].value(),
        Some("Web-ASG"),
        "{:?}",
        cpu.dimensions()
    );

    // The load test: LOAD_CLIENTS clients on /load through the ALB until the group has grown (or
    // the time is up); every request is bounded by its timeout.
    let url = result["url"].as_str().unwrap().to_owned();
    let load = format!("{}load", url);
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let workers: Vec<_> = (0..LOAD_CLIENTS)
        .map(|_| {
            let (stop, served, client, load) =
                (stop.clone(), served.clone(), client.clone(), load.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(r) = client.get(&load).send().await
                        && r.status() == 200
                    {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let started = tokio::time::Instant::now();
    let mut grown = capacity(&lab).await;
    while grown.0 < 3 && started.elapsed() < SCALE_OUT_WITHIN {
        tokio::time::sleep(Duration::from_secs(2)).await;
        grown = capacity(&lab).await;
    }
    let out_after = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(
        served.load(Ordering::SeqCst) > 0,
        "the ALB served the load page"
    );
    assert!(
        grown.0 >= 3,
        "desired capacity {} after {out_after:?} of load",
        grown.0
    );

    // The load is gone: back to the minimum of 2.
    let calm = tokio::time::Instant::now();
    let mut now = capacity(&lab).await;
    while (now.0 != 2 || now.1 != 2) && calm.elapsed() < SCALE_IN_WITHIN {
        tokio::time::sleep(Duration::from_secs(2)).await;
        now = capacity(&lab).await;
    }
    assert_eq!(now, (2, 2), "after {:?} without load", calm.elapsed());
    let activities = lab
        .autoscaling
        .describe_scaling_activities()
        .auto_scaling_group_name("Web-ASG")
        .send()
        .await
        .unwrap();
    let causes: Vec<&str> = activities
        .activities()
        .iter()
        .filter_map(|a| a.cause())
        .collect();
    assert!(
        causes.iter().any(|c| c.contains("bake-cpu-target")),
        "the policy drove the scaling: {causes:?}"
    );
}
