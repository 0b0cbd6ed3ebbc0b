//! `bake rollback`: a group back on the launch template version it served before (or one named)
//! through an instance refresh watched like a rollout's, under the traffic probe; and the history
//! of the versions a group served (the `bake:served` tag), which says what "before" is.

use serde::Serialize;
use tokio::time::Instant;

use super::preflight::{Ami, Names, Plan};
use super::stack::{self, Stack};
use super::{refresh, traffic};
use crate::aws::{CallError, Clients};
use crate::config::{Config, Rollout};
use crate::output::Progress;
use crate::{signal, tags};

/// How many served versions the history keeps (a tag value holds 256 characters).
const HISTORY_MAX: usize = 16;

/// What `bake rollback` did.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    pub rollout: String,
    pub asg: String,
    pub launch_template: String,
    /// The version the group ran before.
    pub from: i64,
    /// The version it runs now.
    pub to: i64,
    /// The AMI of that version.
    pub ami_id: String,
    /// False when the group already ran `to` and nothing was replaced.
    pub changed: bool,
    pub url: String,
    pub region: String,
    pub seconds: f64,
    /// What the traffic probe saw during the refresh.
    pub probe: Option<traffic::Report>,
}

/// Why a rollback did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Auto Scaling group {asg} does not exist in {region}: nothing to roll back")]
    NoGroup { asg: String, region: String },
    #[error(
        "Auto Scaling group {asg} launches no launch template by id and version ({found}); bake \
         rolls back only groups it rolled out"
    )]
    NoTemplate { asg: String, found: String },
    #[error(
        "{asg} runs version {current} of launch template {template} and no earlier version is \
         known; name one with --to"
    )]
    NoPrevious {
        asg: String,
        template: String,
        current: i64,
    },
    #[error("launch template {template} has no version {version} in {region}")]
    NoVersion {
        template: String,
        version: i64,
        region: String,
    },
    #[error("load balancer {alb} of {asg} was not found in {region}")]
    NoLoadBalancer {
        alb: String,
        asg: String,
        region: String,
    },
    #[error("{0}")]
    Api(#[from] CallError),
    #[error("{cause}\n{asg} was not put back on version {to}; it may run versions {to} and {from}")]
    Refresh {
        cause: refresh::Error,
        asg: String,
        from: i64,
        to: i64,
    },
    #[error(
        "interrupted by {}; the instance refresh {refresh} of {asg} to version {to} goes on in \
         AWS (aws autoscaling describe-instance-refreshes --auto-scaling-group-name {asg})",
        signal::name(*.signal)
    )]
    Interrupted {
        signal: u8,
        asg: String,
        refresh: String,
        to: i64,
    },
    #[error("{error}\n{probe}")]
    Probed {
        error: Box<Error>,
        probe: traffic::Report,
    },
}

impl Error {
    /// 128 + signal when interrupted, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Interrupted { signal, .. } => *signal,
            Error::Probed { error, .. } => error.exit_code(),
            _ => 1,
        }
    }
}

/// The group as `bake rollback` finds it.
struct Group {
    template_id: String,
    template_name: String,
    version: i64,
    history: Vec<i64>,
    target_group_arn: Option<String>,
}

async fn group(clients: &Clients, asg: &str) -> Result<Group, Error> {
    let Some(group) = super::stack::describe_group(clients, asg).await? else {
        return Err(Error::NoGroup {
            asg: asg.to_owned(),
            region: clients.region.clone(),
        });
    };
    let spec = group.launch_template();
    let (Some(template_id), Some(version)) = (
        spec.and_then(|s| s.launch_template_id()),
        spec.and_then(|s| s.version()),
    ) else {
        return Err(Error::NoTemplate {
            asg: asg.to_owned(),
            found: format!("{spec:?}"),
        });
    };
    let version = match version.parse::<i64>() {
        Ok(v) => v,
        // $Latest or $Default: the number it names now.
        Err(_) => version_of(clients, template_id, version)
            .await?
            .map(|(n, _)| n)
            .ok_or_else(|| Error::NoTemplate {
                asg: asg.to_owned(),
                found: format!("{template_id} {version}"),
            })?,
    };
    let history = group
        .tags()
        .iter()
        .find(|t| t.key() == Some(tags::SERVED))
        .and_then(|t| t.value())
        .map(parse_history)
        .unwrap_or_default();
    Ok(Group {
        template_id: template_id.to_owned(),
        template_name: spec
            .and_then(|s| s.launch_template_name())
            .unwrap_or(template_id)
            .to_owned(),
        version,
        history,
        target_group_arn: group.target_group_arns().first().cloned(),
    })
}

/// A launch template version's number and AMI, when it exists.
async fn version_of(
    clients: &Clients,
    template_id: &str,
    version: &str,
) -> Result<Option<(i64, String)>, CallError> {
    let found = stack::template_version(clients, template_id, version).await?;
    Ok(found.and_then(|v| {
        let ami = v
            .launch_template_data()
            .and_then(|d| d.image_id())
            .unwrap_or_default()
            .to_owned();
        Some((v.version_number?, ami))
    }))
}

fn parse_history(value: &str) -> Vec<i64> {
    value
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn format_history(history: &[i64]) -> String {
    let start = history.len().saturating_sub(HISTORY_MAX);
    history[start..]
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The version to go back to from `current`: the last one served before it.
fn previous(history: &[i64], current: i64) -> Option<i64> {
    let mut h = history;
    while let [rest @ .., last] = h {
        if *last != current {
            return Some(*last);
        }
        h = rest;
    }
    None
}

/// The history after the group served `version`: a version served again drops what came after
/// it (those were rolled back), a new one goes at the end.
fn served(mut history: Vec<i64>, version: i64) -> Vec<i64> {
    match history.iter().rposition(|v| *v == version) {
        Some(i) => history.truncate(i + 1),
        None => history.push(version),
    }
    history
}

/// Notes on the group that it served `version` (after a successful rollout or rollback).
pub async fn record_served(clients: &Clients, asg: &str, version: i64) -> Result<(), Error> {
    let current = group(clients, asg).await?;
    let history = served(current.history, version);
    let tag = aws_sdk_autoscaling::types::Tag::builder()
        .resource_id(asg)
        .resource_type("auto-scaling-group")
        .key(tags::SERVED)
        .value(format_history(&history))
        .propagate_at_launch(false)
        .build();
    let request = clients.autoscaling.create_or_update_tags().tags(tag);
    clients
        .call(|| request.clone().send())
        .or_fail(|| format!("tag {asg} with the versions it served"))
        .await?;
    Ok(())
}

/// Puts `[rollout.NAME]`'s group back on version `to` (by default the one it served before).
pub async fn run(
    clients: &Clients,
    config: &Config,
    name: &str,
    rollout: &Rollout,
    to: Option<i64>,
    progress: &Progress,
) -> Result<RolledBack, Error> {
    let started = Instant::now();
    let mut signal = tokio::spawn(signal::interrupted());
    let names = Names::of(rollout);
    let asg = names.asg.clone();
    progress.step(format!("reading {asg}"));
    let found = group(clients, &asg).await?;
    let target = match to {
        Some(v) => v,
        None => match previous(&found.history, found.version) {
            Some(v) => v,
            // No history (a group rolled out before bake kept one): the version numbered below.
            None if found.version > 1 => found.version - 1,
            None => {
                return Err(Error::NoPrevious {
                    asg,
                    template: found.template_name,
                    current: found.version,
                });
            }
        },
    };
    let Some((_, ami_id)) = version_of(clients, &found.template_id, &target.to_string()).await?
    else {
        return Err(Error::NoVersion {
            template: found.template_name,
            version: target,
            region: clients.region.clone(),
        });
    };
    let alb = &names.alb;
    let found_alb = stack::find_load_balancer(clients, alb).await?;
    let Some(alb_dns) = found_alb.and_then(|lb| lb.dns_name) else {
        return Err(Error::NoLoadBalancer {
            alb: alb.clone(),
            asg,
            region: clients.region.clone(),
        });
    };
    let health = config
        .image(rollout.image.get_ref())
        .map(|image| image.health.clone())
        .unwrap_or_default();
    let plan = Plan {
        rollout: name.to_owned(),
        image: rollout.image.get_ref().clone(),
        ami: Ami {
            id: ami_id.clone(),
            name: String::new(),
        },
        vpc_id: String::new(),
        alb_subnets: Vec::new(),
        instance_subnets: Vec::new(),
        instance_profile: None,
        health,
        names,
    };
    let stack = Stack {
        alb_dns,
        target_group_arn: found.target_group_arn.clone().unwrap_or_default(),
        launch_template_id: found.template_id.clone(),
        version: target,
        previous_version: Some(found.version.to_string()),
        group_created: false,
        auto_rollback: false,
        unchanged: target == found.version,
    };
    let url = traffic::probe_url(&stack.alb_dns, rollout, &plan);
    let mut result = RolledBack {
        rollout: name.to_owned(),
        asg: asg.clone(),
        launch_template: found.template_name.clone(),
        from: found.version,
        to: target,
        ami_id,
        changed: !stack.unchanged,
        url: url.clone(),
        region: clients.region.clone(),
        seconds: 0.0,
        probe: None,
    };
    if stack.unchanged {
        progress.finish(format!("{asg} already runs version {target}"));
        result.seconds = started.elapsed().as_secs_f64();
        return Ok(result);
    }
    let traffic = traffic::for_refresh(&stack, &plan, rollout);
    progress.step(format!(
        "rolling {asg} back from version {} to version {target} ({})",
        found.version, plan.ami.id
    ));
    let failed = |cause| Error::Refresh {
        cause,
        asg: asg.clone(),
        from: found.version,
        to: target,
    };
    let id = match refresh::start_to(
        clients,
        &plan,
        &stack,
        rollout,
        &target.to_string(),
        refresh::Kind::Restore,
    )
    .await
    {
        Ok(id) => id,
        Err(e) => return Err(probed(failed(e.into()), traffic).await),
    };
    let work = async {
        tokio::select! {
            watched = refresh::watch(clients, &plan, &stack, rollout, Some(&id), progress) => watched,
            tripped = traffic.tripped() => Err(refresh::Error::Traffic(tripped)),
        }
    };
    let outcome = tokio::select! {
        result = work => result.map_err(failed),
        code = &mut signal => Err(Error::Interrupted {
            signal: code.unwrap_or(130),
            asg: asg.clone(),
            refresh: id.clone(),
            to: target,
        }),
    };
    let mut traffic = traffic;
    if let Err(e) = outcome {
        return Err(probed(e, traffic).await);
    }
    // The requests sent during the refresh that are still in flight count too.
    if let Some(tripped) = traffic.settle().await {
        return Err(probed(failed(refresh::Error::Traffic(tripped)), traffic).await);
    }
    if let Err(e) = refresh::serving(&plan, &url, progress).await {
        return Err(probed(failed(e), traffic).await);
    }
    let report = traffic.stop().await;
    progress.step(report.to_string());
    record_served(clients, &asg, target).await?;
    progress.finish(format!(
        "{asg} runs version {target} ({}) again; serving {url}",
        result.ami_id
    ));
    result.probe = Some(report);
    result.seconds = started.elapsed().as_secs_f64();
    Ok(result)
}

async fn probed(error: Error, traffic: traffic::Traffic) -> Error {
    Error::Probed {
        error: Box::new(error),
        probe: traffic.stop().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_is_the_last_version_served_before_the_current_one() {
        assert_eq!(previous(&[1, 2, 4], 4), Some(2));
        assert_eq!(previous(&[1, 2, 4, 4], 4), Some(2));
        // Someone moved the group off the history: back to the last version bake saw serve.
        assert_eq!(previous(&[1, 2], 5), Some(2));
        assert_eq!(previous(&[3], 3), None);
        assert_eq!(previous(&[], 3), None);
    }

    #[test]
    fn serving_a_version_again_drops_what_came_after_it() {
        assert_eq!(served(vec![1, 2, 4], 2), vec![1, 2]);
        assert_eq!(served(vec![1, 2], 3), vec![1, 2, 3]);
        assert_eq!(served(vec![], 1), vec![1]);
        assert_eq!(parse_history(" 1,2,x,4"), vec![1, 2, 4]);
        let long: Vec<i64> = (1..=40).collect();
        let kept = format_history(&long);
        assert_eq!(kept.split(',').count(), HISTORY_MAX);
        assert!(kept.starts_with("25,") && kept.len() <= 256, "{kept}");
    }
}
