//! `bake pipeline`: the cron job. Every image is baked unless its inputs are unchanged, its AMI id
//! published in an SSM parameter, rolled out to every rollout of the image, and its old AMIs pruned;
//! one event per step, as JSON Lines with `--output json`.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_ssm::types::ParameterType;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::aws::{self, CallError, Clients};
use crate::config::Config;
use crate::limits;
use crate::output::{self, Format};
use crate::poll::{self, Check, PollError, Schedule};
use crate::{Error, ami, prune, rollout};

/// How `bake pipeline` behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// AMIs of each image to keep when pruning.
    pub keep: usize,
    /// The SSM parameter path the AMI ids are published under: `<prefix>/<image>/ami-id`.
    pub publish_prefix: String,
    /// What's-my-IP service for `allow_cidr = "auto"`.
    pub checkip_url: String,
}

/// One step's outcome, printed as it happens.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix time, seconds.
    pub time: f64,
    pub image: String,
    /// bake, publish, rollout, prune.
    pub step: &'static str,
    /// ok, skipped (nothing to do), failed.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ami_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
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

/// The SSM parameter an image's AMI id is published in: `<prefix>/<image>/ami-id`.
fn parameter_name(options: &Options, image: &str) -> String {
    prune::parameter_name(&options.publish_prefix, image)
}

/// Checks, before any AWS call, that every image's parameter name is one Parameter Store takes.
pub fn check(config: &Config, options: &Options) -> Result<(), Error> {
    for image in config.image.keys() {
        let parameter = parameter_name(options, image);
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
/// failure; other images go on. Fails (exit 1) when any step failed.
pub async fn run(
    clients: &Clients,
    config: &Config,
    options: &Options,
    format: Format,
) -> Result<(), Error> {
    let _lock = lock(config)?;
    let mut events = Emitter {
        format,
        failed: Vec::new(),
    };
    let names: Vec<String> = config.image.keys().cloned().collect();
    let bake_options = ami::Options {
        force: false,
        keep_on_failure: false,
    };
    let (baked, failed) =
        crate::bake_all(clients, config, &names, &bake_options, &options.checkip_url).await?;
    for failure in &failed {
        events.emit(event(
            &failure.image,
            "bake",
            "failed",
            None,
            failure.step.to_string(),
        ));
    }
    for b in &baked {
        let status = if b.skipped { "skipped" } else { "ok" };
        let message = if b.skipped {
            format!("{} already baked from these inputs", b.ami_id)
        } else {
            format!("baked {} ({}) in {:.0} s", b.ami_id, b.ami_name, b.seconds)
        };
        events.emit(event(&b.image, "bake", status, Some(&b.ami_id), message));
        match image_steps(clients, config, options, b, &mut events).await {
            Ok(()) => {}
            Err(Stop::Failed(step, message)) => {
                events.emit(event(&b.image, step, "failed", Some(&b.ami_id), message));
            }
            Err(Stop::Interrupted(signal)) => return Err(Error::Interrupted(signal)),
        }
    }
    if events.failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Pipeline(events.failed))
    }
}

/// Why an image's steps stopped early.
enum Stop {
    /// The step and its error.
    Failed(&'static str, String),
    /// A signal during a rollout (already put back); the pipeline stops.
    Interrupted(u8),
}

/// Publish, roll out, prune: one image's steps after its bake.
async fn image_steps(
    clients: &Clients,
    config: &Config,
    options: &Options,
    baked: &ami::Baked,
    events: &mut Emitter,
) -> Result<(), Stop> {
    let image = &baked.image;
    let parameter = parameter_name(options, image);
    let changed = publish(clients, &parameter, &baked.ami_id)
        .await
        .map_err(|e| Stop::Failed("publish", e.to_string()))?;
    events.emit(event(
        image,
        "publish",
        if changed { "ok" } else { "skipped" },
        Some(&baked.ami_id),
        format!("{parameter} = {}", baked.ami_id),
    ));
    for (name, target) in config
        .rollout
        .iter()
        .filter(|(_, r)| r.image.get_ref() == image)
    {
        let multi = indicatif::MultiProgress::new();
        let progress = output::Progress::new(&multi, name);
        let rollout_options = rollout::Options {
            ami: Some(baked.ami_id.clone()),
        };
        match rollout::run(clients, config, name, target, &rollout_options, &progress).await {
            Ok(done) => {
                let mut e = event(
                    image,
                    "rollout",
                    if done.changed { "ok" } else { "skipped" },
                    Some(&baked.ami_id),
                    format!("{} serves {} at {}", done.asg, done.ami_id, done.url),
                );
                e.rollout = Some(name.clone());
                events.emit(e);
            }
            Err(step) => {
                let mut e = event(
                    image,
                    "rollout",
                    "failed",
                    Some(&baked.ami_id),
                    step.to_string(),
                );
                e.rollout = Some(name.clone());
                events.emit(e);
                if let rollout::Step::Interrupted { signal, .. } = step {
                    return Err(Stop::Interrupted(signal));
                }
                // A failed rollout keeps the old AMIs in use; pruning can wait for the next run.
                return Ok(());
            }
        }
    }
    let pruned = prune::prune(
        clients,
        image,
        &prune::Options {
            keep: options.keep,
            dry_run: false,
            publish_prefix: options.publish_prefix.clone(),
        },
    )
    .await
    .map_err(|e| Stop::Failed("prune", e.to_string()))?;
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
    events.emit(event(
        image,
        "prune",
        if removed.is_empty() { "skipped" } else { "ok" },
        None,
        message,
    ));
    Ok(())
}

/// Parameter Store validates an `aws:ec2:image` value after PutParameter has answered ("Native
/// parameter support for Amazon Machine Image IDs"): the new version shows within seconds, or
/// never when the AMI is refused. A minute without it means it was refused.
const PUBLISH_SETTLE: Duration = Duration::from_secs(60);
/// Read the parameter back after 1 s, every second for 10 s, then growing to 5 s.
const PUBLISH_SCHEDULE: Schedule = Schedule {
    first: Duration::from_secs(1),
    interval: Duration::from_secs(1),
    dense: Duration::from_secs(10),
    factor: 1.5,
    cap: Duration::from_secs(5),
};

/// Puts the AMI id in the parameter unless it holds it already, then reads it back until it
/// does (the value is validated after PutParameter answers). Returns whether it changed.
pub async fn publish(clients: &Clients, parameter: &str, ami_id: &str) -> Result<bool, CallError> {
    let read = aws::settle(&aws::THROTTLE_BURST, "read the published parameter", || {
        clients.ssm.get_parameter().name(parameter).send()
    });
    match read.await {
        Ok(out) if out.parameter().and_then(|p| p.value()) == Some(ami_id) => return Ok(false),
        Ok(_) => {}
        Err(e) if aws::code(&e) == Some("ParameterNotFound") => {}
        Err(e) => {
            return Err(
                clients.failed(format!("read SSM parameter {parameter}"), aws::describe(&e))
            );
        }
    }
    let put = clients
        .ssm
        .put_parameter()
        .name(parameter)
        .value(ami_id)
        .r#type(ParameterType::String)
        .data_type("aws:ec2:image")
        .overwrite(true)
        .description("The newest AMI baked by bake")
        .send()
        .await
        .map_err(|e| {
            clients.failed(
                format!("write SSM parameter {parameter}"),
                aws::describe(&e),
            )
        })?;
    let version = put.version();
    let action = || format!("publish {ami_id} in SSM parameter {parameter}");
    let read = poll::until(
        poll::deadline(PUBLISH_SETTLE),
        PUBLISH_SCHEDULE,
        |seen| tracing::debug!("{parameter}: {seen}"),
        || async {
            match clients.ssm.get_parameter().name(parameter).send().await {
                Ok(out) => {
                    let p = out.parameter();
                    match p.and_then(|p| p.value()) {
                        Some(v) if v == ami_id => Check::Ready(()),
                        v => Check::Pending(format!(
                            "it still holds {} (version {})",
                            v.unwrap_or("nothing"),
                            p.map_or(0, |p| p.version())
                        )),
                    }
                }
                Err(e) if aws::code(&e) == Some("ParameterNotFound") => {
                    Check::Pending("it does not exist yet".to_owned())
                }
                Err(e) if aws::transient(&e) => Check::Pending(aws::describe(&e)),
                Err(e) => Check::Failed(aws::describe(&e)),
            }
        },
    )
    .await;
    match read {
        Ok(()) => Ok(true),
        Err(PollError::Failed(message)) => Err(clients.failed(
            action(),
            format!("reading it back after PutParameter: {message}"),
        )),
        Err(PollError::TimedOut { last }) => {
            let history = history_has(clients, parameter, version).await;
            Err(clients.failed(
                action(),
                format!(
                    "PutParameter answered version {version}, but {PUBLISH_SETTLE:?} later {last}; \
                     {history}: Parameter Store validates aws:ec2:image values after PutParameter \
                     and drops one naming an AMI that is not available in {}",
                    clients.region
                ),
            ))
        }
    }
}

/// What the parameter's history says about `version`, for the failure message.
async fn history_has(clients: &Clients, parameter: &str, version: i64) -> String {
    let mut found = false;
    let mut token = None;
    // Bounded: the history holds at most 100 versions, 50 a page.
    for _ in 0..3 {
        let page = clients
            .ssm
            .get_parameter_history()
            .name(parameter)
            .set_next_token(token.take())
            .send()
            .await;
        let Ok(page) = page else {
            return "its history could not be read".to_owned();
        };
        found |= page.parameters().iter().any(|p| p.version() == version);
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    if found {
        format!("version {version} is in its history")
    } else {
        format!("its history has no version {version}")
    }
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
        message,
    }
}

/// Prints events as they happen and remembers the failures.
struct Emitter {
    format: Format,
    failed: Vec<String>,
}

impl Emitter {
    fn emit(&mut self, event: Event) {
        if event.status == "failed" {
            self.failed
                .push(format!("{} {}: {}", event.image, event.step, event.message));
        }
        let text = format!(
            "{} {} {}: {}\n",
            event.image, event.step, event.status, event.message
        );
        // A closed stdout must not stop the pipeline half way; the failure list still decides
        // the exit code.
        let _ = output::result(self.format, &text, &event);
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
