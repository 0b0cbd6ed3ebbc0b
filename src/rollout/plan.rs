//! `bake rollout NAME --plan`: what a rollout would create, change or replace, found with read
//! calls only (Describe*, Get*, List*): nothing is created, changed or tagged.

use std::collections::BTreeMap;

use serde::Serialize;

use super::preflight::Plan;
use super::stack::{self, AlarmSpec, CPU_POLICY};
use crate::aws::{CallError, Clients};
use crate::config::Rollout;

/// What a rollout would do.
#[derive(Debug, Clone, Serialize)]
pub struct Planned {
    pub rollout: String,
    pub region: String,
    pub ami_id: String,
    pub ami_name: String,
    /// Stack resources that do not exist yet ("security group Web-ALB-SG").
    pub create: Vec<String>,
    /// Existing resources whose settings would change, each with what changes.
    pub change: Vec<String>,
    /// The launch template version that would be added, with the AMI it replaces.
    pub launch_template_version: Option<NewVersion>,
    /// The group's instances an instance refresh would replace.
    pub replace: Vec<String>,
    /// The published AMI id that would change when the rollout is published.
    pub publish: Option<Published>,
}

/// A new launch template version.
#[derive(Debug, Clone, Serialize)]
pub struct NewVersion {
    pub launch_template: String,
    /// None when the template itself is new.
    pub from_ami: Option<String>,
    pub to_ami: String,
}

/// The SSM parameter holding the image's AMI id.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub parameter: String,
    /// None when the parameter does not exist.
    pub from: Option<String>,
    pub to: String,
}

impl Planned {
    /// Whether the rollout would do nothing.
    pub fn is_empty(&self) -> bool {
        self.create.is_empty()
            && self.change.is_empty()
            && self.launch_template_version.is_none()
            && self.replace.is_empty()
            && self.publish.is_none()
    }
}

impl std::fmt::Display for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "rollout {} of {} ({}) in {}:",
            self.rollout, self.ami_id, self.ami_name, self.region
        )?;
        if self.is_empty() {
            return writeln!(f, "nothing to do");
        }
        for what in &self.create {
            writeln!(f, "create {what}")?;
        }
        for what in &self.change {
            writeln!(f, "change {what}")?;
        }
        if let Some(v) = &self.launch_template_version {
            match &v.from_ami {
                Some(from) => writeln!(
                    f,
                    "add launch template {} version: {from} -> {}",
                    v.launch_template, v.to_ami
                )?,
                None => writeln!(
                    f,
                    "add launch template {} version 1: {}",
                    v.launch_template, v.to_ami
                )?,
            }
        }
        if !self.replace.is_empty() {
            writeln!(
                f,
                "replace {} instance{}: {}",
                self.replace.len(),
                if self.replace.len() == 1 { "" } else { "s" },
                self.replace.join(", ")
            )?;
        }
        if let Some(p) = &self.publish {
            writeln!(
                f,
                "publish {}: {} -> {}",
                p.parameter,
                p.from.as_deref().unwrap_or("(none)"),
                p.to
            )?;
        }
        Ok(())
    }
}

/// What rolling out `[rollout.NAME]` would do, from what its preflight resolved (`plan`), with
/// `parameter` the published AMI id's name.
pub async fn plan(
    clients: &Clients,
    plan: &Plan,
    rollout: &Rollout,
    parameter: &str,
) -> Result<Planned, CallError> {
    let mut out = Planned {
        rollout: plan.rollout.clone(),
        region: clients.region.clone(),
        ami_id: plan.ami.id.clone(),
        ami_name: plan.ami.name.clone(),
        create: Vec::new(),
        change: Vec::new(),
        launch_template_version: None,
        replace: Vec::new(),
        publish: None,
    };
    security_group(
        clients,
        plan,
        &plan.names.alb_security_group,
        rollout.alb_port,
        Some(rollout.alb_allow_cidr.get_ref()),
        &mut out,
    )
    .await?;
    security_group(
        clients,
        plan,
        &plan.names.instance_security_group,
        plan.health.port,
        None,
        &mut out,
    )
    .await?;
    let tg_arn = target_group(clients, plan, &mut out).await?;
    let alb_arn = load_balancer(clients, plan, rollout.alb_port, &mut out).await?;
    group(clients, plan, rollout, tg_arn.as_deref(), &mut out).await?;
    alarms(
        clients,
        plan,
        rollout,
        tg_arn.as_deref(),
        alb_arn.as_deref(),
        &mut out,
    )
    .await?;
    out.publish = published(clients, parameter, &plan.ami.id).await?;
    Ok(out)
}

/// A security group: missing, or missing its one rule (`cidr`, or any group as the source).
async fn security_group(
    clients: &Clients,
    plan: &Plan,
    name: &str,
    port: u16,
    cidr: Option<&str>,
    out: &mut Planned,
) -> Result<Option<String>, CallError> {
    let Some(group) = stack::find_security_group(clients, &plan.vpc_id, name).await? else {
        out.create.push(format!("security group {name}"));
        return Ok(None);
    };
    let open = group.ip_permissions().iter().any(|p| {
        p.from_port() == Some(port.into())
            && p.to_port() == Some(port.into())
            && match cidr {
                Some(cidr) => p.ip_ranges().iter().any(|r| r.cidr_ip() == Some(cidr)),
                None => !p.user_id_group_pairs().is_empty(),
            }
    });
    if !open {
        out.change
            .push(format!("security group {name}: open port {port}"));
    }
    Ok(group.group_id().map(str::to_owned))
}

/// The target group: missing, or with another health check.
async fn target_group(
    clients: &Clients,
    plan: &Plan,
    out: &mut Planned,
) -> Result<Option<String>, CallError> {
    let name = &plan.names.target_group;
    let Some(group) = stack::find_target_group(clients, name).await? else {
        out.create.push(format!("target group {name}"));
        return Ok(None);
    };
    let health = &plan.health;
    let mut diff = Vec::new();
    if group.health_check_path() != Some(health.path.get_ref().as_str()) {
        diff.push(format!(
            "health check path {} -> {}",
            group.health_check_path().unwrap_or("-"),
            health.path.get_ref()
        ));
    }
    // "traffic-port" (the default) is the target group's own port.
    let checked_port = match group.health_check_port() {
        Some("traffic-port") | None => group.port().map(|p| p.to_string()),
        Some(port) => Some(port.to_owned()),
    };
    if checked_port.as_deref() != Some(health.port.to_string().as_str()) {
        diff.push(format!(
            "health check port {} -> {}",
            group.health_check_port().unwrap_or("-"),
            health.port
        ));
    }
    let status = health.expect_status.to_string();
    if group.matcher().and_then(|m| m.http_code()) != Some(status.as_str()) {
        diff.push(format!("expected status -> {status}"));
    }
    if !diff.is_empty() {
        out.change
            .push(format!("target group {name}: {}", diff.join(", ")));
    }
    Ok(group.target_group_arn().map(str::to_owned))
}

/// The load balancer and its listener.
async fn load_balancer(
    clients: &Clients,
    plan: &Plan,
    port: u16,
    out: &mut Planned,
) -> Result<Option<String>, CallError> {
    let name = &plan.names.alb;
    let found = stack::find_load_balancer(clients, name).await?;
    let Some(arn) = found.and_then(|lb| lb.load_balancer_arn) else {
        out.create.push(format!("load balancer {name}"));
        out.create.push(format!("listener HTTP:{port} on {name}"));
        return Ok(None);
    };
    if !stack::has_listener(clients, name, &arn, port).await? {
        out.create.push(format!("listener HTTP:{port} on {name}"));
    }
    Ok(Some(arn))
}

/// The launch template version, the group, its instances, metrics and scaling policy.
async fn group(
    clients: &Clients,
    plan: &Plan,
    rollout: &Rollout,
    tg_arn: Option<&str>,
    out: &mut Planned,
) -> Result<(), CallError> {
    let asg = &plan.names.asg;
    let template = &plan.names.launch_template;
    let found = stack::describe_group(clients, asg).await?;
    if stack::find_launch_template(clients, template)
        .await?
        .is_none()
    {
        out.create.push(format!("launch template {template}"));
    }
    let capacity = rollout.capacity.get_ref();
    let Some(group) = found else {
        out.create.push(format!(
            "Auto Scaling group {asg} (min {} desired {} max {}, metrics collected)",
            capacity.min, capacity.desired, capacity.max
        ));
        if let Some(cpu) = &rollout.cpu_target {
            out.create.push(format!(
                "scaling policy {CPU_POLICY} on {asg} (average CPU {}%)",
                cpu.get_ref()
            ));
        }
        out.launch_template_version = Some(NewVersion {
            launch_template: template.clone(),
            from_ami: None,
            to_ami: plan.ami.id.clone(),
        });
        return Ok(());
    };
    // The AMI of the version the group runs.
    let running_ami = stack::group_version(clients, &group)
        .await?
        .and_then(|v| v.launch_template_data?.image_id);
    if running_ami.as_deref() != Some(plan.ami.id.as_str()) {
        out.launch_template_version = Some(NewVersion {
            launch_template: template.clone(),
            from_ami: running_ami,
            to_ami: plan.ami.id.clone(),
        });
        out.replace = stack::instance_ids(&group);
    }
    let mut diff = Vec::new();
    if group.min_size() != Some(capacity.min as i32)
        || group.max_size() != Some(capacity.max as i32)
    {
        diff.push(format!(
            "min/max {}/{} -> {}/{}",
            group.min_size().unwrap_or_default(),
            group.max_size().unwrap_or_default(),
            capacity.min,
            capacity.max
        ));
    }
    let subnets: std::collections::BTreeSet<&str> = plan
        .instance_subnets
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    let held: std::collections::BTreeSet<&str> = group
        .vpc_zone_identifier()
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .collect();
    if subnets != held {
        diff.push("subnets".to_owned());
    }
    if group.health_check_type() != Some("ELB") {
        diff.push("health check type -> ELB".to_owned());
    }
    let grace = i32::try_from(rollout.refresh.get_ref().warmup.0.as_secs()).unwrap_or(i32::MAX);
    if group.health_check_grace_period() != Some(grace) {
        diff.push(format!(
            "health check grace period {} s -> {grace} s",
            group.health_check_grace_period().unwrap_or_default()
        ));
    }
    if tg_arn.is_none_or(|arn| !group.target_group_arns().iter().any(|a| a == arn)) {
        diff.push(format!("attach target group {}", plan.names.target_group));
    }
    if !stack::metrics_collected(&group) {
        diff.push("enable metrics collection".to_owned());
    }
    if group
        .launch_template()
        .and_then(|s| s.version())
        .is_some_and(|v| v.parse::<i64>().is_err())
    {
        diff.push("pin the launch template version to a number".to_owned());
    }
    if !diff.is_empty() {
        out.change
            .push(format!("Auto Scaling group {asg}: {}", diff.join(", ")));
    }
    if let Some(cpu) = &rollout.cpu_target {
        match stack::cpu_target(clients, asg).await? {
            None => out.create.push(format!(
                "scaling policy {CPU_POLICY} on {asg} (average CPU {}%)",
                cpu.get_ref()
            )),
            Some(t) if t != *cpu.get_ref() => out.change.push(format!(
                "scaling policy {CPU_POLICY}: average CPU {t}% -> {}%",
                cpu.get_ref()
            )),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The alarms: missing, different from the config, or (the CPU alarm) no longer in it.
async fn alarms(
    clients: &Clients,
    plan: &Plan,
    rollout: &Rollout,
    tg_arn: Option<&str>,
    alb_arn: Option<&str>,
    out: &mut Planned,
) -> Result<(), CallError> {
    let held = stack::held_alarms(clients, plan).await?;
    // A load balancer or target group still to be made has no ARN yet: its alarms' dimensions
    // are compared once it exists.
    let specs: Vec<AlarmSpec> =
        stack::alarm_specs(plan, rollout, tg_arn.unwrap_or(""), alb_arn.unwrap_or(""));
    let known_dims = tg_arn.is_some() && alb_arn.is_some();
    let by_name: BTreeMap<&str, &AlarmSpec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();
    for spec in &specs {
        match held.get(&spec.name) {
            None => out.create.push(format!(
                "CloudWatch alarm {} ({} {} >= {})",
                spec.name, spec.namespace, spec.metric, spec.threshold
            )),
            Some(alarm) => {
                let mut diff = spec.differences(alarm);
                if !known_dims {
                    diff.retain(|d| d != "dimensions");
                }
                if !diff.is_empty() {
                    out.change.push(format!(
                        "CloudWatch alarm {}: {}",
                        spec.name,
                        diff.join(", ")
                    ));
                }
            }
        }
    }
    for name in held.keys() {
        if !by_name.contains_key(name.as_str()) {
            out.change.push(format!(
                "CloudWatch alarm {name}: delete (no rollout.cpu_alarm in the config)"
            ));
        }
    }
    Ok(())
}

/// The published AMI id, when one is published and would change (a pipeline publishes the
/// AMI it rolled out; a parameter nobody published is not reported).
async fn published(
    clients: &Clients,
    parameter: &str,
    ami: &str,
) -> Result<Option<Published>, CallError> {
    let current = clients
        .call(|| clients.ssm.get_parameter().name(parameter).send())
        .or_none(&["ParameterNotFound"], || format!("read {parameter}"))
        .await?
        .and_then(|o| o.parameter?.value);
    Ok(current.filter(|c| c != ami).map(|from| Published {
        parameter: parameter.to_owned(),
        from: Some(from),
        to: ami.to_owned(),
    }))
}
