//! `bake pipeline`: the cron job. Every image is baked unless its inputs are unchanged, its AMI
//! tested (and copied to its distribute regions), rolled out to every rollout of the image region
//! by region, stopping at the first failure, each region then (only then) published in its SSM
//! parameter with that region's AMI, its version labelled `tested` and `live`, and its old AMIs
//! pruned; one event per step, as JSON Lines with `--output json`.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{CheckIp, Context, HOUSEKEEPING, Outcome};
use crate::aws::Clients;
use crate::config::Config;
use crate::limits;
use crate::output::{self, Format, Progress};
use crate::publish::{self, parameter_name};
use crate::{Error, ami, prune, rollout};

/// The cron job: bake and test every image whose inputs changed, roll it out to its rollouts, then
/// publish its AMI id in SSM Parameter Store (labels `tested`, `live`), prune its old AMIs. One
/// event per step.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// AMIs of each image to keep when pruning (0 or more).
    #[arg(long, default_value_t = 3, value_parser = super::parse_keep, allow_negative_numbers = true)]
    pub keep: usize,
    /// SSM parameter path for the AMI ids: PREFIX/IMAGE/ami-id.
    #[arg(long, default_value = "/bake")]
    pub publish_prefix: String,
    #[command(flatten)]
    pub checkip: CheckIp,
}

/// Every event of the run, each printed as it happened; the failed steps decide the exit code.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct Events(pub Vec<Event>);

impl std::fmt::Display for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|e| write!(f, "{e}"))
    }
}

impl Outcome for Events {
    fn printed(&self) -> bool {
        true
    }

    fn into_result(self) -> Result<(), Error> {
        let failed: Vec<String> = self
            .0
            .iter()
            .filter(|e| e.status == "failed")
            .map(|e| format!("{} {}: {}", e.image, e.step, e.message))
            .collect();
        super::none_failed(failed, Error::Pipeline)
    }
}

impl Args {
    pub async fn run(self, ctx: &Context) -> Result<Events, Error> {
        let config = ctx.config()?;
        check(&config, &self.publish_prefix)?;
        let clients = ctx.clients(Some(&config), worst_case(&config)).await?;
        run(&clients, &config, &self, ctx.format).await
    }
}

/// The whole run at worst: the slowest bake, every rollout, and the pruning.
fn worst_case(config: &Config) -> Duration {
    let names: Vec<String> = config.image.keys().cloned().collect();
    let rollouts = config
        .rollout
        .values()
        .map(super::rollout::worst_case)
        .fold(Duration::ZERO, Duration::saturating_add);
    super::ami::worst_case(config, &names)
        .saturating_add(rollouts)
        .saturating_add(HOUSEKEEPING)
}

/// One step's outcome, printed as it happens.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix time, seconds.
    pub time: f64,
    pub image: String,
    /// bake, test, rollout, publish, prune.
    pub step: &'static str,
    /// ok, skipped (nothing to do), failed, not started (a rollout after one that failed).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// The region of a rollout or publish step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub message: String,
}

/// Why the pipeline could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another `bake pipeline` for this config is running (it holds {path}); try again later"
    )]
    Busy { path: PathBuf },
    #[error("cannot open the pipeline's lock file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Checks, before any AWS call, that every image's parameter name is one Parameter Store takes.
fn check(config: &Config, publish_prefix: &str) -> Result<(), Error> {
    for image in config.image.keys() {
        let parameter = parameter_name(publish_prefix, image);
        limits::ssm_parameter_name(&parameter).map_err(|rule| {
            Error::Config(crate::config::Error::Flag {
                flag: "--publish-prefix",
                message: format!(
                    "the AMI of image {image} would be published in {parameter}: {rule}"
                ),
            })
        })?;
    }
    Ok(())
}

/// Runs the pipeline over every image of the config. Steps of one image stop at its first
/// failure; other images go on. The events say which failed (exit 1).
async fn run(
    clients: &Clients,
    config: &Config,
    options: &Args,
    format: Format,
) -> Result<Events, Error> {
    // With a store, the per-image leases (taken by the bake, held through each image's rollouts)
    // keep runners on other machines apart; without one, a lock file keeps this machine's apart.
    let _lock = match config.store {
        Some(_) => None,
        None => Some(lock(config)?),
    };
    let mut events = Emitter {
        format,
        emitted: Vec::new(),
    };
    let names: Vec<String> = config.image.keys().cloned().collect();
    let bake_options = ami::Options {
        force: false,
        keep_on_failure: false,
    };
    let checkip_url = &options.checkip.checkip_url;
    let (baked, failed, mut leases) =
        ami::bake_all(clients, config, &names, &bake_options, checkip_url).await?;
    for failure in &failed {
        match &failure.step {
            // Another runner holds the image: it bakes and rolls it out; this run has nothing to
            // do for it, and that is no failure (exit 0), as a cron runner expects.
            ami::Step::Held(busy) => {
                events.emit(event(
                    &failure.image,
                    "bake",
                    "skipped",
                    None,
                    format!("{busy}; that run bakes and rolls it out"),
                ));
            }
            // The bake made an AMI; its test failed it (and it was removed unless kept).
            ami::Step::Test(test) => {
                let ami_id = test.ami_id();
                let made = format!("baked {ami_id}, then tested");
                events.emit(event(&failure.image, "bake", "ok", Some(ami_id), made));
                let message = failure.step.to_string();
                events.emit(event(
                    &failure.image,
                    "test",
                    "failed",
                    Some(ami_id),
                    message,
                ));
            }
            step => {
                events.emit(event(
                    &failure.image,
                    "bake",
                    "failed",
                    None,
                    step.to_string(),
                ));
            }
        }
    }
    for b in &baked {
        let status = if b.skipped { "skipped" } else { "ok" };
        let message = if b.skipped {
            format!("{} already baked from these inputs", b.ami_id)
        } else if let Some(run) = &b.adopted_from {
            format!(
                "adopted {} ({}), left by run {run}, without launching a builder",
                b.ami_id, b.ami_name
            )
        } else {
            format!("baked {} ({}) in {:.0} s", b.ami_id, b.ami_name, b.seconds)
        };
        events.emit(event(&b.image, "bake", status, Some(&b.ami_id), message));
        let (status, message) = match (&b.test, b.skipped) {
            (Some(t), _) => (
                "ok",
                format!(
                    "{} served and passed its commands on {} in {:.0} s",
                    b.ami_id, t.instance_id, t.seconds
                ),
            ),
            (None, true) => ("skipped", format!("{} was tested when baked", b.ami_id)),
            (None, false) => (
                "skipped",
                format!("{} is not tested (test.enabled = false)", b.ami_id),
            ),
        };
        events.emit(event(&b.image, "test", status, Some(&b.ami_id), message));
        let steps = match leases.lost(&b.image) {
            // Another run may hold the image now: it rolls out what it bakes.
            Some(why) => Err(Stop::Failed(
                "rollout",
                format!("{why}; nothing was rolled out or published by this run"),
            )),
            None => image_steps(clients, config, options, b, &mut events).await,
        };
        leases.release(&b.image).await;
        match steps {
            Ok(()) => {}
            Err(Stop::Failed(step, message)) => {
                events.emit(event(&b.image, step, "failed", Some(&b.ami_id), message));
            }
            Err(Stop::Interrupted(signal)) => {
                leases.release_all().await;
                return Err(Error::Interrupted(signal));
            }
        }
    }
    Ok(Events(events.emitted))
}

/// Why an image's steps stopped early.
enum Stop {
    /// The step and its error.
    Failed(&'static str, String),
    /// A signal during a rollout (already put back); the pipeline stops.
    Interrupted(u8),
}

/// Roll out, publish, prune: one image's steps after its bake and test.
///
/// Rollouts go region by region (each rollout's regions in its order; a region's rollouts one
/// after another), every one preflighted before any is changed, and stop at the first failure:
/// the rollouts after it are reported `not started`. Each region is published with its own AMI
/// (the bake's, or its copy there): a region whose rollouts all serve it, as soon as they do
/// (`tested`, `live`); a region without rollouts only once every rollout of the image succeeded
/// (`tested`). A failed, or not started, region is not published: its parameter (and `live`)
/// stays on the AMI before. Old AMIs are pruned only when every rollout succeeded.
async fn image_steps(
    clients: &Clients,
    config: &Config,
    options: &Args,
    baked: &ami::Baked,
    events: &mut Emitter,
) -> Result<(), Stop> {
    let image = &baked.image;
    let parameter = parameter_name(&options.publish_prefix, image);
    let build = baked.region.as_str();
    let image_regions = config.image_regions(image, build);
    let mut steps: Vec<(String, &String, &crate::config::Rollout)> = Vec::new();
    for (name, target) in config
        .rollout
        .iter()
        .filter(|(_, r)| r.image.get_ref() == image)
    {
        let regions = config
            .rollout_regions(name, build)
            .map_err(|e| Stop::Failed("rollout", e.to_string()))?;
        steps.extend(regions.into_iter().map(|r| (r, name, target)));
    }
    // Region by region, in the order the regions first appear; a stable sort keeps each
    // region's rollouts in their order.
    let order: Vec<String> = steps.iter().fold(Vec::new(), |mut seen, (r, ..)| {
        if !seen.contains(r) {
            seen.push(r.clone());
        }
        seen
    });
    steps.sort_by_key(|(r, ..)| order.iter().position(|o| o == r));
    // Signals are taken from the first preflight on (see rollout::run).
    let mut signal = tokio::spawn(crate::signal::interrupted());
    let mut planned = Vec::new();
    for (region, name, target) in &steps {
        let fail = |message: String| {
            let mut e = event(image, "rollout", "failed", Some(&baked.ami_id), message);
            e.rollout = Some((*name).clone());
            e.region = Some(region.clone());
            e
        };
        let Some(ami) = baked.ami_in(region) else {
            events.emit(fail(format!(
                "{image} has no AMI in {region} (its copy failed, or {region} is not in \
                 [image.{image}.distribute] regions); nothing was rolled out, {parameter} is \
                 not published"
            )));
            return Ok(());
        };
        let here = clients.in_region(region);
        match rollout::preflight::plan(&here, config, name, target, Some(ami)).await {
            Ok(plan) => planned.push((here, plan, *target)),
            Err(e) => {
                events.emit(fail(format!(
                    "{e}; nothing was rolled out, {parameter} is not published"
                )));
                return Ok(());
            }
        }
    }
    // Regions whose every rollout so far served the AMI, and the first that failed.
    let mut failed: Option<String> = None;
    let mut live: Vec<String> = Vec::new();
    for (n, (here, plan, target)) in planned.into_iter().enumerate() {
        let region = here.region.clone();
        let name = plan.rollout.clone();
        let ami = plan.ami.id.clone();
        let mut e = event(image, "rollout", "not started", Some(&ami), String::new());
        e.rollout = Some(name.clone());
        e.region = Some(region.clone());
        if let Some(first) = &failed {
            e.message = format!("{name} in {first} failed first; {region} is left as it was");
            events.emit(e);
            continue;
        }
        let multi = indicatif::MultiProgress::new();
        let progress = Progress::new(&multi, &format!("{name} in {region}"));
        match rollout::apply(&here, target, plan, &progress, &mut signal).await {
            Ok(done) => {
                e.status = if done.changed { "ok" } else { "skipped" };
                e.message = format!(
                    "{} serves {} at {} in {region}",
                    done.asg, done.ami_id, done.url
                );
                events.emit(e);
            }
            Err(step) => {
                e.status = "failed";
                e.message = format!("{step}; {parameter} is not published in {region}");
                events.emit(e);
                if let rollout::Step::Interrupted { signal, .. } = step {
                    return Err(Stop::Interrupted(signal));
                }
                failed = Some(region.clone());
                continue;
            }
        }
        // The region's last rollout: it is live there; publish it now.
        let last_here = steps[n + 1..].iter().all(|(r, ..)| *r != region);
        if last_here {
            publish_in(&here, baked, &parameter, true, events).await?;
            live.push(region);
        }
    }
    if failed.is_some() {
        // A failed rollout keeps the old AMIs in use and published where it did not pass;
        // regions without rollouts and pruning wait for a run where every rollout passed.
        return Ok(());
    }
    for region in image_regions.iter().filter(|r| !live.contains(r)) {
        let Some(_) = baked.ami_in(region) else {
            let mut e = event(
                image,
                "publish",
                "failed",
                None,
                format!(
                    "{image} has no AMI in {region} (its copy failed); {parameter} is not published there"
                ),
            );
            e.region = Some(region.clone());
            events.emit(e);
            continue;
        };
        publish_in(&clients.in_region(region), baked, &parameter, false, events).await?;
    }
    let prune_options = prune::Options {
        keep: options.keep,
        dry_run: false,
        publish_prefix: options.publish_prefix.clone(),
    };
    let pruned = if image_regions.len() > 1 {
        // The image and its copies as one, in every region it is in.
        prune::prune_across(clients, &image_regions, image, &prune_options, None).await
    } else {
        // This image's rollout just changed what is in use: a census of its own.
        let one = prune::prune(
            clients,
            image,
            &prune_options,
            &mut prune::Census::default(),
        )
        .await
        .map_err(|e| Stop::Failed("prune", e.to_string()))?;
        vec![one]
    };
    for pruned in pruned {
        let removed: Vec<&str> = pruned.removed.iter().map(|r| r.ami_id.as_str()).collect();
        let mut message = if removed.is_empty() {
            format!("nothing to remove; {} kept", pruned.kept.len())
        } else {
            format!("removed {}; {} kept", removed.join(", "), pruned.kept.len())
        };
        if !pruned.unread.is_empty() {
            message.push_str(&format!(
                "; the published parameter could not be read in {}",
                pruned.unread.join("; ")
            ));
        }
        let status = match (&pruned.error, removed.is_empty()) {
            (Some(error), _) => {
                message = format!("{error}; {message}");
                "failed"
            }
            (None, true) => "skipped",
            (None, false) => "ok",
        };
        let mut e = event(image, "prune", status, None, message);
        e.region = pruned.region.clone();
        events.emit(e);
    }
    Ok(())
}

/// Publishes the bake's AMI in `here`'s region (its copy there) as `parameter`, labelled `tested`,
/// and `live` when the region's rollouts serve it.
async fn publish_in(
    here: &Clients,
    baked: &ami::Baked,
    parameter: &str,
    live: bool,
    events: &mut Emitter,
) -> Result<(), Stop> {
    let region = here.region.as_str();
    let Some(ami) = baked.ami_in(region) else {
        return Err(Stop::Failed(
            "publish",
            format!("{} has no AMI in {region}", baked.image),
        ));
    };
    let failed = |e: crate::aws::CallError| Stop::Failed("publish", e.to_string());
    let published = publish::publish(here, parameter, ami)
        .await
        .map_err(failed)?;
    let labels: &[&str] = if live {
        &[publish::TESTED, publish::LIVE]
    } else {
        &[publish::TESTED]
    };
    publish::label(here, parameter, published.version, labels)
        .await
        .map_err(failed)?;
    let mut e = event(
        &baked.image,
        "publish",
        if published.changed { "ok" } else { "skipped" },
        Some(ami),
        format!(
            "{parameter} = {ami} in {region} (version {}, labelled {})",
            published.version,
            labels.join(", ")
        ),
    );
    e.region = Some(region.to_owned());
    events.emit(e);
    Ok(())
}

fn event(
    image: &str,
    step: &'static str,
    status: &'static str,
    ami_id: Option<&str>,
    message: String,
) -> Event {
    Event {
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        image: image.to_owned(),
        step,
        status,
        ami_id: ami_id.map(str::to_owned),
        rollout: None,
        region: None,
        message,
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} {} {}: {}",
            self.image, self.step, self.status, self.message
        )
    }
}

/// Prints events as they happen and keeps them.
struct Emitter {
    format: Format,
    emitted: Vec<Event>,
}

impl Emitter {
    fn emit(&mut self, event: Event) {
        // A closed stdout must not stop the pipeline half way; the failed events still decide
        // the exit code.
        let _ = output::print(self.format, &event);
        self.emitted.push(event);
    }
}

/// One pipeline per config at a time: overlapping cron runs would bake and roll out twice.
fn lock(config: &Config) -> Result<File, LockError> {
    let key = Sha256::digest(
        std::fs::canonicalize(&config.source.path)
            .unwrap_or_else(|_| config.source.path.clone())
            .to_string_lossy()
            .as_bytes(),
    );
    let path = std::env::temp_dir().join(format!(
        "bake-pipeline-{}.lock",
        key.iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let file = File::create(&path).map_err(|source| LockError::Open {
        path: path.clone(),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Busy { path }),
        Err(std::fs::TryLockError::Error(source)) => Err(LockError::Open { path, source }),
    }
}
