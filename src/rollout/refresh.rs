//! Rolling the new launch template version out: the instance refresh, watched through the group's
//! instances and their target health; the rollback; the last look through the load balancer.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_autoscaling::operation::describe_instance_refreshes::DescribeInstanceRefreshesError;
use aws_sdk_autoscaling::primitives::DateTime;
use aws_sdk_autoscaling::types::{
    AlarmSpecification, DesiredConfiguration, InstanceRefresh, InstanceRefreshStatus,
    LaunchTemplateSpecification, LifecycleState, RefreshPreferences, RefreshStrategy,
    ScalingActivityStatusCode,
};
use aws_sdk_elasticloadbalancingv2::types::TargetHealthStateEnum;
use tokio::time::Instant;

use super::preflight::Plan;
use super::stack::Stack;
use crate::aws::{self, CallError, Clients, Failed};
use crate::config::Rollout;
use crate::output::Progress;
use crate::poll::{self, Check, PollError, Schedule};
use crate::probe;

/// A refresh takes minutes (new instances boot, pass two health checks, warm up): a look every
/// 2 s, growing to 10 s, sees each step soon enough without a stream of calls.
const WATCH_SCHEDULE: Schedule = Schedule::every(Duration::from_secs(2))
    .first_after(Duration::from_secs(2))
    .dense_for(Duration::from_secs(120))
    .growing(1.2, Duration::from_secs(10));
/// A new load balancer's DNS name resolves within a few minutes; the targets are healthy already.
const SERVING_TIMEOUT: Duration = Duration::from_secs(300);
/// The newest scaling activities a look reads: a failed launch is among the newest few.
const ACTIVITIES_PER_LOOK: i32 = 20;
/// Why the new version did not take over.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "instance {instance_id} of launch template version {version} stayed unhealthy in target \
         group {target_group} past the warmup ({warmup:?}): {reason}"
    )]
    Unhealthy {
        instance_id: String,
        version: i64,
        target_group: String,
        warmup: Duration,
        reason: String,
    },
    #[error(
        "CloudWatch alarm {alarm} went to ALARM during the instance refresh of {asg}; EC2 Auto \
         Scaling {action}: {reason}"
    )]
    Alarm {
        asg: String,
        alarm: String,
        /// "rolled the refresh back" (AutoRollback) or "failed the refresh".
        action: &'static str,
        reason: String,
    },
    #[error("the traffic probe through the load balancer failed: {0}")]
    Traffic(super::traffic::Tripped),
    #[error("the instance refresh of {asg} ended {status}: {reason}")]
    Ended {
        asg: String,
        status: String,
        reason: String,
    },
    #[error("{asg} did not finish rolling out within {waited:?}; last: {last}")]
    TimedOut {
        asg: String,
        waited: Duration,
        last: String,
    },
    #[error(
        "{asg} cannot launch instances: {message} (scaling activity {activity}{details}); EC2 \
         Auto Scaling keeps retrying, so bake stopped waiting"
    )]
    LaunchFailed {
        asg: String,
        activity: String,
        message: String,
        details: String,
    },
    #[error("the load balancer did not serve {url} within {waited:?}; last answer: {last}")]
    NotServing {
        url: String,
        waited: Duration,
        last: String,
    },
    #[error(transparent)]
    Api(#[from] CallError),
}

/// Starts an instance refresh to the new version, with the config's preferences: healthy range,
/// checkpoints, bake time, and the stack's alarms as its AlarmSpecification. AWS rolls back on
/// its own if it fails or an alarm goes off, where AWS allows an automatic rollback (the group on
/// a numbered version whose image is an AMI id).
pub async fn start(
    clients: &Clients,
    plan: &Plan,
    stack: &Stack,
    rollout: &Rollout,
) -> Result<String, CallError> {
    start_to(
        clients,
        plan,
        stack,
        rollout,
        &stack.version.to_string(),
        Kind::Rollout {
            auto_rollback: stack.auto_rollback,
        },
    )
    .await
}

/// What a refresh is for.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A new version: every preference of the config, the alarms, AutoRollback where allowed.
    Rollout { auto_rollback: bool },
    /// Back to a version that served before: the healthy range only, no canary, no bake time, no
    /// alarms (the alarm that stopped the rollout may still be in ALARM) and no rollback.
    Restore,
}

/// The group's desired capacity and maximum size as they are now (the config's capacity when the
/// group cannot be read): what the default max healthy percentage depends on.
async fn group_size(clients: &Clients, plan: &Plan, rollout: &Rollout) -> (u32, u32) {
    let asg = &plan.names.asg;
    let request = clients
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(asg);
    let capacity = rollout.capacity.get_ref();
    let fallback = (capacity.desired, capacity.max);
    match clients.call(|| request.clone().send()).answer().await {
        Ok(out) => out
            .auto_scaling_groups()
            .first()
            .and_then(|g| {
                let desired = u32::try_from(g.desired_capacity()?).ok()?;
                let max = u32::try_from(g.max_size()?).ok()?;
                Some((desired, max))
            })
            .unwrap_or(fallback),
        Err(_) => fallback,
    }
}

/// The stack's refresh alarms (target 5xx, target response time) that exist: StartInstanceRefresh
/// refuses an AlarmSpecification naming an alarm that does not. A missing one (deleted since the
/// stack made it) is named in a note and left out, so the refresh still runs, watched by the rest.
async fn existing_alarms(clients: &Clients, plan: &Plan) -> Result<Vec<String>, CallError> {
    let wanted = [&plan.names.alarm_errors, &plan.names.alarm_latency];
    let held = super::stack::held_alarms(clients, plan).await?;
    for name in wanted.iter().filter(|n| !held.contains_key(n.as_str())) {
        crate::output::note(&format!(
            "{}: CloudWatch alarm {name} does not exist in {}; the refresh is not rolled back on \
             it (`bake rollout` creates it with the stack)",
            plan.names.asg, clients.region
        ));
    }
    Ok(wanted
        .into_iter()
        .filter(|n| held.contains_key(n.as_str()))
        .cloned()
        .collect())
}

/// The preferences of a refresh of `kind`; `alarms` become its AlarmSpecification (a rollout's
/// only).
pub fn preferences(
    rollout: &Rollout,
    (desired, max): (u32, u32),
    kind: Kind,
    alarms: Vec<String>,
) -> RefreshPreferences {
    let refresh = rollout.refresh.get_ref();
    let (min_healthy, max_healthy) = refresh.healthy_range(desired, max);
    let prefs = RefreshPreferences::builder()
        .min_healthy_percentage(min_healthy.into())
        .max_healthy_percentage(max_healthy.into())
        .instance_warmup(i32::try_from(refresh.warmup.0.as_secs()).unwrap_or(i32::MAX))
        .skip_matching(true);
    let secs = |d: Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
    match kind {
        Kind::Restore => prefs.auto_rollback(false).build(),
        Kind::Rollout { auto_rollback } => {
            let mut prefs = prefs.auto_rollback(auto_rollback);
            if !alarms.is_empty() {
                prefs = prefs.alarm_specification(
                    AlarmSpecification::builder()
                        .set_alarms(Some(alarms))
                        .build(),
                );
            }
            if !refresh.checkpoints.is_empty() {
                prefs = prefs.set_checkpoint_percentages(Some(
                    refresh.checkpoints.iter().map(|p| i32::from(*p)).collect(),
                ));
                if let Some(delay) = refresh.checkpoint_delay {
                    prefs = prefs.checkpoint_delay(secs(delay.0));
                }
            }
            if let Some(bake_time) = refresh.bake_time {
                prefs = prefs.bake_time(secs(bake_time.0));
            }
            prefs.build()
        }
    }
}

/// Starts an instance refresh of the group to `version` of the stack's launch template.
pub async fn start_to(
    clients: &Clients,
    plan: &Plan,
    stack: &Stack,
    rollout: &Rollout,
    version: &str,
    kind: Kind,
) -> Result<String, CallError> {
    let size = group_size(clients, plan, rollout).await;
    let alarms = match kind {
        Kind::Rollout { .. } => existing_alarms(clients, plan).await?,
        Kind::Restore => Vec::new(),
    };
    let request = clients
        .autoscaling
        .start_instance_refresh()
        .auto_scaling_group_name(&plan.names.asg)
        .strategy(RefreshStrategy::Rolling)
        .desired_configuration(
            DesiredConfiguration::builder()
                .launch_template(
                    LaunchTemplateSpecification::builder()
                        .launch_template_id(&stack.launch_template_id)
                        .version(version)
                        .build(),
                )
                .build(),
        )
        .preferences(preferences(rollout, size, kind, alarms));
    let asg = &plan.names.asg;
    let out = clients
        .call(|| request.clone().send())
        .or_fail(|| format!("start an instance refresh of {asg} to version {version}"))
        .await?;
    Ok(out.instance_refresh_id().unwrap_or_default().to_owned())
}

/// One look at the group: the refresh's status, its instances and their target health, and the
/// newest failed launch since the refresh (or the group) began.
struct Look {
    refresh: Option<(InstanceRefreshStatus, i32, String)>,
    /// Instance id → (launch template version, lifecycle state).
    instances: Vec<(String, Option<String>, Option<LifecycleState>)>,
    /// Target id → (state, reason and description).
    health: HashMap<String, (TargetHealthStateEnum, String)>,
    /// A failed scaling activity: (activity id, AWS's status message, its details).
    failed_launch: Option<(String, String, String)>,
}

/// A look that did not complete: `transient` when AWS said "not now" (throttling, 5xx, a timeout),
/// which a wait rides out; anything else ends it.
struct LookError {
    message: String,
    transient: bool,
}

impl<E> From<Failed<E>> for LookError
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn from(failed: Failed<E>) -> Self {
        LookError {
            message: failed.describe(),
            transient: failed.transient(),
        }
    }
}

async fn look(
    clients: &Clients,
    plan: &Plan,
    stack: &Stack,
    refresh_id: Option<&str>,
) -> Result<Look, LookError> {
    let asg = &plan.names.asg;
    let mut since: Option<DateTime> = None;
    let refresh = match refresh_id {
        // A look is asked again by its wait: no settling here.
        Some(id) => describe_refresh(clients, asg, id, None).await?.map(|r| {
            since = r.start_time().copied();
            (
                r.status()
                    .cloned()
                    .unwrap_or(InstanceRefreshStatus::Pending),
                r.percentage_complete().unwrap_or(0),
                reason(&r),
            )
        }),
        None => None,
    };
    let groups = clients
        .call(|| {
            clients
                .autoscaling
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(asg)
                .send()
        })
        .answer()
        .await?;
    let group = groups.auto_scaling_groups().first();
    if refresh_id.is_none() {
        since = group.and_then(|g| g.created_time()).copied();
    }
    let instances = group
        .map(|g| {
            g.instances()
                .iter()
                .map(|i| {
                    (
                        i.instance_id().unwrap_or_default().to_owned(),
                        i.launch_template()
                            .and_then(|t| t.version())
                            .map(str::to_owned),
                        i.lifecycle_state().cloned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let targets = clients
        .call(|| {
            clients
                .elb
                .describe_target_health()
                .target_group_arn(&stack.target_group_arn)
                .send()
        })
        .answer()
        .await?;
    let health = targets
        .target_health_descriptions()
        .iter()
        .filter_map(|d| {
            let id = d.target()?.id()?.to_owned();
            let h = d.target_health()?;
            let reason = match (h.reason(), h.description()) {
                (Some(r), Some(d)) => format!("{} ({d})", r.as_str()),
                (Some(r), None) => r.as_str().to_owned(),
                (None, Some(d)) => d.to_owned(),
                (None, None) => String::new(),
            };
            Some((id, (h.state()?.clone(), reason)))
        })
        .collect();
    let activities = clients
        .call(|| {
            clients
                .autoscaling
                .describe_scaling_activities()
                .auto_scaling_group_name(asg)
                .max_records(ACTIVITIES_PER_LOOK)
                .send()
        })
        .answer()
        .await?;
    let failed_launch = activities
        .activities()
        .iter()
        .filter(|a| a.status_code() == Some(&ScalingActivityStatusCode::Failed))
        .find(|a| match (since, a.start_time()) {
            // Activity times are whole seconds on some answers: a second's slack.
            (Some(since), Some(at)) => at.secs() + 1 >= since.secs(),
            _ => true,
        })
        .map(|a| {
            (
                a.activity_id().unwrap_or_default().to_owned(),
                a.status_message()
                    .or(a.description())
                    .unwrap_or("no status message")
                    .to_owned(),
                a.details()
                    .filter(|d| !d.is_empty() && *d != "{}")
                    .map(|d| format!(", {d}"))
                    .unwrap_or_default(),
            )
        });
    Ok(Look {
        refresh,
        instances,
        health,
        failed_launch,
    })
}

/// A refresh's StatusReason, with RollbackDetails' RollbackReason when that says more.
fn reason(r: &aws_sdk_autoscaling::types::InstanceRefresh) -> String {
    let status = r.status_reason().unwrap_or_default();
    match r.rollback_details().and_then(|d| d.rollback_reason()) {
        Some(rollback) if !rollback.is_empty() && !status.contains(rollback) => {
            if status.is_empty() {
                rollback.to_owned()
            } else {
                format!("{status} (rollback: {rollback})")
            }
        }
        _ => status.to_owned(),
    }
}

/// The refresh's end as an error: an alarm's when its reason names one of the stack's alarms
/// (the refresh's AlarmSpecification), else as it ended.
fn ended(plan: &Plan, status: &InstanceRefreshStatus, reason: String) -> Error {
    use InstanceRefreshStatus as S;
    let names = [&plan.names.alarm_errors, &plan.names.alarm_latency];
    let alarm = match names.iter().find(|name| reason.contains(name.as_str())) {
        Some(name) => Some((*name).clone()),
        // A reason about an alarm that names none: one of the refresh's alarms.
        None if reason.to_lowercase().contains("alarm") => {
            Some(format!("{} or {}", names[0], names[1]))
        }
        None => None,
    };
    match (alarm, status) {
        (Some(alarm), S::RollbackInProgress | S::RollbackSuccessful | S::RollbackFailed) => {
            Error::Alarm {
                asg: plan.names.asg.clone(),
                alarm,
                action: "rolled the refresh back",
                reason,
            }
        }
        (Some(alarm), S::Failed | S::Cancelling | S::Cancelled) => Error::Alarm {
            asg: plan.names.asg.clone(),
            alarm,
            action: "failed the refresh",
            reason,
        },
        _ => Error::Ended {
            asg: plan.names.asg.clone(),
            status: status.as_str().to_owned(),
            reason,
        },
    }
}

/// Waits until the group runs `desired` healthy instances of the new version: through the
/// refresh when there is one, else (a new group) until its first instances are healthy. A failed
/// launch ends the wait at once with AWS's reason; throttling and 5xx answers are looked at again.
pub async fn watch(
    clients: &Clients,
    plan: &Plan,
    stack: &Stack,
    rollout: &Rollout,
    refresh_id: Option<&str>,
    progress: &Progress,
) -> Result<(), Error> {
    let settings = rollout.refresh.get_ref();
    let warmup = settings.warmup.0;
    let started = Instant::now();
    let version = stack.version.to_string();
    let first_seen = std::sync::Mutex::new(HashMap::<String, Instant>::new());
    // The version as a whole: when its first instance was seen, and the last instance of it seen
    // unhealthy. An unhealthy instance the group replaces at once (its health check grace period
    // over) is never seen unhealthy for a whole warmup, but its version is.
    let version_seen = std::sync::Mutex::new(None::<(Instant, Option<(String, String)>)>);
    let step = match refresh_id {
        Some(id) => format!("instance refresh {id} to version {version}"),
        None => format!("first instances of {} (version {version})", plan.names.asg),
    };
    progress.step(step.clone());
    let result = poll::until(
        &step,
        poll::deadline_after(started, settings.timeout.0),
        WATCH_SCHEDULE,
        |seen| progress.detail(&step, seen),
        || async {
            let look = match look(clients, plan, stack, refresh_id).await {
                Ok(look) => look,
                Err(e) if e.transient => {
                    return Check::Pending(format!("AWS answered {}; looking again", e.message));
                }
                Err(e) => {
                    return Check::Failed(Error::Api(clients.failed(
                        format!("watch the rollout of {}", plan.names.asg),
                        e.message,
                    )));
                }
            };
            if let Some((activity, message, details)) = look.failed_launch {
                return Check::Failed(Error::LaunchFailed {
                    asg: plan.names.asg.clone(),
                    activity,
                    message,
                    details,
                });
            }
            let new: Vec<&(String, Option<String>, Option<LifecycleState>)> = look
                .instances
                .iter()
                .filter(|(_, v, _)| v.as_deref() == Some(version.as_str()))
                .collect();
            let mut healthy = 0;
            let mut seen = first_seen.lock().expect("not poisoned");
            for (id, _, state) in &new {
                let since = *seen.entry(id.clone()).or_insert_with(Instant::now);
                match look.health.get(id) {
                    Some((TargetHealthStateEnum::Healthy, _))
                        if state == &Some(LifecycleState::InService) =>
                    {
                        healthy += 1
                    }
                    Some((
                        TargetHealthStateEnum::Unhealthy | TargetHealthStateEnum::Unused,
                        reason,
                    )) => {
                        if since.elapsed() > warmup {
                            return Check::Failed(Error::Unhealthy {
                                instance_id: id.clone(),
                                version: stack.version,
                                target_group: plan.names.target_group.clone(),
                                warmup,
                                reason: reason.clone(),
                            });
                        }
                        let mut v = version_seen.lock().expect("not poisoned");
                        let entry = v.get_or_insert((Instant::now(), None));
                        entry.1 = Some((id.clone(), reason.clone()));
                    }
                    _ => {}
                }
            }
            if !new.is_empty() {
                version_seen
                    .lock()
                    .expect("not poisoned")
                    .get_or_insert((Instant::now(), None));
            }
            // No instance of the version healthy a warmup after its first one, and one of them
            // seen unhealthy: the version does not serve.
            if healthy == 0
                && let Some((since, Some((instance_id, reason)))) =
                    version_seen.lock().expect("not poisoned").clone()
                && since.elapsed() > warmup
            {
                return Check::Failed(Error::Unhealthy {
                    instance_id,
                    version: stack.version,
                    target_group: plan.names.target_group.clone(),
                    warmup,
                    reason,
                });
            }
            let desired = rollout.capacity.get_ref().desired as usize;
            let counts = format!(
                "{healthy} of {} instances of version {version} healthy, {} in the group",
                new.len(),
                look.instances.len()
            );
            match look.refresh {
                Some((InstanceRefreshStatus::Successful, _, _)) => Check::Ready(()),
                Some((
                    status @ (InstanceRefreshStatus::Failed
                    | InstanceRefreshStatus::Cancelled
                    | InstanceRefreshStatus::Cancelling
                    | InstanceRefreshStatus::RollbackInProgress
                    | InstanceRefreshStatus::RollbackFailed
                    | InstanceRefreshStatus::RollbackSuccessful),
                    _,
                    reason,
                )) => Check::Failed(ended(plan, &status, reason)),
                // Paused at a checkpoint, or baking: AWS says which in the reason.
                Some((status, percent, reason)) if !reason.is_empty() => Check::Pending(format!(
                    "{} {percent}% ({reason}): {counts}",
                    status.as_str()
                )),
                Some((status, percent, _)) => {
                    Check::Pending(format!("{} {percent}%: {counts}", status.as_str()))
                }
                None if refresh_id.is_none() && healthy >= desired.max(1) => Check::Ready(()),
                None => Check::Pending(counts),
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(e)) => Err(e),
        Err(PollError::TimedOut { last }) => Err(Error::TimedOut {
            asg: plan.names.asg.clone(),
            waited: started.elapsed(),
            last,
        }),
    }
}

/// Puts the group back on the version it ran before. Only an active refresh can be rolled back
/// (RollbackInstanceRefresh answers ActiveInstanceRefreshNotFound otherwise), and only where AWS
/// supports a rollback at all; in every other case bake cancels what is still running and starts
/// a new refresh to the previous version itself. Waits until the group is back.
pub async fn rollback(
    clients: &Clients,
    plan: &Plan,
    stack: &Stack,
    rollout: &Rollout,
    refresh_id: &str,
    progress: &Progress,
) -> Result<(), Error> {
    let asg = &plan.names.asg;
    let Some(to) = stack.previous_version.as_deref() else {
        return Err(Error::Api(clients.failed(
            format!("roll back {asg}"),
            "the version it ran before is unknown",
        )));
    };
    let status = refresh_status(clients, plan, refresh_id).await?;
    let step = format!("rolling {asg} back to version {to}");
    progress.step(step.clone());
    use InstanceRefreshStatus as S;
    let rolling_back = match status {
        Some(S::RollbackInProgress | S::RollbackSuccessful | S::RollbackFailed) => true,
        Some(S::Pending | S::InProgress) if stack.auto_rollback => {
            let rollback = || {
                clients
                    .autoscaling
                    .rollback_instance_refresh()
                    .auto_scaling_group_name(asg)
                    .send()
            };
            match clients.call(rollback).answer().await {
                Ok(_) => true,
                // It ended between the look and the call: restore by a new refresh.
                Err(e) if e.is(&["ActiveInstanceRefreshNotFound"]) => false,
                Err(e) => return Err(e.or_fail(|| format!("roll back {asg}")).into()),
            }
        }
        Some(S::Pending | S::InProgress | S::Cancelling) => {
            cancel(clients, plan, stack, rollout, refresh_id, &step, progress).await?;
            false
        }
        _ => false,
    };
    if rolling_back {
        return wait_refresh(
            clients,
            plan,
            stack,
            rollout,
            refresh_id,
            S::RollbackSuccessful,
            &step,
            progress,
        )
        .await;
    }
    let restore = start_to(clients, plan, stack, rollout, to, Kind::Restore).await?;
    wait_refresh(
        clients,
        plan,
        stack,
        rollout,
        &restore,
        S::Successful,
        &step,
        progress,
    )
    .await
}

/// Refresh `id` of group `asg` as DescribeInstanceRefreshes answers (none: AWS lists no such
/// refresh), asked again through `settle` when one is given.
async fn describe_refresh(
    clients: &Clients,
    asg: &str,
    id: &str,
    settle: Option<&aws::Settle>,
) -> Result<Option<InstanceRefresh>, Failed<DescribeInstanceRefreshesError>> {
    let request = clients
        .autoscaling
        .describe_instance_refreshes()
        .auto_scaling_group_name(asg)
        .instance_refresh_ids(id);
    let call = clients.call(|| request.clone().send());
    let call = match settle {
        Some(window) => call.settle(window),
        None => call,
    };
    Ok(call
        .answer()
        .await?
        .instance_refreshes
        .unwrap_or_default()
        .into_iter()
        .next())
}

/// The refresh's status; it exists, so only throttling and 5xx answers are asked again.
async fn refresh_status(
    clients: &Clients,
    plan: &Plan,
    refresh_id: &str,
) -> Result<Option<InstanceRefreshStatus>, Error> {
    let asg = &plan.names.asg;
    let found = describe_refresh(clients, asg, refresh_id, Some(&aws::THROTTLE_BURST))
        .await
        .map_err(|e| e.or_fail(|| format!("describe the refresh of {asg}")))?;
    Ok(found.and_then(|r| r.status))
}

/// Cancels a refresh bake cannot roll back and waits until it has stopped.
async fn cancel(
    clients: &Clients,
    plan: &Plan,
    stack: &Stack,
    rollout: &Rollout,
    refresh_id: &str,
    step: &str,
    progress: &Progress,
) -> Result<(), Error> {
    let asg = &plan.names.asg;
    let cancel = || {
        clients
            .autoscaling
            .cancel_instance_refresh()
            .auto_scaling_group_name(asg)
            .send()
    };
    match clients.call(cancel).answer().await {
        Ok(_) => {}
        Err(e) if e.is(&["ActiveInstanceRefreshNotFound"]) => return Ok(()),
        Err(e) => return Err(e.or_fail(|| format!("cancel the refresh of {asg}")).into()),
    }
    wait_refresh(
        clients,
        plan,
        stack,
        rollout,
        refresh_id,
        InstanceRefreshStatus::Cancelled,
        step,
        progress,
    )
    .await
}

/// Waits until refresh `refresh_id` reaches `wanted`; any other end is an error.
#[allow(clippy::too_many_arguments)]
async fn wait_refresh(
    clients: &Clients,
    plan: &Plan,
    stack: &Stack,
    rollout: &Rollout,
    refresh_id: &str,
    wanted: InstanceRefreshStatus,
    step: &str,
    progress: &Progress,
) -> Result<(), Error> {
    let asg = &plan.names.asg;
    let started = Instant::now();
    let result = poll::until(
        step,
        poll::deadline_after(started, rollout.refresh.get_ref().timeout.0),
        WATCH_SCHEDULE,
        |seen| progress.detail(step, seen),
        || async {
            use InstanceRefreshStatus as S;
            match look(clients, plan, stack, Some(refresh_id)).await {
                Err(e) if e.transient => {
                    Check::Pending(format!("AWS answered {}; looking again", e.message))
                }
                Err(e) => Check::Failed(Error::Api(
                    clients.failed(format!("watch the refresh of {asg}"), e.message),
                )),
                Ok(Look {
                    refresh: Some((status, _, _)),
                    ..
                }) if status == wanted => Check::Ready(()),
                Ok(Look {
                    refresh: Some((status, _, reason)),
                    ..
                }) if matches!(
                    status,
                    S::Successful
                        | S::Failed
                        | S::Cancelled
                        | S::RollbackFailed
                        | S::RollbackSuccessful
                ) =>
                {
                    Check::Failed(Error::Ended {
                        asg: asg.clone(),
                        status: status.as_str().to_owned(),
                        reason,
                    })
                }
                Ok(look) => Check::Pending(match look.refresh {
                    Some((status, percent, _)) => format!("{} {percent}%", status.as_str()),
                    None => "no refresh".into(),
                }),
            }
        },
    )
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(PollError::Failed(e)) => Err(e),
        Err(PollError::TimedOut { last }) => Err(Error::TimedOut {
            asg: asg.clone(),
            waited: started.elapsed(),
            last,
        }),
    }
}

/// The last look: the page through the load balancer, as a visitor gets it.
pub async fn serving(plan: &Plan, url: &str, progress: &Progress) -> Result<(), Error> {
    let step = format!("checking {url} through the load balancer");
    let deadline = poll::deadline(SERVING_TIMEOUT);
    let every_second = Schedule::every(Duration::from_secs(1));
    probe::until_healthy(url, &plan.health, deadline, every_second, &step, progress)
        .await
        .map_err(|e| Error::NotServing {
            url: url.to_owned(),
            waited: e.waited,
            last: e.last,
        })
}
