//! bake: turns user-data templates into verified golden AMIs and rolls them out.
//!
//! The binary is a thin wrapper around [`run`] and [`report`]; each module owns one part of the
//! work. This one dispatches commands and says how they failed (exit code, text or JSON).

pub mod ami;
pub mod aws;
pub mod cli;
pub mod config;
pub mod janitor;
pub mod limits;
pub mod output;
pub mod pipeline;
pub mod poll;
pub mod prune;
pub mod render;
pub mod rollout;
pub mod sdk;

use std::time::Duration;

use serde::Serialize;

use cli::{Cli, Command};
use config::Config;
use render::{Rendered, Renderer};

/// Why a command failed; each variant maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Render(#[from] render::Error),
    /// Several problems found by `bake validate`.
    #[error("{}", join(.0))]
    Invalid(Vec<Error>),
    #[error(transparent)]
    Aws(#[from] aws::Error),
    /// Images that failed to bake (the others are reported on stdout).
    #[error("{}", join(.0))]
    Ami(Vec<ami::Error>),
    #[error(transparent)]
    Rollout(Box<rollout::Error>),
    #[error(transparent)]
    Prune(#[from] prune::Error),
    /// Steps of `bake pipeline` that failed (each also reported as an event).
    #[error("{}", .0.join("\n"))]
    Pipeline(Vec<String>),
    #[error(transparent)]
    Lock(#[from] pipeline::LockError),
    #[error(transparent)]
    Cleanup(#[from] janitor::Error),
    #[error("interrupted by {}; cleaned up what this run created", if *.0 == 130 { "SIGINT" } else { "SIGTERM" })]
    Interrupted(u8),
    #[error("cannot write the result: {0}")]
    Output(#[from] std::io::Error),
}

fn join<E: ToString>(errors: &[E]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Error {
    /// The process exit code: 2 for bad usage or config, 1 for a failed run, 128 + signal when
    /// interrupted.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Render(_) | Error::Invalid(_) | Error::Aws(_) => 2,
            Error::Ami(errors) => errors.iter().map(ami::Error::exit_code).max().unwrap_or(1),
            Error::Rollout(e) => e.exit_code(),
            Error::Interrupted(code) => *code,
            Error::Cleanup(_)
            | Error::Prune(_)
            | Error::Pipeline(_)
            | Error::Lock(_)
            | Error::Output(_) => 1,
        }
    }

    /// What failed, as `-o json` names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            Error::Render(_) => "template",
            Error::Invalid(_) => "invalid",
            Error::Aws(_) => "aws-setup",
            Error::Ami(_) => "ami",
            Error::Rollout(_) => "rollout",
            Error::Prune(_) => "prune",
            Error::Pipeline(_) => "pipeline",
            Error::Lock(_) => "lock",
            Error::Cleanup(_) => "cleanup",
            Error::Interrupted(_) => "interrupted",
            Error::Output(_) => "output",
        }
    }

    /// The problems this error is made of, each with its message and place when it has one:
    /// one for most errors, one per problem for `validate`, one per image for `ami`.
    fn problems(&self) -> Vec<Problem> {
        let one = |position| {
            vec![Problem {
                kind: self.kind(),
                message: self.to_string(),
                position,
            }]
        };
        match self {
            Error::Config(e) => e
                .problems()
                .into_iter()
                .map(|p| Problem {
                    kind: self.kind(),
                    message: p.to_string(),
                    position: config_position(p),
                })
                .collect(),
            Error::Render(e) => one(render_position(e)),
            Error::Invalid(errors) => errors.iter().flat_map(Error::problems).collect(),
            Error::Ami(errors) => errors
                .iter()
                .map(|e| Problem {
                    kind: "ami",
                    message: e.to_string(),
                    position: match &e.step {
                        ami::Step::Preflight(p) => bake_preflight_position(p),
                        _ => None,
                    },
                })
                .collect(),
            Error::Rollout(e) => one(match &e.step {
                rollout::Step::Preflight(p) => rollout_preflight_position(p),
                _ => None,
            }),
            Error::Pipeline(failures) => failures
                .iter()
                .map(|message| Problem {
                    kind: "pipeline",
                    message: message.clone(),
                    position: None,
                })
                .collect(),
            _ => one(None),
        }
    }

    /// The error as `-o json` reports it: `code` (the exit code), `kind`, `message`, and `file`,
    /// `line` and `column` when it is at one place; `errors` lists the problems when there are
    /// several, each with its `kind`, `message` and place.
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({
            "code": self.exit_code(),
            "kind": self.kind(),
            "message": self.to_string(),
        });
        let problems = self.problems();
        match problems.as_slice() {
            [one] => {
                if let Some(position) = &one.position {
                    position.add_to(&mut json);
                }
            }
            many => {
                json["errors"] = many.iter().map(Problem::to_json).collect();
            }
        }
        json
    }
}

/// One problem of an error, for `-o json`.
struct Problem {
    kind: &'static str,
    message: String,
    position: Option<Position>,
}

impl Problem {
    fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::json!({ "kind": self.kind, "message": self.message });
        if let Some(position) = &self.position {
            position.add_to(&mut json);
        }
        json
    }
}

/// A place in a file: a config's `file:line:col`, or a template's file and line.
struct Position {
    file: String,
    line: usize,
    column: Option<usize>,
}

impl Position {
    fn add_to(&self, json: &mut serde_json::Value) {
        json["file"] = self.file.clone().into();
        json["line"] = self.line.into();
        if let Some(column) = self.column {
            json["column"] = column.into();
        }
    }
}

impl From<&config::Location> for Position {
    fn from(at: &config::Location) -> Position {
        Position {
            file: at.path.display().to_string(),
            line: at.line,
            column: Some(at.col),
        }
    }
}

fn config_position(e: &config::Error) -> Option<Position> {
    e.location().map(Position::from)
}

fn render_position(e: &render::Error) -> Option<Position> {
    e.location()
        .map(|(file, line, column)| Position { file, line, column })
}

fn bake_preflight_position(e: &ami::preflight::Error) -> Option<Position> {
    match e {
        ami::preflight::Error::At { at, .. } => Some(at.into()),
        ami::preflight::Error::Render(e) => render_position(e),
        _ => None,
    }
}

fn rollout_preflight_position(e: &rollout::preflight::Error) -> Option<Position> {
    match e {
        rollout::preflight::Error::At { at, .. } => Some(at.into()),
        rollout::preflight::Error::Render(e) => render_position(e),
        rollout::preflight::Error::Reference(e) => bake_preflight_position(e),
        _ => None,
    }
}

/// Reports a failed command on stderr: `error: ...` for people, or with `-o json` one JSON object
/// on one line ([`Error::to_json`]); stdout keeps only results.
pub fn report(format: output::Format, error: &Error) {
    match format {
        output::Format::Text => output::note(&format!("error: {error}")),
        output::Format::Json => output::note(&error.to_json().to_string()),
    }
}

/// `names` without repeats, in their first order: `bake ami web web` bakes web once.
fn unique(names: &[String]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    names
        .iter()
        .filter(|name| seen.insert(name.as_str()))
        .cloned()
        .collect()
}

/// Runs one command line.
pub fn run(cli: Cli) -> Result<(), Error> {
    let config = match &cli.command {
        // gc works from tags alone; the config only contributes a default region, so gc runs
        // without one when none was named and bake.toml is not here. A named one is always read.
        Command::Gc { .. } if cli.config.is_none() && !cli.config_path().exists() => None,
        _ => Some(Config::load(cli.config_path())?),
    };
    match (&cli.command, config) {
        (Command::Render { image }, Some(config)) => render_image(&cli, &config, image),
        (Command::Validate, Some(config)) => validate(&cli, &config),
        (
            Command::Ami {
                images,
                all,
                force,
                keep_on_failure,
                checkip_url,
            },
            Some(config),
        ) => {
            let names = if *all {
                config.image.keys().cloned().collect()
            } else {
                unique(images)
            };
            let options = ami::Options {
                force: *force,
                keep_on_failure: *keep_on_failure,
            };
            runtime().block_on(bake_images(&cli, &config, &names, &options, checkip_url))
        }
        (Command::Rollout { target, ami }, Some(config)) => {
            let options = rollout::Options { ami: ami.clone() };
            runtime().block_on(roll_out(&cli, &config, target, &options))
        }
        (
            Command::Prune {
                images,
                all,
                keep,
                dry_run,
                publish_prefix,
            },
            Some(config),
        ) => {
            let names: Vec<String> = if *all {
                config.image.keys().cloned().collect()
            } else {
                unique(images)
            };
            let options = prune::Options {
                keep: *keep,
                dry_run: *dry_run,
                publish_prefix: publish_prefix.clone(),
            };
            runtime().block_on(prune_images(&cli, &config, &names, &options))
        }
        (
            Command::Pipeline {
                keep,
                publish_prefix,
                checkip_url,
            },
            Some(config),
        ) => {
            let options = pipeline::Options {
                keep: *keep,
                publish_prefix: publish_prefix.clone(),
                checkip_url: checkip_url.clone(),
            };
            pipeline::check(&config, &options)?;
            runtime().block_on(async {
                let clients = aws::Clients::load(&target(&cli, Some(&config))).await?;
                pipeline::run(&clients, &config, &options, cli.output).await
            })
        }
        (Command::Gc { ttl, dry_run }, config) => {
            runtime().block_on(gc(&cli, config.as_ref(), *ttl, *dry_run))
        }
        (_, None) => unreachable!("only gc runs without a config"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts")
}

fn target(cli: &Cli, config: Option<&Config>) -> aws::Target {
    aws::Target {
        profile: cli.profile.clone(),
        region: cli.region.clone(),
        config_region: config.and_then(|c| c.region.clone()),
        runs_for: config.map_or(HOUSEKEEPING, |c| runs_for(&cli.command, c)),
    }
}

/// What a bake spends outside its configured timeouts at worst: the builder reaching `running`
/// (10 min), the AMI becoming available (60 min) and the builder's termination (10 min), as the
/// waits in `ami` bound them.
const BAKE_FIXED: Duration = Duration::from_secs(80 * 60);
/// A verify step without its own timeout gets `ami`'s default of 10 minutes.
const VERIFY_DEFAULT: Duration = Duration::from_secs(10 * 60);
/// A rollout's stack (ALB, target group, groups, launch template) and a group going away take
/// this long at worst, on top of its refresh and a rollback refresh.
const ROLLOUT_FIXED: Duration = Duration::from_secs(20 * 60);
/// prune and gc: listing, deregistering and deleting with their settle windows.
const HOUSEKEEPING: Duration = Duration::from_secs(15 * 60);

/// How long `command` may run at worst, so credentials that expire sooner are caught at start.
/// Saturating: an absurd timeout means "longer than any credentials last", never a panic.
fn runs_for(command: &Command, config: &Config) -> Duration {
    let bake = |name: &String| {
        config.image.get(name).map_or(Duration::ZERO, |image| {
            image
                .health
                .timeout
                .0
                .saturating_add(
                    image
                        .verify
                        .timeout
                        .as_ref()
                        .map_or(VERIFY_DEFAULT, |t| t.0),
                )
                .saturating_add(BAKE_FIXED)
        })
    };
    let roll = |r: &config::Rollout| {
        r.refresh
            .get_ref()
            .timeout
            .0
            .saturating_mul(2)
            .saturating_add(ROLLOUT_FIXED)
    };
    match command {
        Command::Render { .. } | Command::Validate => Duration::ZERO,
        Command::Ami { images, all, .. } => {
            let names: Vec<&String> = if *all {
                config.image.keys().collect()
            } else {
                images.iter().collect()
            };
            // Images bake at once: the slowest one sets the time.
            names.into_iter().map(bake).max().unwrap_or_default()
        }
        Command::Rollout { target, .. } => config.rollout.get(target).map_or(Duration::ZERO, roll),
        Command::Pipeline { .. } => {
            let rollouts = config
                .rollout
                .values()
                .map(roll)
                .fold(Duration::ZERO, Duration::saturating_add);
            config
                .image
                .keys()
                .map(bake)
                .max()
                .unwrap_or_default()
                .saturating_add(rollouts)
                .saturating_add(HOUSEKEEPING)
        }
        Command::Prune { .. } | Command::Gc { .. } => HOUSEKEEPING,
    }
}

/// Resolves when the process gets SIGINT (130) or SIGTERM (143).
pub(crate) async fn interrupted() -> u8 {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => 130,
        _ = term.recv() => 143,
    }
}

async fn bake_images(
    cli: &Cli,
    config: &Config,
    names: &[String],
    options: &ami::Options,
    checkip_url: &str,
) -> Result<(), Error> {
    for name in names {
        config.image(name)?;
    }
    let clients = aws::Clients::load(&target(cli, Some(config))).await?;
    let (baked, failed) = bake_all(&clients, config, names, options, checkip_url).await?;
    let text: String = match baked.as_slice() {
        [one] if names.len() == 1 => format!("{}\n", one.ami_id),
        many => many
            .iter()
            .map(|b| format!("{} {}\n", b.image, b.ami_id))
            .collect(),
    };
    let errors: Vec<serde_json::Value> = failed
        .iter()
        .map(|e| serde_json::json!({ "image": e.image, "error": e.step.to_string() }))
        .collect();
    output::result(
        cli.output,
        &text,
        &serde_json::json!({ "images": baked, "errors": errors }),
    )?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Ami(failed))
    }
}

/// Bakes the named images at once, after checking all of them. A preflight problem with any
/// image stops all (nothing is created); a signal cleans up every image's run and stops.
pub(crate) async fn bake_all(
    clients: &aws::Clients,
    config: &Config,
    names: &[String],
    options: &ami::Options,
    checkip_url: &str,
) -> Result<(Vec<ami::Baked>, Vec<ami::Error>), Error> {
    let renderer = Renderer::new(config)?;
    // Every image is checked before anything is created for any of them.
    let plans = futures_util::future::join_all(names.iter().map(|name| {
        ami::preflight::plan(
            clients,
            config,
            &renderer,
            name,
            &config.image[name],
            checkip_url,
        )
    }))
    .await;
    let mut failed = Vec::new();
    let mut ready = Vec::new();
    for (name, plan) in names.iter().zip(plans) {
        match plan {
            Ok(plan) => ready.push(plan),
            Err(e) => failed.push(ami::Error {
                image: name.clone(),
                step: e.into(),
            }),
        }
    }
    if !failed.is_empty() {
        return Err(Error::Ami(failed));
    }
    let multi = indicatif::MultiProgress::new();
    let janitors: Vec<janitor::Janitor> = ready
        .iter()
        .map(|_| janitor::Janitor::new(clients.clone(), janitor::new_run_id()))
        .collect();
    let work =
        futures_util::future::join_all(ready.iter().zip(&janitors).map(|(plan, janitor)| {
            let progress = output::Progress::new(&multi, &plan.image);
            let image = &config.image[&plan.image];
            async move { ami::bake(clients, image, plan, options, janitor, &progress).await }
        }));
    let outcome = tokio::select! {
        results = work => Ok(results),
        signal = interrupted() => Err(signal),
    };
    let results = match outcome {
        Ok(results) => results,
        Err(signal) => {
            output::note("interrupted: cleaning up what this run created");
            let cleaned =
                futures_util::future::join_all(janitors.iter().map(janitor::Janitor::clean)).await;
            for e in cleaned.into_iter().filter_map(Result::err) {
                output::note(&format!("error: {e}"));
            }
            return Err(Error::Interrupted(signal));
        }
    };
    let mut baked = Vec::new();
    for (plan, result) in ready.iter().zip(results) {
        match result {
            Ok(b) => baked.push(b),
            Err(step) => failed.push(ami::Error {
                image: plan.image.clone(),
                step,
            }),
        }
    }
    Ok((baked, failed))
}

async fn roll_out(
    cli: &Cli,
    config: &Config,
    name: &str,
    options: &rollout::Options,
) -> Result<(), Error> {
    let target = config.rollout(name)?;
    let clients = aws::Clients::load(&self::target(cli, Some(config))).await?;
    let multi = indicatif::MultiProgress::new();
    let progress = output::Progress::new(&multi, name);
    let rolled = rollout::run(&clients, config, name, target, options, &progress)
        .await
        .map_err(|step| {
            Error::Rollout(Box::new(rollout::Error {
                rollout: name.to_owned(),
                step,
            }))
        })?;
    output::result(cli.output, &format!("{}\n", rolled.url), &rolled)?;
    Ok(())
}

async fn prune_images(
    cli: &Cli,
    config: &Config,
    names: &[String],
    options: &prune::Options,
) -> Result<(), Error> {
    for name in names {
        config.image(name)?;
    }
    let clients = aws::Clients::load(&target(cli, Some(config))).await?;
    let verb = if options.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut text = String::new();
    let mut results = Vec::new();
    for name in names {
        let pruned = prune::prune(&clients, name, options).await?;
        for r in &pruned.removed {
            text.push_str(&format!("{name}: {verb} {} {}\n", r.ami_id, r.name));
        }
        for k in &pruned.kept {
            text.push_str(&format!(
                "{name}: kept {} {} ({})\n",
                k.ami_id, k.name, k.why
            ));
        }
        for region in &pruned.unread {
            text.push_str(&format!(
                "{name}: warning: cannot read the published parameter in {region}\n"
            ));
        }
        results.push(pruned);
    }
    output::result(
        cli.output,
        &text,
        &serde_json::json!({ "region": clients.region, "dry_run": options.dry_run, "images": results }),
    )?;
    Ok(())
}

async fn gc(
    cli: &Cli,
    config: Option<&Config>,
    ttl: std::time::Duration,
    dry_run: bool,
) -> Result<(), Error> {
    let target = target(cli, config);
    if config.is_none() {
        let (region, from) = sdk::region_and_source(&target).await?;
        output::note(&format!(
            "gc: no config ({} is not here; name one with -c or BAKE_CONFIG): working in region \
             {region}, from {from}",
            cli::DEFAULT_CONFIG
        ));
    }
    let clients = aws::Clients::load(&target).await?;
    // --ttl is at most ten years, so this is a real time; the epoch would mean "everything".
    let cutoff = std::time::SystemTime::now()
        .checked_sub(ttl)
        .unwrap_or(std::time::UNIX_EPOCH);
    let found = janitor::find(
        &clients,
        &janitor::Scope::LeftBefore(cutoff),
        &Default::default(),
    )
    .await?;
    if !dry_run {
        janitor::delete(&clients, &found).await?;
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    let text: String = found.iter().map(|r| format!("{verb} {r}\n")).collect();
    output::result(
        cli.output,
        &text,
        &serde_json::json!({ "region": clients.region, "dry_run": dry_run, "resources": found }),
    )?;
    Ok(())
}

/// What `render` and `validate` report about one image.
#[derive(Serialize)]
struct ImageReport<'a> {
    image: &'a str,
    template: &'a str,
    os: config::Os,
    /// Size of the script in bytes.
    size: usize,
    /// Size of what EC2 receives (gzip when compressed).
    payload_size: usize,
    compressed: bool,
    digest: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_data: Option<&'a str>,
}

impl<'a> ImageReport<'a> {
    fn new(name: &'a str, image: &'a config::Image, rendered: &'a Rendered) -> Self {
        ImageReport {
            image: name,
            template: image.template.get_ref(),
            os: image.os,
            size: rendered.script.len(),
            payload_size: rendered.payload.len(),
            compressed: rendered.compressed,
            digest: &rendered.digest,
            user_data: None,
        }
    }

    fn summary(&self) -> String {
        let packing = if self.compressed {
            format!("gzip-compressed to {} bytes", self.payload_size)
        } else {
            "not compressed".to_owned()
        };
        format!(
            "{}: {} on {}, {} bytes, {packing}, digest {}",
            self.image, self.template, self.os, self.size, self.digest
        )
    }
}

fn render_image(cli: &Cli, config: &Config, name: &str) -> Result<(), Error> {
    let image = config.image(name)?;
    let rendered = Renderer::new(config)?.render(config, name, image)?;
    let mut report = ImageReport::new(name, image, &rendered);
    if cli.output == output::Format::Text {
        output::note(&report.summary());
    }
    report.user_data = Some(&rendered.script);
    output::result(cli.output, &rendered.script, &report)?;
    Ok(())
}

fn validate(cli: &Cli, config: &Config) -> Result<(), Error> {
    let renderer = Renderer::new(config)?;
    let mut errors = Vec::new();
    let mut rendered = Vec::new();
    for (name, image) in &config.image {
        let checked = renderer.render(config, name, image).and_then(|r| {
            renderer.ami_name(config, name, image, &r.digest, std::time::SystemTime::now())?;
            Ok(r)
        });
        match checked {
            Ok(r) => rendered.push((name, image, r)),
            Err(e) => errors.push(Error::Render(e)),
        }
    }
    if !errors.is_empty() {
        return Err(Error::Invalid(errors));
    }
    let warnings: Vec<String> = rendered
        .iter()
        .filter_map(|(name, image, r)| agent_warning(config, name, image, r))
        .collect();
    for warning in &warnings {
        output::note(&format!("warning: {warning}"));
    }
    let reports: Vec<ImageReport> = rendered
        .iter()
        .map(|(name, image, r)| ImageReport::new(name, image, r))
        .collect();
    let mut text: String = reports
        .iter()
        .map(|r| format!("ok {}\n", r.summary()))
        .collect();
    for (name, rollout) in &config.rollout {
        text.push_str(&format!(
            "ok rollout {name}: image {} to ASG {} behind ALB {}\n",
            rollout.image.get_ref(),
            rollout.asg,
            rollout.alb
        ));
    }
    let json = serde_json::json!({
        "config": config.source.path,
        "images": reports,
        "rollouts": config.rollout.keys().collect::<Vec<_>>(),
        "warnings": warnings,
    });
    output::result(cli.output, &text, &json)?;
    Ok(())
}

/// Debian's AMIs ship no SSM agent (Ubuntu's and Amazon Linux's do), and bake verifies through
/// SSM: user data for `os = "debian"` that never mentions the agent bakes a builder that never
/// comes Online. The built-in templates install it (partials/common.sh.j2).
fn agent_warning(
    config: &Config,
    name: &str,
    image: &config::Image,
    rendered: &Rendered,
) -> Option<String> {
    if image.os != config::Os::Debian || rendered.script.contains("amazon-ssm-agent") {
        return None;
    }
    Some(format!(
        "{}: image.{name}.template: template {:?} for os = \"debian\" never mentions \
         amazon-ssm-agent; Debian's AMIs ship no SSM agent, so the builder never comes Online in \
         SSM and verification times out. Install it in the template (include \
         \"partials/common.sh.j2\", which does), or use an image that ships it (Ubuntu)",
        config.source.locate(image.template.span().start),
        image.template.get_ref()
    ))
}
