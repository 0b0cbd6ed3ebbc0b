//! `bake status`: the fleet at a glance. Per image its newest AMI (age, test verdict, deprecation)
//! and whether its inputs changed since; per rollout and region the group's pinned launch
//! template version and AMI, the instances running another AMI, a newer tested AMI waiting, and
//! the published parameter's value.

use std::time::{Duration, SystemTime};

use aws_sdk_ec2::types::Image;
use serde::Serialize;

use super::{Context, Outcome};
use crate::Error;
use crate::ami::{image, preflight};
use crate::aws::{CallError, Clients};
use crate::config::Config;
use crate::records::{self, Since};
use crate::render::Renderer;
use crate::rollout::stack;
use crate::{publish, tags};

/// A few describe calls per image and per rollout region, with the SDK's retries.
const STATUS_WORST_CASE: Duration = Duration::from_secs(10 * 60);
/// DescribeInstances takes this many instance ids per call (AWS documents no maximum for
/// InstanceIds; 200 keeps a request small).
const INSTANCES_PER_CALL: usize = 200;

/// Show each image's newest AMI (its age, test verdict, deprecation) and whether its inputs
/// changed since; and each rollout's group: the launch template version and AMI it is pinned
/// to, how many instances run another AMI, whether a newer tested AMI is waiting, and the AMI
/// published in SSM. Reads only; changes nothing.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Where `bake pipeline` publishes (PREFIX/IMAGE/ami-id).
    #[arg(long, default_value = "/bake")]
    pub publish_prefix: String,
}

/// The fleet: every image of the config, every rollout in each of its regions.
#[derive(Debug, Serialize)]
pub struct Status {
    pub images: Vec<ImageStatus>,
    pub rollouts: Vec<RolloutStatus>,
}

/// One image in the build region.
#[derive(Debug, Serialize)]
pub struct ImageStatus {
    pub image: String,
    pub region: String,
    /// None before its first bake.
    pub newest: Option<Ami>,
    /// What differs between the inputs now (rendered, base resolved) and the newest AMI's.
    pub changed: Option<Since>,
    /// What could not be read.
    pub error: Option<String>,
}

/// An AMI as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Ami {
    pub ami_id: String,
    pub name: String,
    /// CreationDate (RFC 3339).
    pub created: String,
    pub age_seconds: Option<u64>,
    /// Its `bake:test` verdict (none: baked with the test off).
    pub test: Option<String>,
    pub deprecation_time: Option<String>,
    /// Whether its deprecation time has come.
    pub deprecated: bool,
}

/// One rollout in one of its regions.
#[derive(Debug, Serialize)]
pub struct RolloutStatus {
    pub rollout: String,
    pub image: String,
    pub region: String,
    pub asg: String,
    /// Whether the group exists.
    pub exists: bool,
    /// The launch template version the group is pinned to.
    pub launch_template_version: Option<i64>,
    /// That version's AMI.
    pub ami_id: Option<String>,
    /// The group's instances.
    pub instances: usize,
    /// Of them, those running another AMI.
    pub other: usize,
    /// A tested AMI of the image newer than the pinned one, not in service yet.
    pub waiting: Option<String>,
    /// The SSM parameter bake publishes the image's AMI in, and its value (None: not published).
    pub parameter: String,
    pub published: Option<String>,
    pub error: Option<String>,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for i in &self.images {
            write!(f, "image {} ({}): ", i.image, i.region)?;
            match &i.newest {
                None => write!(f, "no AMI yet")?,
                Some(a) => {
                    write!(f, "{} ({})", a.ami_id, a.name)?;
                    if let Some(age) = a.age_seconds {
                        write!(f, ", {} old", age_text(age))?;
                    }
                    write!(f, ", test {}", a.test.as_deref().unwrap_or("off"))?;
                    match (&a.deprecation_time, a.deprecated) {
                        (Some(t), true) => write!(f, ", deprecated since {t}")?,
                        (Some(t), false) => write!(f, ", deprecated from {t}")?,
                        (None, _) => write!(f, ", not deprecated")?,
                    }
                }
            }
            match &i.changed {
                Some(c) if c.nothing() => write!(f, "; inputs unchanged")?,
                Some(c) => write!(f, "; {c}")?,
                None => {}
            }
            if let Some(e) = &i.error {
                write!(f, "; error: {e}")?;
            }
            writeln!(f)?;
        }
        for r in &self.rollouts {
            write!(f, "rollout {} ({}): ", r.rollout, r.region)?;
            if !r.exists {
                write!(f, "group {} not found", r.asg)?;
            } else {
                write!(
                    f,
                    "group {} on launch template version {} ({}); {} instances, {} on another AMI",
                    r.asg,
                    r.launch_template_version
                        .map_or("?".to_owned(), |v| v.to_string()),
                    r.ami_id.as_deref().unwrap_or("no AMI"),
                    r.instances,
                    r.other
                )?;
            }
            match &r.waiting {
                Some(ami) => write!(f, "; newer tested AMI waiting: {ami}")?,
                None => write!(f, "; no newer tested AMI")?,
            }
            match &r.published {
                Some(v) => write!(f, "; published {} = {v}", r.parameter)?,
                None => write!(f, "; {} not published", r.parameter)?,
            }
            if let Some(e) = &r.error {
                write!(f, "; error: {e}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

impl Outcome for Status {
    fn into_result(self) -> Result<(), Error> {
        let errors: Vec<String> = self
            .images
            .iter()
            .filter_map(|i| Some(format!("image {}: {}", i.image, i.error.as_ref()?)))
            .chain(self.rollouts.iter().filter_map(|r| {
                Some(format!(
                    "rollout {} in {}: {}",
                    r.rollout,
                    r.region,
                    r.error.as_ref()?
                ))
            }))
            .collect();
        super::none_failed(errors, |errors| records::Error::Incomplete(errors).into())
    }
}

/// `3d 4h`, `2h 5m`, `40s`.
fn age_text(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

impl Args {
    pub async fn run(self, ctx: &Context) -> Result<Status, Error> {
        let config = ctx.config()?;
        let renderer = Renderer::new(&config)?;
        let clients = ctx.clients(Some(&config), STATUS_WORST_CASE).await?;
        let images = futures_util::future::join_all(
            config
                .image
                .keys()
                .map(|name| image_status(&clients, &config, &renderer, name)),
        )
        .await;
        let mut rollouts = Vec::new();
        for (name, rollout) in &config.rollout {
            for region in rollout.regions(&clients.region) {
                rollouts.push((name, rollout, region));
            }
        }
        let rollouts =
            futures_util::future::join_all(rollouts.into_iter().map(|(name, rollout, region)| {
                let clients = clients.in_region(&region);
                let prefix = self.publish_prefix.clone();
                async move {
                    rollout_status(
                        &clients,
                        name,
                        rollout.image.get_ref(),
                        &rollout.asg,
                        &prefix,
                    )
                    .await
                }
            }))
            .await;
        Ok(Status { images, rollouts })
    }
}

/// An AMI's tag value.
fn tag<'a>(image: &'a Image, key: &str) -> Option<&'a str> {
    tags::value(image.tags(), key)
}

/// When an EC2 time (`2026-11-24T10:00:00.000Z`) is.
fn time_of(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()
}

fn ami_of(image: &Image, now: SystemTime) -> Ami {
    let created = image.creation_date().unwrap_or_default().to_owned();
    let deprecation_time = image.deprecation_time().map(str::to_owned);
    Ami {
        ami_id: image.image_id().unwrap_or_default().to_owned(),
        name: image.name().unwrap_or_default().to_owned(),
        age_seconds: time_of(&created)
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs()),
        created,
        test: tag(image, tags::TEST).map(str::to_owned),
        deprecated: deprecation_time
            .as_deref()
            .and_then(time_of)
            .is_some_and(|t| t <= now),
        deprecation_time,
    }
}

async fn image_status(
    clients: &Clients,
    config: &Config,
    renderer: &Renderer,
    name: &str,
) -> ImageStatus {
    let mut status = ImageStatus {
        image: name.to_owned(),
        region: clients.region.clone(),
        newest: None,
        changed: None,
        error: None,
    };
    let newest = match image::newest(clients, name).await {
        Ok(Some(newest)) => newest,
        Ok(None) => return status,
        Err(e) => {
            status.error = Some(e.to_string());
            return status;
        }
    };
    status.newest = Some(ami_of(&newest, SystemTime::now()));
    let image = &config.image[name];
    let rendered = match renderer.render(config, name, image) {
        Ok(r) => r,
        Err(e) => {
            status.error = Some(e.to_string());
            return status;
        }
    };
    let base = match preflight::resolve_base(clients, image.base.get_ref()).await {
        Ok(base) => base,
        Err(e) => {
            status.error = Some(e.to_string());
            return status;
        }
    };
    let then = tag(&newest, tags::INPUTS).map(crate::render::Inputs::from_tag);
    status.changed = Some(records::since(
        newest.image_id().unwrap_or_default(),
        then.as_ref(),
        tag(&newest, tags::BASE_AMI),
        &rendered.inputs,
        &base.id,
    ));
    status
}

async fn rollout_status(
    clients: &Clients,
    name: &str,
    image: &str,
    asg: &str,
    publish_prefix: &str,
) -> RolloutStatus {
    let mut status = RolloutStatus {
        rollout: name.to_owned(),
        image: image.to_owned(),
        region: clients.region.clone(),
        asg: asg.to_owned(),
        exists: false,
        launch_template_version: None,
        ami_id: None,
        instances: 0,
        other: 0,
        waiting: None,
        parameter: publish::parameter_name(publish_prefix, image),
        published: None,
        error: None,
    };
    if let Err(e) = fill(clients, image, asg, &mut status).await {
        status.error = Some(e.to_string());
    }
    status
}

/// Reads the group, its template version, its instances, the image's AMIs and the parameter.
async fn fill(
    clients: &Clients,
    image: &str,
    asg: &str,
    status: &mut RolloutStatus,
) -> Result<(), CallError> {
    let parameter = status.parameter.clone();
    let ssm = clients.ssm_in(&clients.region);
    let (group, amis, published) = tokio::try_join!(
        stack::describe_group(clients, asg),
        image::of_image(clients, image),
        clients
            .call(|| ssm.get_parameter().name(&parameter).send())
            .or_none(&["ParameterNotFound"], || format!(
                "read SSM parameter {parameter}"
            )),
    )?;
    status.published = published.and_then(|p| p.parameter?.value);
    let mut pinned_created = None;
    if let Some(group) = group {
        status.exists = true;
        let held = stack::group_version(clients, &group).await?;
        status.launch_template_version = held.as_ref().and_then(|v| v.version_number());
        status.ami_id = held.and_then(|v| v.launch_template_data?.image_id);
        let ids = stack::instance_ids(&group);
        status.instances = ids.len();
        for chunk in ids.chunks(INSTANCES_PER_CALL) {
            let request = clients
                .ec2
                .describe_instances()
                .set_instance_ids(Some(chunk.to_vec()));
            let out = clients
                .call(|| request.clone().send())
                .or_fail(|| format!("describe the instances of group {asg}"))
                .await?;
            status.other += out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| i.image_id() != status.ami_id.as_deref())
                .count();
        }
        pinned_created = amis
            .iter()
            .find(|a| a.image_id() == status.ami_id.as_deref())
            .and_then(|a| a.creation_date().map(str::to_owned));
    }
    let now = SystemTime::now();
    let newest_tested = amis
        .iter()
        .filter(|a| tag(a, tags::TEST) == Some(tags::TEST_PASSED))
        .filter(|a| !ami_of(a, now).deprecated)
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()));
    status.waiting = newest_tested
        .filter(|a| a.image_id() != status.ami_id.as_deref())
        .filter(|a| match (&pinned_created, a.creation_date()) {
            (Some(pinned), Some(created)) => created > pinned.as_str(),
            _ => true,
        })
        .and_then(|a| a.image_id().map(str::to_owned));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age_text(40), "40s");
        assert_eq!(age_text(600), "10m");
        assert_eq!(age_text(2 * 3600 + 300), "2h 5m");
        assert_eq!(age_text(3 * 86_400 + 4 * 3600), "3d 4h");
    }
}
