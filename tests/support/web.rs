//! The workshops' Web stack as a test reads it: the Web-ASG group, its instances, and the pages
//! its load balancer serves.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_autoscaling::types::{AutoScalingGroup, InstanceRefresh};

use super::Lab;

/// The group the workshops' rollout makes (`asg = "Web-ASG"`).
pub const GROUP: &str = "Web-ASG";

/// Web-ASG as Auto Scaling describes it, or `None` where there is no such group.
pub async fn web_group(lab: &Lab) -> Option<AutoScalingGroup> {
    let out = lab
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(GROUP)
        .send()
        .await
        .unwrap();
    out.auto_scaling_groups().first().cloned()
}

/// Web-ASG's instances: id, the launch template version each runs, and its zone.
pub async fn web_instances(lab: &Lab) -> Vec<(String, String, String)> {
    web_group(lab)
        .await
        .expect("Web-ASG exists")
        .instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap().to_owned(),
                i.launch_template()
                    .and_then(|t| t.version())
                    .unwrap_or_default()
                    .to_owned(),
                i.availability_zone().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Web-ASG's newest instance refresh (Auto Scaling lists them newest first).
pub async fn web_newest_refresh(lab: &Lab) -> InstanceRefresh {
    let out = lab
        .autoscaling
        .describe_instance_refreshes()
        .auto_scaling_group_name(GROUP)
        .send()
        .await
        .unwrap();
    out.instance_refreshes()
        .first()
        .expect("Web-ASG has a refresh")
        .clone()
}

/// GETs `url` `n` times, each answered 200, and returns the distinct bodies (trimmed).
pub async fn bodies(url: &str, n: usize) -> BTreeSet<String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let response = client.get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        seen.insert(response.text().await.unwrap().trim().to_owned());
    }
    seen
}
