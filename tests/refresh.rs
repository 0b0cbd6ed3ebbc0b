//! The instance refresh's preferences, the traffic probe and `bake rollback` against the lab:
//! launch before terminate, a canary that stops at its first checkpoint, the alarm rollback, and
//! a rollback after a rollout that succeeded.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::output::stderr;
use support::web::{bodies, web_instances, web_newest_refresh};
use support::{Lab, NO_TEST_STAGE, Scratch, lab_rollout, quick_config};

/// The quick image serving `body` (its health check on `/healthz` expects `expect`; `vars` adds
/// to its vars) and a rollout of it on Web-ASG with `capacity` and `refresh`, probed on `/`, shaped
/// like the workshops' part 2.
fn config(body: &str, expect: &str, capacity: &str, refresh: &str) -> String {
    config_with(&format!("body = {body:?}"), expect, capacity, refresh)
}

fn config_with(vars: &str, expect: &str, capacity: &str, refresh: &str) -> String {
    let mut text = quick_config(
        vars,
        &format!("path = \"/healthz\"\nexpect_body = {expect:?}"),
        "",
    );
    text.push_str(NO_TEST_STAGE);
    text.push_str(&lab_rollout(
        "web",
        &format!(
            "capacity = {capacity}\nrefresh = {refresh}\nprobe = {{ rate = 5, path = \"/\" }}\n\
             tags = {{ Name = \"ASG-Web-Instance\" }}"
        ),
    ));
    text
}

/// Runs `bake -o json ARGS...`, which must succeed, and returns its JSON result.
async fn json(lab: &Lab, scratch: &Scratch, args: &[&str]) -> serde_json::Value {
    let config = scratch.config();
    let mut all = vec!["-c", config.as_str(), "-o", "json"];
    all.extend_from_slice(args);
    let out = lab.run_bake(&all).await;
    if !out.status.success() {
        let events = lab_events_since(lab, &serde_json::json!({})).await;
        panic!("{}\nthe lab's events: {events}", stderr(&out));
    }
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The group's instances with the launch template version each runs.
async fn versions(lab: &Lab) -> Vec<(String, String)> {
    web_instances(lab)
        .await
        .into_iter()
        .map(|(id, version, _)| (id, version))
        .collect()
}

/// Healthy targets in Web-TG now.
async fn healthy_targets(lab: &Lab, target_group: &str) -> usize {
    let Ok(out) = lab
        .elb
        .describe_target_health()
        .target_group_arn(target_group)
        .send()
        .await
    else {
        return usize::MAX; // a lost answer is no evidence either way
    };
    out.target_health_descriptions()
        .iter()
        .filter(|d| {
            d.target_health().and_then(|h| h.state())
                == Some(&aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum::Healthy)
        })
        .count()
}

async fn target_group_arn(lab: &Lab) -> String {
    lab.elb
        .describe_target_groups()
        .names("Web-TG")
        .send()
        .await
        .unwrap()
        .target_groups()[0]
        .target_group_arn()
        .unwrap()
        .to_owned()
}

/// The newest refresh's preferences.
async fn newest_preferences(lab: &Lab) -> aws_sdk_autoscaling::types::RefreshPreferences {
    web_newest_refresh(lab).await.preferences().unwrap().clone()
}

/// The lab's events since the probe of `report` began, its seconds counted from there (to tell a
/// failed request's moment from what the lab did then).
async fn lab_events_since(lab: &Lab, report: &serde_json::Value) -> String {
    let began = report["started_at"].as_f64().unwrap_or(0.0);
    lab.events()
        .await
        .iter()
        .filter_map(|e| {
            let at = e["time"].as_f64()? - began;
            (at >= -1.0).then(|| format!("{at:.1} {e}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const FOUR: &str = "{ min = 4, desired = 4, max = 8 }";

#[tokio::test(flavor = "multi_thread")]
async fn a_group_of_four_launches_before_terminating_and_the_probe_sees_no_failure() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    // No max_healthy: capacity.max 8 holds twice the desired 4, so the default is 200 (and 100
    // kept healthy).
    let refresh = r#"{ warmup = "5s", timeout = "8m" }"#;
    let first = Scratch::new(&config("first page", "first", FOUR, refresh));
    lab.bake_quick(&first).await;
    let created = json(&lab, &first, &["rollout", "web"]).await;
    assert!(
        created["probe"].is_null(),
        "no probe for a new group: {created}"
    );
    let url = created["url"].as_str().unwrap().to_owned();
    let tg = target_group_arn(&lab).await;
    lab.wait_for("4 healthy targets", Duration::from_secs(60), || async {
        let n = healthy_targets(&lab, &tg).await;
        n != usize::MAX && n >= 4
    })
    .await;

    let second = Scratch::new(&config("second page", "second", FOUR, refresh));
    lab.bake_quick(&second).await;
    let child = lab
        .bake(&["-c", &second.config(), "-o", "json", "rollout", "web"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
    // Sample target health throughout the rollout: never fewer than the desired 4.
    let mut samples = Vec::new();
    while !waiting.is_finished() {
        let n = healthy_targets(&lab, &tg).await;
        if n != usize::MAX {
            samples.push(n);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = waiting.await.unwrap();
    assert!(out.status.success(), "bake {pid}: {}", stderr(&out));
    assert!(samples.len() > 20, "sampled throughout: {samples:?}");
    assert!(
        samples.iter().all(|n| *n >= 4),
        "healthy targets fell below 4: {samples:?}"
    );
    assert!(
        samples.iter().any(|n| *n > 4),
        "new instances served beside the old ones: {samples:?}"
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probe = &result["probe"];
    assert_eq!(
        probe["failed"],
        0,
        "{result}\nthe lab, seconds from the probe's start: {}",
        lab_events_since(&lab, probe).await
    );
    assert!(probe["requests"].as_u64().unwrap() > 10, "{result}");
    assert!(probe["p95_ms"].as_f64().is_some(), "{result}");
    let prefs = newest_preferences(&lab).await;
    assert_eq!(prefs.max_healthy_percentage(), Some(200), "{prefs:?}");
    assert_eq!(prefs.min_healthy_percentage(), Some(100), "{prefs:?}");
    assert_eq!(
        bodies(&url, 8).await,
        BTreeSet::from(["second page".to_owned()])
    );
    let after = versions(&lab).await;
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(after.iter().all(|(_, v)| v == "2"), "{after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_of_a_broken_ami_stops_at_the_first_checkpoint_and_rolls_back() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let refresh =
        r#"{ checkpoints = [25, 100], checkpoint_delay = "60s", warmup = "5s", timeout = "8m" }"#;
    let good = Scratch::new(&config("good page", "good", FOUR, refresh));
    lab.bake_quick(&good).await;
    let url = json(&lab, &good, &["rollout", "web"]).await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    // An AMI that passes its own health check and the target group's (both on /healthz) but
    // answers every second visitor's request with a 500.
    let broken = Scratch::new(&config_with(
        "body = \"broken page\", fail_every = 2",
        "broken",
        FOUR,
        refresh,
    ));
    lab.bake_quick(&broken).await;
    let out = lab
        .run_bake(&["-c", &broken.config(), "-o", "json", "rollout", "web"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("the traffic probe through the load balancer failed"),
        "{err}"
    );
    assert!(err.contains("more than max_errors = 0"), "{err}");
    assert!(
        err.contains("first: HTTP 500 Internal Server Error"),
        "{err}"
    );
    assert!(
        err.contains("rolled back: Web-ASG runs version 1 again"),
        "{err}"
    );
    // The probe's counts are in the result.
    let error: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    let message = error["message"].as_str().unwrap();
    let counts = message
        .lines()
        .find(|l| l.starts_with("probe http://"))
        .unwrap_or_else(|| panic!("{message}"));
    let failed: u64 = counts
        .split(" requests, ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{counts}"));
    assert!(failed >= 1, "{counts}");

    // The canary never went past its first slice: one instance of four (25%) of version 2.
    let refresh = web_newest_refresh(&lab).await;
    assert_eq!(
        refresh.preferences().unwrap().checkpoint_percentages(),
        &[25, 100]
    );
    assert_eq!(refresh.preferences().unwrap().checkpoint_delay(), Some(60));
    let rolled_back_at = lab
        .first_call_time("RollbackInstanceRefresh")
        .await
        .expect("bake rolled the refresh back");
    let registered = lab
        .events()
        .await
        .iter()
        .filter(|e| e["event"] == "target_registered")
        .filter(|e| e["time"].as_f64().is_some_and(|t| t < rolled_back_at))
        .count();
    assert_eq!(
        registered, 5,
        "the first four, then one canary (25% of four) before the rollback"
    );
    assert_eq!(lab.calls("RollbackInstanceRefresh").await, 1);
    let after = versions(&lab).await;
    assert!(after.iter().all(|(_, v)| v == "1"), "{after:?}");
    assert_eq!(
        bodies(&url, 8).await,
        BTreeSet::from(["good page".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_after_a_successful_rollout_returns_to_the_previous_version_under_the_probe() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let two = "{ min = 2, desired = 2, max = 4 }";
    let refresh = r#"{ warmup = "5s", timeout = "8m" }"#;
    let v1 = Scratch::new(&config("page one", "one", two, refresh));
    let ami1 = lab.bake_quick(&v1).await;
    json(&lab, &v1, &["rollout", "web"]).await;
    let v2 = Scratch::new(&config("page two", "two", two, refresh));
    lab.bake_quick(&v2).await;
    let rolled = json(&lab, &v2, &["rollout", "web"]).await;
    assert_eq!(rolled["version"], 2);
    assert_eq!(
        rolled["probe"]["failed"],
        0,
        "{rolled}\nthe lab, seconds from the probe's start: {}",
        lab_events_since(&lab, &rolled["probe"]).await
    );
    let url = rolled["url"].as_str().unwrap().to_owned();

    // Found bad later: back to version 1.
    let back = json(&lab, &v1, &["rollback", "web"]).await;
    assert_eq!(back["from"], 2, "{back}");
    assert_eq!(back["to"], 1, "{back}");
    assert_eq!(back["ami_id"], ami1.as_str(), "{back}");
    assert_eq!(back["changed"], true, "{back}");
    assert_eq!(back["probe"]["failed"], 0, "{back}");
    assert!(back["probe"]["requests"].as_u64().unwrap() > 0, "{back}");
    assert_eq!(
        bodies(&url, 6).await,
        BTreeSet::from(["page one".to_owned()])
    );
    let after = versions(&lab).await;
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|(_, v)| v == "1"), "{after:?}");
    let prefs = newest_preferences(&lab).await;
    assert_eq!(prefs.auto_rollback(), Some(false), "{prefs:?}");
    assert!(prefs.checkpoint_percentages().is_empty(), "{prefs:?}");

    // Nothing served before version 1: a second rollback says so and changes nothing.
    let refreshes = lab.calls("StartInstanceRefresh").await;
    let out = lab.run_bake(&["-c", &v1.config(), "rollback", "web"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("runs version 1 of launch template Web and no earlier version"),
        "{}",
        stderr(&out)
    );
    assert_eq!(lab.calls("StartInstanceRefresh").await, refreshes);

    // --to names any version: forward to 2 again.
    let again = json(&lab, &v2, &["rollback", "web", "--to", "2"]).await;
    assert_eq!(again["to"], 2, "{again}");
    assert_eq!(again["probe"]["failed"], 0, "{again}");
    assert_eq!(
        bodies(&url, 6).await,
        BTreeSet::from(["page two".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ami_serving_500_on_half_its_requests_is_rolled_back_by_the_alarm_and_bake_says_so() {
    let Some(lab) = Lab::start_or_skip().await else {
        return;
    };
    let two = "{ min = 2, desired = 2, max = 4 }";
    // A bake time keeps the refresh open after the last instance is replaced, alarms watched;
    // the probe tolerates the errors here, so that the alarm, not the probe, rolls back.
    let refresh = r#"{ warmup = "5s", bake_time = "120s", timeout = "8m" }"#;
    let alarmed = |text: String| {
        text.replace(
            "probe = { rate = 5, path = \"/\" }",
            "probe = { rate = 5, path = \"/\", max_errors = 100000 }\nalarms = { errors = 2, periods = 1 }",
        )
    };
    let v1 = Scratch::new(&alarmed(config("calm page", "calm", two, refresh)));
    lab.bake_quick(&v1).await;
    json(&lab, &v1, &["rollout", "web"]).await;
    let v2 = Scratch::new(&alarmed(config_with(
        "body = \"noisy page\", fail_every = 2",
        "noisy",
        two,
        refresh,
    )));
    lab.bake_quick(&v2).await;
    let out = lab.run_bake(&["-c", &v2.config(), "rollout", "web"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "CloudWatch alarm Web-ASG-TG-5xx went to ALARM during the instance refresh of \
             Web-ASG; EC2 Auto Scaling rolled the refresh back"
        ),
        "{err}"
    );
    assert!(
        err.contains("rolled back: Web-ASG runs version 1 again"),
        "{err}"
    );
    // The probe saw the 500s too, and says how many.
    assert!(err.contains("failed; latency"), "{err}");
    let prefs = newest_preferences(&lab).await;
    assert_eq!(
        prefs.alarm_specification().map(|a| a.alarms().to_vec()),
        Some(vec![
            "Web-ASG-TG-5xx".to_owned(),
            "Web-ASG-TG-latency".to_owned()
        ])
    );
    assert_eq!(prefs.bake_time(), Some(120));
    let after = versions(&lab).await;
    assert!(after.iter().all(|(_, v)| v == "1"), "{after:?}");
}
